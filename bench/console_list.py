"""How fast the console's jobs list renders with 1,000 jobs of one tenant (not a test: prints timings).

    .venv/bin/python bench/console_list.py [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Creates a throw-away database (``presso_bench_console_*``, dropped at the end; ``--sqlite`` for a temp
SQLite file instead), inserts 1,000 succeeded / running / queued jobs with real-sized metrics, signs in to
the console in-process (TestClient: the whole ASGI stack, no network) and times full page renders: the
first page (50, the default), 200 rows (the largest page), filtered pages, and all 1,000 through the cursor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

METRICS = {
    "params_before": 134515008, "params_after": 134515008, "bytes_before": 269030016, "bytes_after": 92012544,
    "artifact_bytes": 95000000, "compression_ratio": 2.92, "bits_per_weight": 4.25, "sparsity": 0.0,
    "ppl_before": 12.1, "ppl_after": 12.6, "kl": 0.031, "ppl_increase_pct": 4.1, "eval_tokens": 4096,
    "latency": {f"batch_{b}": {"before": {"tokens_per_s": 900.0}, "after": {"tokens_per_s": 1100.0}} for b in (1, 8)},
    "timings": {"load": 3.0, "data": 20.0, "compress": 60.0, "write": 2.0, "total": 85.0},
    "steps": [{"method": "gptq", "seconds": 60.0, "eval": {"ppl_after": 12.6}}],
}


def _database(args: argparse.Namespace) -> tuple[str, Any]:
    if args.sqlite:
        path = Path(tempfile.mkdtemp(prefix="presso-bench-console-")) / "presso.db"
        return f"sqlite:///{path}", lambda: None
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(args.database_url)
    name = f"presso_bench_console_{uuid.uuid4().hex[:8]}"
    info = f"host={base.host} port={base.port or 5432} user={base.username} dbname=postgres"
    with psycopg.connect(info, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(info, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return base.set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sqlite", action="store_true", help="a temp SQLite file instead of Postgres")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from presso.app.core.migrate import upgrade
    from presso.app.core.settings import Settings
    from presso.app.jobs.models import Job
    from presso.app.main import create_app
    from presso.app.tenants.service import create_key, create_tenant

    url, drop = _database(args)
    data_dir = Path(tempfile.mkdtemp(prefix="presso-bench-console-data-"))
    try:
        settings = Settings(database_url=url, data_dir=data_dir, rate_limit_per_s=0)
        upgrade(settings)

        class NoBroker:
            def publish(self, job_id: str, queue: str, *, countdown: float = 0) -> None:
                pass

        app = create_app(settings, publisher=NoBroker())
        now = dt.datetime.now(dt.UTC)
        with app.state.session_factory() as session:
            tenant = create_tenant(session=session, name="bench")
            _, key = create_key(session=session, tenant_id=tenant.id)
            for i in range(args.jobs):
                state = "succeeded" if i % 10 else ("running" if i % 20 else "queued")
                method = ("gptq", "awq", "rtn", "wanda")[i % 4]
                created = now - dt.timedelta(minutes=args.jobs - i)
                session.add(Job(
                    tenant_id=tenant.id, state=state, model_uri=f"s3://models/llama-{i % 7}b",
                    request={"model_uri": f"s3://models/llama-{i % 7}b",
                             "recipe": {"steps": [{"method": method, "bits": 4}]}, "fallbacks": []},
                    request_hash=uuid.uuid4().hex * 2, attempt=1, created_at=created, queued_at=created,
                    started_at=created + dt.timedelta(seconds=5),
                    finished_at=created + dt.timedelta(seconds=90) if state == "succeeded" else None,
                    progress_stage="done" if state == "succeeded" else "compress:1/1:gptq",
                    progress_fraction=1.0 if state == "succeeded" else 0.4,
                    metrics=METRICS if state == "succeeded" else None,
                ))
            session.commit()

        with TestClient(app, follow_redirects=False) as client:
            page = client.get("/console/login").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            assert client.post("/console/login", data={"api_key": key, "csrf_token": token}).status_code == 303

            def timed(path: str) -> tuple[float, int, str]:
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    resp = client.get(path)
                    times.append(time.perf_counter() - t)
                    assert resp.status_code == 200, resp.text[:500]
                return statistics.median(times), resp.text.count("<tr data-job-id="), resp.text

            print(f"{args.jobs} jobs in {'SQLite' if args.sqlite else 'Postgres'}; median of {args.repeat} "
                  "full renders (query + template + ASGI), seconds:")
            for label, path in (("first page (50 rows)", "/console/jobs"),
                                ("200 rows", "/console/jobs?limit=200"),
                                ("method=gptq, 200 rows", "/console/jobs?method=gptq&limit=200"),
                                ("model contains 'llama-3', 200 rows", "/console/jobs?model=llama-3&limit=200"),
                                ("state=succeeded, 200 rows", "/console/jobs?state=succeeded&limit=200")):
                seconds, rows, _ = timed(path)
                print(f"  {label:40s} {seconds:.3f}  ({rows} rows)")
            t = time.perf_counter()
            path, total, pages = "/console/jobs?limit=200", 0, 0
            while path:
                html = client.get(path).text
                total += html.count("<tr data-job-id=")
                pages += 1
                nxt = re.search(r'id="next-page" href="([^"]+)"', html)
                path = nxt.group(1).replace("&amp;", "&") if nxt else ""
            print(f"  {'all jobs through the cursor':40s} {time.perf_counter() - t:.3f}  "
                  f"({total} rows, {pages} pages of 200)")
    finally:
        drop()


if __name__ == "__main__":
    main()
