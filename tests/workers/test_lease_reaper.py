"""Claim, fencing, heartbeat, cancellation and the reaper on the real Postgres."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
from sqlalchemy import update
from svc_helpers import RTN, job_row, new_db_tenant, submit, worker_context

from presso.app.core.db import utcnow
from presso.app.jobs import service
from presso.app.jobs.models import Job, JobState
from presso.workers import lease
from presso.workers.heartbeat import Heartbeat
from presso.workers.reaper import reap_once

BODY = {"model_uri": "s3://presso-test-models/tiny", "recipe": RTN}


@pytest.fixture
def ctx(make_settings: Any) -> Any:
    return worker_context(make_settings(max_attempts=2, republish_after_s=5))


def _age(ctx: Any, job_id: str, **values: Any) -> None:
    with ctx.session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def test_claim_is_exclusive_and_fenced(ctx: Any) -> None:
    job_id = submit(ctx, new_db_tenant(ctx), BODY)
    first = lease.claim(ctx.session_factory, job_id, lease_s=30)
    assert first is not None and first.attempt == 1
    assert lease.claim(ctx.session_factory, job_id, lease_s=30) is None  # duplicate delivery
    stale = lease.Claim(**{**first.__dict__, "attempt": 0})
    assert lease.finish(ctx.session_factory, stale, JobState.succeeded) is False
    assert lease.heartbeat(ctx.session_factory, stale, lease_s=30, stage="x", fraction=0.5) is None
    assert lease.heartbeat(ctx.session_factory, first, lease_s=30, stage="compress", fraction=0.5) is False
    assert job_row(ctx, job_id).progress_stage == "compress"
    assert lease.finish(ctx.session_factory, first, JobState.succeeded) is True
    assert lease.finish(ctx.session_factory, first, JobState.failed) is False  # terminal stays terminal


def test_concurrent_claims_one_winner(ctx: Any) -> None:
    job_id = submit(ctx, new_db_tenant(ctx), BODY)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(lease.claim(ctx.session_factory, job_id, lease_s=30)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_expired_lease_requeued_then_failed(ctx: Any) -> None:
    job_id = submit(ctx, new_db_tenant(ctx), BODY)
    first = lease.claim(ctx.session_factory, job_id, lease_s=0.01)
    assert first is not None
    time.sleep(0.05)
    result = reap_once(ctx.session_factory, ctx.publisher, ctx.settings)
    assert result.requeued >= 1
    row = job_row(ctx, job_id)
    assert row.state == "queued" and row.lease_expires_at is None
    # The requeued job is republished (last_published_at cleared, queued_at older than the grace).
    _age(ctx, job_id, queued_at=utcnow() - dt.timedelta(seconds=60))
    reap_once(ctx.session_factory, ctx.publisher, ctx.settings)
    assert any(j == job_id for j, _, _ in ctx.publisher.sent)
    # The lost worker's late writes are fenced out.
    assert lease.finish(ctx.session_factory, first, JobState.succeeded) is False
    second = lease.claim(ctx.session_factory, job_id, lease_s=0.01)
    assert second is not None and second.attempt == 2
    time.sleep(0.05)
    reap_once(ctx.session_factory, ctx.publisher, ctx.settings)
    row = job_row(ctx, job_id)
    assert row.state == "failed" and row.error_code == "max_attempts_exceeded"


def test_never_published_job_is_republished(ctx: Any) -> None:
    job_id = submit(ctx, new_db_tenant(ctx), BODY)
    _age(ctx, job_id, last_published_at=None, queued_at=utcnow() - dt.timedelta(seconds=30))
    ctx.publisher.sent.clear()
    reap_once(ctx.session_factory, ctx.publisher, ctx.settings)
    assert job_id in [j for j, _, _ in ctx.publisher.sent]
    assert job_row(ctx, job_id).last_published_at is not None
    ctx.publisher.sent.clear()
    reap_once(ctx.session_factory, ctx.publisher, ctx.settings)
    assert job_id not in [j for j, _, _ in ctx.publisher.sent]  # not again until republish_after_s


def test_heartbeat_sees_cancel_request(ctx: Any) -> None:
    tenant = new_db_tenant(ctx)
    job_id = submit(ctx, tenant, BODY)
    claim = lease.claim(ctx.session_factory, job_id, lease_s=30)
    assert claim is not None
    hb = Heartbeat(ctx.session_factory, claim, lease_s=30, time_limit_s=60, interval_s=0.05)
    with hb:
        hb.progress("compress", 0.25)
        time.sleep(0.2)
        assert not hb.should_stop()
        assert job_row(ctx, job_id).progress_fraction == 0.25
        with ctx.session_factory() as session:
            job = service.cancel_job(session=session, tenant_id=tenant.id, job_id=job_id)
            assert job.state == "running" and job.cancel_requested
        deadline = time.monotonic() + 5
        while not hb.should_stop() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert hb.cancelled


def test_running_job_cancelled_by_runner(ctx: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Cancel stops a running job within seconds (library stand-in that honours should_stop)."""
    import presso.compression.job
    import presso.workers.runner as runner_mod
    from presso.workers import spec as spec_mod

    def slow_run_local(spec: Any, *, progress: Any, should_stop: Any, **_hooks: Any) -> Any:  # on_checkpoint, on_shard
        while not should_stop():
            progress("compress", 0.5)
            time.sleep(0.05)
        raise RuntimeError("stopped")

    monkeypatch.setattr(presso.compression.job, "run_local", slow_run_local)
    monkeypatch.setattr(runner_mod, "build_spec", lambda claim, settings, tmp, progress: spec_mod.LocalJobSpec(
        model_uri=str(tmp), out_dir=tmp / "out", recipe=RTN))
    ctx.settings = ctx.settings.model_copy(update={"lease_s": 0.4})
    tenant = new_db_tenant(ctx)
    job_id = submit(ctx, tenant, BODY)
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner_mod.run_job(job_id, ctx)))
    thread.start()
    time.sleep(0.5)
    with ctx.session_factory() as session:
        service.cancel_job(session=session, tenant_id=tenant.id, job_id=job_id)
    start = time.monotonic()
    thread.join(timeout=10)
    assert outcome == ["cancelled"] and time.monotonic() - start < 3
    assert job_row(ctx, job_id).state == "cancelled"
