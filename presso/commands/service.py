"""serve, api, worker, migrate, reaper."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
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


class _Stopped(BaseException):
    """SIGTERM or SIGINT reached serve: unwind cmd_serve so that its finally stops the worker."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopOnSignals:
    """SIGTERM and SIGINT raise _Stopped in serve's main thread, once; set `stopping` to ignore them.

    uvicorn captures both signals while it serves, shuts down, puts these handlers back and raises the
    signal again: without them SIGTERM killed serve outright (no finally, the worker was left running)."""

    def __init__(self) -> None:
        self.stopping = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self)

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            raise _Stopped(signum)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from presso.app.core.migrate import upgrade
    from presso.app.core.settings import get_settings
    from presso.app.main import create_app

    set_env("data_dir", args.data_dir)
    worker = None
    signals: _StopOnSignals | None = None
    try:
        signals = _StopOnSignals()
        settings = get_settings()
        upgrade(settings)
        key = ensure_dev_key()
        worker = None if args.no_worker else _spawn_worker()
        print(f"Presso API on http://{args.host}:{args.port}  (docs: /docs)", flush=True)
        if key:
            print(f"dev API key (also in {settings.dev_key_path}): {key}", flush=True)
        from uvicorn.config import LOGGING_CONFIG

        from presso.app.core.logs import uvicorn_log_config

        config = uvicorn_log_config()  # PRESSO_LOG_FORMAT=json: uvicorn's lines as JSON too
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning",
                    log_config=config or LOGGING_CONFIG)
    except _Stopped as stopped:
        return 128 + stopped.signum
    finally:
        if signals is not None:
            signals.stopping = True  # a further signal must not cut _stop short
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


_SERVE_PID_ENV = "PRESSO_SERVE_PID"  # set for the worker that serve starts: the pid it must not outlive


def _spawn_worker() -> subprocess.Popen[bytes]:
    """The worker leads a session (and process group) of its own, holding Celery's pool children, so serve
    can signal the whole tree (a terminal's Ctrl-C reaches serve only; serve stops the worker)."""
    env = {**os.environ, _SERVE_PID_ENV: str(os.getpid())}
    return subprocess.Popen([sys.executable, "-m", "presso.cli", "worker"], env=env, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM to the worker (Celery's warm shutdown, as before), then SIGKILL to its process group once it
    has exited or after `timeout`: nothing it started survives it."""
    if not hasattr(os, "killpg"):  # no process groups (Windows): the worker alone
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    # wait without reaping: the exited leader (a zombie) keeps its pid, so the group id cannot be reused
    # before killpg below
    while proc.returncode is None and time.monotonic() < deadline:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        time.sleep(0.05)
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent: int) -> None:
    """A worker started by serve stops when serve is gone, even when serve was SIGKILLed: SIGTERM (Celery's
    warm shutdown) from the kernel on Linux (PR_SET_PDEATHSIG), elsewhere from a watchdog thread that sees the
    parent pid change; 15 s later the watchdog SIGKILLs the worker's process group (its pool children)."""
    pdeathsig = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            pdeathsig = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # serve was gone before prctl took effect
        raise SystemExit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("worker: presso serve (pid %d) is gone; stopping", parent)
        if not pdeathsig:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(15.0)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpid(), signal.SIGKILL)
        else:
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="presso-parent-watchdog", daemon=True).start()


def cmd_worker(args: argparse.Namespace) -> int:
    from presso.app.core.settings import get_settings

    parent = os.environ.pop(_SERVE_PID_ENV, None)
    if parent and parent.isdigit():
        _exit_with_parent(int(parent))
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
    from presso.workers.reaper import ReaperThread, reap_once

    ctx = get_context()
    if args.once:
        print(reap_once(ctx.session_factory, ctx.publisher, ctx.settings))
        return 0
    from presso.workers.webhooks import WebhookThread

    WebhookThread(ctx.session_factory, ctx.settings).start()  # job webhooks every PRESSO_WEBHOOK_POLL_S
    # dead workers every PRESSO_WORKER_HEARTBEAT_S, leases and lost messages every PRESSO_REAPER_INTERVAL_S
    ReaperThread(ctx.session_factory, ctx.publisher, ctx.settings).run()
    return 0
