"""Write an artifact directory: config.json, *.safetensors, the input model's tokenizer/processor/generation
files, and, from the job, report.json and presso.json.

The model's modules are stored by the forms of compression.io.formats (``WriteOptions``: ``compressed``
keeps each form compact; ``dense`` writes plain weights in the model's dtype, for tools that read only
dense checkpoints; sparse layers are dense unless ``sparse_format="sparse-bitmask"``). An encoding
(``lossless``) is applied to the finished directory by :func:`encode`.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from presso.codec.files import sha256_file
from presso.compression.core.experts import checkpoint_renames, rename_artifact_, renamed, vllm_moe_aliases_
from presso.compression.io.formats import ENCODINGS, WriteOptions, export_state, write_side_files

log = logging.getLogger(__name__)
SHARD_BYTES = int(os.environ.get("PRESSO_SHARD_BYTES", 4 << 30))  # the artifact's shard size (tests: smaller)
__all__ = ["KEPT_FILES", "encode", "file_table", "kept_files", "sha256_file", "write_model", "write_presso_json"]

# What an artifact keeps of the input model's own files, byte for byte: tokenizer, chat template,
# processor and generation settings (transformers reads them from the artifact directory).
KEPT_FILES = (
    "tokenizer*.json", "tokenizer.model", "tokenizer*.txt", "*.jinja", "chat_template.json",
    "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "*.tiktoken",
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
    "generation_config.json",
)  # fmt: skip
_NEVER_KEPT = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".safetensors", ".gguf")


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


def module_order(names: list[str], reference: list[str]) -> list[str]:
    """``names`` ordered by their module's place in ``reference`` (the model's state_dict keys), stable within
    a module: a form's tensors (``x.weight_packed``, ``x.weight_scale``, ...) stay where ``x.weight`` was, so
    shards hold whole blocks in model order, whether the model was written at once or block by block
    (compression.io.streamwrite)."""
    rank: dict[str, int] = {}
    for i, key in enumerate(reference):
        parts = key.split(".")
        for j in range(1, len(parts)):
            rank.setdefault(".".join(parts[:j]), i)
        rank.setdefault(key, i)

    def rank_of(name: str) -> int:
        parts = name.split(".")
        for j in range(len(parts), 0, -1):
            hit = rank.get(".".join(parts[:j]))
            if hit is not None:
                return hit
        return len(reference)

    return sorted(names, key=rank_of)


def _save_shards(state: dict[str, torch.Tensor], out_dir: Path, reference: list[str] | None = None) -> list[Path]:
    if reference is not None:
        state = {n: state[n] for n in module_order(list(state), reference)}
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


def kept_files(source_dir: Path | None) -> list[Path]:
    """The input model's files an artifact keeps (top level, KEPT_FILES, never weights or pickles)."""
    if source_dir is None or not Path(source_dir).is_dir():
        return []
    return sorted(p for p in Path(source_dir).iterdir()
                  if p.is_file() and not p.name.lower().endswith(_NEVER_KEPT)
                  and any(fnmatch.fnmatch(p.name, pat) for pat in KEPT_FILES))


def write_model(model: nn.Module, tokenizer: Any | None, out_dir: Path, fmt: str = "compressed", *,
                sparse_format: str = "dense", source_dir: Path | None = None) -> list[str]:
    """Write the model files into ``out_dir``; returns the names of the forms used (compression.io.formats).

    ``source_dir``: the input model's directory; its tokenizer, chat template, processor and generation
    files are copied as they are. Without them, the tokenizer and generation config are saved from memory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    options = WriteOptions(format=fmt, sparse_format=sparse_format)
    model = model.to("cpu")
    state = _state_without_ties(model)
    config = model_config(model)
    reference = list(state)
    forms = export_state(model, state, config, options)
    renames = checkpoint_renames(model)  # MoE experts: the checkpoint's names (e.g. Mixtral's block_sparse_moe)
    rename_artifact_(state, config, renames, to_checkpoint=True)
    reference = renamed(reference, renames, to_checkpoint=True)
    vllm_moe_aliases_(config, model)  # vLLM looks a fused MoE's scheme up as <layer>.experts.0.gate_proj
    _save_shards(state, out_dir, reference)
    write_side_files(model, out_dir, options)  # e.g. the PEFT adapter of EoRA residuals
    write_model_files(model, tokenizer, out_dir, config, source_dir)
    return forms


def model_config(model: nn.Module) -> dict[str, Any]:
    """config.json of the artifact before the forms add theirs (no input quantization_config, no auto_map)."""
    config: dict[str, Any] = getattr(model, "config").to_dict()  # noqa: B009
    for key in ("quantization_config", "auto_map", "_name_or_path"):  # the last: a temporary load path
        config.pop(key, None)
    return config


def write_model_files(model: nn.Module, tokenizer: Any | None, out_dir: Path, config: dict[str, Any],
                      source_dir: Path | None) -> None:
    """config.json, the input model's kept files, and the generation config / tokenizer when not kept."""
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    kept = kept_files(source_dir)
    for path in kept:
        shutil.copy2(path, out_dir / path.name)
    names = {p.name for p in kept}
    gen = getattr(model, "generation_config", None)
    if gen is not None and "generation_config.json" not in names:
        try:
            gen.save_pretrained(str(out_dir))
        except Exception as exc:  # generation config is optional
            log.warning("generation_config not saved: %s", exc)
    if tokenizer is not None and not any(n.startswith("tokenizer") for n in names):
        tokenizer.save_pretrained(str(out_dir))


def encode(out_dir: Path, encoding: str, **options: Any) -> dict[str, Any]:
    """Apply the encoding ``encoding`` (compression.io.formats.ENCODINGS) to the finished directory."""
    return ENCODINGS[encoding].encode(out_dir, **options)


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
