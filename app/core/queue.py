"""The Celery client side: one configured Celery app and a publisher that sends job ids only."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery import Celery
from kombu import Queue

from presso.app.core.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "presso.run_job"
RANK_SIZES = (2, 4, 8)  # queues of multi-rank jobs: workers with at least that many GPUs consume gpu-x<N>
QUEUES = ("gpu", "cpu", *(f"gpu-x{n}" for n in RANK_SIZES))


def multi_gpu_queue(ranks: int) -> str:
    """The queue of a job of ``ranks`` > 1 ranks (JobSpec.resources.gpus, at most the largest size)."""
    return f"gpu-x{next(n for n in RANK_SIZES if n >= ranks)}"


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.resolved_broker_url
    conf: dict[str, Any] = {
        "broker_url": url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_max_tasks_per_child": 1,
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_default_queue": "cpu",
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "task_time_limit": settings.job_time_limit_s,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "worker_hijack_root_logger": False,
    }
    if url.startswith("filesystem://"):
        folder = settings.queue_dir
        for sub in ("messages", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "control_folder": str(folder / "control"),  # kombu's default is ./control in the cwd
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
        conf["worker_enable_remote_control"] = False
        conf["worker_send_task_events"] = False
    elif url.startswith(("redis://", "rediss://")):
        # Jobs run for hours; redelivery is harmless (fenced claim) but should be rare.
        conf["broker_transport_options"] = {"visibility_timeout": settings.job_time_limit_s + 600}
        if settings.broker_key_prefix:  # every key kombu touches: queues, bindings, unacked, pidbox
            conf["broker_transport_options"]["global_keyprefix"] = settings.broker_key_prefix
    return conf


def make_celery(settings: Settings) -> Celery:
    app = Celery("presso")
    app.conf.update(celery_config(settings))
    return app


class Publisher(Protocol):
    def publish(self, job_id: str, queue: str, *, countdown: float = 0) -> None: ...


class CeleryPublisher:
    """Sends ``presso.run_job(job_id)`` by name, so the API never imports the worker code."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery

    def publish(self, job_id: str, queue: str, *, countdown: float = 0) -> None:
        self.celery.send_task(
            RUN_JOB_TASK, args=[job_id], queue=queue, routing_key=queue, countdown=countdown or None,
            retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
        log.info("published job %s to %s", job_id, queue)
