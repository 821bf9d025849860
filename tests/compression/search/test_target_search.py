"""Target jobs end to end on a tiny model (run_local): a budget that forces mixed levels, byte budgets, a floor
that cannot be met, the recipe found is a normal recipe that reproduces the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from presso.compression.errors import TargetUnreachable
from presso.compression.job import run_local
from presso.compression.search.allocation import recipe_levels
from presso.compression.spec import LocalJobSpec

# tiny_llama is float32: a g32 scale costs 1 bit per weight, so W2 g32 = 3, W4 g32 = 5, W8 g32 = 9 bits/weight
SPACE = {"bits": [2, 4, 8], "group_sizes": [32]}
FAST = {"generations": 6, "offspring": 4, "fitness_samples": 4, "candidates": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model_dir(tmp_path: Path, tiny_llama: Any) -> Path:
    d = tmp_path / "model"
    tiny_llama.save_pretrained(d)
    return d


def _spec(model_dir: Path, out: Path, target: dict[str, Any], **kw: Any) -> LocalJobSpec:
    return LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(out), "device": "cpu", "target": {**FAST, **target},
        "calibration": {"samples": 8, "seq_len": 32}, "evaluation": {"windows": 2, "seq_len": 32, "latency": False},
        **kw})


def _levels(metrics: dict[str, Any], tiny: Any) -> dict[str, Any]:
    from presso.compression.recipe import Recipe

    names = [n for n, _ in tiny.named_modules() if n.startswith("model.layers.") and n.endswith("_proj")]
    return recipe_levels(Recipe.model_validate(metrics["recipe_used"]), names)


def test_a_budget_forces_mixed_levels_and_is_met(model_dir: Path, tmp_path: Path, tiny_llama: Any) -> None:
    stages: list[str] = []
    res = run_local(_spec(model_dir, tmp_path / "out", {"bits_per_weight": 4.0, "space": SPACE}),
                    progress=lambda s, f: stages.append(s))
    m = res.metrics
    levels = _levels(m, tiny_llama)
    assert len(levels) == 14  # every block linear searched
    assert len({lv.bits for lv in levels.values()}) > 1  # 4.0 is between W2 (3) and W4 (5): mixed by force
    assert m["bits_per_weight"] <= 4.0 + 1e-9
    assert m["bits_per_weight"] >= 4.0 - 0.25  # the budget is used, not wasted
    s = m["search"]
    assert s["best"]["bits_per_weight"] == pytest.approx(m["bits_per_weight"])  # the cost model is exact in bits
    assert s["candidates_evaluated"] == len(m["attempts"]) == 2 and s["fitness_evaluations"] > 2
    assert s["front"] and all({"bits_per_weight", "kl"} <= p.keys() for p in s["front"])
    bits = [p["bits_per_weight"] for p in s["front"]]
    assert bits == sorted(bits)
    assert sum(s["allocation"].values()) == 14
    assert "search" in m["timings"]
    assert any(st.startswith("search:sensitivity") for st in stages)
    evolve = [st for st in stages if st.startswith("search:evolve")]
    assert evolve and "evaluated, best KL" in evolve[-1] and all(len(st) <= 64 for st in stages)
    assert any(st.startswith("search:candidate 2/2") for st in stages)
    # the result is a normal recipe: run as one, it gives the same artifact
    again = run_local(LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(tmp_path / "again"), "device": "cpu",
        "recipe": m["recipe_used"], "calibration": {"samples": 8, "seq_len": 32},
        "evaluation": {"windows": 2, "seq_len": 32, "latency": False}}))
    assert again.metrics["bits_per_weight"] == pytest.approx(m["bits_per_weight"])
    assert again.metrics["ppl_after"] == pytest.approx(m["ppl_after"], rel=1e-4)


def test_a_byte_budget_is_met(model_dir: Path, tmp_path: Path) -> None:
    dense = run_local(LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(tmp_path / "w4"), "device": "cpu",
        "recipe": {"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]},
        "evaluation": {"enabled": False}})).metrics["bytes_after"]
    res = run_local(_spec(model_dir, tmp_path / "out", {"max_bytes": dense, "space": SPACE}))
    assert res.metrics["bytes_after"] <= dense
    assert res.metrics["bytes_after"] >= 0.97 * dense
    assert res.metrics["search"]["best"]["bytes_estimate"] >= res.metrics["bytes_after"]  # estimates err high


def test_a_floor_that_cannot_be_met_fails_naming_the_best_reached(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TargetUnreachable) as info:
        run_local(_spec(model_dir, tmp_path / "out", {"bits_per_weight": 3.5, "max_kl": 1e-9, "space": SPACE,
                                                             "candidates": 1}))
    exc = info.value
    assert exc.code == "target_unreachable"
    assert "no allocation met the floor (KL" in exc.message and "under bits_per_weight 3.5" in exc.message
    assert "best reached perplexity +" in exc.message and "bits/weight" in exc.message
    best = exc.details["search"]["best"]
    assert best["kl"] > 1e-9 and best["bits_per_weight"] <= 3.5
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


def test_a_budget_below_the_space_fails_before_any_work(model_dir: Path, tmp_path: Path) -> None:
    stages: list[str] = []
    with pytest.raises(TargetUnreachable, match="below the smallest allocation of the search space"):
        run_local(_spec(model_dir, tmp_path / "out", {"bits_per_weight": 2.5, "space": SPACE}),
                  progress=lambda s, f: stages.append(s))
    assert not any(st.startswith("search:") for st in stages)


def test_a_floor_alone_finds_a_small_allocation_that_meets_it(model_dir: Path, tmp_path: Path) -> None:
    # the floor: what uniform W4 g32 reaches, a little loosened
    w4 = run_local(LocalJobSpec.model_validate({
        "model_uri": str(model_dir), "out_dir": str(tmp_path / "w4"), "device": "cpu",
        "recipe": {"steps": [{"method": "gptq", "bits": 4, "group_size": 32}]},
        "calibration": {"samples": 8, "seq_len": 32}, "evaluation": {"windows": 2, "seq_len": 32, "latency": False}}))
    floor = 1.5 * w4.metrics["kl"]
    res = run_local(_spec(model_dir, tmp_path / "out", {"max_kl": floor, "space": SPACE, "candidates": 4}))
    assert res.metrics["kl"] <= floor
    assert res.metrics["bits_per_weight"] < 9.0  # smaller than everything at 8 bits
    assert all(c["passed"] or c["kl"] > floor for c in res.metrics["search"]["candidates"])


def test_block_scale_calibration_needs_one_evaluation_per_block_and_recovers_block_factors() -> None:
    from presso.compression.search.job import calibrate

    # 4 layers in 2 blocks, 3 levels (cost ascending: the dearest is level 2, the median-error one level 1); the
    # "true" KL is linear in the block-output errors with one amplification per block
    errors = [[4.0, 2.0, 0.5], [8.0, 3.0, 1.0], [6.0, 1.0, 0.2], [2.0, 1.5, 0.1]]
    costs = [[1, 2, 3]] * 4
    amp = [10.0, 10.0, 3.0, 3.0]
    calls: list[tuple[int, ...]] = []

    def score(alloc: tuple[int, ...]) -> float:
        calls.append(alloc)
        return sum(a * e[j] for a, e, j in zip(amp, errors, alloc, strict=True))

    by_layer = calibrate(errors, costs, score)
    assert len(calls) == 1 + 4
    calls.clear()
    by_block = calibrate(errors, costs, score, blocks=[0, 0, 1, 1])
    assert len(calls) == 1 + 2
    assert calls[1] == (1, 1, 2, 2) and calls[2] == (2, 2, 1, 1)  # a block's layers moved to their median together
    added = [a * (e[1] - e[2]) for a, e in zip(amp, errors, strict=True)]  # KL each layer adds at its median level
    for k, e in enumerate(errors):
        assert by_layer[k] == pytest.approx([x * added[k] / e[1] for x in e])
        block = [0, 1] if k < 2 else [2, 3]
        factor = sum(added[j] for j in block) / sum(errors[j][1] for j in block)
        assert by_block[k] == pytest.approx([x * factor for x in e])


def test_cheap_sensitivities_search_meets_the_budget(model_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from presso.compression.search import measure

    seen: list[tuple[str, bool]] = []
    real = measure._quantize

    def spy(w: Any, level: Any, in_f: int, h: Any, opts: dict[str, Any], *a: Any) -> Any:
        seen.append((opts["observer"], measure._static_groups(opts)))
        return real(w, level, in_f, h, opts, *a)

    monkeypatch.setattr(measure, "_quantize", spy)
    res = run_local(_spec(model_dir, tmp_path / "out", {"bits_per_weight": 4.0, "space": SPACE,
                                                        "sensitivity_scale": "block", "sensitivity_rounding": "fast"}))
    assert seen and set(seen) == {("minmax", True)}  # the sensitivity pass rounds with min-max, static groups
    m = res.metrics
    assert m["recipe_used"]["steps"][0]["observer"] == "mse"  # the artifact: GPTQ's own default ranges
    assert 4.0 - 0.25 <= m["bits_per_weight"] <= 4.0 + 1e-9
    # tiny_llama: 2 blocks -> 1 base + 2 calibration evaluations before the front and the evolution
    layer = run_local(_spec(model_dir, tmp_path / "layer", {"bits_per_weight": 4.0, "space": SPACE}))
    assert m["search"]["fitness_evaluations"] < layer.metrics["search"]["fitness_evaluations"]
