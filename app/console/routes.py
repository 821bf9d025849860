"""/console: the web console's pages. Thin: the API's service functions do the work, views.py shapes it.

Every page but the sign-in page needs a signed-in session; every query is the API's, scoped by the
session's tenant (another tenant's job is a 404, as in the API).
"""

from __future__ import annotations

import datetime as dt
import uuid
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from presso.app.api.deps import PublisherDep, SessionDep, SettingsDep, StoreDep, current_tenant
from presso.app.api.routes import artifacts as artifact_routes
from presso.app.console import forms, queries, views
from presso.app.console.deps import NOTICES, ConsoleDep, ConsoleRoute, FormDep, SignedInDep
from presso.app.console.session import ConsoleSession
from presso.app.core.errors import AppError, InvalidInput, RateLimited, Unauthorized, status_for
from presso.app.core.metrics import JOBS_SUBMITTED
from presso.app.jobs import artifacts, service
from presso.app.jobs.models import JobState
from presso.app.tenants.service import authenticate
from presso.compression.recipe import methods_catalog

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
STATES = [s.value for s in JobState]
HOME = "/console/jobs"


@lru_cache(maxsize=1)
def _catalog() -> list[dict[str, Any]]:
    return methods_catalog()


@lru_cache(maxsize=1)
def _method_forms() -> list[forms.MethodForm]:
    return forms.method_forms(_catalog())


def _safe_next(target: str | None) -> str:
    """Only a console path (never another site: ``//host``, ``/\\host``, a scheme)."""
    if not target or not target.startswith("/console") or target.startswith(("//", "/\\")) or "\\" in target:
        return HOME
    return target


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# ---- sign in / out ------------------------------------------------------------------------------


@router.get("")
@router.get("/")
def home(ctx: ConsoleDep) -> Response:
    return _redirect(HOME if ctx.tenant is not None else "/console/login")


@router.get("/login")
def login_page(ctx: ConsoleDep, next: str | None = None, notice: str | None = None) -> Response:  # noqa: A002
    if ctx.tenant is not None:
        return _redirect(_safe_next(next))
    if notice in NOTICES and ctx.notice is None:
        ctx.notice = notice
    return ctx.render("login.html", next=_safe_next(next))


@router.post("/login")
def login(request: Request, ctx: ConsoleDep, form: FormDep, db: SessionDep, settings: SettingsDep) -> Response:
    """The key is checked by the API's own dependency (same lookup, same revocation, same rate limit)."""
    target = _safe_next(form.get("next"))
    secret = form.get("api_key").strip()
    try:
        tenant = current_tenant(request, db, settings, authorization=None, x_api_key=secret or None)
    except (Unauthorized, RateLimited) as exc:
        return ctx.render("login.html", status_code=status_for(exc), error=exc.message, next=target,
                          headers=exc.headers)
    found = authenticate(session=db, secret=secret) if settings.auth != "disabled" else None
    if found is not None:
        ctx.start(ConsoleSession.for_key(tenant.id, found[1].id, ctx.state.settings.session_ttl_s), tenant)
    return _redirect(target)


@router.post("/logout")
def logout(ctx: ConsoleDep, form: FormDep) -> Response:
    ctx.start(ConsoleSession.anonymous(ctx.state.settings.session_ttl_s), None)
    return _redirect("/console/login")


# ---- jobs ---------------------------------------------------------------------------------------


def _when(value: str | None, name: str) -> dt.datetime | None:
    """``<input type=datetime-local>`` (no zone: UTC) or ISO 8601 with a zone."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{name}: not a date and time: {value!r}", field=name) from exc
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed


@router.get("/jobs")
def jobs_page(
    ctx: SignedInDep, db: SessionDep, state: str | None = None, method: str | None = None, model: str | None = None,
    created_after: str | None = None, created_before: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50, cursor: str | None = None,
    label: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    assert ctx.tenant is not None
    filters = {"state": state or "", "method": method or "", "model": model or "",
               "created_after": created_after or "", "created_before": created_before or "", "limit": limit,
               "label": label or ""}
    if state and state not in STATES:
        raise InvalidInput(f"state: one of {', '.join(STATES)}", field="state")
    labels = None
    if label:
        key, sep, value = label.partition("=")
        if not sep or not key.strip():
            raise InvalidInput("label: give key=value", field="label")
        labels = {key.strip(): value.strip()}
    rows, next_cursor = queries.list_jobs(
        db, ctx.tenant.id, state=state or None, method=method or None, model=model or None,
        created_after=_when(created_after, "created_after"), created_before=_when(created_before, "created_before"),
        limit=limit, cursor=cursor or None, labels=labels,
    )
    return ctx.render("jobs.html", jobs=[views.job_row(j) for j in rows], next_cursor=next_cursor, filters=filters,
                      states=STATES, methods=[m["method"] for m in _catalog()], paged=bool(cursor))


@router.get("/jobs/{job_id}")
def job_page(job_id: str, ctx: SignedInDep, db: SessionDep, store: StoreDep) -> Response:
    assert ctx.tenant is not None
    job = service.get_job(session=db, tenant_id=ctx.tenant.id, job_id=job_id)
    metrics = job.metrics or {}
    page: dict[str, Any] = {"job": views.job_row(job), "row": job, "metric_rows": views.metric_rows(metrics),
                            "latency": views.latency_rows(metrics), "steps": views.step_rows(metrics),
                            "attempts": views.attempt_rows(metrics), "timing": views.timing_view(job),
                            "request": views.request_view(job), "position": queries.queue_position(db, job),
                            "files": None, "report": None, "report_error": None,
                            "platform": views.platform_view(job),
                            "log_lines": service.job_logs(session=db, job=job, after=0, limit=200).data}
    if job.state == JobState.succeeded.value:
        try:
            manifest = artifacts.stored_manifest(job, store)
            page["files"] = views.file_rows(job.id, manifest,
                                            artifacts.decoded_files(job, store, manifest, base_url=""))
            page["report"] = views.report_view(artifacts.report(job, store), metrics)
        except AppError as exc:
            page["report_error"] = f"{exc.code}: {exc.message}"
    return ctx.render("job.html", **page)


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, ctx: SignedInDep, form: FormDep, db: SessionDep) -> Response:
    assert ctx.tenant is not None
    service.cancel_job(session=db, tenant_id=ctx.tenant.id, job_id=job_id)
    return _redirect(f"/console/jobs/{job_id}")


@router.get("/jobs/{job_id}/files/{path:path}")
def download(job_id: str, path: str, ctx: SignedInDep, db: SessionDep, store: StoreDep,
             settings: SettingsDep) -> Response:
    """The API's own file route, for the session's tenant (a local file, or a redirect to a presigned URL)."""
    assert ctx.tenant is not None
    return artifact_routes.get_file(job_id, path, db, ctx.tenant, store, settings)


@router.get("/jobs/{job_id}/decoded/{path:path}")
def download_decoded(job_id: str, path: str, ctx: SignedInDep, db: SessionDep, store: StoreDep) -> Response:
    assert ctx.tenant is not None
    return artifact_routes.get_decoded_file(job_id, path, db, ctx.tenant, store)


@router.get("/api/progress")
def progress(ctx: SignedInDep, db: SessionDep, ids: str = "") -> Response:
    """State and progress of the tenant's jobs among ``ids`` (comma-separated, at most 100): the live view."""
    assert ctx.tenant is not None
    jobs = queries.jobs_by_ids(db, ctx.tenant.id, [i for i in ids.split(",") if i][: queries.MAX_COMPARE])
    return JSONResponse({"data": [views.progress_json(j, queries.queue_position(db, j)) for j in jobs]})


# ---- compare ------------------------------------------------------------------------------------


@router.get("/compare")
def compare(ctx: SignedInDep, db: SessionDep, ids: Annotated[list[str] | None, Query()] = None,
            model: str | None = None, metric: str = "ppl_after", x: str = "bytes_after") -> Response:
    assert ctx.tenant is not None
    chosen = queries.jobs_by_ids(db, ctx.tenant.id, [i for i in ids or [] if i])
    if not model and chosen:
        model = chosen[0].model_uri
    candidates = queries.succeeded_of_model(db, ctx.tenant.id, model) if model else []
    if not ids and candidates:
        chosen = list(reversed(candidates))  # a model without a choice: all its succeeded jobs
    if x not in views.COMPARE_X:
        raise InvalidInput(f"x: one of {', '.join(views.COMPARE_X)}", field="x")
    view = views.compare_view(chosen, metric, x)
    chosen_ids = {j.id for j in chosen}
    extra = [j for j in chosen if j.id not in {c.id for c in candidates}]
    return ctx.render("compare.html", view=view, model=model or "", metric=metric, x=x, x_options=views.COMPARE_X,
                      models=queries.models_with_results(db, ctx.tenant.id), chosen_ids=chosen_ids,
                      candidates=[views.job_row(j) for j in [*candidates, *extra]])


# ---- submit -------------------------------------------------------------------------------------


def _submit_page(ctx: Any, *, values: dict[str, str], errors: list[dict[str, str]] | None = None,
                 by_input: dict[str, list[str]] | None = None, status_code: int = 200) -> Response:
    return ctx.render("submit.html", status_code=status_code, method_forms=_method_forms(), values=values,
                      errors=errors or [], by_input=by_input or {}, slots=range(forms.STEP_SLOTS),
                      form_key=f"console-{uuid.uuid4().hex}")


@router.get("/submit")
def submit_page(ctx: SignedInDep, model_uri: str = "") -> Response:
    return _submit_page(ctx, values={"model_uri": model_uri, "s0.method": "rtn"})


@router.post("/submit")
def submit(ctx: SignedInDep, form: FormDep, db: SessionDep, settings: SettingsDep,
           publisher: PublisherDep) -> Response:
    """Validated as POST /v1/jobs validates its body, created by the same service call; its messages shown."""
    assert ctx.tenant is not None
    values = form.items()
    built = forms.build_body(values, _method_forms())
    errors = built.errors
    body = None
    if built.body is not None:
        body, errors = forms.validate(built.body)
    if body is not None:
        key = values.get("form_key", "")[:200] or None  # a double-click submits one job, not two
        try:
            job, created = service.create_job(session=db, tenant=ctx.tenant, body=body, idempotency_key=key,
                                              settings=settings, publisher=publisher)
        except AppError as exc:
            errors = [{"field": exc.field or "", "message": exc.message, "code": exc.code}]
            return _page_with_errors(ctx, values, errors, built.inputs, status_for(exc))
        if created:
            JOBS_SUBMITTED.inc()
        return _redirect(f"/console/jobs/{job.id}")
    return _page_with_errors(ctx, values, errors, built.inputs, 422)


def _page_with_errors(ctx: Any, values: dict[str, str], errors: list[dict[str, str]], inputs: dict[str, str],
                      status_code: int) -> Response:
    by_input: dict[str, list[str]] = {}
    for e in errors:
        name = forms.input_for(e["field"], inputs) if e["field"] else None
        if name:
            by_input.setdefault(name, []).append(e["message"])
    return _submit_page(ctx, values=values, errors=errors, by_input=by_input, status_code=status_code)
