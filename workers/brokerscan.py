"""Which jobs have a message in the broker: the reaper re-publishes only jobs whose message is gone.

A queued job behind a backlog and a queued job whose message was lost (Redis flushed or restarted, a crash
between commit and publish) look the same in Postgres. The broker tells them apart:

- a **waiting** message is a Redis list entry (kombu's Redis transport: the list ``<BROKER_KEY_PREFIX><queue>``,
  plus one list per priority step) or a file in the queue folder (``filesystem://``, embedded mode);
- a **taken** message was handed to a worker and not yet acknowledged (Redis' ``unacked`` hash, with the time
  of delivery in ``unacked_index``): a worker about to claim it (its pool may be replacing the previous job's
  child process), or holding a retry's countdown. Taken long ago by a job still queued, it belongs to a
  worker that is gone.

``read_broker`` returns None when the broker cannot be read (another transport, or it is down); the reaper
then falls back to its time-based backoff.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presso.app.core.queue import QUEUES, RUN_JOB_TASK
from presso.app.core.settings import Settings

log = logging.getLogger(__name__)
PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep
PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's default priority_steps: list "<queue>" for 0, "<queue>\x06\x16<n>" else
CHUNK = 1000


@dataclass
class BrokerView:
    waiting: set[str] = field(default_factory=set)  # job ids with a message waiting in a queue
    taken: dict[str, float] = field(default_factory=dict)  # job id -> when a worker took its latest message (epoch s)


def job_id_of(raw: bytes | str | dict[str, Any]) -> str | None:
    """The job id a ``presso.run_job`` message carries (protocol 2: base64 JSON body [args, kwargs, embed])."""
    try:
        msg = raw if isinstance(raw, dict) else json.loads(raw)
        headers = msg.get("headers") or {}
        if headers.get("task") != RUN_JOB_TASK:
            return None
        body: Any = msg.get("body")
        if (msg.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def _redis_view(settings: Settings, queues: Iterable[str]) -> BrokerView:
    import redis

    client = redis.Redis.from_url(settings.resolved_broker_url, socket_timeout=5, socket_connect_timeout=3)
    prefix = settings.broker_key_prefix
    view = BrokerView()
    try:
        for queue in queues:
            for pri in PRIORITY_STEPS:
                key = prefix + (queue if pri == 0 else f"{queue}{PRIORITY_SEP}{pri}")
                start = 0
                while True:
                    items = client.lrange(key, start, start + CHUNK - 1)
                    for raw in items:
                        job_id = job_id_of(raw)
                        if job_id:
                            view.waiting.add(job_id)
                    if len(items) < CHUNK:
                        break
                    start += CHUNK
        index: Any = client.zrange(f"{prefix}unacked_index", 0, -1, withscores=True)
        delivered = {_text(tag): float(at) for tag, at in index}
        unacked: Any = client.hgetall(f"{prefix}unacked")
        for tag, entry in unacked.items():
            try:
                job_id = job_id_of(json.loads(entry)[0])
            except (ValueError, TypeError, IndexError):
                continue
            if job_id:
                view.taken[job_id] = max(view.taken.get(job_id, 0.0), delivered.get(_text(tag), 0.0))
    finally:
        client.close()
    return view


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _folder_view(folder: Path, queues: Iterable[str]) -> BrokerView:
    suffixes = tuple(f".{q}.msg" for q in queues)
    view = BrokerView()
    for path in folder.iterdir() if folder.is_dir() else ():
        if path.name.endswith(suffixes):
            try:
                job_id = job_id_of(path.read_bytes())
            except OSError:  # consumed meanwhile
                continue
            if job_id:
                view.waiting.add(job_id)
    return view


def read_broker(settings: Settings, queues: Iterable[str] = QUEUES) -> BrokerView | None:
    """The jobs with a message waiting in the broker or taken by a worker, or None when that cannot be known."""
    url = settings.resolved_broker_url
    try:
        if url.startswith(("redis://", "rediss://")):
            return _redis_view(settings, queues)
        if url.startswith("filesystem://"):
            return _folder_view(settings.queue_dir / "messages", queues)
    except Exception:  # noqa: BLE001 - broker down or unreadable: the caller falls back to its backoff
        log.warning("could not read the broker's messages", exc_info=True)
    return None
