"""Resource plans of job requests (the estimator is compression/plan.py), for the API and the worker.

A plan needs the model's config.json and safetensors headers. At submit they are read when cheap
(``PRESSO_PLAN_AT_SUBMIT``: ``local`` = file:// models, ``remote`` = also s3:// and https:// through the
fetch layer's guarded clients, ranged reads only); otherwise the plan is ``unknown`` and the worker plans the
job before its fetch. A job that no configured worker class (``PRESSO_WORKER_CLASSES``; default: this
machine) can run is refused with ``insufficient_resources``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from typing import Any

from presso.app.core.errors import InsufficientResources
from presso.app.core.settings import Settings
from presso.compression.plan import GB, JobShape, PlanError, WorkerClass, plan

log = logging.getLogger(__name__)


def _gpu_memory_gb() -> list[float]:
    """Memory of each NVIDIA GPU of this machine (nvidia-smi; the API never imports torch)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=5, check=True).stdout
        return [float(line) / 1024 for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


@lru_cache(maxsize=8)
def _local_class(work_dir: str, device: str | None) -> WorkerClass:
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    disk = shutil.disk_usage(work_dir).free / GB
    gpus = [] if device == "cpu" else _gpu_memory_gb()
    return WorkerClass(name="local", gpus=len(gpus), cpu_ranks=os.cpu_count() or 1,
                       gpu_memory_gb=round(min(gpus), 1) if gpus else 0.0,
                       host_memory_gb=round(host, 1), disk_gb=round(disk, 1))


def local_worker_class(settings: Settings) -> WorkerClass:
    """This machine: its memory, the free space where job directories go, its GPUs (none when DEVICE=cpu)."""
    work_dir = settings.work_dir if settings.work_dir and settings.work_dir.is_dir() else tempfile.gettempdir()
    return _local_class(str(work_dir), settings.device)


def worker_classes(settings: Settings) -> list[WorkerClass]:
    if settings.worker_classes:
        return [WorkerClass.from_dict(dict(c)) for c in settings.worker_classes]
    return [local_worker_class(settings)]


def _unknown(reason: str) -> dict[str, Any]:
    return {"status": "unknown", "reason": reason}


def plan_request(body: dict[str, Any], settings: Settings, *, remote: bool) -> dict[str, Any]:
    """The plan of a job request (POST /v1/jobs body, as JSON): ``{"status": "planned", ..., "refusal"}`` or
    ``{"status": "unknown", "reason"}`` when the headers cannot be read cheaply (or at all)."""
    from presso.fetch.errors import FetchError
    from presso.fetch.headers import Unplannable, read_model_headers
    from presso.fetch.limits import FetchLimits

    uri = str(body.get("model_uri", ""))
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if not remote and scheme != "file":
        return _unknown(f"{scheme}:// models are planned by the worker before the fetch (PRESSO_PLAN_AT_SUBMIT)")
    try:
        job = JobShape.from_request(body)
        classes = worker_classes(settings)
        limits = FetchLimits.from_settings(settings, timeout_s=settings.plan_timeout_s,
                                           allow_private_hosts=tuple(settings.fetch_allow_private_hosts),
                                           allow_http=settings.fetch_allow_http)
        info = read_model_headers(uri, limits)
        result = plan(info, job, classes)
    except Unplannable as exc:
        return _unknown(str(exc))
    except FetchError as exc:
        return _unknown(f"{exc.code}: {exc.message}")
    except (PlanError, KeyError, TypeError, ValueError) as exc:
        return _unknown(f"cannot plan: {exc}")
    out = result.to_dict()
    out["refusal"] = result.refusal()
    return out


def check_submit(body: dict[str, Any], settings: Settings) -> dict[str, Any] | None:
    """At submit: the plan when one could be made cheaply (None otherwise); raises InsufficientResources (422)
    when no worker class can run the job."""
    if settings.plan_at_submit == "off":
        return None
    result = plan_request(body, settings, remote=settings.plan_at_submit == "remote")
    if result.get("refusal"):
        raise InsufficientResources(result["refusal"], field="model_uri")
    return result if result["status"] == "planned" else None
