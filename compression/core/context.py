"""What a step's engine gets besides the model and its config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from presso.compression.core.calibrows import CalibrationExtras

ProgressFn = Callable[[str, float], None]


class Cancelled(Exception):
    """Raised inside an engine when the caller asked to stop."""


def _no_progress(stage: str, fraction: float) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class StepContext:
    calibration: torch.Tensor | None = None  # [n, seq_len] token ids
    # Image+text calibration of a VLM: the processor's other tensors (pixel_values, ...) per row of `calibration`.
    calibration_extras: CalibrationExtras | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: ProgressFn = _no_progress
    should_stop: Callable[[], bool] = _never
    seed: int = 0
    stage: str = "compress"
    batch_size: int = 8
    # Weights of every Linear before the first lossy step: name -> [out, in] on CPU (EoRA needs them).
    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    # Streaming (compression.io.streamwrite): blocks start on the meta device; run_blockwise asks it to read
    # each block before its work and hands it each finished block to write and release. None: in memory.
    stream: Any = None
    # Several ranks (compression.core.distributed.Ranks): set by the pipeline only for an engine that splits its
    # work (``distributed = True``); run_blockwise then captures and forwards this rank's batches only.
    dist: Any = None
    # Rank 0 of several: tells the other ranks which recipe the next compress() runs (compression.multirank).
    announce: Callable[[Any], None] | None = None

    def batch_extras(self, index: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The extra model inputs of calibration batch ``index`` (of ``batch_size`` rows), on ``device``."""
        x = self.calibration_extras
        if x is None or self.calibration is None or not x.belongs_to(self.calibration):
            return {}
        return x.batch(index * self.batch_size, (index + 1) * self.batch_size, self.device, dtype)

    def report(self, fraction: float) -> None:
        if self.should_stop():
            raise Cancelled("job cancelled")
        self.progress(self.stage, min(max(fraction, 0.0), 1.0))


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
