"""What a worker process needs: settings, database, store, publisher. Built once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from presso.app.core.db import make_engine, make_session_factory
from presso.app.core.queue import CeleryPublisher, Publisher, make_celery
from presso.app.core.settings import Settings, get_settings
from presso.app.storage import ArtifactStore, make_store


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    store: ArtifactStore
    publisher: Publisher

    @classmethod
    def from_settings(cls, settings: Settings, *, publisher: Publisher | None = None) -> WorkerContext:
        return cls(
            settings=settings,
            session_factory=make_session_factory(make_engine(settings)),
            store=make_store(settings),
            publisher=publisher or CeleryPublisher(make_celery(settings)),
        )


@lru_cache(maxsize=4)
def _context_for(pid: int) -> WorkerContext:
    return WorkerContext.from_settings(get_settings())


def get_context() -> WorkerContext:
    """One context per process: pooled connections must not cross a fork."""
    return _context_for(os.getpid())
