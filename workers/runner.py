"""The job logic, testable without Celery: claim, fetch, compress, upload, finish.

Outcomes: a ``CompressionError`` (bad model, gate missed, hostile input) fails the job with its code,
no retry; any other exception is infrastructure and retries with backoff up to ``max_attempts``.
A redelivered message for a job that is not queued is a no-op.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from presso.app.core import logs
from presso.app.core.db import utcnow
from presso.app.jobs.models import JobState
from presso.compression.errors import CompressionError
from presso.workers import dedup, joblog, lease, liveness
from presso.workers.context import WorkerContext
from presso.workers.heartbeat import Heartbeat
from presso.workers.spec import build_spec
from presso.workers.testhooks import with_stage_delays
from presso.workers.upload import LeaseLost, upload_artifact

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The job stopped because of cancellation, a lost lease or its time limit."""


def run_job(job_id: str, ctx: WorkerContext) -> str:
    """Run one job to a terminal state (or back to queued for a retry). Returns the outcome name."""
    settings = ctx.settings
    claim = lease.claim(ctx.session_factory, job_id, lease_s=settings.lease_s,
                        worker_id=liveness.current_worker_id(), worker_pid=os.getpid())
    if claim is None:
        log.info("job %s is not queued; nothing to do", job_id)
        return "skipped"
    log.info("job %s attempt %d/%d claimed", job_id, claim.attempt, claim.max_attempts)
    hb = Heartbeat(ctx.session_factory, claim, lease_s=settings.lease_s,
                   time_limit_s=settings.job_soft_time_limit_s)
    if settings.work_dir:
        settings.work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_job_dirs(job_id, settings.work_dir)
    with (logs.bind(job_id=job_id, tenant_id=claim.tenant_id),
          joblog.capture(ctx.session_factory, job_id, claim.attempt), hb,
          tempfile.TemporaryDirectory(prefix=f"presso-job-{job_id}-", dir=settings.work_dir) as tmp):
        log.info("job %s attempt %d/%d started on %s", job_id, claim.attempt, claim.max_attempts,
                 liveness.current_worker_id() or "this process")
        try:
            return _attempt(ctx, claim, hb, Path(tmp))
        except BaseException as exc:  # noqa: BLE001 - every outcome is recorded on the row
            return _on_error(ctx, claim, hb, exc)


def remove_stale_job_dirs(job_id: str, work_dir: Path | None) -> None:
    """Delete temp dirs that earlier attempts of this job left behind (a worker killed with SIGKILL or OOM).

    Safe: only the holder of the job's lease gets here, so no live attempt of the job uses them.
    """
    parent = Path(work_dir or tempfile.gettempdir())
    for stale in parent.glob(f"presso-job-{job_id}-*"):
        log.warning("job %s: removing %s left by an earlier attempt", job_id, stale)
        shutil.rmtree(stale, ignore_errors=True)


def _attempt(ctx: WorkerContext, claim: lease.Claim, hb: Heartbeat, tmp: Path) -> str:
    from presso.compression.io.outdir import RESUME_DIR
    from presso.compression.job import run_local
    from presso.workers.checkpoints import CheckpointSync
    from presso.workers.shardupload import ShardUploads

    progress = with_stage_delays(hb.progress, claim.job_id, claim.attempt)  # test-only hook; inert by default
    plan_before_fetch(ctx, claim)
    spec = build_spec(claim, ctx.settings, tmp, progress=progress)
    progress("dedup", 0.0)
    twin = dedup.check(ctx.session_factory, claim, tmp)
    if twin is not None:
        return _reuse(ctx, claim, hb, twin)
    progress("compress", 0.0)
    checkpoints = CheckpointSync(ctx.store, claim)  # a streamed job resumes where an earlier attempt stopped
    checkpoints.restore(spec.resume_dir or spec.out_dir / RESUME_DIR)
    still_owner = lambda: not (hb.lost or hb.cancelled)  # noqa: E731
    # a streamed job's shards are uploaded while later blocks compute (presso.workers.shardupload)
    with ShardUploads(ctx.store, claim, tmp, still_owner=still_owner) as shards:
        result = run_local(spec, progress=progress, should_stop=hb.should_stop, on_checkpoint=checkpoints,
                           on_shard=shards)
        if hb.should_stop():
            raise Stopped("stopped before upload")
        hb.beat()
        t, compressed_at = time.perf_counter(), utcnow().isoformat()
        shards.wait()
        waited = time.perf_counter() - t
        manifest_key = upload_artifact(ctx.store, claim, spec.out_dir, listed=result.files, progress=progress,
                                       still_owner=still_owner, uploaded=shards)
    metrics: dict[str, Any] = dict(result.metrics)
    if shards.futures:
        metrics["shard_uploads"] = {"compressed_at": compressed_at, "waited_s": round(waited, 3),
                                    "after_compress_s": round(time.perf_counter() - t, 3), "files": shards.metrics()}
    if getattr(result, "attempts", None):
        metrics.setdefault("attempts", result.attempts)
    hb.stop()
    done = lease.finish(ctx.session_factory, claim, JobState.succeeded, metrics=metrics,
                        manifest_key=manifest_key, progress_stage="done", progress_fraction=1.0)
    if not done:
        log.warning("job %s attempt %d finished after losing its lease; result dropped", claim.job_id,
                    claim.attempt)
        return "lost"
    log.info("job %s succeeded", claim.job_id)
    return "succeeded"


def _reuse(ctx: WorkerContext, claim: lease.Claim, hb: Heartbeat, twin: Any) -> str:
    """Succeed with the artifact of ``twin``, a succeeded job of the tenant with the same inputs (dedup)."""
    hb.stop()
    metrics = {**(twin.metrics or {}), "dedup": {"of": twin.id}}
    done = lease.finish(ctx.session_factory, claim, JobState.succeeded, metrics=metrics, dedup_of=twin.id,
                        manifest_key=twin.manifest_key, progress_stage="done", progress_fraction=1.0)
    if not done:
        return "lost"
    log.info("job %s succeeded with the artifact of job %s (same inputs; force: true runs it again)",
             claim.job_id, twin.id)
    return "succeeded"


def plan_before_fetch(ctx: WorkerContext, claim: lease.Claim) -> None:
    """Plan the job from its model's headers (ranged reads) and keep the plan on the row; a job that no worker
    class can run fails now with ``insufficient_resources`` instead of hours later. A model that cannot be
    planned (hf://, GGUF, unreadable headers) runs as before."""
    from presso.app.jobs.planning import plan_request
    from presso.compression.plan import InsufficientResources

    if ctx.settings.plan_at_submit == "off":
        return
    try:
        plan = plan_request({**claim.request, "model_uri": claim.model_uri}, ctx.settings, remote=True)
        lease.store_plan(ctx.session_factory, claim, plan)
    except Exception:  # noqa: BLE001 - planning is advice; the job runs without it
        log.warning("job %s: planning failed", claim.job_id, exc_info=True)
        return
    if plan.get("refusal"):
        raise InsufficientResources(plan["refusal"])


def _fail(ctx: WorkerContext, claim: lease.Claim, code: str, message: str) -> str:
    lease.finish(ctx.session_factory, claim, JobState.failed, error_code=code, error_message=message[:4000])
    log.info("job %s failed: %s: %s", claim.job_id, code, message)
    return "failed"


def _on_error(ctx: WorkerContext, claim: lease.Claim, hb: Heartbeat, exc: BaseException) -> str:
    if hb.lost:
        log.warning("job %s attempt %d stopped: lease lost", claim.job_id, claim.attempt)
        return "lost"
    if hb.cancelled or (isinstance(exc, LeaseLost) and _cancel_requested(hb)):
        lease.finish(ctx.session_factory, claim, JobState.cancelled, error_code="cancelled",
                     error_message="cancelled by request")
        log.info("job %s cancelled", claim.job_id)
        return "cancelled"
    if hb.timed_out:
        return _fail(ctx, claim, "time_limit_exceeded",
                     f"job exceeded its time limit of {ctx.settings.job_soft_time_limit_s} s")
    if isinstance(exc, CompressionError):
        return _fail(ctx, claim, exc.code, exc.message)
    if not isinstance(exc, Exception):
        raise exc  # KeyboardInterrupt / SystemExit: the lease expires and the reaper takes over
    return _retry_or_fail(ctx, claim, exc)


def _cancel_requested(hb: Heartbeat) -> bool:
    hb.beat()
    return hb.cancelled


def _retry_or_fail(ctx: WorkerContext, claim: lease.Claim, exc: Exception) -> str:
    reason = f"{type(exc).__name__}: {exc}"
    log.warning("job %s attempt %d infrastructure error: %s", claim.job_id, claim.attempt, reason,
                exc_info=exc)
    if claim.attempt >= claim.max_attempts:
        return _fail(ctx, claim, "max_attempts_exceeded",
                     f"gave up after {claim.attempt} attempts; last error: {reason}")
    delay = ctx.settings.retry_backoff_s * 2 ** (claim.attempt - 1)
    if lease.requeue(ctx.session_factory, claim, delay_s=delay, reason=reason):
        try:
            ctx.publisher.publish(claim.job_id, claim.queue, countdown=delay)
        except Exception:  # noqa: BLE001 - the reaper republishes
            log.exception("republishing job %s failed; the reaper will", claim.job_id)
    return "retrying"
