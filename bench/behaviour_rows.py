"""Behavioural measures of §1's main rows (issue 23): task accuracy, answer-flip rate, top-1 and greedy-generation
agreement beside perplexity and KL, on SmolLM2-135M under the §1 protocol (bench/common.py).

There is no hub here, so the multiple-choice task is made locally from wikitext-2 *test* text (a cloze task
like LAMBADA / HellaSwag's form): ``--questions`` contexts of ``--context-tokens`` tokens at evenly spaced
positions, each with its true continuation of ``--choice-tokens`` tokens and 3 continuations cut from other
places of the text (every continuation starts a word, so the product's runner joins it to the context as
is), gold at a seeded random index. It is written as the product's task JSONL (docs/search.md)
and scored by the product's runner (compression/eval/tasks.py) through the product's ``evaluate`` (the same
call a job makes), on the 40 x 512 test windows, with the default generation agreement (4 prompts x 16 tokens).

Writes <out>/behaviour.json, behaviour.md and cloze_wikitext2_test.jsonl. Examples:
  PRESSO_BENCH_DEVICE=cuda PRESSO_BENCH_GGUF=/tmp/persist/smol.gguf PRESSO_BENCH_DATA=<dir> \\
      python3 bench/behaviour_rows.py --out $OUT                                   # the H200 run, every row
  PYTHONPATH=. .venv/bin/python bench/behaviour_rows.py --out /tmp/b --rows dense,rtn_w4_g64 --windows 4 \
      --questions 40                                                               # CPU, a few minutes
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `compression` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import DATA, DEVICE, dense_model_dir, machine_info, setup_logging, token_windows  # noqa: E402

log = logging.getLogger("bench.behaviour_rows")
Q = {"group_size": 64, "ignore": ["lm_head"]}
SP = {"ignore": ["lm_head"]}
ROWS: dict[str, list[dict[str, Any]]] = {  # §1's main rows (bench/quality.py names)
    "rtn_w4_g64": [{"method": "rtn", "bits": 4, **Q}],
    "gptq_w4_g64": [{"method": "gptq", "bits": 4, **Q}],
    "gptq_w3_g64": [{"method": "gptq", "bits": 3, **Q}],
    "awq_w4_g64": [{"method": "awq", "bits": 4, **Q}],
    "gptq_w8_g128": [{"method": "gptq", "bits": 8, "group_size": 128, "ignore": ["lm_head"]}],
    "wanda_50": [{"method": "wanda", "sparsity": 0.5, **SP}],
    "sparsegpt_24": [{"method": "sparsegpt", "pattern": "2:4", **SP}],
    "svd_llm_20": [{"method": "svd_llm", "ratio": 0.2, **SP}],
}
MEASURES = ("ppl_after", "ppl_increase_pct", "kl", "top1_agreement", "generation_agreement", "generation_exact",
            "flip_rate", "task_accuracy_ratio")


def make_cloze(ids: list[int], tokenizer: Any, path: Path, *, questions: int, context_tokens: int,
               choice_tokens: int, seed: int = 0) -> Path:
    """A 4-way cloze task from a token stream, as the product's task JSONL."""
    rng = random.Random(seed)
    span = context_tokens + choice_tokens
    if len(ids) < span * (questions + 4):
        raise ValueError(f"text too short: {len(ids)} tokens for {questions} questions of {span}")
    step = (len(ids) - span) // questions

    def word_start(i: int) -> bool:  # a continuation starting with a space: the runner then joins it as is
        return tokenizer.decode(ids[i: i + 1]).startswith(" ")

    starts = []
    for i in range(questions):  # evenly spaced, moved forward to where the continuation starts a word
        s = i * step
        while s + span < len(ids) - 1 and not word_start(s + context_tokens) and s < (i + 1) * step - 1:
            s += 1
        starts.append(s)
    with path.open("w") as fh:
        for q, s in enumerate(starts):
            ctx = tokenizer.decode(ids[s: s + context_tokens])
            true = tokenizer.decode(ids[s + context_tokens: s + span])
            others = []
            while len(others) < 3:  # continuations from elsewhere in the text, not overlapping this one
                o = rng.randrange(0, len(ids) - choice_tokens)
                if abs(o - (s + context_tokens)) >= span and word_start(o):
                    others.append(tokenizer.decode(ids[o: o + choice_tokens]))
            gold = rng.randrange(4)
            choices = others[:gold] + [true] + others[gold:]
            fh.write(json.dumps({"context": ctx, "choices": choices, "gold": gold, "id": q}) + "\n")
    return path


def measure_row(name: str, steps: list[dict[str, Any]] | None, dense: torch.nn.Module, calib: torch.Tensor,
                evals: torch.Tensor, tasks: list[tuple[str, Any]],
                reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row. ``reference``: the dense model's generations and task answers kept between rows (the product's
    ``evaluate(reference=...)``, as one job's attempts share them): identical measures, half the generation and
    task forwards."""
    from presso.compression.core.context import StepContext
    from presso.compression.eval.report import evaluate
    from presso.compression.pipeline import compress
    from presso.compression.recipe import Recipe
    from presso.compression.spec import GenerationSpec

    model = copy.deepcopy(dense)
    seconds = 0.0
    if steps is not None:
        t0 = time.perf_counter()
        compress(model, Recipe.model_validate({"steps": steps}), StepContext(calibration=calib, device=DEVICE))
        seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    q = evaluate(dense, model, "causal_lm", evals, DEVICE, latency=False, generation=GenerationSpec(), tasks=tasks,
                 reference=reference)
    out = {"recipe": steps, "compress_seconds": seconds, "eval_seconds": time.perf_counter() - t0,
           **{k: q.get(k) for k in MEASURES}, "tasks": q.get("tasks")}
    log.info("%s: %s", name, {k: out[k] for k in MEASURES})
    return out


def _md(results: dict[str, Any]) -> str:
    lines = ["# Behavioural measures of §1's main rows (SmolLM2-135M, bench/behaviour_rows.py)", "",
             f"Device: {results['machine']['device']}; command: `{results['command']}`; task: "
             f"{results['task']['questions']} 4-way cloze questions from wikitext-2 test "
             f"({results['task']['context_tokens']} + {results['task']['choice_tokens']} tokens)", "",
             "| row | ppl | +% | KL | top-1 agr. | gen. agr. | gen. exact | task acc (acc_norm) | flip rate |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, r in results["rows"].items():
        t = (r["tasks"] or {}).get("cloze", {})
        lines.append(f"| {name} | {r['ppl_after']:.2f} | {r['ppl_increase_pct']:+.1f} | {r['kl']:.4f} | "
                     f"{r['top1_agreement']:.4f} | {r['generation_agreement']:.3f} | {r['generation_exact']:.2f} | "
                     f"{t.get('accuracy_after', float('nan')):.3f} ({t.get('accuracy_norm_after', float('nan')):.3f})"
                     f" | {r['flip_rate']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--rows", default=",".join(["dense", *ROWS]), help=f"comma-separated, of dense, {', '.join(ROWS)}")
    p.add_argument("--windows", type=int, default=40, help="test windows of 512 tokens scored (40: §1's protocol)")
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--context-tokens", type=int, default=96)
    p.add_argument("--choice-tokens", type=int, default=12)
    args = p.parse_args(argv)
    setup_logging()
    from presso.compression.eval.tasks import load_task
    from presso.compression.io.calibration import read_text
    from presso.compression.io.loading import load_model

    lm = load_model(dense_model_dir())
    lm.model.float().eval()
    w = token_windows(lm.tokenizer)
    args.out.mkdir(parents=True, exist_ok=True)
    ids = lm.tokenizer(read_text(DATA / "test.txt"), add_special_tokens=False)["input_ids"]
    task_path = make_cloze(ids, lm.tokenizer, args.out / "cloze_wikitext2_test.jsonl", questions=args.questions,
                           context_tokens=args.context_tokens, choice_tokens=args.choice_tokens)
    tasks = [("cloze", load_task(task_path, lm.tokenizer, args.questions, "cloze"))]
    results: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv), "rows": {},
                               "task": {"questions": args.questions, "context_tokens": args.context_tokens,
                                        "choice_tokens": args.choice_tokens, "file": task_path.name}}
    reference: dict[str, Any] = {}  # the dense model's generations and task answers, computed once
    for name in args.rows.split(","):
        steps = None if name == "dense" else ROWS[name]
        results["rows"][name] = measure_row(name, steps, lm.model, w.calibration, w.evaluation[: args.windows], tasks,
                                            reference)
        (args.out / "behaviour.json").write_text(json.dumps(results, indent=2, default=str))
        (args.out / "behaviour.md").write_text(_md(results))
    print(_md(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
