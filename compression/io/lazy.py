"""Load a safetensors model with its blocks on the meta device; materialize one block at a time.

``load_lazy(dir)`` builds the model from config.json with every parameter on the meta device (buffers are
built normally: rotary tables and the like are small and computed, not stored), then reads from the shards
only what lies outside the block list (embeddings, final norm, head). ``materialize_(block, prefix, reader)``
reads one block's tensors (compression.io.shards.ShardReader) and ``release_(block)`` puts it back on
the meta device, so host memory holds the outside tensors plus the blocks being worked on. A GGUF input is
read the same way, through compression.io.ggufsource.GgufSource: both are a ``TensorSource``.

The same rules as :func:`compression.io.loading.load_model`: pickles refused, code keys stripped from
config.json, ``max_params`` from the headers, never ``trust_remote_code``. Dtypes as ``from_pretrained``
with ``dtype="auto"`` chooses them: config.json's dtype, else the checkpoint's first floating tensor's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from presso.compression.errors import ModelLoadError, ModelTooLarge, UnsupportedModel
from presso.compression.io.loading import (
    LoadedModel,
    _load_tokenizer,
    _refuse_pickles,
    auto_class,
    declared_params,
    gguf_input,
    safetensors_header,
    sanitize_config_,
)
from presso.compression.io.shards import ShardReader

log = logging.getLogger(__name__)
_QUANT_ATTRS = ("presso_quant", "presso_format")


class TensorSource(Protocol):
    """Where a streamed model's tensors come from, one at a time, by parameter name: the safetensors shards
    (compression.io.shards.ShardReader) or one GGUF file (compression.io.ggufsource.GgufSource)."""

    def __contains__(self, name: str) -> bool: ...

    def names(self) -> list[str]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def close(self) -> None: ...


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside is moved to the meta device (buffers are not)."""
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        p = self._parameters[name]
        if p is not None and p.device.type != "meta":
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def checkpoint_bytes(model_dir: Path) -> int:
    """Bytes of tensor data the safetensors files declare (headers only)."""
    return sum(v["data_offsets"][1] - v["data_offsets"][0]
               for f in Path(model_dir).glob("*.safetensors") for v in safetensors_header(f).values())


def _auto_dtype(config: Any, reader: ShardReader) -> torch.dtype:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if isinstance(dtype, torch.dtype):
        return dtype
    for name in reader.names():
        t = reader.get(name)
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _set_tensor_(root: nn.Module, name: str, value: torch.Tensor, is_param: bool) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    if is_param:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


def trim_host_memory() -> None:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``): without it the freed blocks'
    buffers stay in the process's resident set, fragmented, and it grows block after block."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def read_like(reader: TensorSource, key: str, like: torch.Tensor) -> torch.Tensor:
    """Tensor ``key`` from the shards, in ``like``'s dtype (floating point), checked against its shape."""
    return _read(reader, key, like)


def _read(reader: TensorSource, key: str, like: torch.Tensor) -> torch.Tensor:
    t = reader.get(key)
    if tuple(t.shape) != tuple(like.shape):
        raise ModelLoadError(f"{key}: checkpoint shape {tuple(t.shape)} != model shape {tuple(like.shape)}")
    return t.to(like.dtype) if t.is_floating_point() and like.is_floating_point() else t


def materialize_(module: nn.Module, prefix: str, reader: TensorSource, *, skip: str | None = None) -> None:
    """Read ``module``'s parameters (and stored buffers) named ``prefix.<name>`` from the shards, keeping ties;
    names under ``skip`` (the block list, when materializing the rest of the model) stay on the meta device."""
    done: dict[int, nn.Parameter] = {}
    for name, p in list(module.named_parameters(remove_duplicate=False)):
        if skip is not None and name.startswith(skip + "."):
            continue
        key = f"{prefix}.{name}" if prefix else name
        if id(p) in done:
            _relink_(module, name, done[id(p)])
            continue
        if p.device.type != "meta" or key not in reader:
            continue  # a tied weight whose twin is stored (re-tied by the caller) or missing (checked by it)
        _set_tensor_(module, name, _read(reader, key, p), True)
        done[id(p)] = module.get_parameter(name)
    for name, b in list(module.named_buffers()):
        if skip is not None and name.startswith(skip + "."):
            continue
        key = f"{prefix}.{name}" if prefix else name
        if key in reader:
            _set_tensor_(module, name, _read(reader, key, b), False)


def _relink_(root: nn.Module, name: str, param: nn.Parameter) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    owner._parameters[leaf] = param


def release_(module: nn.Module) -> None:
    """Put ``module``'s parameters back on the meta device and drop the codes engines attached to it."""
    for sub in module.modules():
        for leaf, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[leaf] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
        for attr in _QUANT_ATTRS:
            if hasattr(sub, attr):
                delattr(sub, attr)


def missing_parameters(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.device.type == "meta"]


def load_lazy(path: Path, *, max_params: int | None = None
              ) -> tuple[LoadedModel, TensorSource]:
    """The model with its block list on the meta device (found by compression.core.layout) and the source of
    its tensors (its shards, or its GGUF file as compression.io.loading.load_model picks it). Everything
    outside the blocks is read now."""
    from transformers import AutoConfig

    from presso.compression.core.layout import find_layout

    path = Path(path)
    gguf = gguf_input(path)
    if gguf is not None:
        from presso.compression.io.ggufsource import load_lazy_gguf

        return load_lazy_gguf(gguf, max_params=max_params)
    if path.is_file():
        path = path.parent
    _refuse_pickles(path)
    if not any(path.glob("*.safetensors")) or not (path / "config.json").exists():
        raise ModelLoadError("streaming needs config.json and *.safetensors weights")
    n = declared_params(path)
    if max_params is not None and n > max_params:
        raise ModelTooLarge(f"model declares {n:,} parameters, over the cap of {max_params:,}")
    notes = [f"removed config key {k!r}" for k in sanitize_config_(path / "config.json")]
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:
        raise UnsupportedModel(f"config.json not understood by transformers: {exc}") from exc
    reader = ShardReader(path)
    cls, kind = auto_class(config)
    dtype = _auto_dtype(config, reader)
    with parameters_on_meta():
        model = cls.from_config(config, dtype=dtype)
    model.eval()
    layout = find_layout(model)
    materialize_(model, "", reader, skip=layout.prefix)
    _tie_outside_(model)
    _generation_config_(model, path)
    missing = [n for n in missing_parameters(model) if not n.startswith(layout.prefix + ".")]
    if missing:
        raise ModelLoadError(f"weights missing from the checkpoint: {', '.join(missing[:5])}")
    notes.append("streamed: blocks read one at a time from the shards")
    return LoadedModel(model=model, tokenizer=_load_tokenizer(path), kind=kind, source_format="safetensors",
                       notes=notes), reader


def _tie_outside_(model: Any) -> None:
    """Re-tie weights that from_config tied (lm_head <- embed_tokens) after the twin was read."""
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "get_output_embeddings"):
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
        if out is not None and inp is not None and out.weight.device.type == "meta":
            out.weight = inp.weight


def _generation_config_(model: Any, path: Path) -> None:
    """The generation config ``from_pretrained`` would set (its file, else one from config.json's keys)."""
    from transformers import GenerationConfig

    if not (hasattr(model, "can_generate") and model.can_generate()):
        return
    try:
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    except OSError:
        model.generation_config = GenerationConfig.from_pretrained(str(path), config_file_name="config.json",
                                                                   _from_model_config=True)
