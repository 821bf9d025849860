"""Inline SVG charts drawn on the server: per-layer columns, a scatter for the compare view, timing bars.

No script and no inline style: colours come from classes in console.css, so the pages keep a strict
Content-Security-Policy. Every mark carries a ``<title>`` (the browser's tooltip: layer name and value).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

Fmt = Callable[[float], str]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, min(last, first + 50) + 1)]


def fmt_number(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def fmt_bytes(v: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def columns(values: Sequence[tuple[str, float | None]], *, title: str, fmt: Fmt = fmt_number,
            y_max: float | None = None, width: int = 640, height: int = 200) -> Markup:
    """One column per layer, in model order; hovering a column shows the layer's name and value."""
    left, right, top, bottom = 58, 10, 22, 26
    pw, ph = width - left - right, height - top - bottom
    present = [v for _, v in values if v is not None and math.isfinite(v)]
    hi = y_max if y_max is not None else (max(present) if present else 1.0)
    lo = min(0.0, min(present)) if present else 0.0
    ticks = nice_ticks(lo, hi if hi > lo else lo + 1)
    y0, y1 = ticks[0], ticks[-1]

    def y(v: float) -> float:
        return top + ph - (v - y0) / ((y1 - y0) or 1) * ph

    body = [f'<text class="chart-title" x="{left}" y="14">{escape(title)}</text>']
    for t in ticks:
        body.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>')
        body.append(f'<text class="tick" x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{escape(fmt(t))}</text>')
    n = max(1, len(values))
    slot = pw / n
    gap = slot * 0.15 if slot > 4 else 0.0
    for i, (name, v) in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        top_y, base = y(max(v, 0.0)), y(min(v, 0.0))
        body.append(
            f'<rect class="bar" x="{left + i * slot + gap / 2:.2f}" y="{top_y:.2f}" width="{max(slot - gap, 0.6):.2f}" '
            f'height="{max(base - top_y, 0.5):.2f}"><title>{escape(name)}: {escape(fmt(v))}</title></rect>'
        )
    body.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{y(0 if y0 <= 0 <= y1 else y0):.1f}" '
                f'y2="{y(0 if y0 <= 0 <= y1 else y0):.1f}"/>')
    first = escape(values[0][0]) if values else ""
    last = escape(values[-1][0]) if values else ""
    body.append(f'<text class="tick" x="{left}" y="{height - 8}">{first}</text>')
    if len(values) > 1:
        body.append(f'<text class="tick" x="{width - right}" y="{height - 8}" text-anchor="end">{last}</text>')
    return _svg(width, height, title, body)


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    tooltip: str
    href: str | None = None
    series: int = 0
    reference: bool = False


def scatter(points: Sequence[Point], *, title: str, x_label: str, y_label: str, x_fmt: Fmt = fmt_bytes,
            y_fmt: Fmt = fmt_number, width: int = 860, height: int = 420) -> Markup:
    """Points (linked to their jobs), a reference point drawn hollow; axes with round ticks."""
    left, right, top, bottom = 74, 24, 26, 46
    pw, ph = width - left - right, height - top - bottom
    pts = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y)]
    if not pts:
        return _svg(width, 60, title, [f'<text class="tick" x="10" y="30">{escape(title)}: nothing to plot</text>'])
    xs, ys = [p.x for p in pts], [p.y for p in pts]
    pad = (max(xs) - min(xs)) * 0.05
    if x_fmt is fmt_bytes:  # round numbers of KiB / MiB / GiB, not of bytes
        unit = next((u for u in (2**30, 2**20, 2**10) if max(xs) >= 4 * u), 1)
        xt = [t * unit for t in nice_ticks((min(xs) - pad) / unit, (max(xs) + pad) / unit)]
    else:
        xt = nice_ticks(min(xs) - pad, max(xs) + pad)
    yt = nice_ticks(min(ys) - (max(ys) - min(ys)) * 0.05, max(ys) + (max(ys) - min(ys)) * 0.05)

    def x(v: float) -> float:
        return left + (v - xt[0]) / ((xt[-1] - xt[0]) or 1) * pw

    def y(v: float) -> float:
        return top + ph - (v - yt[0]) / ((yt[-1] - yt[0]) or 1) * ph

    body = [f'<text class="chart-title" x="{left}" y="16">{escape(title)}</text>']
    for t in xt:
        body.append(f'<line class="grid" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + ph}"/>')
        body.append(f'<text class="tick" x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle">'
                    f'{escape(x_fmt(t))}</text>')
    for t in yt:
        body.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>')
        body.append(f'<text class="tick" x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{escape(y_fmt(t))}</text>')
    body.append(f'<text class="axis-label" x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle">'
                f'{escape(x_label)}</text>')
    body.append(f'<text class="axis-label" transform="translate(14 {top + ph / 2:.0f}) rotate(-90)" '
                f'text-anchor="middle">{escape(y_label)}</text>')
    labelled: dict[tuple[int, int], list[str]] = {}  # points drawn on one spot share one label
    for p in pts:
        labelled.setdefault((round(x(p.x)), round(y(p.y))), []).append(p.label)
    for p in pts:
        cls = "ref" if p.reference else f"pt s{p.series % 6}"
        mark = (f'<circle class="{cls}" cx="{x(p.x):.1f}" cy="{y(p.y):.1f}" r="6">'
                f'<title>{escape(p.tooltip)}</title></circle>')
        labels = labelled.pop((round(x(p.x)), round(y(p.y))), None)
        if labels:
            text = "; ".join(labels[:3]) + (f" +{len(labels) - 3}" if len(labels) > 3 else "")
            mark += f'<text class="pt-label" x="{x(p.x) + 9:.1f}" y="{y(p.y) - 8:.1f}">{escape(text)}</text>'
        body.append(f'<a href="{escape(p.href)}">{mark}</a>' if p.href else mark)
    return _svg(width, height, title, body)


def hbars(rows: Sequence[tuple[str, float]], *, title: str, fmt: Fmt = fmt_number, unit: str = "s",
          width: int = 600) -> Markup:
    """Horizontal bars (e.g. seconds per stage)."""
    rows = [(k, v) for k, v in rows if v is not None and math.isfinite(v)]
    left, right, row_h = 120, 80, 22
    height = 26 + row_h * max(1, len(rows))
    hi = max((v for _, v in rows), default=1.0) or 1.0
    body = [f'<text class="chart-title" x="0" y="14">{escape(title)}</text>']
    for i, (name, v) in enumerate(rows):
        yy = 24 + i * row_h
        w = max(0.5, v / hi * (width - left - right))
        body.append(f'<text class="tick" x="{left - 8}" y="{yy + 14}" text-anchor="end">{escape(name)}</text>')
        body.append(f'<rect class="bar" x="{left}" y="{yy + 3}" width="{w:.1f}" height="{row_h - 6}">'
                    f'<title>{escape(name)}: {escape(fmt(v))} {escape(unit)}</title></rect>')
        body.append(f'<text class="tick" x="{left + w + 6:.1f}" y="{yy + 14}">{escape(fmt(v))} {escape(unit)}</text>')
    return _svg(width, height, title, body)
