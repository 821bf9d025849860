"""The Celery app of the workers: JSON only, prefetch 1, acks late, queues gpu and cpu.

Start with ``presso worker`` (or ``celery -A workers.celery_app worker -Q gpu,cpu``). The main
process also runs the reaper; each job runs in a fresh child process (max_tasks_per_child = 1).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_ready, worker_shutdown

from presso.app.core.queue import make_celery
from presso.app.core.settings import get_settings

log = logging.getLogger(__name__)
celery = make_celery(get_settings())
celery.conf.imports = ("presso.workers.tasks",)
_reaper: Any = None


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    """Celery's handlers in Presso's format (PRESSO_LOG_FORMAT=json: JSON lines with job_id and tenant_id)."""
    from presso.app.core.logs import install

    for handler in logger.handlers:
        install(handler)


@worker_init.connect
def _preload(**_: Any) -> None:
    """Import the job code (torch included) once in the parent, so each fresh per-job child forks warm.

    Importing torch does not initialise CUDA, so forking afterwards is safe. transformers resolves its
    classes lazily; without touching them here every child spent ~10 s importing them on its first
    ``from_pretrained`` (measured on the tiny-model soak), so the common loading path is resolved too.
    """
    if not get_settings().worker_preload:
        return
    import presso.compression.job  # noqa: F401
    import presso.fetch.api  # noqa: F401
    import presso.workers.runner  # noqa: F401

    try:
        import transformers
        import transformers.core_model_loading  # noqa: F401
        import transformers.models.llama.modeling_llama  # noqa: F401

        for name in ("AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "PreTrainedTokenizerFast"):
            getattr(transformers, name)
    except Exception:  # noqa: BLE001 - an optimisation only; the child imports what it needs
        log.warning("preloading transformers failed", exc_info=True)
    try:
        # botocore loads its service models on the first client: do it once here, not in every child.
        # The client is dropped unused (no sockets), so nothing connection-bound crosses the fork.
        from presso.app.storage import make_store

        make_store(get_settings())
    except Exception:  # noqa: BLE001 - an optimisation only
        log.warning("preloading the store client failed", exc_info=True)

    log.info("job modules preloaded")


@worker_init.connect
def _register(**_: Any) -> None:
    """Register this worker (workers/liveness.py) before the pool forks its job children, which inherit the id
    and stamp it on the jobs they claim. A failure here is retried by the first beat."""
    settings = get_settings()
    if settings.worker_heartbeat_s <= 0:
        return
    from presso.workers import liveness
    from presso.workers.context import get_context

    try:
        liveness.register(get_context().session_factory, settings.worker_queues)
    except Exception:  # noqa: BLE001 - the database may come up later; beat() inserts the row then
        log.warning("registering the worker failed; the first heartbeat retries", exc_info=True)


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    global _reaper
    from presso.workers import liveness
    from presso.workers.context import get_context
    from presso.workers.reaper import ReaperThread

    ctx = get_context()
    _reaper = ReaperThread(ctx.session_factory, ctx.publisher, ctx.settings, liveness.current())
    _reaper.start()
    from presso.workers.webhooks import WebhookThread

    WebhookThread(ctx.session_factory, ctx.settings).start()  # daemon: ends with the worker
    log.info("reaper running every %.0f s; liveness every %.1f s (dead after %.0f s)", ctx.settings.reaper_interval_s,
             ctx.settings.worker_heartbeat_s, ctx.settings.worker_dead_after_s)


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop_event.set()
        _reaper.join(timeout=5)
    from presso.workers import liveness

    identity = liveness.current()
    if identity is not None:
        from presso.workers.context import get_context

        try:
            liveness.deregister(get_context().session_factory, identity)
        except Exception:  # noqa: BLE001 - the row then ages out; its jobs (none after a warm stop) are requeued
            log.warning("deregistering the worker failed", exc_info=True)


app = celery
