"""Thin Celery tasks: the message carries a job id; the runner does the work."""

from __future__ import annotations

import logging

from presso.app.core.queue import RUN_JOB_TASK
from presso.workers.celery_app import celery

log = logging.getLogger(__name__)


@celery.task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> str:
    from presso.workers.context import get_context
    from presso.workers.runner import run_job as run

    return run(str(job_id), get_context())
