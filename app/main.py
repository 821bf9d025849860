"""The FastAPI app factory. ``uvicorn --factory app.main:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from presso.app.api.apidocs import install_api_docs
from presso.app.api.routes import admin, artifacts, health, jobs, methods, plan, webhooks
from presso.app.console import install_console
from presso.app.core.db import make_engine, make_session_factory
from presso.app.core.errors import install_error_handlers
from presso.app.core.logs import request_context
from presso.app.core.metrics import metrics_middleware
from presso.app.core.queue import CeleryPublisher, Publisher, make_celery
from presso.app.core.ratelimit import make_rate_limiter
from presso.app.core.settings import Settings, get_settings
from presso.app.storage import ArtifactStore, make_store

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, *, publisher: Publisher | None = None, store: ArtifactStore | None = None
) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="Presso",
        version="0.1.0",
        description="Compression-as-a-service: submit a model and a recipe, get a compressed artifact.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc from local assets: install_api_docs below
        redoc_url=None,
    )
    celery = make_celery(settings) if publisher is None else None
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.store = store or make_store(settings)
    app.state.celery = celery
    app.state.publisher = publisher or CeleryPublisher(celery)  # type: ignore[arg-type]
    app.state.rate_limiter = make_rate_limiter(
        settings.resolved_broker_url, settings.rate_limit_per_s, settings.rate_limit_burst, settings.broker_key_prefix
    )
    install_error_handlers(app)
    app.middleware("http")(metrics_middleware)
    app.middleware("http")(request_context)  # outermost: log lines carry the job id and the tenant
    for module in (jobs, artifacts, methods, admin, health, plan, webhooks):
        app.include_router(module.router)
    install_api_docs(app)
    install_console(app, settings)  # /console: the web console
    return app
