"""Quality and size metrics of one compression attempt, and the accuracy-gate verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from presso.compression.eval.encoder import compare_encoders
from presso.compression.eval.latency import forward_latency
from presso.compression.eval.perplexity import compare
from presso.compression.eval.size import artifact_bytes, dense_bytes, param_count, weight_stats
from presso.compression.io.loading import vocab_size
from presso.compression.spec import Gate


def evaluate(original: nn.Module, compressed: nn.Module, kind: str, windows: torch.Tensor | None,
             device: torch.device, *, latency: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if windows is None:
        return out
    original.to(device)
    compressed.to(device)
    try:
        if kind == "causal_lm":
            q = compare(original, compressed, windows, device)
            q["ppl_increase_pct"] = 100.0 * (q["ppl_after"] / q["ppl_before"] - 1.0)
            out.update(q)
        else:
            out.update(compare_encoders(original, compressed, windows, device))
        if latency:
            vocab = vocab_size(original.config) or 2
            out["latency"] = {
                f"batch_{b}": {
                    "before": forward_latency(original, device, vocab=vocab, batch=b),
                    "after": forward_latency(compressed, device, vocab=vocab, batch=b),
                }
                for b in (1, 8)
            }
    finally:
        original.to("cpu")
        compressed.to("cpu")
    return out


def gate_verdict(quality: dict[str, Any], gate: Gate | None) -> dict[str, Any]:
    failures: list[str] = []
    if gate is not None:
        if gate.max_ppl_increase_pct is not None:
            inc = quality.get("ppl_increase_pct")
            if inc is None or inc > gate.max_ppl_increase_pct:
                failures.append(f"perplexity +{inc:.2f}% > {gate.max_ppl_increase_pct}%" if inc is not None
                                else "perplexity not measured")
        if gate.max_kl is not None:
            kl = quality.get("kl")
            if kl is None or kl > gate.max_kl:
                failures.append(f"KL {kl:.4f} > {gate.max_kl}" if kl is not None else "KL not measured")
    return {"passed": not failures, "gate_failures": failures}


def size_metrics(original: nn.Module, compressed: nn.Module, out_dir: Path) -> dict[str, Any]:
    disk = artifact_bytes(out_dir)
    before = dense_bytes(original)
    return {
        "params_before": param_count(original),
        "params_after": param_count(compressed),
        "bytes_before": before,
        "bytes_after": disk["weights_bytes"],
        "artifact_bytes": disk["total_bytes"],
        "compression_ratio": before / max(disk["weights_bytes"], 1),
        **weight_stats(compressed),
    }
