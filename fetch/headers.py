"""A model's config.json and safetensors headers, without its weights: the resource planner's input.

The same sources and guards as a fetch (``_open_source``: the S3 client, ``SafeHttp`` with its SSRF checks and
caps, the allowed file roots), but only ranged reads of the first bytes of each file: 8 bytes give a header's
length, then the header itself. ``hf://`` (the hub client downloads whole files) and GGUF weights are not
planned: ``Unplannable``.
"""

from __future__ import annotations

import json
from contextlib import ExitStack

from presso.compression.plan import ModelInfo, PlanError, TensorInfo, header_length, parse_safetensors_header
from presso.fetch.errors import FetchError, ModelFileCorrupt, TooLarge
from presso.fetch.limits import Budget, FetchLimits
from presso.fetch.model_files import classify, select_model_files

FIRST_READ = 64 * 1024


class Unplannable(Exception):
    """The model cannot be planned from headers (its reason is the message)."""


def read_model_headers(uri: str, limits: FetchLimits) -> ModelInfo:
    """Config and tensor headers of the model at ``uri``; raises FetchError subclasses or Unplannable."""
    from presso.fetch.api import _open_source, _parse

    parsed = _parse(uri, limits)
    if parsed.scheme == "hf":
        raise Unplannable("hf:// models are planned by the worker once fetched")
    budget = Budget(limits)
    with ExitStack() as stack:
        source, entries, single = _open_source(parsed, limits, budget, stack)
        files = entries if single is not None else select_model_files(entries, max_files=limits.max_files).files
        config: dict[str, object] = {}
        tensors: list[TensorInfo] = []
        total, largest = 0, 0
        for name, size in files:
            base = name.rsplit("/", 1)[-1].lower()
            if base.endswith(".gguf"):
                raise Unplannable("GGUF weights are planned by the worker once fetched")
            if base.endswith(".safetensors"):
                budget.remaining_s()
                prefix, file_size = source.read_prefix(name, FIRST_READ)
                try:
                    length = header_length(prefix)
                    if length > limits.max_header_bytes:
                        raise TooLarge(f"{name}: safetensors header over {limits.max_header_bytes} bytes")
                    if len(prefix) < 8 + length:
                        prefix, file_size = source.read_prefix(name, 8 + length)
                    found = parse_safetensors_header(prefix)
                except PlanError as exc:
                    raise ModelFileCorrupt(f"{name}: {exc}") from exc
                tensors += found
                size = size if size is not None else file_size
                if size is None:
                    size = 8 + length + sum(t.nbytes for t in found)
                largest = max(largest, size)
            elif base == "config.json" and classify(name) == "config":
                data, _ = source.read_prefix(name, limits.max_json_bytes + 1)
                if len(data) > limits.max_json_bytes:
                    raise TooLarge(f"{name} is over {limits.max_json_bytes} bytes")
                try:
                    loaded = json.loads(data)
                except ValueError as exc:
                    raise ModelFileCorrupt(f"{name} is not valid JSON") from exc
                if isinstance(loaded, dict):
                    config = loaded
            total += size or 0
    if not tensors:
        raise Unplannable("no safetensors weights to plan from")
    return ModelInfo(config=config, tensors=tuple(tensors), files_bytes=total, largest_file_bytes=largest)


__all__ = ["FetchError", "Unplannable", "read_model_headers"]
