"""/docs (Swagger UI) and /redoc from assets shipped in the package: they work with no network.

FastAPI's own pages load swagger-ui and redoc from a CDN (and redoc its fonts from Google), so behind a
firewall or offline they stay blank. The assets are vendored under ``static/`` unmodified from their npm
releases (versions and how to refresh them: ``static/README.md``) and served at ``/docs/assets``.
Create the app with ``docs_url=None, redoc_url=None`` and call :func:`install_api_docs`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from presso.app.api.openapi import install_openapi

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = "/docs/assets"
# Nothing but this server: redoc's sidebar footer asks cdn.redoc.ly for a logo image, which the policy blocks in
# the browser (no request leaves it; the footer hides the broken image). The pages' own bootstrap is an inline
# script (FastAPI's HTML), redoc runs a blob: worker and both inject styles.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; style-src 'self' "
       "'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'")


def _no_egress(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = CSP
    return response


def install_api_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Mount the assets and add the two pages (and Swagger's OAuth2 redirect); fix up the OpenAPI document."""
    install_openapi(app)
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or f"{docs_url}/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _no_egress(get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/swagger-ui/favicon-32x32.png",
            oauth2_redirect_url=redirect_url,
            # no call to the public validator service (the default badge fetches validator.swagger.io)
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        ))

    @app.get(redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _no_egress(get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - API reference",
            redoc_js_url=f"{root}{ASSETS}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        ))
