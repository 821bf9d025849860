"""Worker liveness: each worker process has a row in ``workers`` that its main process beats every
``worker_heartbeat_s``; a claimed job row names the worker (``worker_id``) and the process running it
(``worker_pid``, a child of that worker's main process).

Two failures are then seen within seconds instead of at lease expiry (workers/reaper.py acts on them):

- the job's process died under a live worker (kill -9, the OOM killer): the worker's own main process sees
  that the pid on its running job is no longer its child and requeues the job;
- the whole worker is gone (node lost, kill -9 of the process group): its row stops beating, and any other
  reaper requeues its running jobs once the beat is ``worker_dead_after_s`` old.

Beats and their checks use the database's clock on Postgres, so hosts' clocks need not agree. The main
process is idle apart from consuming messages, so its beat does not stall behind a job's compute the way
a job's own lease heartbeat can; the job lease stays as the backstop for everything else (a hung job
process, a worker that never registered).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
from dataclasses import dataclass

from sqlalchemy import delete, text, update
from sqlalchemy.orm import Session, sessionmaker

from presso.app.core.db import session_scope, utcnow
from presso.app.jobs.models import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    worker_id: str
    hostname: str
    pid: int


_HAVE_PROC = os.path.exists("/proc/self/stat")
_identity: Identity | None = None  # set in the worker's main process; its forked job children inherit it


def current() -> Identity | None:
    return _identity


def current_worker_id() -> str | None:
    """The registered worker this process belongs to (its main process or a job child forked from it)."""
    return _identity.worker_id if _identity is not None else None


def new_identity() -> Identity:
    host = socket.gethostname()[:60] or "host"
    pid = os.getpid()
    return Identity(f"{host}-{pid}-{secrets.token_hex(4)}", host, pid)


def db_now(session: Session) -> dt.datetime:
    """The database server's clock on Postgres (one clock for every host), this host's elsewhere."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.execute(text("SELECT clock_timestamp()")).scalar_one()
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]
    return utcnow()


def register(factory: sessionmaker[Session], queues: list[str] | tuple[str, ...] = ()) -> Identity:
    """Insert this worker's row and make it the process's identity (children forked later inherit it)."""
    global _identity
    identity = _identity = _identity or new_identity()  # kept even if the insert fails: beat() inserts the row
    with session_scope(factory) as session:
        now = db_now(session)
        session.merge(Worker(id=identity.worker_id, hostname=identity.hostname, pid=identity.pid,
                             queues=",".join(queues)[:255], started_at=now, heartbeat_at=now))
    log.info("worker %s registered", identity.worker_id)
    return identity


def beat(factory: sessionmaker[Session], identity: Identity, queues: list[str] | tuple[str, ...] = ()) -> None:
    """Refresh the row; re-insert it when a reaper removed it (this worker was silent past the cleanup age)."""
    with session_scope(factory) as session:
        now = db_now(session)
        result = session.execute(update(Worker).where(Worker.id == identity.worker_id).values(heartbeat_at=now))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            log.warning("worker %s had no row (declared dead earlier?); registering again", identity.worker_id)
            session.merge(Worker(id=identity.worker_id, hostname=identity.hostname, pid=identity.pid,
                                 queues=",".join(queues)[:255], started_at=now, heartbeat_at=now))


def deregister(factory: sessionmaker[Session], identity: Identity) -> None:
    """Remove the row at shutdown: a job still running (a cold shutdown) is requeued by the next reaper pass."""
    with session_scope(factory) as session:
        session.execute(delete(Worker).where(Worker.id == identity.worker_id))


def is_my_live_child(pid: int) -> bool:
    """Whether ``pid`` is this process, or a child of it that has not exited (a zombie has exited).

    A pid that names a process which is not our child (the pid was reused) counts as dead. Linux reads
    /proc; elsewhere only "the pid exists" can be checked.
    """
    if pid == os.getpid():
        return True
    if not _HAVE_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
    return fields[0] not in (b"Z", b"X") and int(fields[1]) == os.getpid()
