"""Quality and size metrics of one compression attempt, and the accuracy-gate verdict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from presso.compression.eval.encoder import compare_encoders
from presso.compression.eval.generation import compare_generations
from presso.compression.eval.latency import forward_latency
from presso.compression.eval.perplexity import compare
from presso.compression.eval.size import artifact_bytes, dense_bytes, param_count, weight_stats
from presso.compression.eval.tasks import Question, compare_tasks
from presso.compression.io.loading import vocab_size
from presso.compression.spec import Gate, GenerationSpec


def evaluate(original: nn.Module, compressed: nn.Module, kind: str, windows: torch.Tensor | None,
             device: torch.device, *, latency: bool, progress: Callable[[float], None] | None = None,
             max_seconds: float | None = None, min_windows: int = 1, batch_size: int = 4,
             generation: GenerationSpec | None = None,
             tasks: list[tuple[str, list[Question]]] | None = None,
             reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every measure of one attempt against the original: perplexity, KL and top-1 agreement on ``windows``
    (``max_seconds`` / ``min_windows``: the default-sized evaluation stops there), greedy-generation agreement,
    multiple-choice tasks (accuracy, flip rate) and latency. ``progress`` gets the fraction done. ``reference``
    keeps the original's generations and task answers between calls with the same original and data."""
    out: dict[str, Any] = {}
    if windows is None:
        return out
    report = progress or (lambda f: None)

    def part(lo: float, hi: float) -> Callable[[float], None]:
        return lambda f: report(lo + (hi - lo) * f)

    original.to(device)
    compressed.to(device)
    try:
        if kind == "causal_lm":
            q = compare(original, compressed, windows, device, batch_size, progress=part(0.0, 0.7),
                        max_seconds=max_seconds, min_windows=min_windows)
            q["ppl_increase_pct"] = 100.0 * (q["ppl_after"] / q["ppl_before"] - 1.0)
            out.update(q)
            if generation is not None and generation.prompts > 0:
                scored = windows[: q["eval_windows"]]  # what later attempts of a default-sized evaluation keep
                out.update(compare_generations(original, compressed, scored, device, prompts=generation.prompts,
                                               prompt_tokens=generation.prompt_tokens,
                                               new_tokens=generation.new_tokens,
                                               reference=None if reference is None else
                                               reference.setdefault("generation", {})))
            report(0.75)
            if tasks:
                out.update(compare_tasks(original, compressed, tasks, device, progress=part(0.75, 0.95),
                                         reference=None if reference is None else reference.setdefault("tasks", {})))
        else:
            out.update(compare_encoders(original, compressed, windows, device))
        report(0.95)
        if latency:
            vocab = vocab_size(original.config) or 2
            out["latency"] = {
                f"batch_{b}": {
                    "before": forward_latency(original, device, vocab=vocab, batch=b),
                    "after": forward_latency(compressed, device, vocab=vocab, batch=b),
                }
                for b in (1, 8)
            }
        report(1.0)
    finally:
        original.to("cpu")
        compressed.to("cpu")
    return out


def _check(failures: list[str], value: Any, limit: float | None, upper: bool, what: str, fmt: str) -> None:
    if limit is None:
        return
    if value is None:
        failures.append(f"{what} not measured")
    elif (value > limit) if upper else (value < limit):
        failures.append(f"{what} {value:{fmt}} {'>' if upper else '<'} {limit}")


def gate_verdict(quality: dict[str, Any], gate: Gate | None) -> dict[str, Any]:
    failures: list[str] = []
    if gate is not None:
        if gate.max_ppl_increase_pct is not None:
            inc = quality.get("ppl_increase_pct")
            if inc is None or inc > gate.max_ppl_increase_pct:
                failures.append(f"perplexity +{inc:.2f}% > {gate.max_ppl_increase_pct}%" if inc is not None
                                else "perplexity not measured")
        _check(failures, quality.get("kl"), gate.max_kl, True, "KL", ".4f")
        _check(failures, quality.get("top1_agreement"), gate.min_top1_agreement, False, "top-1 agreement", ".4f")
        _check(failures, quality.get("flip_rate"), gate.max_flip_rate, True, "flip rate", ".4f")
        _check(failures, quality.get("task_accuracy_ratio"), gate.min_task_accuracy_ratio, False,
               "task accuracy ratio", ".4f")
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
