"""serve, api, worker, migrate, reaper."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from presso.commands.common import help_formatter, set_env

log = logging.getLogger("presso")


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="embedded service: API + one worker + SQLite + local store",
                       formatter_class=help_formatter(), epilog="""examples:
  presso serve
  PRESSO_ALLOWED_FILE_ROOTS=$HOME/models presso serve --port 8080
The first start creates a 'default' tenant and writes an API key to DATA_DIR/dev-api-key
(the CLI client picks it up). PRESSO_AUTH=disabled turns keys off entirely (local use only).""")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", help="where SQLite, queue folders and artifacts live (default ./.presso)")
    p.add_argument("--no-worker", action="store_true", help="API only")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="production API server: N uvicorn processes (settings from the environment)",
                       formatter_class=help_formatter(), epilog="""examples:
  presso api --host 0.0.0.0 --port 8000 --workers 4
  PRESSO_DATABASE_URL=postgresql+psycopg://... PRESSO_BROKER_URL=redis://... presso api
Runs no migrations and no worker (see `presso migrate`, `presso worker`). Connections get TCP_NODELAY
(uvicorn's own --workers mode leaves Nagle's algorithm on: ~40 ms on every keep-alive request).""")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=4, help="API processes (default 4)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="no line per request")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker (one job per child process)",
                       formatter_class=help_formatter(), epilog="example:\n  presso worker --queues gpu,cpu")
    p.add_argument("--queues", help="comma-separated queues (default PRESSO_WORKER_QUEUES or gpu,cpu)")
    p.add_argument("--concurrency", type=int, default=1, help="parallel jobs (one per GPU)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("reaper", help="requeue expired leases and republish lost messages",
                       formatter_class=help_formatter(), epilog="example:\n  presso reaper --once")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.set_defaults(func=cmd_reaper)


def cmd_migrate(args: argparse.Namespace) -> int:
    from presso.app.core.migrate import upgrade
    from presso.app.core.settings import get_settings

    upgrade(get_settings(), args.revision)
    print("database at", args.revision)
    return 0


def ensure_dev_key() -> str | None:
    """Create the default tenant and a key on first start; returns the key (None when auth is off)."""
    from presso.app.core.db import make_engine, make_session_factory, session_scope
    from presso.app.core.security import hash_key
    from presso.app.core.settings import get_settings
    from presso.app.tenants.models import ApiKey
    from presso.app.tenants.service import create_key, ensure_tenant

    settings = get_settings()
    if settings.auth == "disabled":
        return None
    engine = make_engine(settings)
    path = settings.dev_key_path
    try:
        with session_scope(make_session_factory(engine)) as session:
            tenant = ensure_tenant(session=session)
            if path.is_file():
                secret = path.read_text().strip()
                key = session.query(ApiKey).filter_by(key_hash=hash_key(secret), revoked_at=None).first()
                if key is not None:
                    return secret
            _, secret = create_key(session=session, tenant_id=tenant.id, name="dev")
    finally:
        engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from presso.app.core.migrate import upgrade
    from presso.app.core.settings import get_settings
    from presso.app.main import create_app

    set_env("data_dir", args.data_dir)
    settings = get_settings()
    upgrade(settings)
    key = ensure_dev_key()
    worker = None if args.no_worker else _spawn_worker()
    print(f"Presso API on http://{args.host}:{args.port}  (docs: /docs)", flush=True)
    if key:
        print(f"dev API key (also in {settings.dev_key_path}): {key}", flush=True)
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    finally:
        if worker is not None:
            _stop(worker)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from presso.app.core.server import run

    if args.workers < 1:
        print("presso api: --workers must be at least 1", file=sys.stderr)
        return 2
    run(args.host, args.port, args.workers, log_level=args.log_level, access_log=not args.no_access_log)
    return 0


def _spawn_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "presso.cli", "worker"], env=dict(os.environ))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cmd_worker(args: argparse.Namespace) -> int:
    from presso.app.core.settings import get_settings

    settings = get_settings()
    queues = args.queues or ",".join(settings.worker_queues)
    from presso.workers.celery_app import celery

    argv = ["worker", "-Q", queues, "-c", str(args.concurrency), "--pool", "prefork", "-l", args.loglevel,
            "--without-mingle", "--without-gossip"]
    if not settings.resolved_broker_url.startswith(("redis", "amqp")):
        argv.append("--without-heartbeat")
    celery.worker_main(argv)
    return 0


def cmd_reaper(args: argparse.Namespace) -> int:
    from presso.workers.context import get_context
    from presso.workers.reaper import reap_once

    ctx = get_context()
    while True:
        result = reap_once(ctx.session_factory, ctx.publisher, ctx.settings)
        log.info("reaper: %s", result)
        if args.once:
            print(result)
            return 0
        time.sleep(ctx.settings.reaper_interval_s)
