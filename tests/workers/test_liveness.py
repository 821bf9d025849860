"""Worker liveness and the broker-read republish rule, on the real Postgres and Redis (workers/liveness.py,
workers/reaper.py, workers/brokerscan.py). The end-to-end kill -9 tests are in tests/faults/test_prompt_recovery.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import update
from svc_helpers import RTN, job_row, migrated_database, new_db_tenant, submit, worker_context

from presso.app.core.db import utcnow
from presso.app.core.queue import CeleryPublisher, make_celery
from presso.app.jobs.models import Job, Worker
from presso.workers import lease, liveness
from presso.workers.brokerscan import job_id_of, read_broker
from presso.workers.reaper import LivenessPass, ReapResult, reap_dead_processes, reap_dead_workers, reap_once

BODY = {"model_uri": "s3://presso-test-models/tiny", "recipe": RTN}


@pytest.fixture(scope="module")
def private_db_url(pg_url: str) -> Iterator[str]:
    """A migrated database of this module's own: the reaper passes act on every job of their database, and the
    session's database holds other tests' queued and running jobs."""
    with migrated_database(pg_url, "presso_liveness") as url:
        yield url


@pytest.fixture
def ctx(make_settings: Any, private_db_url: str) -> Any:
    return worker_context(make_settings(database_url=private_db_url, max_attempts=2, worker_dead_after_s=10))


def _worker(ctx: Any, *, silent_s: float, pid: int | None = None) -> liveness.Identity:
    identity = liveness.Identity(f"test-{uuid.uuid4().hex[:8]}", "test-host", pid or os.getpid())
    now = utcnow()
    with ctx.session_factory() as session:
        session.add(Worker(id=identity.worker_id, hostname=identity.hostname, pid=identity.pid, queues="gpu",
                           started_at=now, heartbeat_at=now - dt.timedelta(seconds=silent_s)))
        session.commit()
    return identity


def _running(ctx: Any, identity: liveness.Identity | None, pid: int | None = None) -> str:
    job_id = submit(ctx, new_db_tenant(ctx), BODY)
    claim = lease.claim(ctx.session_factory, job_id, lease_s=600, worker_id=identity and identity.worker_id,
                        worker_pid=pid)
    assert claim is not None
    return job_id


def _set(ctx: Any, job_id: str, **values: Any) -> None:
    with ctx.session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def test_jobs_of_a_silent_worker_are_requeued_long_before_their_lease(ctx: Any) -> None:
    dead, alive = _worker(ctx, silent_s=30), _worker(ctx, silent_s=0)
    lost, kept = _running(ctx, dead), _running(ctx, alive)
    result = ReapResult()
    requeued = reap_dead_workers(ctx.session_factory, 10, result)
    assert [j for j, _, _ in requeued] == [lost] and result.requeued == 1 and result.dead_workers == 1
    row = job_row(ctx, lost)
    assert row.state == "queued" and row.attempt == 1 and row.lease_expires_at is None
    assert row.last_published_at is None and "stopped beating" in row.error_message
    assert job_row(ctx, kept).state == "running"
    # the same bookkeeping as a lease expiry: the next claim is attempt 2, and at max_attempts it fails
    again = lease.claim(ctx.session_factory, lost, lease_s=600, worker_id=dead.worker_id, worker_pid=1)
    assert again is not None and again.attempt == 2
    reap_dead_workers(ctx.session_factory, 10, ReapResult())
    row = job_row(ctx, lost)
    assert row.state == "failed" and row.error_code == "max_attempts_exceeded"
    # a cancel request on a lost attempt ends it cancelled
    cancelled = _running(ctx, dead)
    _set(ctx, cancelled, cancel_requested=True)
    reap_dead_workers(ctx.session_factory, 10, ReapResult())
    assert job_row(ctx, cancelled).state == "cancelled"
    _set(ctx, kept, state="cancelled")


def test_a_worker_without_a_row_counts_only_after_the_dead_after_window(ctx: Any) -> None:
    ghost = liveness.Identity(f"test-{uuid.uuid4().hex[:8]}", "h", 1)  # never registered (or its row removed)
    job_id = _running(ctx, ghost)
    assert reap_dead_workers(ctx.session_factory, 10, ReapResult()) == []  # just claimed: its beat may follow
    _set(ctx, job_id, started_at=utcnow() - dt.timedelta(seconds=11))
    assert [j for j, _, _ in reap_dead_workers(ctx.session_factory, 10, ReapResult())] == [job_id]


def test_own_jobs_are_left_to_the_process_check(ctx: Any) -> None:
    me = _worker(ctx, silent_s=30)  # my own beat is stale (the database was slow): my jobs are not "dead"
    job_id = _running(ctx, me, os.getpid())
    assert reap_dead_workers(ctx.session_factory, 10, ReapResult(), exclude=me.worker_id) == []
    _set(ctx, job_id, state="cancelled")


def test_a_job_whose_process_died_is_requeued_by_its_own_worker(ctx: Any) -> None:
    me = _worker(ctx, silent_s=0)
    child = subprocess.Popen(["sleep", "60"])
    try:
        job_id = _running(ctx, me, child.pid)
        assert liveness.is_my_live_child(child.pid)
        assert reap_dead_processes(ctx.session_factory, me, ReapResult()) == []
        os.kill(child.pid, signal.SIGKILL)  # not waited for: a zombie has exited all the same
        deadline = time.monotonic() + 5
        while liveness.is_my_live_child(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        result = ReapResult()
        assert [j for j, _, _ in reap_dead_processes(ctx.session_factory, me, result)] == [job_id]
        assert result.dead_processes == 1 and "process" in job_row(ctx, job_id).error_message
    finally:
        child.kill()
        child.wait()
    assert not liveness.is_my_live_child(1)  # a live process that is not my child: not mine to trust


def test_liveness_pass_judges_others_only_after_reaching_the_database_for_dead_after(ctx: Any) -> None:
    dead = _worker(ctx, silent_s=30)
    job_id = _running(ctx, dead)
    me = _worker(ctx, silent_s=0)
    watch = LivenessPass(ctx.session_factory, ctx.publisher, ctx.settings, me)
    assert watch.run().requeued == 0  # first contact (as after an outage): everyone's beat may be old
    watch.db_ok_since = time.monotonic() - 11
    ctx.publisher.sent.clear()
    result = watch.run()
    assert result.requeued == 1 and result.republished == 1
    assert [j for j, _, _ in ctx.publisher.sent] == [job_id]  # published at once, no grace
    assert job_row(ctx, job_id).last_published_at is not None


def test_beat_reinserts_a_removed_row(ctx: Any) -> None:
    me = _worker(ctx, silent_s=30)
    with ctx.session_factory() as session:
        session.query(Worker).filter(Worker.id == me.worker_id).delete()
        session.commit()
    liveness.beat(ctx.session_factory, me)
    with ctx.session_factory() as session:
        row = session.get(Worker, me.worker_id)
        assert row is not None and (utcnow() - row.heartbeat_at).total_seconds() < 5


# -- republish: only a message known lost ------------------------------------------------------------


@pytest.fixture
def broker_ctx(make_settings: Any, private_db_url: str, broker_prefix: str, redis_url: str) -> Iterator[Any]:
    prefix = f"{broker_prefix}{uuid.uuid4().hex[:6]}:"  # a queue no worker of this session consumes
    settings = make_settings(database_url=private_db_url, broker_key_prefix=prefix, republish_after_s=5)
    c = worker_context(settings)
    c.publisher = CeleryPublisher(make_celery(settings))
    c.redis = redis.Redis.from_url(redis_url)
    c.queue_key = f"{prefix}gpu"
    yield c
    for key in c.redis.scan_iter(f"{prefix}*"):
        c.redis.delete(key)
    c.redis.close()


def test_a_job_waiting_in_the_broker_is_never_republished(broker_ctx: Any) -> None:
    c = broker_ctx
    job_id = submit(c, new_db_tenant(c), BODY)
    assert c.redis.llen(c.queue_key) == 1
    assert job_id_of(c.redis.lrange(c.queue_key, 0, 0)[0]) == job_id
    view = read_broker(c.settings, ["gpu"])
    assert view is not None and job_id in view.waiting and job_id not in view.taken
    long_ago = utcnow() - dt.timedelta(seconds=3600)  # behind a backlog for an hour
    _set(c, job_id, queued_at=long_ago, last_published_at=long_ago)
    assert reap_once(c.session_factory, c.publisher, c.settings).republished == 0
    assert c.redis.llen(c.queue_key) == 1
    # the publish marker lost (a crash after the publish): the waiting message is recognised, nothing sent
    _set(c, job_id, last_published_at=None)
    assert reap_once(c.session_factory, c.publisher, c.settings).republished == 0
    assert job_row(c, job_id).last_published_at is not None and c.redis.llen(c.queue_key) == 1
    # the message lost (Redis flushed): republished once it is republish_after_s old, then only once
    c.redis.delete(c.queue_key)
    _set(c, job_id, last_published_at=utcnow() - dt.timedelta(seconds=6))
    assert reap_once(c.session_factory, c.publisher, c.settings).republished == 1
    assert c.redis.llen(c.queue_key) == 1
    _set(c, job_id, last_published_at=utcnow() - dt.timedelta(seconds=600))
    assert reap_once(c.session_factory, c.publisher, c.settings).republished == 0  # waiting again
    _set(c, job_id, state="cancelled")


def test_a_message_taken_by_a_worker_that_never_claimed_is_replaced(broker_ctx: Any) -> None:
    c = broker_ctx
    prefix = c.settings.broker_key_prefix
    job_id = submit(c, new_db_tenant(c), BODY)
    raw = c.redis.rpop(c.queue_key)  # a worker takes it, as kombu does: unacked hash + delivery time
    c.redis.hset(f"{prefix}unacked", "tag-1", json.dumps([json.loads(raw), "", "gpu"]))
    c.redis.zadd(f"{prefix}unacked_index", {"tag-1": time.time()})
    view = read_broker(c.settings, ["gpu"])
    assert view is not None and job_id not in view.waiting and job_id in view.taken
    # sent an hour ago, taken just now (its worker's pool was busy): about to be claimed, not re-sent
    _set(c, job_id, last_published_at=utcnow() - dt.timedelta(seconds=3600))
    assert reap_once(c.session_factory, c.publisher, c.settings).republished == 0
    # taken 6 s ago and still not claimed: that worker is gone; re-sent
    c.redis.zadd(f"{prefix}unacked_index", {"tag-1": time.time() - 6})
    assert reap_once(c.session_factory, c.publisher, c.settings).republished == 1
    assert c.redis.llen(c.queue_key) == 1
    # a retry's countdown: not due before not_before + republish_after_s
    c.redis.delete(c.queue_key)
    now = utcnow()
    _set(c, job_id, last_published_at=now - dt.timedelta(seconds=60), not_before=now - dt.timedelta(seconds=1))
    assert reap_once(c.session_factory, c.publisher, c.settings).republished == 0
    _set(c, job_id, not_before=now - dt.timedelta(seconds=6))
    assert reap_once(c.session_factory, c.publisher, c.settings).republished == 1
    _set(c, job_id, state="cancelled")


def test_filesystem_queue_is_read(tmp_path: Any) -> None:
    from presso.app.core.settings import Settings

    settings = Settings(data_dir=tmp_path)
    CeleryPublisher(make_celery(settings)).publish("f" * 32, "cpu")
    assert read_broker(settings, ["cpu"]).waiting == {"f" * 32}  # type: ignore[union-attr]
    assert read_broker(settings, ["gpu"]).waiting == set()  # type: ignore[union-attr]
