"""Typed, torch-free parameter models of every compression method.

Each module here defines ``StepConfig`` subclasses; importing this package registers
them all in :data:`presso.compression.configs.base.CONFIGS`.
"""

from presso.compression.configs import experts, formats, lossless, lowrank, pruning, quantization, transforms  # noqa: F401
from presso.compression.configs.base import CONFIGS, StepConfig

__all__ = ["CONFIGS", "StepConfig"]
