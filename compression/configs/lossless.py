"""The lossless byte-grouped codec as a recipe step."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from presso.compression.configs.base import StepConfig


class LosslessConfig(StepConfig):
    method: Literal["lossless"] = "lossless"
    chunk_bytes: int = Field(default=1 << 20, ge=1 << 12, le=1 << 28, description="Bytes per coded chunk.")
    lossy: ClassVar[bool] = False
    summary: ClassVar[str] = "Byte-grouped entropy coding of the artifact's safetensors (exact round trip)."
