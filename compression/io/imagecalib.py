"""Image+text calibration rows for a vision-language model (docs/architectures.md, "Calibration with images").

Each sample of the JSONL file (compression.io.imagefile) goes through the model's processor, as a user's
message would: the image placeholder (the chat template's, or the processor's image token before the text) is
expanded into the image's tokens, and ``pixel_values`` (and ``image_grid_thw``, ``image_sizes``, ... as the
processor gives them) become the row's extras (compression.core.calibrows). Every row is exactly ``seq_len``
tokens:

- longer: the text after the image is cut; the image tokens never are (if the text before them and the image
  tokens alone exceed ``seq_len``, a ``CalibrationError`` names both numbers);
- shorter: padded by appending tokens of the file's text stream (the texts of the samples, in order, joined as
  a text calibration file joins them, the image token removed), continuing where the last row's padding stopped
  and wrapping around; a file without text pads with the tokenizer's pad (or end) token.

A line without an image is a text row: the processor on its text, cut or padded the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from presso.compression.core.calibrows import CalibrationExtras
from presso.compression.errors import CalibrationError
from presso.compression.io.imagefile import Sample, decode_image, read_samples

log = logging.getLogger(__name__)


def load_processor(model_dir: Path) -> Any | None:
    """The model's processor (AutoProcessor from its directory) if it has an image processor, else None."""
    if not model_dir.is_dir():
        return None
    from transformers import AutoProcessor

    try:
        proc = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as exc:  # no processor files: text calibration only
        log.info("no processor loaded from %s: %s", model_dir, exc)
        return None
    return proc if getattr(proc, "image_processor", None) is not None and hasattr(proc, "tokenizer") else None


def image_token_id(config: Any, processor: Any) -> int:
    for key in ("image_token_id", "image_token_index"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    tid = getattr(processor, "image_token_id", None)
    if not isinstance(tid, int):
        raise CalibrationError("the model's image token is unknown (no image_token_id in its config or processor)")
    return tid


def _prompt(processor: Any, text: str) -> str:
    token = getattr(processor, "image_token", None)
    if token and token in text:  # the user placed the image
        return text
    if getattr(processor, "chat_template", None):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return str(processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False))
    if not token:
        raise CalibrationError("the processor has neither a chat template nor an image token")
    return f"{token}\n{text}"


class _Filler:
    """The text stream that pads short rows, consumed in order, wrapping around."""

    def __init__(self, processor: Any, texts: list[str], image_id: int, chars: int) -> None:
        tok = processor.tokenizer
        ids = tok("\n\n".join(texts)[:chars], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        self.ids = ids[ids != image_id].long()
        if not self.ids.numel():
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            self.ids = torch.tensor([int(pad or 0)])
        self.at = 0

    def take(self, n: int) -> torch.Tensor:
        reps = (self.at + n) // self.ids.numel() + 1
        out = self.ids.repeat(reps)[self.at:self.at + n]
        self.at = (self.at + n) % self.ids.numel()
        return out


def _fit(ids: torch.Tensor, token_keys: dict[str, torch.Tensor], seq_len: int, image_id: int, has_image: bool,
         filler: _Filler, where: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cut or pad one processed sample to ``seq_len``; the token-aligned tensors follow (padding with 0)."""
    pos = (ids == image_id).nonzero().flatten()
    if has_image and not pos.numel():
        raise CalibrationError(f"{where}: the processor put no image token in the sample")
    if not has_image:
        keep = ids != image_id  # a text row must not claim an image
        ids, token_keys = ids[keep], {k: v[:, keep] for k, v in token_keys.items()}
    end = int(pos[-1]) + 1 if has_image else 0
    if end > seq_len:
        raise CalibrationError(f"{where}: the image takes tokens up to position {end} (text before it included), "
                               f"more than calibration.seq_len {seq_len}: raise seq_len or give smaller images")
    if ids.numel() >= seq_len:
        return ids[:seq_len], {k: v[:, :seq_len] for k, v in token_keys.items()}
    short = seq_len - ids.numel()
    return (torch.cat([ids, filler.take(short)]),
            {k: torch.cat([v, v.new_zeros(1, short)], dim=1) for k, v in token_keys.items()})


def _process(processor: Any, sample: Sample, source: str) -> dict[str, torch.Tensor]:
    where = f"{source}:{sample.line}"
    try:
        if sample.image is None:
            return dict(processor(text=[sample.text], return_tensors="pt"))
        image = decode_image(sample, source)
        return dict(processor(images=[image], text=[_prompt(processor, sample.text)], return_tensors="pt"))
    except CalibrationError:
        raise
    except Exception as exc:  # the processor's own checks (e.g. more image tokens in the text than images)
        raise CalibrationError(f"{where}: the processor refused the sample: {exc}") from exc


def image_text_windows(path: Path, processor: Any, config: Any, samples: int, seq_len: int,
                       vocab_size: int | None) -> tuple[torch.Tensor, CalibrationExtras]:
    """[n, seq_len] token ids (n = min(samples, lines)) and each row's processor tensors."""
    rows = read_samples(path, limit=samples)
    if len(rows) < samples:
        log.warning("%s has %d samples, fewer than the %d asked", path.name, len(rows), samples)
    image_id = image_token_id(config, processor)
    filler = _Filler(processor, [s.text for s in rows], image_id, chars=samples * seq_len * 8)
    ids_rows: list[torch.Tensor] = []
    extras: list[dict[str, torch.Tensor]] = []
    for s in rows:
        out = _process(processor, s, path.name)
        ids = out.pop("input_ids")[0].long()
        out.pop("attention_mask", None)  # every calibration token is attended (as with text calibration)
        token_keys = {k: v for k, v in out.items()
                      if k.endswith(("_ids", "_mask")) and v.dim() == 2 and v.shape == (1, ids.numel())}
        fitted, token_keys = _fit(ids, token_keys, seq_len, image_id, s.image is not None, filler,
                                  f"{path.name}:{s.line}")
        ids_rows.append(fitted)
        extras.append({**{k: v for k, v in out.items() if k not in token_keys and isinstance(v, torch.Tensor)},
                       **token_keys} if s.image is not None else token_keys)
    ids = torch.stack(ids_rows)
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        raise CalibrationError(f"{path.name}: the processor gives token ids outside the model's vocabulary "
                               f"[0, {vocab_size})")
    keys = {k: v for r in extras for k, v in r.items() if k.endswith(("_ids", "_mask")) and v.shape == (1, seq_len)}
    for r in extras:  # token-aligned tensors on every row, so that a batch can concatenate them
        for k, v in keys.items():
            r.setdefault(k, torch.zeros_like(v))
    result = CalibrationExtras(rows=extras, ids=ids)
    log.info("image+text calibration: %d samples of %d tokens, %d with an image", len(rows), seq_len,
             result.with_images)
    return ids, result
