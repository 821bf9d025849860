"""Per-key token buckets: in Redis when Redis is the broker (shared by every API process), else in-process."""

from __future__ import annotations

import threading
import time
from typing import Protocol

import redis

# KEYS[1] = bucket; ARGV = rate, burst, now. Returns wait seconds (0 = allowed) as a string.
_LUA = """
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1]); local ts = tonumber(b[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + (now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RateLimiter(Protocol):
    def acquire(self, key: str) -> float:
        """Take one token; return 0 when allowed, else the seconds to wait."""


class NoLimit:
    def acquire(self, key: str) -> float:
        return 0.0


class MemoryRateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, ts = self._buckets.get(key, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - ts) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


class RedisRateLimiter:
    def __init__(self, url: str, rate: float, burst: int, key_prefix: str = "") -> None:
        self.rate, self.burst, self.key_prefix = rate, burst, key_prefix
        self._client = redis.Redis.from_url(url, socket_timeout=2)
        self._script = self._client.register_script(_LUA)

    def acquire(self, key: str) -> float:
        wait = self._script(keys=[f"{self.key_prefix}presso:rl:{key}"], args=[self.rate, self.burst, time.time()])
        return float(wait)


def make_rate_limiter(broker_url: str, rate: float, burst: int, key_prefix: str = "") -> RateLimiter:
    if rate <= 0:
        return NoLimit()
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisRateLimiter(broker_url, rate, burst, key_prefix)
    return MemoryRateLimiter(rate, burst)
