"""TEST-ONLY fault-injection hooks. Inert unless their environment variables are set; never set them in production.

``PRESSO_TEST_STAGE_DELAY``
    Seconds to pause a job once per stage, at the first progress report strictly inside the stage
    (0 < fraction < 1): ``fetch`` after the model files are on disk and before the data files,
    ``compress`` after the first layer, ``upload`` after the first artifact file is stored. Either one
    number for all three stages or ``fetch=1.5,compress=1,upload=0.5``. The fault-injection tests use the
    pause to kill the worker (or the S3 server) at a known point.
``PRESSO_TEST_STAGE_MARKERS``
    A directory. At each pause the hook writes ``<job_id>.<stage>.<attempt>`` containing the pid of the
    process that runs the job, so a test knows which process to kill and when.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
STAGES = ("fetch", "compress", "upload")
ProgressFn = Callable[[str, float], None]


def stage_delays(raw: str | None) -> dict[str, float]:
    if not raw:
        return {}
    if "=" not in raw:
        return dict.fromkeys(STAGES, float(raw))
    delays: dict[str, float] = {}
    for part in raw.split(","):
        stage, _, seconds = part.partition("=")
        delays[stage.strip()] = float(seconds)
    return delays


def with_stage_delays(progress: ProgressFn, job_id: str, attempt: int) -> ProgressFn:
    """``progress`` itself unless PRESSO_TEST_STAGE_DELAY is set."""
    delays = stage_delays(os.environ.get("PRESSO_TEST_STAGE_DELAY"))
    if not delays:
        return progress
    markers = os.environ.get("PRESSO_TEST_STAGE_MARKERS")
    paused: set[str] = set()

    def delayed(stage: str, fraction: float) -> None:
        progress(stage, fraction)
        base = stage.split(":", 1)[0]  # "compress:1/2:gptq" -> "compress"
        if base in delays and base not in paused and 0.0 < fraction < 1.0:
            paused.add(base)
            if markers:
                marker = Path(markers) / f"{job_id}.{base}.{attempt}"
                marker.write_text(str(os.getpid()))
            log.warning("TEST HOOK: job %s attempt %d pauses %.2f s in %s", job_id, attempt, delays[base], stage)
            time.sleep(delays[base])

    return delayed
