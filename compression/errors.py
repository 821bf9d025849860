"""Typed domain errors. Each carries a stable machine-readable ``code``.

A ``CompressionError`` is the user's fault or the model's (bad input, unsupported
layout, gate missed): the job fails with that code and is not retried.
"""

from __future__ import annotations

from typing import Any


class CompressionError(Exception):
    code = "compression_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class InvalidRecipe(CompressionError):
    code = "invalid_recipe"


class UnsupportedModel(CompressionError):
    code = "unsupported_model"


class UnsafeModel(CompressionError):
    """Pickle checkpoints, code-pointing configs, traversal names."""

    code = "unsafe_model"


class ModelLoadError(CompressionError):
    code = "model_load_error"


class ModelTooLarge(CompressionError):
    code = "model_too_large"


class CalibrationRequired(CompressionError):
    code = "calibration_required"


class CalibrationError(CompressionError):
    code = "calibration_error"


class NoTargetModules(CompressionError):
    code = "no_target_modules"


class AccuracyGateFailed(CompressionError):
    code = "accuracy_gate"


class CodecError(CompressionError):
    """A lossless stream that is corrupt, truncated or of an unknown version."""

    code = "codec_error"


class TargetUnreachable(CompressionError):
    """A target job's floor cannot be met under its budget (the message names the best reached)."""

    code = "target_unreachable"


class InvalidTaskFile(CompressionError):
    """A multiple-choice task file (evaluation.tasks) that is not JSONL of {context, choices, gold}."""

    code = "invalid_task_file"
