"""Lossless engine: the recipe step ``lossless`` is the artifact's ``lossless`` encoding.

It does nothing to the model. A recipe's last step ``{"method": "lossless"}`` is kept for compatibility:
the job reads it as ``output.encoding = "lossless"`` (with the step's ``chunk_bytes``), and the encoding
(compression.io.formats.lossless) packs every ``*.safetensors`` of the written artifact into
``*.safetensors.pzst`` + ``pack.json``, exactly (sha256-checked on restore).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from presso.compression.configs.lossless import LosslessConfig
from presso.compression.registry import register

if TYPE_CHECKING:
    from torch import nn

    from presso.compression.core.context import StepContext


@register(LosslessConfig)
class LosslessEngine:
    def apply_(self, model: nn.Module, cfg: LosslessConfig, ctx: StepContext) -> dict[str, Any]:
        ctx.report(1.0)
        return {"encoding": "lossless", "chunk_bytes": cfg.chunk_bytes, "codec": "PZST/1"}
