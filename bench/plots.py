"""PNG plots of the quality benchmark (matplotlib, Agg backend: no display needed).

- ``pareto``: perplexity against artifact weight bytes, Presso and peer points labeled, Presso's Pareto
  frontier drawn, the dense model as a reference line.
- ``times``: compression wall seconds per method, Presso and peer side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

PRESSO, PEER = "#1f6feb", "#d1495b"


def _ok(side: dict[str, Any] | None, *keys: str) -> bool:
    return bool(side) and side.get("status") == "ok" and all(side.get(k) is not None for k in keys)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (smaller x, smaller y), sorted by x."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not out or y < out[-1][1]:
            out.append((x, y))
    return out


def pareto(rows: dict[str, dict[str, Any]], path: Path, *, ymax: float | None = None,
           xlim: tuple[float, float] | None = None, title: str | None = None) -> Path:
    """``ymax``: points above it are drawn on the top edge as triangles, their perplexity in the label;
    ``xlim`` (MB): a zoom (points outside are left out)."""
    fig, ax = plt.subplots(figsize=(11, 7), dpi=110)
    presso_pts: list[tuple[float, float]] = []
    dense_ppl = None
    for name, row in rows.items():
        for side_name, color, marker in (("presso", PRESSO, "o"), ("peer", PEER, "s")):
            side = row.get(side_name)
            if not _ok(side, "ppl", "weights_bytes"):
                continue
            assert side is not None
            x, y = side["weights_bytes"] / 1e6, side["ppl"]
            if xlim is not None and not xlim[0] <= x <= xlim[1]:
                continue
            if ymax is not None and y > ymax and name != "dense":
                ax.scatter(x, ymax, c=color, marker="^", s=36, zorder=3)
                ax.annotate(f"{name}{'' if side_name == 'presso' else ' (llmc)'}: {y:.3g}", (x, ymax), fontsize=7,
                            color=color, xytext=(4, -9), textcoords="offset points")
                continue
            if name == "dense":
                if side_name == "presso":
                    dense_ppl = y
                    ax.axhline(y, color="grey", lw=0.8, ls=":")
                    ax.scatter(x, y, c="grey", marker="*", s=90, zorder=3)
                    ax.annotate("dense f32", (x, y), fontsize=7, color="grey", xytext=(4, 3),
                                textcoords="offset points")
                    presso_pts.append((x, y))
                continue
            ax.scatter(x, y, c=color, marker=marker, s=36, zorder=3, edgecolors="white", linewidths=0.5)
            ax.annotate(name if side_name == "presso" else f"{name} (llmc)", (x, y), fontsize=7, color=color,
                        xytext=(4, 3), textcoords="offset points")
            if side_name == "presso":
                presso_pts.append((x, y))
    if len(presso_pts) > 1:
        fx, fy = zip(*frontier(presso_pts), strict=True)
        ax.step(fx, fy, where="post", color=PRESSO, lw=1, alpha=0.5)
    ax.set_yscale("log")
    if ymax is not None:
        ax.set_ylim(top=ymax * 1.05)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.yaxis.set_minor_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)
    ax.set_xlabel("artifact weight bytes (MB, *.safetensors)")
    ax.set_ylabel("perplexity, wikitext-2 test 40x512 (log scale)")
    title = title or "SmolLM2-135M: perplexity vs artifact size"
    if dense_ppl is not None:
        title += f"  (dense f32 ppl {dense_ppl:.2f}, dotted)"
    ax.set_title(title)
    ax.scatter([], [], c=PRESSO, marker="o", label="Presso")
    ax.scatter([], [], c=PEER, marker="s", label="llmcompressor")
    ax.legend(loc="best")
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def times(rows: dict[str, dict[str, Any]], path: Path) -> Path:
    names = [n for n, r in rows.items() if n != "dense" and (_ok(r.get("presso"), "seconds") or
                                                              _ok(r.get("peer"), "seconds"))]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.32 * len(names) + 1.2)), dpi=110)
    h = 0.4
    for i, name in enumerate(names):
        pr, pe = rows[name].get("presso"), rows[name].get("peer")
        if _ok(pr, "seconds"):
            assert pr is not None
            ax.barh(i - h / 2, pr["seconds"], height=h, color=PRESSO)
            ax.text(pr["seconds"], i - h / 2, f" {pr['seconds']:.0f}", va="center", fontsize=7)
        if _ok(pe, "seconds"):
            assert pe is not None
            ax.barh(i + h / 2, pe["seconds"], height=h, color=PEER)
            ax.text(pe["seconds"], i + h / 2, f" {pe['seconds']:.0f}", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("compression wall seconds")
    ax.set_title("Compression time per method: Presso (blue) vs llmcompressor (red)")
    ax.grid(True, axis="x", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
