"""One fetch plan for every source: select files, pre-check sizes and parameters, download, validate."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from presso.fetch.errors import ModelTooLargeError, TooLarge, UnsafeModelFile
from presso.fetch.limits import Budget, FetchLimits
from presso.fetch.model_files import (
    check_data_size,
    check_name,
    header_length,
    parse_header,
    validate_model_dir,
)

log = logging.getLogger(__name__)
FIRST_READ = 64 * 1024


class Source(Protocol):
    """Where files come from. Names are relative, already vetted by ``check_name``."""

    def read_prefix(self, name: str, nbytes: int) -> tuple[bytes, int | None]:
        """The first ``nbytes`` bytes of ``name`` (fewer if shorter) and its total size if known."""
        ...

    def download(self, name: str, out: BinaryIO, budget: Budget) -> int:
        """Write all of ``name`` to ``out``, accounting bytes with ``budget``; return bytes written."""
        ...


@dataclass
class FetchResult:
    path: Path
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed_config_keys: list[str] = field(default_factory=list)
    total_bytes: int = 0
    declared_params: int = 0
    cache: str | None = None  # "hit" or "miss" through a model cache (fetch/cache.py), None without one


def prepare_dest(dest: Path) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"fetch destination {dest} must be empty")
    return dest.resolve()


def precheck_sizes(files: list[tuple[str, int | None]], limits: FetchLimits) -> None:
    total = 0
    for name, size in files:
        if size is None:
            continue
        if size > limits.max_file_bytes:
            raise TooLarge(f"{name} is {size} bytes, over the per-file limit of {limits.max_file_bytes}")
        total += size
    if total > limits.max_total_bytes:
        raise TooLarge(f"model is {total} bytes, over the total limit of {limits.max_total_bytes}")


def precheck_params(source: Source, files: list[tuple[str, int | None]], limits: FetchLimits, budget: Budget) -> int:
    """Sum the parameters declared by every safetensors header, reading only the headers."""
    total = 0
    for name, listed_size in files:
        if not name.lower().endswith(".safetensors"):
            continue
        budget.remaining_s()
        prefix, size = source.read_prefix(name, FIRST_READ)
        length = header_length(prefix, max_header_bytes=limits.max_header_bytes)
        if len(prefix) < 8 + length and (size is None or size > len(prefix)):
            prefix, size = source.read_prefix(name, 8 + length)
        header = parse_header(prefix, max_header_bytes=limits.max_header_bytes)
        total += header.params
        if limits.max_params is not None and total > limits.max_params:
            raise ModelTooLargeError(
                f"model declares {total:,} parameters (through {name}), over the limit of {limits.max_params:,}"
            )
        check_data_size(name, header, size if size is not None else listed_size)
    return total


def run_plan(
    source: Source,
    files: list[tuple[str, int | None]],
    dest: Path,
    limits: FetchLimits,
    budget: Budget,
) -> FetchResult:
    """Download ``files`` from ``source`` into the empty directory ``dest``; clean up on failure."""
    precheck_sizes(files, limits)
    params = precheck_params(source, files, limits, budget)
    written: list[Path] = []
    try:
        for name, _ in files:
            target = dest / check_name(name)
            if target.parent != dest:
                raise UnsafeModelFile(f"nested file {name!r} is not supported")
            with target.open("xb") as out:
                written.append(target)
                source.download(name, out, budget)
        names = [name for name, _ in files]
        removed = validate_model_dir(dest, names, max_json_bytes=limits.max_json_bytes)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    log.info("fetched %d files, %d bytes, %d declared params", len(files), budget.total_bytes, params)
    return FetchResult(
        path=dest,
        files=names,
        removed_config_keys=removed,
        total_bytes=budget.total_bytes,
        declared_params=params,
    )


def copy_stream(read: BinaryIO, out: BinaryIO, name: str, budget: Budget) -> int:
    """Copy a readable binary stream under the budget (used by the local and S3 sources)."""
    written = 0
    while True:
        chunk = read.read(budget.limits.chunk_bytes)
        if not chunk:
            return written
        written += len(chunk)
        budget.consume(name, written, len(chunk))
        out.write(chunk)
