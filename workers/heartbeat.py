"""A thread that keeps a claimed job's lease alive, stores progress and notices cancellation."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from presso.workers import lease

log = logging.getLogger(__name__)


class Heartbeat:
    """``progress`` and ``should_stop`` are the callbacks handed to the library."""

    def __init__(
        self, factory: sessionmaker[Session], claim: lease.Claim, *, lease_s: float, time_limit_s: float,
        interval_s: float | None = None,
    ) -> None:
        self.factory, self.claim, self.lease_s = factory, claim, lease_s
        self.interval_s = interval_s or max(0.2, min(2.0, lease_s / 4))
        self.deadline = time.monotonic() + time_limit_s
        self.cancelled = False
        self.lost = False
        self.timed_out = False
        self._stage: str | None = "starting"
        self._fraction = 0.0
        self._dirty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{claim.job_id}", daemon=True)

    # Callbacks for the library -----------------------------------------------------------------
    def progress(self, stage: str, fraction: float) -> None:
        with self._lock:
            self._stage, self._fraction, self._dirty = stage, float(fraction), True

    def should_stop(self) -> bool:
        if time.monotonic() > self.deadline:
            self.timed_out = True
        return self.cancelled or self.lost or self.timed_out

    # The thread ----------------------------------------------------------------------------------
    def beat(self) -> None:
        with self._lock:
            stage, fraction, self._dirty = self._stage, self._fraction, False
        try:
            cancel = lease.heartbeat(self.factory, self.claim, lease_s=self.lease_s, stage=stage, fraction=fraction)
        except Exception:  # noqa: BLE001 - a database blip must not kill the job; the lease has slack
            log.warning("heartbeat for job %s failed", self.claim.job_id, exc_info=True)
            return
        if cancel is None:
            if not self.lost:
                log.warning("job %s attempt %d lost its lease; stopping", self.claim.job_id, self.claim.attempt)
            self.lost = True
        elif cancel:
            self.cancelled = True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()
            if self.lost:
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (waits for a beat in flight); call before finishing the job, or the next beat
        would find the lease released by the finish and report it lost."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
