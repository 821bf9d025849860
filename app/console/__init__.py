"""The web console at /console: server-rendered pages over the API's own service functions.

``install_console(app, settings)`` mounts it (routes, ``/console/static``, the Jinja2 templates shipped in
this package). Sign in with an API key; pages: jobs (filters, cursor pages, live progress), a job (metrics,
per-layer charts, timings, attempts, recipe, downloads with sha256), compare (a metric against bytes),
submit (a form generated from GET /v1/methods). Sessions and CSRF: ``session.py``; settings (the signing
secret, rotation): ``settings.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from presso.app.console.deps import Console, ConsoleState
from presso.app.console.session import Signer
from presso.app.console.settings import ConsoleSettings, signing_secrets
from presso.app.core.settings import Settings

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
# Pages carry no inline script or style (charts are SVG markup with classes): nothing but our own files runs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def make_environment() -> Environment:
    from presso.app.console.views import FILTERS

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters.update(FILTERS)
    return env


def install_console(app: FastAPI, settings: Settings, console: ConsoleSettings | None = None) -> None:
    from presso.app.console.routes import router

    console = console or ConsoleSettings()
    env = make_environment()

    def render(ctx: Console | None, template: str, status_code: int = 200, headers: dict[str, str] | None = None,
               **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(ctx=ctx, poll_s=console.poll_interval_s, **context)
        return HTMLResponse(html, status_code=status_code,
                            headers={"Content-Security-Policy": CSP, **(headers or {})})

    app.state.console = ConsoleState(settings=console, signer=Signer(signing_secrets(console, settings.data_dir)),
                                     render=render)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(router)
