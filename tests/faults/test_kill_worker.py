"""kill -9 during download, compression and upload, at random moments inside each stage.

Per seed: three jobs, each killed once in its own stage; the process killed is either the job's child
(what the OOM killer does) or, for one job chosen by the seed, the whole worker (main process, reaper and
child: a lost node), which a fresh worker then replaces. A fourth job runs untouched. The lease expires,
the surviving worker's reaper requeues and republishes, and every job must end `succeeded` with exactly
one manifest whose files all match their sha256. Temp dirs the killed attempts left are removed.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
from faultkit import STAGE_DELAY_S, Cluster

STAGES = ("fetch", "compress", "upload")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill9_during_each_stage(cluster: Cluster, seed: int) -> None:
    rng = random.Random(seed)
    whole = rng.choice(STAGES)  # which stage loses the whole worker instead of only the job process
    jobs = {stage: cluster.submit() for stage in rng.sample(STAGES, k=3)}
    control = cluster.submit()
    killed: dict[str, tuple[str, int, float]] = {}
    errors: list[BaseException] = []

    def killer(stage: str, job_id: str, jitter: float) -> None:
        try:
            pid = cluster.wait_marker(job_id, stage)
            time.sleep(jitter)
            if stage == whole:
                worker = cluster.worker_of(pid)
                worker.kill9()
                cluster.start_worker()  # the replacement boots while the other worker carries on
                killed[job_id] = ("worker", pid, jitter)
            else:
                os.kill(pid, signal.SIGKILL)
                killed[job_id] = ("child", pid, jitter)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=killer, args=(stage, job_id, rng.uniform(0.0, 0.8 * STAGE_DELAY_S)))
               for stage, job_id in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=200)
    assert not errors, errors
    assert set(killed) == set(jobs.values()), killed
    ids = [*jobs.values(), control]
    cluster.wait_terminal(ids, timeout=240)
    rows = cluster.check_invariants(ids)
    for stage, job_id in jobs.items():
        assert rows[job_id].attempt >= 2, (stage, killed[job_id])  # the killed attempt never published
    assert cluster.leftover_job_dirs(ids) == []
    # keep two workers for the next test
    cluster.wait_ready(cluster.live_workers())
