"""The reaper's republish backoff (found by the kill -9 tests: a fixed interval livelocked the workers).

Since the reaper reads the broker (workers/brokerscan.py) the backoff applies only where it cannot: these
tests use a broker URL that brokerscan does not read. tests/workers/test_liveness.py covers the broker-read
rule (a job whose message waits is never re-sent).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import update
from svc_helpers import RTN, new_db_tenant, submit, worker_context

from presso.app.core.db import utcnow
from presso.app.jobs.models import Job
from presso.workers.reaper import MAX_REPUBLISH_INTERVAL_FACTOR, reap_once, republish_due

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _job(queued_s: float, published_s: float | None) -> Job:
    return Job(queued_at=T0 + dt.timedelta(seconds=queued_s),
               last_published_at=None if published_s is None else T0 + dt.timedelta(seconds=published_s))


def test_interval_doubles_with_the_wait_and_is_capped() -> None:
    r = 10.0
    at = lambda s: T0 + dt.timedelta(seconds=s)  # noqa: E731
    assert republish_due(_job(0, None), at(0), r)  # never published: always (the grace is in the query)
    assert not republish_due(_job(0, 0), at(9), r) and republish_due(_job(0, 0), at(10), r)
    assert not republish_due(_job(0, 10), at(19), r) and republish_due(_job(0, 10), at(20), r)
    assert not republish_due(_job(0, 20), at(39), r) and republish_due(_job(0, 20), at(40), r)
    cap = MAX_REPUBLISH_INTERVAL_FACTOR * r
    assert republish_due(_job(0, 10_000), at(10_000 + cap), r)  # a lost message still returns within 8r
    assert not republish_due(_job(0, 10_000), at(10_000 + cap - 1), r)


def test_backlogged_job_is_not_republished_every_interval(make_settings: Any, fault_db_url: str) -> None:
    # The private database: reap_once acts on every job of its database, other sessions' included.
    # amqp: a transport whose queue brokerscan does not read, so the backoff decides (the publisher only records)
    ctx = worker_context(make_settings(republish_after_s=5, database_url=fault_db_url,
                                       broker_url="amqp://guest@127.0.0.1:1//"))
    job_id = submit(ctx, new_db_tenant(ctx), {"model_uri": "s3://presso-test-models/none", "recipe": RTN})
    now = utcnow()
    with ctx.session_factory() as session:  # waited 60 s, last sent 6 s ago: only a backlog, not due
        session.execute(update(Job).where(Job.id == job_id).values(
            queued_at=now - dt.timedelta(seconds=60), last_published_at=now - dt.timedelta(seconds=6)))
        session.commit()
    ctx.publisher.sent.clear()
    reap_once(ctx.session_factory, ctx.publisher, ctx.settings)
    assert job_id not in [j for j, _, _ in ctx.publisher.sent]
    with ctx.session_factory() as session:  # last sent 41 s ago, after a 19 s wait: due again
        session.execute(update(Job).where(Job.id == job_id).values(last_published_at=now - dt.timedelta(seconds=41)))
        session.commit()
    reap_once(ctx.session_factory, ctx.publisher, ctx.settings)
    assert job_id in [j for j, _, _ in ctx.publisher.sent]
    with ctx.session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state="cancelled"))
        session.commit()
