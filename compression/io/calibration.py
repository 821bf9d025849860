"""Token windows for calibration and evaluation: from text, JSONL, token ids, or self-generated text.

Windows are consecutive, non-overlapping ``seq_len``-token slices from the start of the text,
the protocol of docs/benchmarks (and of the product: one code path for both).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from presso.compression.errors import CalibrationError, CalibrationRequired
from presso.compression.io.loading import vocab_size

log = logging.getLogger(__name__)


def read_text(path: Path) -> str:
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".jsonl":
        parts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            parts.append(jsonl_sample(line, f"{path.name}:{n}")["text"])
        return "\n\n".join(parts)
    return raw


def jsonl_sample(line: str, where: str) -> dict[str, Any]:
    """One JSONL calibration line: an object with a string field ``text`` (else ``CalibrationError``)."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise CalibrationError(f"{where}: not JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise CalibrationError(f"{where}: each JSONL line needs a string field 'text'")
    return obj


def windows_from_ids(ids: torch.Tensor, samples: int, seq_len: int, source: str) -> torch.Tensor:
    n = ids.numel() // seq_len
    if n < 1:
        raise CalibrationError(f"{source} has {ids.numel()} tokens, fewer than one sequence of {seq_len}")
    if n < samples:
        log.warning("%s yields %d windows of %d tokens, fewer than the %d asked", source, n, seq_len, samples)
    n = min(n, samples)
    return ids[: n * seq_len].reshape(n, seq_len).long()


def windows_from_text(tokenizer: Any, text: str, samples: int, seq_len: int, source: str = "text") -> torch.Tensor:
    if tokenizer is None:
        raise CalibrationError("the model has no tokenizer: give token ids (.npy or .json) instead of text")
    need = samples * seq_len + 1
    chars = need * 8
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        if ids.numel() > need or chars >= len(text):
            break
        chars *= 2
    # drop the last token of a truncated prefix: it may be cut mid-word
    if chars < len(text):
        ids = ids[:-1]
    return windows_from_ids(ids, samples, seq_len, source)


def load_token_ids(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        try:
            arr = np.asarray(json.loads(path.read_text()), dtype=np.int64)
        except ValueError as exc:
            raise CalibrationError(f"{path.name}: token-id JSON must be a list of ints (or of lists)") from exc
    if not np.issubdtype(arr.dtype, np.integer):
        raise CalibrationError(f"{path.name}: token ids must be integers")
    return torch.from_numpy(arr.astype(np.int64)).reshape(-1)


def load_windows(path: Path, tokenizer: Any, samples: int, seq_len: int, vocab_size: int | None) -> torch.Tensor:
    if path.suffix in (".npy", ".json"):
        ids = load_token_ids(path)
        if vocab_size is not None and ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
            raise CalibrationError(f"{path.name}: token ids outside the model's vocabulary [0, {vocab_size})")
        return windows_from_ids(ids, samples, seq_len, path.name)
    return windows_from_text(tokenizer, read_text(path), samples, seq_len, path.name)


class _Progress:
    """A stopping criterion that never stops: it reports generated tokens as progress."""

    def __init__(self, report: Callable[[float], None], done: int, total: int, start_len: int) -> None:
        self.report, self.done, self.total, self.start_len = report, done, total, start_len

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new = input_ids.shape[1] - self.start_len
        if new % 16 == 0:
            self.report((self.done + input_ids.shape[0] * new) / self.total)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_windows(
    model: Any, tokenizer: Any, samples: int, seq_len: int, *, seed: int, prompt: str, device: torch.device,
    progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Text the model writes itself from ``prompt`` (sampling, seeded): a job needs no dataset."""
    if not hasattr(model, "generate"):
        raise CalibrationRequired("this model cannot generate text: give calibration data")
    gen = torch.Generator().manual_seed(seed)
    if tokenizer is not None:
        start = tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"][0]
    else:
        start = torch.randint(0, vocab_size(model.config) or 2, (1,), generator=gen)
    torch.manual_seed(seed)
    out = []
    home = next(model.parameters()).device
    model.to(device)
    for batch in range(0, samples, 16):
        b = min(16, samples - batch)
        ids = start.unsqueeze(0).repeat(b, 1).to(device)
        criteria = [_Progress(progress, batch * seq_len, samples * seq_len, ids.shape[1])] if progress else None
        seqs = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, top_p=0.95, temperature=1.0,
            max_new_tokens=seq_len, min_new_tokens=seq_len, stopping_criteria=criteria,
            pad_token_id=getattr(tokenizer, "eos_token_id", None) or 0,
        )
        out.append(seqs[:, -seq_len:].cpu())
    model.to(home)
    return torch.cat(out)
