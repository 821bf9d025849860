"""Write an artifact directory: config.json, *.safetensors, tokenizer files, presso.json.

``compressed``: each compressed module in its packed/sparse/factorized on-disk form (see
compression.io.exporters); ``dense``: dequantized weights in the model's dtype, for tools that
read only dense checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from presso.compression.io.exporters import EXPORTERS

log = logging.getLogger(__name__)
SHARD_BYTES = 4 << 30


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_without_ties(model: nn.Module) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen and getattr(model.config, "tie_word_embeddings", False):
            continue  # tied weight (lm_head <- embed_tokens): transformers re-ties on load
        seen[key] = name
        state[name] = t.detach().cpu().contiguous()
    return state


def _save_shards(state: dict[str, torch.Tensor], out_dir: Path) -> list[Path]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        path = out_dir / "model.safetensors"
        save_file(shards[0], str(path), metadata=meta)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = out_dir / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata=meta)
        paths.append(path)
        weight_map.update({n: path.name for n in shard})
    index = out_dir / "model.safetensors.index.json"
    total = sum(t.numel() * t.element_size() for t in state.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return [*paths, index]


def write_model(model: nn.Module, tokenizer: Any | None, out_dir: Path, fmt: str = "compressed") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu")
    state = _state_without_ties(model)
    config = getattr(model, "config").to_dict()  # noqa: B009
    for key in ("quantization_config", "auto_map"):
        config.pop(key, None)
    for exporter in EXPORTERS:  # dense: an exporter's densify_ turns its modules back into <name>.weight
        step = exporter.export_ if fmt == "compressed" else getattr(exporter, "densify_", None)
        if step is not None:
            step(model, state, config)
    _save_shards(state, out_dir)
    for exporter in EXPORTERS:  # side files, e.g. the PEFT adapter of EoRA residuals
        if fmt == "compressed" and hasattr(exporter, "write_files"):
            exporter.write_files(model, out_dir)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        try:
            gen.save_pretrained(str(out_dir))
        except Exception as exc:  # generation config is optional
            log.warning("generation_config not saved: %s", exc)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def file_table(out_dir: Path) -> list[dict[str, Any]]:
    return [
        {"path": str(p.relative_to(out_dir)), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.name != "presso.json"
    ]


def write_presso_json(out_dir: Path, payload: dict[str, Any]) -> Path:
    path = out_dir / "presso.json"
    path.write_text(json.dumps({**payload, "files": file_table(out_dir)}, indent=2, default=str))
    return path
