"""Per-request console state: the session from the cookie, the tenant it acts for, CSRF-checked forms.

``ConsoleRoute`` (the console router's route class) writes the session cookie when it changed and turns
the console's exceptions into pages: not signed in -> redirect to the sign-in page; a bad CSRF token ->
403; the API's own errors (``AppError``: 404 for a job of another tenant, 409, 429, ...) -> an error page
with the API's status, code and message.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import select
from sqlalchemy.orm import Session

from presso.app.api.deps import SessionDep, SettingsDep
from presso.app.console.session import COOKIE, COOKIE_PATH, ConsoleSession, Signer
from presso.app.console.settings import ConsoleSettings
from presso.app.core.errors import AppError, RateLimited, error_body, field_path, status_for
from presso.app.core.ratelimit import RateLimiter
from presso.app.tenants.models import ApiKey, Tenant
from presso.app.tenants.service import ensure_tenant

MAX_FORM_BYTES = 512 * 1024
PREFIX = "/console"
NOTICES = {  # shown on the sign-in page after a redirect (by code: no text travels in the URL)
    "expired": "Your console session expired; sign in again.",
    "revoked": "The API key of this session was revoked; sign in with another key.",
}


@dataclass
class ConsoleState:
    """What install_console leaves on ``app.state.console``."""

    settings: ConsoleSettings
    signer: Signer
    render: Callable[..., HTMLResponse]


@dataclass
class Console:
    """One request's view of the console: session, tenant (None = not signed in), CSRF token."""

    request: Request
    state: ConsoleState
    session: ConsoleSession
    tenant: Tenant | None
    auth_disabled: bool = False
    reissue: bool = False
    notice: str | None = None  # a NOTICES code

    @property
    def notice_text(self) -> str | None:
        return NOTICES.get(self.notice or "")

    @property
    def csrf_token(self) -> str:
        return self.state.signer.csrf_token(self.session)

    def start(self, session: ConsoleSession, tenant: Tenant | None) -> None:
        """Replace the session (sign in / out): the cookie is rewritten on the response."""
        self.session, self.tenant, self.reissue = session, tenant, True

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return self.state.render(self, template, status_code=status_code, **context)


class SignInRequired(Exception):
    pass


class CsrfRejected(Exception):
    pass


def _live_tenant(db: Session, session: ConsoleSession) -> Tenant | None:
    """The session's tenant while its key is unrevoked and still that tenant's (the API's check, by key id)."""
    row = db.execute(
        select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.id == session.key_id, Tenant.id == session.tenant_id, ApiKey.revoked_at.is_(None))
    ).first()
    return row[0] if row else None


def console_context(request: Request, db: SessionDep, settings: SettingsDep) -> Console:
    state: ConsoleState = request.app.state.console
    ttl = state.settings.session_ttl_s
    loaded = state.signer.loads(request.cookies.get(COOKIE))
    notice = None
    if loaded is None:
        # A cookie for a new session only on a page load: a POST without a valid cookie (a cross-site form,
        # which SameSite=Lax sends without it) fails its CSRF check and must not replace the user's session.
        session, reissue = ConsoleSession.anonymous(ttl), request.method in ("GET", "HEAD")
        if request.cookies.get(COOKIE):
            notice = "expired"
    else:
        session, reissue = loaded  # reissue: signed with a rotated-out secret, re-sign with the newest
    tenant = None
    if settings.auth == "disabled":
        tenant = ensure_tenant(session=db)
    elif session.signed_in:
        tenant = _live_tenant(db, session)
        if tenant is None:
            session, reissue = ConsoleSession.anonymous(ttl), True
            notice = "revoked"
        else:
            limiter: RateLimiter = request.app.state.rate_limiter
            wait = limiter.acquire(session.key_id or "")
            if wait > 0:
                raise RateLimited(f"rate limit exceeded; retry in {wait:.1f}s", retry_after_s=wait)
    ctx = Console(request=request, state=state, session=session, tenant=tenant,
                  auth_disabled=settings.auth == "disabled", reissue=reissue, notice=notice)
    request.state.console = ctx
    return ctx


ConsoleDep = Annotated[Console, Depends(console_context)]


def signed_in(ctx: ConsoleDep) -> Console:
    if ctx.tenant is None:
        raise SignInRequired()
    return ctx


SignedInDep = Annotated[Console, Depends(signed_in)]


class Form:
    """A parsed ``application/x-www-form-urlencoded`` body (no python-multipart needed)."""

    def __init__(self, data: dict[str, list[str]]):
        self.data = data

    def get(self, name: str, default: str = "") -> str:
        values = self.data.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(self.data.get(name, []))

    def items(self) -> dict[str, str]:
        return {k: v[0] for k, v in self.data.items() if v}


async def read_form(request: Request) -> Form:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise CsrfRejected()  # only the console's own forms post here
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise AppError("form too large")
    return Form(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=2000))


def _same_origin(request: Request) -> bool:
    """A present Origin (or, failing it, Referer) must name this host: a second check beside the token."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    hosts = {request.headers.get("host", "").lower(), request.headers.get("x-forwarded-host", "").lower()}
    return urlsplit(origin).netloc.lower() in hosts - {""}


async def csrf_form(request: Request, ctx: ConsoleDep) -> Form:
    """The POSTed form, after its CSRF token and origin were checked against this session."""
    form = await read_form(request)
    if not _same_origin(request) or not ctx.state.signer.check_csrf(ctx.session, form.get("csrf_token")):
        raise CsrfRejected()
    return form


FormDep = Annotated[Form, Depends(csrf_form)]


def _secure(request: Request, settings: ConsoleSettings) -> bool:
    if settings.cookie_secure == "auto":
        return request.url.scheme == "https"
    return settings.cookie_secure == "always"


def write_cookie(request: Request, response: Response) -> None:
    ctx: Console | None = getattr(request.state, "console", None)
    if ctx is None or not ctx.reissue:
        return
    response.set_cookie(
        COOKIE, ctx.state.signer.dumps(ctx.session), max_age=max(1, ctx.session.expires_at - _now()),
        path=COOKIE_PATH, httponly=True, samesite="lax", secure=_secure(request, ctx.state.settings),
    )


def _now() -> int:
    import time

    return int(time.time())


def _error_page(request: Request, status: int, code: str, message: str, field: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
    if request.url.path.startswith(f"{PREFIX}/api/"):
        return JSONResponse(error_body(code, message, field=field), status_code=status, headers=headers)
    ctx: Console | None = getattr(request.state, "console", None)
    state: ConsoleState = request.app.state.console
    response = state.render(ctx, "error.html", status_code=status, code=code, message=message, field=field,
                            status=status)
    response.headers.update(headers or {})
    return response


class ConsoleRoute(APIRoute):
    """Cookie writing and HTML error pages around every console endpoint."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired:
                if request.url.path.startswith(f"{PREFIX}/api/"):
                    response = JSONResponse(error_body("unauthorized", "sign in to the console"), status_code=401)
                else:
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    ctx: Console | None = getattr(request.state, "console", None)
                    notice = f"&notice={ctx.notice}" if ctx is not None and ctx.notice else ""
                    response = RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}{notice}",
                                                status_code=303)
            except CsrfRejected:
                response = _error_page(request, 403, "csrf_failed",
                                       "The form's CSRF token is missing or does not match your session; "
                                       "reload the page and submit again.")
            except AppError as exc:
                response = _error_page(request, status_for(exc), exc.code, exc.message, exc.field, exc.headers)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = field_path(first.get("loc", ()), first.get("type", ""))
                response = _error_page(request, 422, "validation_error", f"{where}: {first.get('msg', 'invalid')}",
                                       where)
            write_cookie(request, response)
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            return response

        return route
