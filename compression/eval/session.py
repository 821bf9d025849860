"""One job's evaluation: its data (prepared once, on first use), its size rule, its progress and its time.

Every attempt of a job (the recipe, each fallback, each search candidate, each step of a chain) is measured
against the original on the same data, by ``EvalSession.measure``: perplexity, KL and top-1 agreement on the
evaluation windows, greedy-generation agreement on prompts cut from them, the user's multiple-choice tasks
(accuracy, flip rate) and latency (compression/eval/report.py).

Size rule (``evaluation.windows`` unset; docs/search.md): the evaluation of the first attempt may take as long as
its compression took, no longer, counting the evaluation data it prepares: the job's text is cut into at most
``AUTO_MAX_WINDOWS`` windows (cheap); with no text, the model writes its own ``AUTO_MIN_WINDOWS`` windows at a
time while under half that budget; windows are then scored ``AUTO_MIN_WINDOWS`` at a time until the budget is
spent. Never fewer than ``AUTO_MIN_WINDOWS`` windows (a quicker compression still gets a measure), never more
than ``AUTO_MAX_WINDOWS``. The windows scored by the first attempt are the windows of every later attempt, so
fallbacks and search candidates compare on the same tokens. Generation agreement (a few short prompts),
latency and the user's tasks are fixed costs on top. ``evaluation.windows`` given: exactly that many windows,
no time rule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from presso.compression.eval.report import evaluate
from presso.compression.eval.tasks import Question, load_task
from presso.compression.io.calibration import generate_windows, load_windows
from presso.compression.io.loading import LoadedModel, vocab_size
from presso.compression.recipe import Recipe
from presso.compression.spec import LocalJobSpec

log = logging.getLogger(__name__)

AUTO_MIN_WINDOWS = 2
AUTO_MAX_WINDOWS = 8
EVAL_SEED_OFFSET = 7919  # evaluation text is held apart from calibration: another seed and another prompt
EVAL_PROMPT = "Once upon a time"
ProgressFn = Callable[[str, float], None]


def lossless_only(recipe: Recipe) -> bool:
    """Every step is the lossless codec: the weights are unchanged, so the job checks bit-exactness instead."""
    return all(s.method == "lossless" for s in recipe.steps)


class EvalSession:
    def __init__(self, spec: LocalJobSpec, lm: LoadedModel, device: torch.device, progress: ProgressFn) -> None:
        self.spec, self.lm, self.device, self.progress = spec, lm, device, progress
        self.auto = spec.evaluation.windows is None
        self.windows: torch.Tensor | None = None
        self.tasks: list[tuple[str, list[Question]]] = []
        self.sized = False  # the first attempt has fixed the windows every later one scores
        self.seconds = 0.0  # every evaluation of the job, its data included
        self.reference: dict[str, Any] = {}  # the original's generations and task answers (report.evaluate)
        self.reference_of: int | None = None  # id() of the original they belong to
        self.data_seconds = 0.0

    @property
    def enabled(self) -> bool:
        return self.spec.evaluation.enabled

    def _generate(self, n: int, seed: int) -> torch.Tensor:
        e = self.spec.evaluation
        return generate_windows(self.lm.model, self.lm.tokenizer, n, e.seq_len, seed=seed, prompt=EVAL_PROMPT,
                                device=self.device, progress=lambda f: self.progress("evaluation-data", f))

    def _prepare(self, budget: float) -> None:
        t0 = time.perf_counter()
        spec, e, lm = self.spec, self.spec.evaluation, self.lm
        self.progress("evaluation-data", 0.0)
        n = e.windows or AUTO_MAX_WINDOWS
        vocab = vocab_size(lm.model.config)
        if spec.evaluation_path is not None:
            self.windows = load_windows(spec.evaluation_path, lm.tokenizer, n, e.seq_len, vocab)
        elif lm.kind != "causal_lm":
            self.windows = torch.randint(0, vocab or 2, (n, e.seq_len),
                                         generator=torch.Generator().manual_seed(spec.seed))
        elif not self.auto:
            self.windows = self._generate(n, spec.seed + EVAL_SEED_OFFSET)
        else:  # the model's own text, a few windows at a time while under half the budget
            parts: list[torch.Tensor] = []
            while sum(p.shape[0] for p in parts) < n:
                parts.append(self._generate(AUTO_MIN_WINDOWS, spec.seed + EVAL_SEED_OFFSET + len(parts)))
                if time.perf_counter() - t0 >= budget / 2:
                    break
            self.windows = torch.cat(parts)[:n]
        for i, (task, path) in enumerate(zip(e.tasks, spec.task_paths, strict=True)):
            name = task.name or f"task{i}"
            self.tasks.append((name, load_task(path, lm.tokenizer, task.limit, name)))
        self.progress("evaluation-data", 1.0)
        self.data_seconds = time.perf_counter() - t0

    def measure(self, original: nn.Module, compressed: nn.Module, compress_seconds: float, *, latency: bool,
                stage: str | None = "evaluate") -> dict[str, Any]:
        """The measures of ``compressed`` against ``original`` (``stage``: the progress stage reported; None for
        the per-step measures of a chain). ``eval_seconds`` in the result is this evaluation's time."""
        if not self.enabled:
            return {}
        t0 = time.perf_counter()
        if self.windows is None:
            self._prepare(compress_seconds)
        assert self.windows is not None
        max_seconds = None
        if self.auto and not self.sized:
            max_seconds = max(compress_seconds - (time.perf_counter() - t0), 0.0)
        report = (lambda f: self.progress(stage, f)) if stage is not None else None
        if self.reference_of != id(original):
            self.reference, self.reference_of = {}, id(original)
        q = evaluate(original, compressed, self.lm.kind, self.windows, self.device, latency=latency,
                     progress=report, max_seconds=max_seconds, min_windows=AUTO_MIN_WINDOWS,
                     batch_size=AUTO_MIN_WINDOWS if max_seconds is not None else 4,
                     generation=self.spec.evaluation.generation, tasks=self.tasks, reference=self.reference)
        if max_seconds is not None:
            scored = int(q.get("eval_windows", self.windows.shape[0]))
            if scored < self.windows.shape[0]:
                log.info("evaluation: %d of %d windows scored within the compression's %.2fs", scored,
                         self.windows.shape[0], compress_seconds)
            self.windows = self.windows[:scored]
        self.sized = True
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        q["eval_seconds"] = seconds
        return q
