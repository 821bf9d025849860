"""Issue 23's evaluation: top-1 and greedy-generation agreement, multiple-choice accuracy and flip rate from the
user's task files, the gates on them, evaluation progress and time, the default size rule, and the bit-exactness
of lossless jobs. Tiny random models; the task files are written here."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from presso.compression.errors import AccuracyGateFailed, InvalidTaskFile
from presso.compression.eval.exact import bit_exactness
from presso.compression.eval.generation import compare_generations, prefix_agreement
from presso.compression.eval.perplexity import compare
from presso.compression.eval.report import gate_verdict
from presso.compression.eval.tasks import compare_tasks, load_task
from presso.compression.job import run_local
from presso.compression.spec import Gate, JobSpec, LocalJobSpec
from tests.svc_helpers import write_tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "model")  # byte-level tokenizer: text tasks work


def _model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def _noisy(model: Any, scale: float) -> Any:
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name.endswith("proj.weight"):
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return other


def write_task(path: Path, n: int = 24, choices: int = 4) -> Path:
    words = ["apple", "river", "stone", "cloud", "green", "seven", "music", "north"]
    with path.open("w") as fh:
        for i in range(n):
            opts = [words[(i + j) % len(words)] + f" {j}" for j in range(choices)]
            fh.write(json.dumps({"context": f"Question {i}: which word comes next after {words[i % 8]}?",
                                 "choices": opts, "gold": i % choices}) + "\n")
    return path


# --- the measures -------------------------------------------------------------------------------------------------


def test_top1_and_generation_agreement_are_one_for_the_same_model_and_drop_with_noise(model_dir: Path) -> None:
    m = _model(model_dir)
    windows = torch.randint(0, 200, (4, 40), generator=torch.Generator().manual_seed(1))
    same = compare(m, m, windows, CPU)
    assert same["top1_agreement"] == 1.0 and same["kl"] < 1e-6 and same["eval_windows"] == 4
    noisy = _noisy(m, 1.0)
    q = compare(m, noisy, windows, CPU)
    assert 0.0 <= q["top1_agreement"] < 1.0 and q["kl"] > 0
    # by hand: the fraction of positions whose argmax agrees
    la, lb = m(input_ids=windows).logits[:, :-1].argmax(-1), noisy(input_ids=windows).logits[:, :-1].argmax(-1)
    assert q["top1_agreement"] == pytest.approx(float((la == lb).float().mean()))
    g_same = compare_generations(m, m, windows, CPU, prompts=3, prompt_tokens=8, new_tokens=6)
    assert g_same == {"generation_agreement": 1.0, "generation_exact": 1.0, "generation_prompts": 3,
                      "generation_new_tokens": 6}
    g = compare_generations(m, _noisy(m, 3.0), windows, CPU, prompts=3, prompt_tokens=8, new_tokens=6)
    assert g["generation_agreement"] < 1.0


def test_greedy_continuation_is_what_generate_writes(model_dir: Path) -> None:
    from presso.compression.eval.generation import greedy

    m = _model(model_dir)
    prompts = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(2))
    ref = m.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=5,
                     min_new_tokens=5, pad_token_id=0)[:, 8:]
    assert torch.equal(greedy(m, prompts, 5, CPU), ref)


def test_prefix_agreement_counts_tokens_before_the_first_difference() -> None:
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]])
    b = torch.tensor([[1, 2, 3, 4], [1, 9, 3, 4], [0, 6, 7, 8]])  # later matches after a difference do not count
    out = prefix_agreement(a, b)
    assert out["generation_agreement"] == pytest.approx((4 + 1 + 0) / 12)
    assert out["generation_exact"] == pytest.approx(1 / 3)


def test_task_accuracy_and_flip_rate(model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    m, tok = _model(model_dir), AutoTokenizer.from_pretrained(model_dir)
    qs = load_task(write_task(tmp_path / "t.jsonl"), tok, 20, "t")
    assert len(qs) == 20 and all(len(q.choices) == 4 for q in qs)
    same = compare_tasks(m, m, [("t", qs)], CPU)
    assert same["flip_rate"] == 0.0 and same["tasks"]["t"]["questions"] == 20
    t = same["tasks"]["t"]
    assert t["accuracy_before"] == t["accuracy_after"]
    assert same["task_accuracy_ratio"] in (1.0, None)
    far = compare_tasks(m, _noisy(m, 4.0), [("t", qs)], CPU)
    assert far["flip_rate"] > 0  # heavy noise changes some answers among 20 questions x 4 choices
    # the flip rate by hand: choices by summed log-probability of the continuation tokens
    from presso.compression.eval.tasks import answers

    a, _ = answers(m, qs, CPU)
    b, _ = answers(_noisy(m, 4.0), qs, CPU)
    assert far["flip_rate"] == pytest.approx(sum(x != y for x, y in zip(a, b, strict=True)) / 20)


@pytest.mark.parametrize("line, says", [
    ("not json", "line 2: not JSON"),
    (json.dumps({"context": "x", "choices": ["a"], "gold": 0}), "line 2: expected"),
    (json.dumps({"context": "x", "choices": ["a", "b"], "gold": 2}), "line 2: expected"),
    (json.dumps({"context": "x", "choices": ["a", ""], "gold": 0}), "line 2: expected"),
])
def test_a_bad_task_line_is_named(model_dir: Path, tmp_path: Path, line: str, says: str) -> None:
    from transformers import AutoTokenizer

    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"context": "ok", "choices": ["a", "b"], "gold": 1}) + "\n" + line + "\n")
    with pytest.raises(InvalidTaskFile, match=says) as info:
        load_task(p, AutoTokenizer.from_pretrained(model_dir), 10, "bad")
    assert info.value.code == "invalid_task_file"


def test_gate_limits_on_the_new_measures() -> None:
    q = {"top1_agreement": 0.9, "flip_rate": 0.1, "task_accuracy_ratio": 0.95}
    assert gate_verdict(q, Gate(min_top1_agreement=0.85, max_flip_rate=0.1, min_task_accuracy_ratio=0.9))["passed"]
    v = gate_verdict(q, Gate(min_top1_agreement=0.95, max_flip_rate=0.05, min_task_accuracy_ratio=0.99))
    assert not v["passed"] and len(v["gate_failures"]) == 3
    assert v["gate_failures"][0] == "top-1 agreement 0.9000 < 0.95"
    assert gate_verdict({}, Gate(max_flip_rate=0.5))["gate_failures"] == ["flip rate not measured"]


def test_task_limits_and_floors_need_tasks() -> None:
    with pytest.raises(ValidationError, match="need evaluation.tasks"):
        JobSpec.model_validate({"model_uri": "file:///m", "recipe": {"steps": [{"method": "rtn"}]},
                                "evaluation": {"gate": {"max_flip_rate": 0.1}}})
    with pytest.raises(ValidationError, match="max_flip_rate needs evaluation.tasks"):
        JobSpec.model_validate({"model_uri": "file:///m", "target": {"bits_per_weight": 4, "max_flip_rate": 0.1}})
    ok = JobSpec.model_validate({"model_uri": "s3://b/m", "target": {"min_top1_agreement": 0.9}})
    assert ok.target is not None and ok.target.has_floor


def test_task_uris_are_checked_and_localized(tmp_path: Path) -> None:
    job = JobSpec.model_validate({"model_uri": "s3://b/m", "recipe": {"steps": [{"method": "rtn"}]},
                                  "evaluation": {"tasks": [{"uri": "s3://b/t.jsonl", "name": "mc"}]}})
    assert job.uris()["evaluation.tasks.0.uri"] == "s3://b/t.jsonl"
    local = LocalJobSpec.for_run(job, model=tmp_path, tasks=[tmp_path / "t.jsonl"], out_dir=tmp_path / "o")
    assert local.task_paths == [tmp_path / "t.jsonl"] and local.evaluation.tasks[0].name == "mc"


# --- in jobs ------------------------------------------------------------------------------------------------------


def _spec(model_dir: Path, out: Path, recipe: dict[str, Any], evaluation: dict[str, Any] | None = None,
          **kw: Any) -> LocalJobSpec:
    return LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(out), "device": "cpu", "recipe": recipe,
        "calibration": {"samples": 4, "seq_len": 32},
        "evaluation": {"windows": 2, "seq_len": 32, "latency": False, **(evaluation or {})}, **kw})


RTN4 = {"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]}
RTN2 = {"steps": [{"method": "rtn", "bits": 2, "group_size": 32}]}


def test_every_job_reports_the_measures_progress_and_time(model_dir: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "mc.jsonl", n=8)
    stages: list[tuple[str, float]] = []
    res = run_local(_spec(model_dir, tmp_path / "out", RTN4, {"tasks": [{"uri": str(task), "name": "mc"}]}),
                    progress=lambda s, f: stages.append((s, f)))
    m = res.metrics
    for k in ("ppl_after", "kl", "top1_agreement", "generation_agreement", "generation_exact", "flip_rate",
              "task_accuracy_ratio", "eval_seconds"):
        assert k in m, k
    assert 0.0 <= m["top1_agreement"] <= 1.0 and m["tasks"]["mc"]["questions"] == 8
    ev = [f for s, f in stages if s == "evaluate"]
    assert ev[0] == 0.0 and ev[-1] == 1.0 and len(set(ev)) >= 4 and ev == sorted(ev)  # moves, not 0.0 for minutes
    assert m["timings"]["evaluate"] > 0 and m["timings"]["evaluate"] >= m["eval_seconds"] * 0.999
    stored = json.loads((tmp_path / "out" / "presso.json").read_text())["metrics"]
    assert stored["top1_agreement"] == m["top1_agreement"]


def test_gates_on_agreement_and_flip_rate_pick_the_fallback(model_dir: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "mc.jsonl", n=16)
    first = run_local(_spec(model_dir, tmp_path / "a", RTN2, {"tasks": [{"uri": str(task)}]})).metrics
    assert first["top1_agreement"] < 1.0
    # a floor just above what W2 reaches fails it; the W8 fallback passes
    gate = {"min_top1_agreement": first["top1_agreement"] + 1e-6, "max_flip_rate": 1.0}
    res = run_local(_spec(model_dir, tmp_path / "b", RTN2, {"tasks": [{"uri": str(task)}], "gate": gate},
                          fallbacks=[{"steps": [{"method": "rtn", "bits": 8, "group_size": 32}]}]))
    a0, a1 = res.metrics["attempts"]
    assert not a0["passed"] and a0["gate_failures"][0].startswith("top-1 agreement")
    assert a1["passed"] and res.metrics["recipe_used"]["steps"][0]["bits"] == 8
    with pytest.raises(AccuracyGateFailed, match="flip rate"):
        run_local(_spec(model_dir, tmp_path / "c", RTN2,
                        {"tasks": [{"uri": str(task)}], "gate": {"max_flip_rate": first["flip_rate"] - 1e-6}}))


def test_a_task_floor_in_a_target_that_cannot_be_met_names_it(model_dir: Path, tmp_path: Path) -> None:
    from presso.compression.errors import TargetUnreachable

    spec = LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(tmp_path / "o"), "device": "cpu",
        "target": {"bits_per_weight": 3.5, "min_top1_agreement": 1.0, "space": {"bits": [2, 4], "group_sizes": [32]},
                   "generations": 1, "offspring": 2, "fitness_samples": 2, "candidates": 1},
        "calibration": {"samples": 4, "seq_len": 32}, "evaluation": {"windows": 2, "seq_len": 32, "latency": False}})
    with pytest.raises(TargetUnreachable, match="top-1 agreement .* < 1.0") as info:
        run_local(spec)
    assert "top1_agreement" in info.value.details["search"]["best"]


def test_default_evaluation_is_sized_by_the_compression_time(model_dir: Path, tmp_path: Path) -> None:
    from presso.compression.eval.session import AUTO_MAX_WINDOWS, AUTO_MIN_WINDOWS, EvalSession
    from presso.compression.io.loading import load_model

    spec = LocalJobSpec.model_validate({"model_uri": str(model_dir), "out_dir": str(tmp_path / "o"),
                                        "recipe": RTN4, "evaluation": {"seq_len": 32, "latency": False}})
    assert spec.evaluation.windows is None  # unset: the size rule
    lm = load_model(model_dir)
    other = _noisy(lm.model, 0.1)
    stages: list[str] = []
    quick = EvalSession(spec, lm, CPU, lambda s, f: stages.append(s))
    q = quick.measure(lm.model, other, 0.0, latency=False)  # a compression that took no time: the minimum
    assert q["eval_windows"] == AUTO_MIN_WINDOWS and "evaluation-data" in stages
    again = quick.measure(lm.model, other, 1e9, latency=False)  # later attempts: the same windows
    assert again["eval_windows"] == AUTO_MIN_WINDOWS and again["ppl_after"] == pytest.approx(q["ppl_after"])
    slow = EvalSession(spec, lm, CPU, lambda s, f: None)
    assert slow.measure(lm.model, other, 1e9, latency=False)["eval_windows"] == AUTO_MAX_WINDOWS
    assert quick.seconds > 0 and slow.seconds > 0
    # a job with the default: between the bounds, and its time in timings
    m = run_local(LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(tmp_path / "job"), "device": "cpu", "recipe": RTN4,
        "evaluation": {"seq_len": 32, "latency": False}})).metrics
    assert AUTO_MIN_WINDOWS <= m["eval_windows"] <= AUTO_MAX_WINDOWS and m["timings"]["evaluate"] > 0


def test_a_lossless_job_reports_bit_exactness_instead_of_perplexity(model_dir: Path, tmp_path: Path) -> None:
    stages: list[str] = []
    res = run_local(_spec(model_dir, tmp_path / "out", {"steps": [{"method": "lossless"}]}),
                    progress=lambda s, f: stages.append(s))
    m = res.metrics
    assert m["bit_exact"] is True and m["weights_sha256"] == m["decoded_weights_sha256"]
    assert m["exact_tensors"] > 10 and "ppl_after" not in m and "evaluate" not in stages
    assert "evaluation-data" not in stages  # no evaluation text generated for it
    assert any(p.name.endswith(".pzst") for p in (tmp_path / "out").iterdir())
    # the digest is the original's: recomputed here from the model file
    from safetensors.torch import load_file

    from presso.compression.eval.exact import weights_sha256

    orig = load_file(str(model_dir / "model.safetensors"))
    names = [n for n in orig if n in _model(model_dir).state_dict()]
    assert weights_sha256(orig, names) == m["weights_sha256"]


def test_bit_exactness_sees_one_changed_weight(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "art"
    out.mkdir()
    (out / "config.json").write_text((model_dir / "config.json").read_text())
    state = load_file(str(model_dir / "model.safetensors"))
    model = _model(model_dir)
    save_file(state, str(out / "model.safetensors"))
    assert bit_exactness(model, out)["bit_exact"]
    name = next(n for n in state if n.endswith("q_proj.weight"))
    state[name] = state[name].clone()
    state[name].view(-1)[0] = torch.nextafter(state[name].view(-1)[0], torch.tensor(1e9))  # one ulp
    save_file(state, str(out / "model.safetensors"))
    ex = bit_exactness(model, out)
    assert not ex["bit_exact"] and ex["weights_sha256"] != ex["decoded_weights_sha256"]


def test_a_top1_floor_alone_finds_an_allocation_that_meets_it(model_dir: Path, tmp_path: Path) -> None:
    base = {"calibration": {"samples": 4, "seq_len": 32}, "evaluation": {"windows": 2, "seq_len": 32,
                                                                         "latency": False}}
    w4 = run_local(LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(tmp_path / "w4"), "device": "cpu",
        "recipe": {"steps": [{"method": "gptq", "bits": 4, "group_size": 32}]}, **base})).metrics
    floor = w4["top1_agreement"] - 0.02  # what uniform W4 reaches, a little loosened
    res = run_local(LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(tmp_path / "o"), "device": "cpu",
        "target": {"min_top1_agreement": floor, "space": {"bits": [2, 4, 8], "group_sizes": [32]},
                   "generations": 1, "offspring": 2, "fitness_samples": 2, "candidates": 4}, **base})).metrics
    assert res["top1_agreement"] >= floor
    assert res["search"]["floor"] == {"min_top1_agreement": floor}
    assert all(c["passed"] or c["top1_agreement"] < floor for c in res["search"]["candidates"])


def test_the_original_answers_once_per_job_and_results_do_not_change(model_dir: Path, tmp_path: Path) -> None:
    from presso.compression.eval.session import EvalSession
    from presso.compression.io.loading import load_model

    task = write_task(tmp_path / "mc.jsonl", n=6)
    spec = LocalJobSpec.model_validate({"model_uri": str(model_dir), "out_dir": str(tmp_path / "o"), "recipe": RTN4,
                                        "evaluation": {"windows": 2, "seq_len": 32, "latency": False,
                                                       "tasks": [{"uri": str(task), "name": "mc"}]}})
    lm = load_model(model_dir)
    calls = {"n": 0}
    forward = lm.model.forward

    def counting(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        return forward(*a, **kw)

    session = EvalSession(spec, lm, CPU, lambda s, f: None)
    noisy = _noisy(lm.model, 1.0)
    lm.model.forward = counting  # type: ignore[method-assign]
    first = session.measure(lm.model, noisy, 1.0, latency=False)
    n_first = calls["n"]
    second = session.measure(lm.model, noisy, 1.0, latency=False)
    lm.model.forward = forward  # type: ignore[method-assign]
    n_second = calls["n"] - n_first
    # first: 32 steps writing the evaluation text, 1 batch of windows, 16 greedy steps, 6 questions; then the
    # original runs on the windows only
    assert n_first == 32 + 1 + 16 + 6 and n_second == 1
    for k in ("flip_rate", "generation_agreement", "top1_agreement", "kl"):
        assert first[k] == second[k], k
    fresh = EvalSession(spec, lm, CPU, lambda s, f: None).measure(lm.model, noisy, 1.0, latency=False)
    assert fresh["flip_rate"] == first["flip_rate"] and fresh["tasks"] == first["tasks"]


def test_greedy_without_a_cache_writes_the_same(model_dir: Path) -> None:
    from presso.compression.eval.generation import greedy

    m = _model(model_dir)
    prompts = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(4))

    class NoCache(torch.nn.Module):  # a causal LM whose outputs carry no cache
        def __init__(self) -> None:
            super().__init__()
            self.inner = m

        def forward(self, input_ids: torch.Tensor, **kw: Any) -> Any:
            from transformers.modeling_outputs import CausalLMOutput

            return CausalLMOutput(logits=self.inner(input_ids=input_ids, use_cache=False).logits)

    assert torch.equal(greedy(NoCache(), prompts, 5, CPU), greedy(m, prompts, 5, CPU))
