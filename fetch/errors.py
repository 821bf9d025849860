"""Fetch errors. Each has a stable ``code`` and a user-facing ``message``.

``FetchError`` subclasses :class:`presso.compression.errors.CompressionError`: the user's input is at fault
(bad URI, hostile or oversized model), so the job fails with that code and is not retried.
``TransientFetchError`` is deliberately *not* a ``CompressionError``: a reset connection or a 5xx is
the network's fault, and the worker retries the job with backoff.
"""

from __future__ import annotations

from typing import Any

from presso.compression.errors import CompressionError, ModelLoadError, ModelTooLarge, UnsafeModel


class FetchError(CompressionError):
    code = "fetch_failed"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)


class InvalidURI(FetchError):
    code = "invalid_uri"


class URINotAllowed(FetchError):
    code = "uri_not_allowed"


class NotFoundError(FetchError):
    code = "not_found"


class UnsafeModelFile(FetchError, UnsafeModel):
    code = "unsafe_model"


class ModelTooLargeError(FetchError, ModelTooLarge):
    code = "model_too_large"


class ModelFileCorrupt(FetchError, ModelLoadError):
    code = "model_load_error"


class TooLarge(FetchError):
    code = "too_large"


class FetchTimeout(FetchError):
    code = "timeout"


class TransientFetchError(Exception):
    """Connection reset, 5xx, throttling: worth a retry. Not a domain error."""

    code = "fetch_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


__all__ = [
    "FetchError",
    "FetchTimeout",
    "InvalidURI",
    "ModelFileCorrupt",
    "ModelTooLargeError",
    "NotFoundError",
    "TooLarge",
    "TransientFetchError",
    "URINotAllowed",
    "UnsafeModelFile",
]
