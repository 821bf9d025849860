"""Load a model directory (or one .gguf / .safetensors file) without ever unpickling.

Accepted weights: *.safetensors (with config.json) or one *.gguf file (dequantized to float).
Pickle checkpoints are refused; code-pointing config keys are stripped; trust_remote_code is
never set.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from presso.compression.errors import ModelLoadError, ModelTooLarge, UnsafeModel, UnsupportedModel

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
CODE_KEYS = ("auto_map", "custom_pipelines")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any | None
    kind: str  # "causal_lm" | "encoder"
    source_format: str  # "safetensors" | "gguf"
    notes: list[str] = field(default_factory=list)


def _refuse_pickles(root: Path) -> None:
    bad = sorted(p.name for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if bad and not any(root.rglob("*.safetensors")):
        raise UnsafeModel(
            f"pickle checkpoints are never loaded ({', '.join(bad[:5])}); provide safetensors or GGUF weights"
        )


def sanitize_config_(config_path: Path) -> list[str]:
    """Drop keys that point at remote code. Returns the keys removed."""
    data = json.loads(config_path.read_text())
    removed = [k for k in CODE_KEYS if k in data]
    for k in removed:
        data.pop(k)
    if removed:
        config_path.write_text(json.dumps(data, indent=2))
    return removed


def safetensors_header(path: Path) -> dict[str, Any]:
    """A safetensors file's tensor entries (compression.io.shards.read_header), failing as a load error."""
    from presso.compression.io.shards import read_header

    try:
        return read_header(path)[0]
    except ValueError as exc:  # truncated, an incredible header size, or corrupt JSON
        raise ModelLoadError(str(exc) if str(exc).startswith(path.name) else f"{path.name}: corrupt safetensors "
                             "header") from exc


def declared_params(model_dir: Path) -> int:
    """Parameters declared by the safetensors headers (no tensor data read)."""
    total = 0
    for f in model_dir.glob("*.safetensors"):
        for v in safetensors_header(f).values():
            numel = 1
            for d in v["shape"]:
                numel *= int(d)
            total += numel
    return total


def vocab_size(config: Any) -> int | None:
    """The vocabulary size of ``config``'s language model (a VLM's is on its text config)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return int(size) if size is not None else None


def auto_class(config: Any) -> tuple[Any, str]:
    """The Auto class that builds ``config``'s model and its kind: (AutoModelForCausalLM, "causal_lm"),
    (AutoModelForImageTextToText, "causal_lm") for a vision-language model (its logits from text alone are a
    causal LM's; the vision tower is kept), or (AutoModel, "encoder")."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    archs = getattr(config, "architectures", None) or []
    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and (
            not archs or any(a.endswith("ForConditionalGeneration") for a in archs)):
        return AutoModelForImageTextToText, "causal_lm"

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False):
        archs = getattr(config, "architectures", None) or []
        if not archs or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            return AutoModelForCausalLM, "causal_lm"
    return AutoModel, "encoder"


def _load_tokenizer(path: Path, **kw: Any) -> Any | None:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, **kw)
    except Exception as exc:  # a model without tokenizer files is still compressible with token-id data
        log.warning("no tokenizer loaded from %s: %s", path, exc)
        return None


def load_gguf(path: Path, dtype: torch.dtype | None = None) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype or torch.float32, trust_remote_code=False
        )
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: cannot load GGUF: {exc}") from exc
    # The dequantized model still carries the GGUF quantization config, which blocks saving.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tok = _load_tokenizer(path.parent, gguf_file=path.name)
    return LoadedModel(model=model.eval(), tokenizer=tok, kind="causal_lm", source_format="gguf")


def gguf_input(path: Path) -> Path | None:
    """The GGUF file ``load_model`` reads for ``path``: ``path`` itself, else a directory's first *.gguf
    when it holds no safetensors; None when the input is not GGUF."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_file():
        path = path.parent
    ggufs = sorted(path.glob("*.gguf"))
    return ggufs[0] if ggufs and not any(path.glob("*.safetensors")) else None


def load_model(path: Path, *, max_params: int | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a directory with config.json + *.safetensors, a lone .safetensors file's directory, or a .gguf."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeModel(f"{path.name}: pickle checkpoints are never loaded; use safetensors or GGUF")
    gguf = gguf_input(path)
    if gguf is not None:
        return load_gguf(gguf, dtype)
    if path.is_file():
        path = path.parent
    _refuse_pickles(path)
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError("no *.safetensors or *.gguf weights found")
    if not (path / "config.json").exists():
        raise ModelLoadError("config.json is missing next to the safetensors weights")
    n = declared_params(path)
    if max_params is not None and n > max_params:
        raise ModelTooLarge(f"model declares {n:,} parameters, over the cap of {max_params:,}")
    notes = [f"removed config key {k!r}" for k in sanitize_config_(path / "config.json")]
    return _load_safetensors_dir(path, dtype, notes)


def _load_safetensors_dir(path: Path, dtype: torch.dtype | None, notes: list[str]) -> LoadedModel:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:
        raise UnsupportedModel(f"config.json not understood by transformers: {exc}") from exc
    cls, kind = auto_class(config)
    # transformers would fall back to *.bin for missing shards: load from a copy holding safe files only.
    with tempfile.TemporaryDirectory(prefix="presso-load-") as tmp:
        safe = Path(tmp)
        for f in path.iterdir():
            if f.is_file() and f.suffix.lower() not in PICKLE_SUFFIXES:
                (safe / f.name).symlink_to(f.resolve())
        try:
            model = cls.from_pretrained(
                str(safe), config=config, dtype=dtype or "auto", trust_remote_code=False, use_safetensors=True
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load the safetensors weights: {exc}") from exc
        tok = _load_tokenizer(safe)
    return LoadedModel(model=model.eval(), tokenizer=tok, kind=kind, source_format="safetensors", notes=notes)

