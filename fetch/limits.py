"""Caps and allowances for one fetch. Immutable; built once per job from settings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from presso.fetch.errors import FetchTimeout, TooLarge

GiB = 2**30


def _tuple(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, str | Path):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class FetchLimits:
    """What a fetch may do.

    ``allow_private_hosts`` lists CIDR blocks (``127.0.0.0/8``, ``::1/128``) or exact host names
    (``minio``) that are reachable even though they resolve to non-public addresses; empty by
    default, so loopback, private, link-local, CGNAT, multicast and reserved addresses are refused.
    ``allow_http`` permits plain ``http://`` (tests, in-cluster mirrors); never on by default.
    S3 credentials come from boto3's default chain (env, profile, instance role).
    """

    max_total_bytes: int = 64 * GiB
    max_file_bytes: int = 32 * GiB
    max_files: int = 256
    max_params: int | None = None
    timeout_s: float = 3600.0
    allowed_file_roots: tuple[Path, ...] = ()
    allow_private_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    hf_cache_dir: Path | None = None
    max_redirects: int = 5
    max_header_bytes: int = 100 * 2**20
    max_json_bytes: int = 64 * 2**20
    chunk_bytes: int = 1 << 20
    s3_max_concurrency: int = 8  # parallel ranged GETs of one S3 object (boto3's transfer manager)
    s3_part_bytes: int = 16 * 2**20  # objects from this size on are fetched in ranged parts of this size

    def __post_init__(self) -> None:
        roots = tuple(Path(p).expanduser().resolve() for p in _tuple(self.allowed_file_roots))
        object.__setattr__(self, "allowed_file_roots", roots)
        hosts = tuple(str(h) for h in _tuple(self.allow_private_hosts))
        object.__setattr__(self, "allow_private_hosts", hosts)
        if self.hf_cache_dir is not None:
            object.__setattr__(self, "hf_cache_dir", Path(self.hf_cache_dir))
        if self.s3_max_concurrency < 1 or self.s3_part_bytes < 1:
            raise ValueError("s3_max_concurrency and s3_part_bytes must be >= 1")
        for name in ("max_total_bytes", "max_file_bytes", "max_files", "max_redirects"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> FetchLimits:
        """Build from ``presso.app.core.settings.Settings`` (duck-typed: this package does not import app)."""
        max_bytes = int(getattr(settings, "max_model_bytes", cls.max_total_bytes))
        values: dict[str, Any] = {
            "max_total_bytes": max_bytes,
            "max_file_bytes": max_bytes,
            "max_files": int(getattr(settings, "max_model_files", cls.max_files)),
            "max_params": getattr(settings, "max_model_params", None),
            "timeout_s": float(getattr(settings, "fetch_timeout_s", cls.timeout_s)),
            "allowed_file_roots": tuple(getattr(settings, "allowed_file_roots", ()) or ()),
            "s3_endpoint_url": getattr(settings, "s3_endpoint_url", None),
            "s3_region": getattr(settings, "s3_region", None),
            "s3_max_concurrency": int(getattr(settings, "fetch_s3_max_concurrency", cls.s3_max_concurrency)),
            "s3_part_bytes": int(getattr(settings, "fetch_s3_part_mb", cls.s3_part_bytes >> 20)) << 20,
        }
        values.update(overrides)
        return cls(**values)


class Budget:
    """Running byte count and the overall deadline of one fetch (mutable, one per fetch call)."""

    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.timeout_s
        self.total_bytes = 0

    def remaining_s(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FetchTimeout(f"fetch exceeded its time limit of {self.limits.timeout_s:g} s")
        return left

    def check_declared(self, name: str, size: int | None) -> None:
        """Refuse early when a listing or Content-Length already says a file is over the caps."""
        if size is None:
            return
        if size > self.limits.max_file_bytes:
            raise TooLarge(f"{name} is {size} bytes, over the per-file limit of {self.limits.max_file_bytes}")
        if self.total_bytes + size > self.limits.max_total_bytes:
            raise TooLarge(f"model is over the total size limit of {self.limits.max_total_bytes} bytes")

    def consume(self, name: str, file_bytes: int, chunk: int) -> None:
        """Account ``chunk`` more bytes of ``name`` (already ``file_bytes`` long including it)."""
        self.total_bytes += chunk
        if file_bytes > self.limits.max_file_bytes:
            raise TooLarge(f"{name} exceeded the per-file limit of {self.limits.max_file_bytes} bytes")
        if self.total_bytes > self.limits.max_total_bytes:
            raise TooLarge(f"download exceeded the total size limit of {self.limits.max_total_bytes} bytes")
        self.remaining_s()
