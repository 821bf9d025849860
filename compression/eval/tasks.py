"""Multiple-choice tasks from the user's own files: accuracy before and after, and the answer-flip rate.

A task file is JSONL, one question a line: ``{"context": "...", "choices": ["...", ...], "gold": 0}``. Each
choice is scored as lm-evaluation-harness scores a ``multiple_choice`` task: the sum of the log-probabilities of
the choice's tokens after the context (``context + " " + choice``, the harness's default target delimiter,
unless the context ends with or the choice starts with whitespace). The chosen answer is the choice of highest
sum (``acc``) and of highest sum per byte of the choice (``acc_norm``). The flip rate is the fraction of questions
whose chosen answer (``acc``'s) differs between the original and the compressed model, whatever the gold answer.

lm-evaluation-harness itself is not a dependency (docs/search.md says why); this runner reads the same kind of
data a ``multiple_choice`` task YAML points at, already rendered into context and choices.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from presso.compression.errors import InvalidTaskFile

MAX_CHOICES = 16
MAX_LINE_BYTES = 1 << 16
MAX_TOKENS = 2048  # context + choice; longer contexts are cut from the left


@dataclass
class Question:
    context: list[int]
    choices: list[list[int]]
    choice_bytes: list[int]
    gold: int


def _delimited(context: str, choice: str) -> str:
    return choice if not context or context[-1].isspace() or choice[:1].isspace() else " " + choice


def load_task(path: Path, tokenizer: Any, limit: int, name: str) -> list[Question]:
    """The first ``limit`` questions of a JSONL task file, tokenized; a bad line names its number."""
    if tokenizer is None:
        raise InvalidTaskFile(f"task {name}: the model has no tokenizer to read text tasks with")
    out: list[Question] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if len(out) >= limit:
                break
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES:
                raise InvalidTaskFile(f"task {name} line {n}: longer than {MAX_LINE_BYTES} bytes")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidTaskFile(f"task {name} line {n}: not JSON ({exc.msg})") from None
            ctx, choices, gold = (row.get(k) for k in ("context", "choices", "gold")) if isinstance(row, dict) \
                else (None, None, None)
            if not isinstance(ctx, str) or not isinstance(choices, list) or not 2 <= len(choices) <= MAX_CHOICES \
                    or not all(isinstance(c, str) and c for c in choices) or not isinstance(gold, int) \
                    or isinstance(gold, bool) or not 0 <= gold < len(choices):
                raise InvalidTaskFile(f"task {name} line {n}: expected {{\"context\": str, \"choices\": [2..."
                                      f"{MAX_CHOICES} non-empty str], \"gold\": index of a choice}}")
            ctx_ids = list(tokenizer(ctx, add_special_tokens=True)["input_ids"]) if ctx else \
                list(tokenizer("", add_special_tokens=True)["input_ids"])
            conts = [_delimited(ctx, c) for c in choices]
            cont_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
            if not all(cont_ids) or not ctx_ids:
                raise InvalidTaskFile(f"task {name} line {n}: a choice or the context encodes to no tokens")
            out.append(Question(ctx_ids, cont_ids, [len(c.encode()) for c in conts], gold))
    if not out:
        raise InvalidTaskFile(f"task {name}: no questions")
    return out


@torch.no_grad()
def choice_logprobs(model: nn.Module, q: Question, device: torch.device) -> list[float]:
    """Sum log-probability of each choice's tokens after the context (one right-padded batch)."""
    seqs = []
    for cont in q.choices:
        ctx = q.context[-max(1, MAX_TOKENS - len(cont)):]
        seqs.append((ctx, cont[:MAX_TOKENS - 1]))
    width = max(len(c) + len(t) for c, t in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)  # right padding: causal, unseen by real tokens
    for i, (c, t) in enumerate(seqs):
        ids[i, : len(c) + len(t)] = torch.tensor(c + t)
    logp = F.log_softmax(model(input_ids=ids.to(device), use_cache=False).logits.float(), dim=-1).cpu()
    out = []
    for i, (c, t) in enumerate(seqs):
        pos = torch.arange(len(c) - 1, len(c) + len(t) - 1)
        out.append(float(logp[i, pos, torch.tensor(t)].sum()))
    return out


def answers(model: nn.Module, questions: list[Question], device: torch.device,
            progress: Callable[[int], None] | None = None) -> tuple[list[int], list[int]]:
    """(acc's choice, acc_norm's choice) per question."""
    plain, norm = [], []
    for n, q in enumerate(questions):
        lp = choice_logprobs(model, q, device)
        plain.append(max(range(len(lp)), key=lp.__getitem__))
        norm.append(max(range(len(lp)), key=lambda j: lp[j] / q.choice_bytes[j]))
        if progress is not None:
            progress(n + 1)
    return plain, norm


def _acc(chosen: list[int], questions: list[Question]) -> float:
    return sum(int(c == q.gold) for c, q in zip(chosen, questions, strict=True)) / len(questions)


def compare_tasks(original: nn.Module, compressed: nn.Module, tasks: list[tuple[str, list[Question]]],
                  device: torch.device, progress: Callable[[float], None] | None = None,
                  reference: dict[str, tuple[list[int], list[int]]] | None = None) -> dict[str, Any]:
    """Per task: accuracy (acc, acc_norm) before and after and the flip rate; over all questions: ``flip_rate``
    and ``task_accuracy_ratio`` (acc after / before; None when no question was right before). ``reference``:
    the original's answers by task name, used when present and filled when not (one job's attempts share the
    original, so it answers once)."""
    reference = {} if reference is None else reference
    total = sum(len(qs) * (1 if name in reference else 2) for name, qs in tasks)
    done = 0

    def tick(_n: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / total)

    per: dict[str, Any] = {}
    flips = right_before = right_after = n_all = 0
    for name, qs in tasks:
        if name not in reference:
            reference[name] = answers(original, qs, device, tick)
        a_plain, a_norm = reference[name]
        b_plain, b_norm = answers(compressed, qs, device, tick)
        n_flip = sum(int(x != y) for x, y in zip(a_plain, b_plain, strict=True))
        per[name] = {"questions": len(qs), "accuracy_before": _acc(a_plain, qs), "accuracy_after": _acc(b_plain, qs),
                     "accuracy_norm_before": _acc(a_norm, qs), "accuracy_norm_after": _acc(b_norm, qs),
                     "flip_rate": n_flip / len(qs)}
        flips += n_flip
        right_before += sum(int(c == q.gold) for c, q in zip(a_plain, qs, strict=True))
        right_after += sum(int(c == q.gold) for c, q in zip(b_plain, qs, strict=True))
        n_all += len(qs)
    return {"tasks": per, "flip_rate": flips / n_all,
            "task_accuracy_ratio": right_after / right_before if right_before else None}
