"""The registry of an artifact's on-disk forms: every ``Format`` and ``Encoding``, in one place.

``FORMATS`` is the one ordered list the writer (compression.io.artifact.write_model) and the reader
(``presso.load``) both walk: exporting, pack-quantized claims its modules before sparse-bitmask looks at
what is left; loading, factorized modules are built before pack-quantized tensors fill them. ``DENSE`` is
the form of everything no format claims. ``ENCODINGS`` are applied to the finished directory.

| form | module | loaders (tested: tests/compression/io/test_format_matrix.py) |
|---|---|---|
| dense | formats.base.Dense | presso.load, transformers, peft, vllm* |
| pack-quantized | formats.quantized.PackQuantized | presso.load, transformers, peft, vllm* |
| float-, int-, nvfp4-pack-, mxfp4-pack-quantized | formats.ctquant.CT_FORMATS | presso.load, transformers, vllm* |
| kv-cache-fp8 (recipe kv_cache) | formats.kvcache.KVCacheScales | presso.load, vllm* (transformers: weights only) |
| sparse-bitmask (opt-in) | formats.sparse.SparseBitmask | presso.load (transformers refuses) |
| factorized | formats.lowrank.Factorized | presso.load (transformers refuses) |
| lora-adapter (EoRA) | formats.lowrank.LoraAdapter | presso.load, peft (transformers reads the base) |
| lossless encoding | formats.lossless.Lossless | presso.load (after unpack: the inner forms') |

(*) declared from the compressed-tensors spec, run only where vLLM is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.compression.io.formats.base import (
    LOADERS,
    ArtifactReader,
    Dense,
    Format,
    LoadContext,
    WriteOptions,
    ct_config,
    mark_presso_only,
)
from presso.compression.io.formats.ctquant import CT_FORMATS
from presso.compression.io.formats.kvcache import KVCacheScales
from presso.compression.io.formats.lossless import Encoding, Lossless
from presso.compression.io.formats.lowrank import Factorized, LoraAdapter
from presso.compression.io.formats.quantized import PackQuantized
from presso.compression.io.formats.sparse import SparseBitmask

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "DENSE", "ENCODINGS", "FORMATS", "LOADERS", "ArtifactReader", "Encoding", "Format", "LoadContext",
    "WriteOptions", "artifact_loaders", "ct_config", "encoding_of", "export_state", "formats_in", "open_artifact",
    "write_side_files",
]

# the deployment formats (CT_FORMATS) after pack-quantized: they join its quantization_config when both are used
# the KV-cache scales last: they join whatever quantization_config the weight forms wrote
FORMATS: tuple[Format, ...] = (Factorized(), LoraAdapter(), PackQuantized(), *CT_FORMATS, SparseBitmask(),
                               KVCacheScales())
DENSE = Dense()
ENCODINGS: dict[str, Encoding] = {e.name: e for e in (Lossless(),)}


def export_state(model: nn.Module, state: dict[str, torch.Tensor], config: dict[str, Any],
                 options: WriteOptions) -> list[str]:
    """Turn ``state``/``config`` into the artifact's forms; returns the names of the forms used."""
    if options.format == "dense":
        for fmt in FORMATS:
            fmt.densify(model, state, config)
        return [DENSE.name]
    used = [fmt for fmt in FORMATS if fmt.export(model, state, config, options)]
    refused = [fmt.name for fmt in used if fmt.presso_only]
    if refused:
        mark_presso_only(config, refused)
    return [DENSE.name, *(fmt.name for fmt in used)]


def write_side_files(model: nn.Module, out_dir: Path, options: WriteOptions) -> None:
    for fmt in FORMATS:
        fmt.write_files(model, out_dir, options)


def encoding_of(root: Path) -> Encoding | None:
    return next((e for e in ENCODINGS.values() if e.present(Path(root))), None)


def open_artifact(root: Path, **kw: Any) -> LoadContext:
    """A LoadContext on the artifact directory ``root`` (plain or encoded); ``kw``: dtype, packed, adapter."""
    reader = ArtifactReader(Path(root), encoding_of(Path(root)))
    return LoadContext(reader=reader, config=reader.json("config.json"), **kw)


def formats_in(ctx: LoadContext) -> list[Format]:
    """The forms the artifact holds, in FORMATS order (DENSE always)."""
    return [DENSE, *(fmt for fmt in FORMATS if fmt.present(ctx))]


def artifact_loaders(root: Path) -> dict[str, list[str]]:
    """``loaders``: the loaders that read the whole artifact correctly (every form it holds supports them);
    ``base_loaders``: those that read its base without a side form (EoRA's adapter), as documented."""
    ctx = open_artifact(root)
    present = formats_in(ctx)
    readers = [(fmt.loaders_for(ctx), fmt.base_loaders) for fmt in present]
    full = [name for name in LOADERS if all(name in loaders for loaders, _ in readers)]
    base = [name for name in LOADERS if name not in full
            and all(name in loaders or name in base_only for loaders, base_only in readers)]
    if ctx.reader.encoding is not None:
        full = [name for name in full if name in ctx.reader.encoding.loaders]
        base = []
    return {"loaders": full, "base_loaders": base}

