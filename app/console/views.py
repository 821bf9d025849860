"""What the console's pages show, built from the job rows, their metrics and the stored report/manifest.

Pure functions from service objects to plain dicts and SVG: the route modules stay thin and the templates
only lay out.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from presso.app.console import charts
from presso.app.core.db import utcnow
from presso.app.jobs.models import TERMINAL_STATES, Job

# ---- formatting (also the templates' filters) -----------------------------------------------------


def fmt_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return charts.fmt_number(v) if math.isfinite(v) else str(v)
    if isinstance(v, list | dict):
        return json.dumps(v, default=str)
    return str(v)


def fmt_dt(v: dt.datetime | None) -> str:
    return v.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if v else "–"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


FILTERS: dict[str, Callable[..., str]] = {
    "value": fmt_value, "when": fmt_dt, "duration": fmt_duration, "bytes": charts.fmt_bytes, "num": charts.fmt_number,
}

# ---- jobs ---------------------------------------------------------------------------------------


def methods_of(recipe: dict[str, Any] | None) -> list[str]:
    return [str(s.get("method", "?")) for s in (recipe or {}).get("steps", []) if isinstance(s, dict)]


def _elapsed(job: Job) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or utcnow()
    return (end - job.started_at).total_seconds()


def job_row(job: Job) -> dict[str, Any]:
    m = job.metrics or {}
    return {
        "id": job.id, "short": job.id[:8], "model_uri": job.model_uri, "state": job.state,
        "methods": methods_of(job.request.get("recipe")), "stage": job.progress_stage,
        "fraction": job.progress_fraction or 0.0, "active": job.state not in TERMINAL_STATES,
        "created_at": job.created_at, "elapsed": _elapsed(job), "attempt": job.attempt,
        "ratio": m.get("compression_ratio"), "ppl_increase_pct": m.get("ppl_increase_pct"),
        "bytes_after": m.get("bytes_after"), "error_code": job.error_code,
        "cancel_requested": job.cancel_requested, "name": job.name, "labels": dict(job.labels or {}),
        "dedup_of": job.dedup_of,
    }


def progress_json(job: Job, position: int | None) -> dict[str, Any]:
    return {"id": job.id, "state": job.state, "stage": job.progress_stage, "fraction": job.progress_fraction or 0.0,
            "terminal": job.state in TERMINAL_STATES, "queue_position": position, "attempt": job.attempt,
            "cancel_requested": job.cancel_requested, "error_code": job.error_code}


# Metrics table: known keys first, in this order, with labels; any other scalar follows under its own name.
METRIC_LABELS: list[tuple[str, str]] = [
    ("params_before", "parameters before"), ("params_after", "parameters after"),
    ("bytes_before", "weight bytes before"), ("bytes_after", "weight bytes after"),
    ("artifact_bytes", "artifact bytes (all files)"), ("compression_ratio", "compression ratio"),
    ("bits_per_weight", "bits per weight"), ("sparsity", "sparsity"), ("linear_weights", "linear weights"),
    ("ppl_before", "perplexity before"), ("ppl_after", "perplexity after"),
    ("ppl_increase_pct", "perplexity increase, %"), ("kl", "KL(original ‖ compressed), nats/token"),
    ("eval_tokens", "evaluation tokens"), ("device", "device"), ("source_format", "source format"),
]
_NOT_SCALAR = {"latency", "timings", "steps", "attempts", "recipe_used", "load_notes"}
_BYTES = {"bytes_before", "bytes_after", "artifact_bytes"}


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen = set()
    for key, label in METRIC_LABELS:
        if key in metrics:
            seen.add(key)
            rows.append(_metric_row(key, label, metrics[key]))
    for key, value in metrics.items():
        if key in seen or key in _NOT_SCALAR:
            continue
        rows.append(_metric_row(key, key.replace("_", " "), value))
    return rows


def _metric_row(key: str, label: str, value: Any) -> dict[str, Any]:
    shown = fmt_value(value)
    if key in _BYTES and isinstance(value, int | float):
        shown = f"{charts.fmt_bytes(value)} ({value:,} B)"
    return {"key": key, "label": label, "value": shown}


def latency_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, pair in (metrics.get("latency") or {}).items():
        before, after = (pair or {}).get("before") or {}, (pair or {}).get("after") or {}
        b, a = before.get("tokens_per_s"), after.get("tokens_per_s")
        rows.append({"name": name.replace("_", " "), "seq_len": before.get("seq_len"), "before": b, "after": a,
                     "speedup": (a / b) if a and b else None})
    return rows


def timing_view(job: Job) -> dict[str, Any]:
    m = job.metrics or {}
    stages = [(k, float(v)) for k, v in (m.get("timings") or {}).items()
              if isinstance(v, int | float) and k != "total"]
    waited = (job.started_at - job.created_at).total_seconds() if job.started_at else None
    return {
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "queued_s": waited, "run_s": _elapsed(job), "total_s": (m.get("timings") or {}).get("total"),
        "chart": charts.hbars(stages, title="seconds per stage (worker)", fmt=charts.fmt_number) if stages else None,
        "stages": stages,
    }


def step_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, step in enumerate(metrics.get("steps") or []):
        ev = step.get("eval") or {}
        extra = {k: v for k, v in step.items() if k not in ("method", "seconds", "eval")
                 and not isinstance(v, list | dict)}
        rows.append({"index": i + 1, "method": step.get("method"), "seconds": step.get("seconds"),
                     "ppl_after": ev.get("ppl_after"), "ppl_increase_pct": ev.get("ppl_increase_pct"),
                     "kl": ev.get("kl"), "extra": extra})
    return rows


def attempt_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The recipe and each fallback tried against the gate; the published one is the one that passed."""
    rows: list[dict[str, Any]] = []
    for a in metrics.get("attempts") or []:
        q = a.get("quality") or {}
        index = a.get("index", len(rows))
        rows.append({
            "index": index, "which": "recipe" if index == 0 else f"fallback {index}",
            "methods": methods_of(a.get("recipe")), "recipe": json.dumps(a.get("recipe"), indent=2),
            "passed": a.get("passed"), "gate_failures": a.get("gate_failures") or [],
            "ppl_after": q.get("ppl_after"), "ppl_increase_pct": q.get("ppl_increase_pct"), "kl": q.get("kl"),
            "seconds": a.get("seconds"),
        })
    return rows


def request_view(job: Job) -> dict[str, Any]:
    req = job.request or {}
    return {
        "recipe": json.dumps(req.get("recipe"), indent=2),
        "fallbacks": [json.dumps(r, indent=2) for r in req.get("fallbacks") or []],
        "recipe_used": json.dumps((job.metrics or {}).get("recipe_used"), indent=2)
        if (job.metrics or {}).get("recipe_used") else None,
        "request": json.dumps(req, indent=2),
        "gate": ((req.get("evaluation") or {}).get("gate")),
    }


def file_rows(job_id: str, manifest: dict[str, Any], decoded: Iterable[Any]) -> dict[str, list[dict[str, Any]]]:
    base = f"/console/jobs/{job_id}"
    files = [{"path": e["path"], "size": e["size"], "sha256": e["sha256"],
              "href": f"{base}/files/{quote(e['path'])}"} for e in manifest.get("files", [])]
    plain = [{"path": f.path, "size": f.size, "sha256": f.sha256, "href": f"{base}/decoded/{quote(f.path)}"}
             for f in decoded]
    return {"files": files, "decoded": plain}


# ---- per-layer report ---------------------------------------------------------------------------

LAYER_METRICS: list[tuple[str, str, float | None]] = [
    ("bits", "bits per weight", None), ("sparsity", "sparsity", 1.0), ("rank", "rank", None),
    ("rel_error", "relative weight error ‖W−Ŵ‖/‖W‖", None), ("output_error", "relative output error", None),
]


def _segments(layers: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split report.json's flat layer list back into steps: a step ends where a name repeats or the set of
    keys changes (each engine writes its own keys)."""
    segments: list[list[dict[str, Any]]] = []
    names: set[str] = set()
    signature: frozenset[str] | None = None
    for layer in layers:
        keys = frozenset(k for k in layer if k in {m for m, _, _ in LAYER_METRICS} or k in ("target", "params"))
        name = str(layer.get("name"))
        if not segments or name in names or keys != signature:
            segments.append([])
            names, signature = set(), keys
        segments[-1].append(layer)
        names.add(name)
    return segments


def report_view(report: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    layers = [x for x in report.get("layers") or [] if isinstance(x, dict)]
    steps = report.get("steps") or metrics.get("steps") or []
    segments = _segments(layers)
    if len(segments) == len(steps):
        labelled = [(f"step {i + 1}: {s.get('method', '?')}", seg) for i, (s, seg) in enumerate(zip(steps, segments,
                                                                                               strict=True))]
    else:
        labelled = [("all steps", layers)] if layers else []
    groups = []
    for label, seg in labelled:
        group_charts = []
        for key, title, y_max in LAYER_METRICS:
            values = [(str(x.get("name")), _num(x.get(key))) for x in seg]
            if any(v is not None for _, v in values):
                group_charts.append({"key": key, "svg": charts.columns(values, title=f"{title} — {len(seg)} layers",
                                                                        y_max=y_max)})
        groups.append({"label": label, "charts": group_charts, "count": len(seg)})
    columns = []
    for layer in layers:
        for k in layer:
            if k not in columns:
                columns.append(k)
    return {"groups": groups, "columns": columns, "layers": layers}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


# ---- compare ------------------------------------------------------------------------------------

COMPARE_METRICS: dict[str, str] = {
    "ppl_after": "perplexity after", "ppl_increase_pct": "perplexity increase, %",
    "kl": "KL(original ‖ compressed)", "bits_per_weight": "bits per weight", "sparsity": "sparsity",
    "compression_ratio": "compression ratio", "tokens_per_s_batch_1": "tokens/s, batch 1",
    "tokens_per_s_batch_8": "tokens/s, batch 8",
}
COMPARE_X = {"bytes_after": "weight bytes", "artifact_bytes": "artifact bytes (all files)"}


def metric_value(metrics: dict[str, Any], key: str, *, before: bool = False) -> float | None:
    if key.startswith("tokens_per_s_"):
        pair = (metrics.get("latency") or {}).get(key.removeprefix("tokens_per_s_")) or {}
        return _num((pair.get("before" if before else "after") or {}).get("tokens_per_s"))
    if before:
        return {"ppl_after": _num(metrics.get("ppl_before")), "ppl_increase_pct": 0.0, "kl": 0.0}.get(key)
    return _num(metrics.get(key))


def compare_view(jobs: Sequence[Job], metric: str, x_key: str) -> dict[str, Any]:
    models = list(dict.fromkeys(j.model_uri for j in jobs))
    available = dict(COMPARE_METRICS)
    for j in jobs:
        for k, v in (j.metrics or {}).items():
            if k not in available and _num(v) is not None and k not in COMPARE_X and k != "bytes_before":
                available[k] = k.replace("_", " ")
    y_label = available.get(metric, metric)
    points, rows, refs = [], [], set()
    for j in jobs:
        m = j.metrics or {}
        x, y = _num(m.get(x_key)), metric_value(m, metric)
        series = models.index(j.model_uri)
        label = f"{j.id[:8]} {'+'.join(methods_of(j.request.get('recipe')))}"
        rows.append({"id": j.id, "short": j.id[:8], "model_uri": j.model_uri, "methods": methods_of(
            j.request.get("recipe")), "x": x, "y": y, "state": j.state, "series": series})
        if x is not None and y is not None:
            points.append(charts.Point(x=x, y=y, label=label, series=series, href=f"/console/jobs/{j.id}",
                                       tooltip=f"{label} — {j.model_uri}\n{COMPARE_X.get(x_key, x_key)}: "
                                               f"{charts.fmt_bytes(x)}\n{y_label}: {charts.fmt_number(y)}"))
        ref_y, ref_x = metric_value(m, metric, before=True), _num(m.get("bytes_before"))
        if ref_y is not None and ref_x is not None and (j.model_uri, ref_x, ref_y) not in refs:
            refs.add((j.model_uri, ref_x, ref_y))
            points.append(charts.Point(x=ref_x, y=ref_y, label="original", reference=True,
                                       tooltip=f"original {j.model_uri}\n{charts.fmt_bytes(ref_x)}, "
                                               f"{y_label} {charts.fmt_number(ref_y)}"))
    chart: Markup | None = None
    if points:
        chart = charts.scatter(points, title=f"{y_label} against {COMPARE_X.get(x_key, x_key)}",
                               x_label=COMPARE_X.get(x_key, x_key), y_label=y_label)
    return {"chart": chart, "rows": rows, "by_id": {r["id"]: r for r in rows}, "models": models,
            "metrics": available, "y_label": y_label,
            "x_label": COMPARE_X.get(x_key, x_key)}


def platform_view(job: Job) -> dict[str, Any]:
    """Name, labels, metadata, the webhook's delivery log (issue 24)."""
    return {"name": job.name, "labels": sorted((job.labels or {}).items()),
            "metadata": json.dumps(job.user_metadata, indent=2, sort_keys=True) if job.user_metadata else None,
            "callback_url": job.callback_url, "webhook_state": job.webhook_state,
            "webhook_log": list(job.webhook_log or []), "dedup_of": job.dedup_of}
