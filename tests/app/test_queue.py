"""The job queue and the rate limiter on the real Redis: a key prefix keeps a deployment's keys to itself."""

from __future__ import annotations

import json
import uuid
from typing import Any

from svc_helpers import drop_redis_keys


def test_key_prefix_keeps_published_jobs_under_it(make_settings: Any, redis_url: str) -> None:
    import redis

    from presso.app.core.queue import CeleryPublisher, make_celery

    prefix = f"presso-iso-{uuid.uuid4().hex[:8]}:"
    r = redis.Redis.from_url(redis_url)
    bare_before = r.llen("cpu")
    celery = make_celery(make_settings(broker_key_prefix=prefix))
    try:
        job_id = uuid.uuid4().hex
        CeleryPublisher(celery).publish(job_id, "cpu")
        assert r.llen(f"{prefix}cpu") == 1
        message = json.loads(r.lindex(f"{prefix}cpu", 0) or b"{}")
        assert message["headers"]["task"] == "presso.run_job" and job_id in message["headers"]["argsrepr"]
        assert r.llen("cpu") == bare_before  # nothing reached the queue another deployment would read
    finally:
        celery.close()
        r.close()
        drop_redis_keys(redis_url, prefix)


def test_rate_limiter_keys_carry_the_prefix(redis_url: str) -> None:
    import redis

    from presso.app.core.ratelimit import make_rate_limiter

    prefix = f"presso-iso-{uuid.uuid4().hex[:8]}:"
    limiter = make_rate_limiter(redis_url, rate=1, burst=1, key_prefix=prefix)
    r = redis.Redis.from_url(redis_url)
    try:
        assert limiter.acquire("k1") == 0.0
        assert limiter.acquire("k1") > 0  # the bucket is empty: the second call must wait
        assert r.exists(f"{prefix}presso:rl:k1") and not r.exists("presso:rl:k1")
    finally:
        r.close()
        drop_redis_keys(redis_url, prefix)
