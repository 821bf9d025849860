"""hf://org/name@revision through huggingface_hub, restricted to safe file patterns.

With ``HF_HUB_OFFLINE=1`` only the local cache is used (``local_files_only``). Online, the repo's file
list and safetensors metadata are checked against the caps before anything is downloaded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from presso.fetch.errors import FetchError, ModelTooLargeError, NotFoundError, TransientFetchError
from presso.fetch.limits import FetchLimits
from presso.fetch.model_files import TOKENIZER_FILES, select_model_files
from presso.fetch.pipeline import precheck_sizes
from presso.fetch.uri import ParsedURI

log = logging.getLogger(__name__)
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.gguf",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    *sorted(TOKENIZER_FILES),
]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _map_hub_error(exc: Exception, where: str) -> Exception:
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return FetchError(f"{where} is gated: access must be granted to this server's token")
    not_found = (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError)
    if isinstance(exc, not_found):
        return NotFoundError(f"{where} was not found" + (" in the local cache" if hub_offline() else ""))
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
        if status == 429 or status >= 500:
            return TransientFetchError(f"Hugging Face Hub answered {status} for {where}")
        return FetchError(f"Hugging Face Hub refused {where}: {exc}")
    if isinstance(exc, OSError):
        return TransientFetchError(f"Hugging Face Hub unavailable for {where}: {exc}")
    return exc


def _precheck_online(repo_id: str, revision: str, limits: FetchLimits) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import NotASafetensorsRepoError

    api = HfApi()
    info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=min(limits.timeout_s, 30))
    listing = [(s.rfilename, s.size) for s in info.siblings or []]
    precheck_sizes(select_model_files(listing, max_files=limits.max_files).files, limits)
    if limits.max_params is None:
        return
    try:
        meta = api.get_safetensors_metadata(repo_id, revision=revision, timeout=min(limits.timeout_s, 30))
    except NotASafetensorsRepoError:
        return
    params = sum(meta.parameter_count.values())
    if params > limits.max_params:
        raise ModelTooLargeError(f"{repo_id} declares {params:,} parameters, over the limit of {limits.max_params:,}")


def hf_snapshot(parsed: ParsedURI, limits: FetchLimits) -> tuple[Path, tuple[Path, ...]]:
    """Download (or find in the cache) the safe files of a repo; return (snapshot dir, allowed roots)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - the engine extra installs it
        raise FetchError("hf:// URIs need huggingface_hub installed on the worker") from exc
    assert parsed.repo_id is not None and parsed.revision is not None
    where = f"hf://{parsed.repo_id}@{parsed.revision}"
    offline = hub_offline()
    kwargs: dict[str, Any] = {
        "revision": parsed.revision,
        "allow_patterns": ALLOW_PATTERNS,
        "cache_dir": limits.hf_cache_dir,
        "local_files_only": offline,
        "etag_timeout": min(limits.timeout_s, 10.0),
    }
    try:
        if not offline:
            _precheck_online(parsed.repo_id, parsed.revision, limits)
        snapshot = Path(str(snapshot_download(parsed.repo_id, **kwargs)))
    except FetchError:
        raise
    except Exception as exc:
        mapped = _map_hub_error(exc, where)
        if mapped is exc:
            raise
        raise mapped from exc
    # Cache snapshots hold symlinks into the repo's blobs/ folder: that folder is the allowed root.
    repo_root = snapshot.parent.parent.resolve()
    log.info("hf snapshot for %s at %s (offline=%s)", where, snapshot, offline)
    return snapshot, (repo_root,)
