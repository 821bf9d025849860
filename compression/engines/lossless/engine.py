"""Lossless engine: nothing to do to the model; the artifact's safetensors are packed after writing.

``apply_`` only records that the step ran; ``post_write`` (called by the job once the artifact
directory is complete) packs every ``*.safetensors`` in place into ``*.safetensors.pzst`` and
writes ``pack.json``. Packing is exact: ``presso.compression.codec.unpack_dir`` restores the files
byte for byte (sha256-checked).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.compression.codec import INDEX, SUFFIX, is_packed, pack_dir, read_index
from presso.compression.configs.lossless import LosslessConfig
from presso.compression.registry import register

if TYPE_CHECKING:
    from torch import nn

    from presso.compression.core.context import StepContext


@register(LosslessConfig)
class LosslessEngine:
    def apply_(self, model: nn.Module, cfg: LosslessConfig, ctx: StepContext) -> dict[str, Any]:
        ctx.report(1.0)
        return {"post_write": "pack", "chunk_bytes": cfg.chunk_bytes, "codec": "PZST/1"}

    def post_write(self, out_dir: Path, cfg: LosslessConfig) -> dict[str, Any]:
        """Pack ``out_dir`` in place; returns sizes before/after (safetensors only) and timing."""
        out_dir = Path(out_dir)
        if is_packed(out_dir):
            return {"skipped": "already packed"}
        t0 = time.perf_counter()
        pack_dir(out_dir, out_dir, chunk_bytes=cfg.chunk_bytes)
        entries = [e for e in read_index(out_dir)["files"] if e.get("packed")]
        before = sum(int(e["bytes"]) for e in entries)
        after = sum(int(e["packed_bytes"]) for e in entries)
        return {
            "files": len(entries),
            "bytes_before": before,
            "bytes_after": after,
            "ratio": after / before if before else 1.0,
            "seconds": time.perf_counter() - t0,
            "suffix": SUFFIX,
            "index": INDEX,
        }
