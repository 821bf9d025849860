"""A GGUF file read one tensor at a time, under the names transformers gives its parameters.

``GgufSource`` is the GGUF ``TensorSource`` (compression.io.lazy) of a streamed job: ``get(name)`` reads one
tensor's stored bytes (quantized blocks or floats), dequantizes them with ``gguf.dequantize`` and undoes
llama.cpp's layout changes with transformers' own tensor processor (``TENSOR_PROCESSORS``: the Llama q/k row
permutation and the like), then casts to the model's dtype: the steps, in the order, of transformers' GGUF
loader (``load_gguf_checkpoint(return_tensors=True)``), so each tensor is bit for bit the one
``from_pretrained(gguf_file=...)`` loads (tests/compression/io/test_ggufsource.py). The GGUF -> transformers
names come from transformers' ``get_gguf_hf_weights_map`` on the meta-device model; the config from
``AutoConfig.from_pretrained(gguf_file=...)``, as the in-memory loader builds it.

Like ``ShardReader``, the bytes are read with a positional read, not through the file's memory map
(``GGUFReader`` maps the file for its header and tensor table; its data pages are never touched), so a read
tensor leaves the process's resident set once freed.

Streamed: architectures whose GGUF tensors map one to one onto parameters. Not streamed (read whole, in
memory): those whose processor merges or splits tensors (MoE experts: qwen2moe, qwen3moe, gpt-oss,
minimax-m2; gpt2's head) and those transformers loads through its newer conversion path (qwen35, lfm2).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from presso.compression.errors import ModelLoadError

log = logging.getLogger(__name__)
# processors that merge, split or add tensors (their ``process`` returns no name): not one tensor per parameter
_MERGING = ("Qwen2MoeTensorProcessor", "GptOssTensorProcessor", "MiniMaxM2TensorProcessor", "GPT2TensorProcessor")
# the dtype the in-memory loader dequantizes a GGUF to (compression.io.loading.load_gguf)
GGUF_DTYPE = torch.float32


class StoredTensor(NamedTuple):
    """One tensor of the file as ``GGUFReader`` types it: where its bytes are, and the numpy view of them
    transformers hands ``gguf.dequantize`` (floats, or uint8 rows of quantized blocks)."""

    name: str
    qtype: Any  # gguf.GGMLQuantizationType
    offset: int  # from the start of the file
    nbytes: int
    elements: int
    dtype: np.dtype
    shape: tuple[int, ...]


def _reader(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as exc:  # not GGUF, truncated, an unknown version or type
        raise ModelLoadError(f"{path.name}: cannot read GGUF: {exc}") from exc


def tensor_table(path: Path) -> tuple[str, list[StoredTensor]]:
    """The file's architecture and tensor table. The reader (its parsed metadata: a few hundred MB for a large
    vocabulary, held briefly) is dropped on return; its memory map's data pages are never touched."""
    from transformers.modeling_gguf_pytorch_utils import read_field

    reader = _reader(path)
    arch = read_field(reader, "general.architecture")
    if not arch:
        raise ModelLoadError(f"{path.name}: GGUF metadata has no general.architecture")
    table = [StoredTensor(t.name, t.tensor_type, int(t.data_offset), int(t.n_bytes), int(t.n_elements),
                          t.data.dtype, tuple(t.data.shape)) for t in reader.tensors]
    return str(arch[0]), table


def _processor_class(arch: str) -> Any:
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    return TENSOR_PROCESSORS.get(arch, TensorProcessor)


def _why_not(arch: str) -> str | None:
    from transformers.integrations.gguf import is_gguf_arch_supported

    if is_gguf_arch_supported(arch):
        return f"GGUF architecture {arch!r} is loaded through transformers' conversion ops (read whole)"
    if _processor_class(arch).__name__ in _MERGING:
        return f"GGUF architecture {arch!r} merges or splits tensors on load (MoE experts; read whole)"
    return None


def not_streamable(path: Path) -> str | None:
    """Why this GGUF file cannot be read one tensor per parameter (None: it can). Reads the metadata only
    (transformers' fast reader, string arrays skipped)."""
    from transformers.integrations.gguf import read_gguf_metadata

    try:
        metadata, _ = read_gguf_metadata(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: cannot read GGUF: {exc}") from exc
    return _why_not(str(metadata["general.architecture"]))


def gguf_stats(path: Path) -> tuple[int, int]:
    """(parameters, bytes once dequantized to GGUF_DTYPE) the file's tensor table declares; no data read."""
    from transformers.integrations.gguf import GgufHeader

    try:  # fast (string arrays skipped), but it knows fewer tensor types than gguf's reader
        n = sum(math.prod(t.shape) for t in GgufHeader.from_file(str(path)).tensors)
    except ValueError:
        n = sum(int(t.n_elements) for t in _reader(path).tensors)
    return n, n * GGUF_DTYPE.itemsize


class GgufSource:
    """Parameter name -> the GGUF tensor it is loaded from; ``get`` reads, dequantizes and converts one.
    ``table`` and ``config`` (transformers' GGUF config dict, which its tensor processor reads: the head
    counts of the q/k permutation) are read before the model is built (load_lazy_gguf), so the metadata's
    parsing peaks while little else is resident."""

    def __init__(self, path: Path, model: torch.nn.Module, arch: str, table: list[StoredTensor],
                 config: dict[str, Any], dtype: torch.dtype = GGUF_DTYPE) -> None:
        from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

        self.path, self.dtype = Path(path), dtype
        why = _why_not(arch)
        if why:
            raise ModelLoadError(why)
        self.processor = _processor_class(arch)(config=config)
        self.mapping: dict[str, str] = get_gguf_hf_weights_map(model, self.processor)
        self.where = {self.mapping[t.name]: t for t in table if t.name in self.mapping}
        unmapped = [t.name for t in table if t.name not in self.mapping]
        if unmapped:  # transformers skips them too
            log.info("GGUF tensors without a parameter, skipped as transformers skips them: %s", unmapped[:5])
        self._fd: int | None = os.open(self.path, os.O_RDONLY)

    def __contains__(self, name: object) -> bool:
        return name in self.where

    def names(self) -> list[str]:
        return list(self.where)

    def _raw(self, t: StoredTensor) -> np.ndarray:
        """The tensor's stored bytes, typed as ``GGUFReader`` types them, read with a positional read."""
        if self._fd is None:
            raise ModelLoadError(f"{self.path.name}: the GGUF source is closed")
        n = t.nbytes
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = os.preadv(self._fd, [view[got:]], t.offset + got)
            if k <= 0:
                raise ModelLoadError(f"{self.path.name}: truncated data of {t.name}")
            got += k
        return np.frombuffer(buf, dtype=t.dtype).reshape(t.shape)

    def get(self, name: str) -> torch.Tensor:
        from gguf import dequantize

        t = self.where[name]
        weights = dequantize(self._raw(t), t.qtype)
        parsed: dict[str, dict[str, Any]] = {"tensors": {}}
        result = self.processor.process(weights=weights, name=t.name, tensor_key_mapping=self.mapping,
                                        parsed_parameters=parsed)
        if result.name != t.name or parsed["tensors"]:
            raise ModelLoadError(f"{t.name}: transformers merges this GGUF tensor with others; not streamed")
        # transformers copies (np.copy); dequantize's output is a fresh array already, so only a strided view
        # (the q/k permutation) is made contiguous: the same values, one float copy fewer at peak
        return torch.from_numpy(np.ascontiguousarray(result.weights)).to(self.dtype)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def load_lazy_gguf(path: Path, *, max_params: int | None = None) -> tuple[Any, GgufSource]:
    """The GGUF model with every parameter on the meta device but those outside the block list (read now),
    and its ``GgufSource``: ``compression.io.lazy.load_lazy`` for one GGUF file."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from presso.compression.core.layout import find_layout
    from presso.compression.errors import ModelTooLarge, UnsupportedModel
    from presso.compression.io.lazy import (
        _tie_outside_,
        materialize_,
        missing_parameters,
        parameters_on_meta,
        trim_host_memory,
    )
    from presso.compression.io.loading import LoadedModel, _load_tokenizer, auto_class

    arch, table = tensor_table(path)
    why = _why_not(arch)
    if why:
        raise ModelLoadError(why)
    n = sum(t.elements for t in table)
    if max_params is not None and n > max_params:
        raise ModelTooLarge(f"model declares {n:,} parameters, over the cap of {max_params:,}")
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        processor_config = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    except Exception as exc:
        raise UnsupportedModel(f"{path.name}: GGUF metadata not understood by transformers: {exc}") from exc
    tok = _load_tokenizer(path.parent, gguf_file=path.name)
    trim_host_memory()  # the metadata's parsing is over: give its heap back before the model is built
    cls, kind = auto_class(config)
    with parameters_on_meta():
        model = cls.from_config(config, dtype=GGUF_DTYPE)
    model.eval()
    source = GgufSource(path, model, arch, table, processor_config)
    layout = find_layout(model)
    materialize_(model, "", source, skip=layout.prefix)
    _tie_outside_(model)
    missing = [m for m in missing_parameters(model) if not m.startswith(layout.prefix + ".")]
    if missing:
        source.close()
        raise ModelLoadError(f"weights missing from the GGUF file: {', '.join(missing[:5])}")
    notes = ["streamed: blocks read one tensor at a time from the GGUF file"]
    return LoadedModel(model=model, tokenizer=tok, kind=kind, source_format="gguf", notes=notes), source

