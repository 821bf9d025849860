"""Job metrics read from the database at scrape time: the same numbers from every API process, whatever the
number of workers, API processes or hosts (the job table is the source of truth).

- ``presso_jobs{state}``: jobs by state (gauge); ``presso_queue_depth{queue}``: queued jobs per queue.
- ``presso_job_duration_seconds{queue,outcome}`` (started -> finished) and ``presso_job_queue_wait_seconds{queue}``
  (created -> first start): histograms over every finished job; counts only grow while jobs are kept.
- ``presso_job_stage_seconds{stage}``: the worker's seconds per stage (load, data, compress, evaluate, write, ...)
  of every succeeded job that really ran (``metrics.timings``; jobs answered by dedup are not counted again).
- ``presso_job_failures_total{code}``: failed jobs by error code.
- ``presso_workers`` (registered workers), ``presso_worker_heartbeat_age_seconds{worker}``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, Float, Text, case, cast, func, literal, select
from sqlalchemy.orm import Session

from presso.app.jobs.models import Job, JobState, Worker

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)
STATES = [s.value for s in JobState]


def _seconds(engine: Engine, start: Any, end: Any) -> Any:
    if engine.dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


class JobsCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            yield from self._states(session)
            yield from self._histogram(session, "presso_job_duration_seconds",
                                       "Job run time, started to finished", Job.started_at, Job.finished_at,
                                       DURATION_BUCKETS, with_outcome=True)
            yield from self._histogram(session, "presso_job_queue_wait_seconds",
                                       "Time from submit to the first start of a job", Job.created_at,
                                       Job.started_at, WAIT_BUCKETS, with_outcome=False)
            yield from self._stages(session)
            yield from self._failures(session)
            yield from self._workers(session)

    def _states(self, session: Session) -> Iterator[Metric]:
        by_state = dict.fromkeys(STATES, 0)
        for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
            by_state[state] = n
        jobs = GaugeMetricFamily("presso_jobs", "Jobs by state", labels=["state"])
        for state, n in by_state.items():
            jobs.add_metric([state], n)
        yield jobs
        depth = GaugeMetricFamily("presso_queue_depth", "Queued jobs per queue", labels=["queue"])
        query = select(Job.queue, func.count()).where(Job.state == JobState.queued.value).group_by(Job.queue)
        queued: dict[str, int] = {str(q): int(n) for q, n in session.execute(query)}
        for queue in sorted({"gpu", "cpu", *queued}):
            depth.add_metric([queue], queued.get(queue, 0))
        yield depth

    def _histogram(self, session: Session, name: str, doc: str, start: Any, end: Any,
                   buckets: tuple[float, ...], *, with_outcome: bool) -> Iterator[Metric]:
        seconds = _seconds(self.engine, start, end)
        columns = [func.count(), func.coalesce(func.sum(seconds), 0.0),
                   *(func.sum(case((seconds <= le, 1), else_=0)) for le in buckets)]
        keys = [Job.queue, Job.state] if with_outcome else [Job.queue]
        query = select(*keys, *columns).where(start.is_not(None), end.is_not(None)).group_by(*keys)
        if with_outcome:
            query = query.where(Job.state.in_([JobState.succeeded.value, JobState.failed.value,
                                               JobState.cancelled.value]))
        family = HistogramMetricFamily(name, doc, labels=["queue", "outcome"] if with_outcome else ["queue"])
        for row in session.execute(query):
            labels = [str(v) for v in row[: len(keys)]]
            count, total, *cumulative = row[len(keys):]
            points = [(str(le), float(c or 0)) for le, c in zip(buckets, cumulative, strict=True)]
            family.add_metric(labels, [*points, ("+Inf", float(count))], float(total or 0.0))
        yield family

    def _stages(self, session: Session) -> Iterator[Metric]:
        family = HistogramMetricFamily("presso_job_stage_seconds", "Worker seconds per stage of succeeded jobs",
                                       labels=["stage"])
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            each = func.jsonb_each(Job.metrics["timings"]).table_valued("key", "value").alias("t")
            numeric = func.jsonb_typeof(each.c.value) == "number"
            value = cast(cast(each.c.value, Text), Float)
        elif dialect == "sqlite":
            each = func.json_each(Job.metrics, "$.timings").table_valued("key", "value", "type").alias("t")
            numeric = each.c.type.in_(["real", "integer"])
            value = cast(each.c.value, Float)
        else:  # pragma: no cover - Postgres and SQLite are the supported databases
            return
        columns = [func.count(), func.coalesce(func.sum(value), 0.0),
                   *(func.sum(case((value <= le, 1), else_=0)) for le in DURATION_BUCKETS)]
        query = (select(each.c.key, *columns).select_from(Job).join(each, literal(True))
                 .where(Job.state == JobState.succeeded.value, Job.dedup_of.is_(None), numeric)
                 .group_by(each.c.key))
        for key, count, total, *cumulative in session.execute(query):
            points = [(str(le), float(c or 0)) for le, c in zip(DURATION_BUCKETS, cumulative, strict=True)]
            family.add_metric([str(key)], [*points, ("+Inf", float(count))], float(total or 0.0))
        yield family

    def _failures(self, session: Session) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily("presso_job_failures", "Failed jobs by error code", labels=["code"])
        rows = session.execute(select(Job.error_code, func.count()).where(Job.state == JobState.failed.value)
                               .group_by(Job.error_code))
        for code, n in rows:
            family.add_metric([code or "unknown"], n)
        yield family

    def _workers(self, session: Session) -> Iterator[Metric]:
        now = dt.datetime.now(dt.UTC)
        rows = list(session.execute(select(Worker.id, Worker.heartbeat_at)))
        count = GaugeMetricFamily("presso_workers", "Registered workers (rows in the workers table)")
        count.add_metric([], len(rows))
        yield count
        age = GaugeMetricFamily("presso_worker_heartbeat_age_seconds", "Seconds since each worker's last beat",
                                labels=["worker"])
        for worker_id, beat in rows:
            beat = beat if beat.tzinfo else beat.replace(tzinfo=dt.UTC)
            age.add_metric([worker_id], max(0.0, (now - beat).total_seconds()))
        yield age
