"""Submit latency of POST /v1/jobs under a fixed open-loop request rate, against Postgres.

Starts its own API (`presso api`, N processes) on loopback with Postgres + Redis unless --server is given,
creates a tenant, then for each rate sends requests on a fixed schedule for --duration seconds and
prints a markdown table of p50 / p99 / max latency, achieved rate and errors.

Examples:
  .venv/bin/python bench/submit_latency.py                       # rates 50, 200, 500 req/s
  .venv/bin/python bench/submit_latency.py --rates 50,200 --duration 20 --api-workers 8
  .venv/bin/python bench/submit_latency.py --rates 50 --plain-uvicorn            # uvicorn's own --workers
  .venv/bin/python bench/submit_latency.py --server http://127.0.0.1:8000 --api-key presso_sk_...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a script from a checkout
ADMIN_KEY = "bench-admin-" + uuid.uuid4().hex
BODY = {"model_uri": "s3://bench-models/tiny", "recipe": {"steps": [{"method": "rtn", "bits": 4, "group_size": 64}]}}


@dataclass
class Result:
    rate: int
    sent: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    achieved: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "PRESSO_DATABASE_URL": args.database_url, "PRESSO_BROKER_URL": args.broker_url,
           "PRESSO_ADMIN_KEY": ADMIN_KEY, "PRESSO_RATE_LIMIT_PER_S": "0",
           "PRESSO_STORE_URL": str(ROOT / ".presso" / "bench-artifacts"),
           "PRESSO_MAX_ACTIVE_JOBS_PER_TENANT": "10000000"}
    from presso.app.core.migrate import upgrade
    from presso.app.core.settings import Settings

    ensure_database(args.database_url)
    upgrade(Settings(database_url=args.database_url))
    port = _free_port()
    if args.plain_uvicorn:  # uvicorn's own --workers mode, for comparison (Nagle stays on: app/core/server.py)
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "presso.app.main:create_app",
               "--workers", str(args.api_workers)]
    else:  # what production runs (the Docker image's command)
        cmd = [sys.executable, "-m", "presso.cli", "api", "--workers", str(args.api_workers)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("API did not start")


def ensure_database(url: str) -> None:
    """Create the benchmark's database on the Postgres server of ``url`` when missing."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(f"host={u.host} port={u.port or 5432} user={u.username} dbname=postgres",
                         autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (u.database,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{u.database}"')


def make_key(url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    tenant = httpx.post(f"{url}/v1/admin/tenants", json={"name": f"bench-{uuid.uuid4().hex[:8]}",
                                                         "max_active_jobs": 10_000_000}, headers=admin).json()
    resp = httpx.post(f"{url}/v1/admin/tenants/{tenant['id']}/keys", json={"name": "bench"}, headers=admin)
    return str(resp.json()["secret"])


async def run_rate(url: str, key: str, rate: int, duration: float) -> Result:
    n = int(rate * duration)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=30) as client:

        async def one(at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            start = time.perf_counter()
            try:
                resp = await client.post("/v1/jobs", json=BODY)
                ok = resp.status_code == 202
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

        t0 = time.perf_counter() + 0.2
        began = time.perf_counter()
        await asyncio.gather(*(one(t0 + i / rate) for i in range(n)))
        elapsed = time.perf_counter() - began
    q = statistics.quantiles(latencies, n=100)
    return Result(rate, n, errors, 1000 * q[49], 1000 * q[98], 1000 * max(latencies), n / elapsed)


def server_label(args: argparse.Namespace) -> str:
    if args.server:
        return f"the server at {args.server}"
    cmd = "uvicorn --factory app.main:create_app" if args.plain_uvicorn else "presso api"
    return f"`{cmd} --workers {args.api_workers}`"


def table(results: list[Result], server: str) -> str:
    lines = [f"POST /v1/jobs to {server}, Postgres + Redis on loopback, open-loop load",
             "", "| target req/s | requests | errors | p50 ms | p99 ms | max ms | achieved req/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.rate} | {r.sent} | {r.errors} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} | "
                     f"{r.achieved:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="50,200,500", help="comma-separated target rates (req/s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--api-workers", type=int, default=4)
    parser.add_argument("--plain-uvicorn", action="store_true",
                        help="start `uvicorn --workers N` instead of `presso api` (for comparison)")
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/presso_bench")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--server", help="benchmark a running server instead (needs --api-key)")
    parser.add_argument("--api-key")
    args = parser.parse_args()
    proc = None
    if args.server:
        url, key = args.server, args.api_key
        if not key:
            parser.error("--server needs --api-key")
    else:
        proc, url = start_api(args)
        key = make_key(url)
    try:
        asyncio.run(run_rate(url, key, 20, 1.0))  # warm-up
        results = [asyncio.run(run_rate(url, key, int(r), args.duration)) for r in args.rates.split(",")]
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            import redis

            redis.Redis.from_url(args.broker_url).flushdb()  # the benchmark's unconsumed messages
    print(table(results, server_label(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
