"""Keep a job's log lines on the job (table job_logs; GET /v1/jobs/{id}/logs, ``presso logs``).

While an attempt runs, ``capture`` adds a handler to the ``presso`` logger that keeps the INFO+ records of the
job's own thread and of its heartbeat thread, and writes them in batches (every ``flush_s`` or ``batch`` lines,
and at the end). Sizes are capped (``max_lines`` per attempt, ``max_chars`` per line): a chatty job cannot fill
the database. A failed write drops the batch with a warning on stderr; it never fails the job.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from presso.app.jobs.models import JobLog

MAX_LINES = 2000
MAX_CHARS = 4000


class JobLogHandler(logging.Handler):
    def __init__(self, factory: sessionmaker[Session], job_id: str, attempt: int, *, flush_s: float = 1.0,
                 batch: int = 50, max_lines: int = MAX_LINES, max_chars: int = MAX_CHARS) -> None:
        super().__init__(logging.INFO)
        self.factory, self.job_id, self.attempt = factory, job_id, attempt
        self.flush_s, self.batch, self.max_lines, self.max_chars = flush_s, batch, max_lines, max_chars
        self.threads = {threading.get_ident()}
        self.thread_names = {f"heartbeat-{job_id}"}
        self.kept = 0
        self._rows: list[dict[str, object]] = []
        self._last = time.monotonic()
        self._writing = threading.local()
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread in self.threads or record.threadName in self.thread_names

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._writing, "active", False):
            return  # a record logged while writing (never recurse)
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a bad format string must not fail the job
            text = str(record.msg)
        with self.lock:  # type: ignore[union-attr]
            if self.kept >= self.max_lines:
                return
            self.kept += 1
            if self.kept == self.max_lines:
                text = f"log truncated: at most {self.max_lines} lines are kept per attempt"
            self._rows.append({"job_id": self.job_id, "attempt": self.attempt, "level": record.levelname,
                               "at": dt.datetime.fromtimestamp(record.created, dt.UTC),
                               "message": text[: self.max_chars]})
            due = len(self._rows) >= self.batch or time.monotonic() - self._last >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            rows, self._rows, self._last = self._rows, [], time.monotonic()
        if not rows:
            return
        self._writing.active = True
        try:
            with self.factory() as session:
                session.execute(insert(JobLog), rows)
                session.commit()
        except Exception as exc:  # noqa: BLE001 - losing log lines must never fail the job
            sys.stderr.write(f"presso: {len(rows)} log lines of job {self.job_id} not stored: {exc}\n")
        finally:
            self._writing.active = False


@contextmanager
def capture(factory: sessionmaker[Session], job_id: str, attempt: int) -> Iterator[JobLogHandler]:
    """Store the job's log lines while the block runs (the calling thread is the job's thread)."""
    handler = JobLogHandler(factory, job_id, attempt)
    logger = logging.getLogger("presso")
    before = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
        handler.flush()
