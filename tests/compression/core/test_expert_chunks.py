"""Experts observed in chunks (compression.core.expertchunks, issue 20): a MoE block observed in one forward per
chunk of experts gives the codes / masks of the single pass bit for bit, while holding the statistics of one chunk.

Tiny random Mixtral (as transformers saves it: per-expert tensors on disk, fused in memory), Qwen3-MoE with 8
fused experts, and Qwen2-MoE (a shared expert, whose input is every expert's input under
``expert_calibration: "all"``: an input group spanning chunks)."""

from __future__ import annotations

import copy
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import save_tiny_mixtral

from presso.compression.configs.base import StepConfig
from presso.compression.core.context import StepContext
from presso.compression.core.layout import quantized_of
from presso.compression.pipeline import compress
from presso.compression.plan import Linear, expert_chunk_stats
from presso.compression.recipe import parse_recipe

CALIB = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(5))
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)


def _build(kind: str, tmp: Path) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if kind == "mixtral":
        return AutoModelForCausalLM.from_pretrained(save_tiny_mixtral(tmp / "mixtral"), dtype=torch.float32).eval()
    extra = {"qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
             "qwen2_moe": dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                               shared_expert_intermediate_size=48)}[kind]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **{**BASE, **extra})).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.nn.Module]:
    tmp = tmp_path_factory.mktemp("moe")
    return {k: _build(k, tmp) for k in ("mixtral", "qwen3_moe", "qwen2_moe")}


class _Live:
    """Counts the statistics objects alive at once (instances of a patched class), and their peak."""

    def __init__(self) -> None:
        self.alive: weakref.WeakSet[Any] = weakref.WeakSet()
        self.peak = 0

    def born(self, obj: Any) -> None:
        self.alive.add(obj)
        self.peak = max(self.peak, len(self.alive))


def _gptq_counting(monkeypatch: pytest.MonkeyPatch) -> _Live:
    from presso.compression.engines.quantization.gptq import observe
    from presso.compression.engines.quantization.gptq.gptq_math import HessianAccumulator

    live = _Live()

    class Counted(HessianAccumulator):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            live.born(self)

    monkeypatch.setattr(observe, "HessianAccumulator", Counted)
    return live


def _sparsegpt_counting(monkeypatch: pytest.MonkeyPatch) -> _Live:
    """Live Hessian tensors of the pruning loop's statistics objects (each pruned linear pops its own)."""
    from presso.compression.engines.pruning import common

    live = _Live()
    stats: weakref.WeakSet[Any] = weakref.WeakSet()
    call, init = common.Hessians.__call__, common.Hessians.__init__

    def counted_init(self: Any) -> None:
        init(self)
        stats.add(self)

    def counted_call(self: Any, name: str, x: torch.Tensor) -> None:
        call(self, name, x)
        live.peak = max(live.peak, sum(len(s.sums) for s in stats))

    monkeypatch.setattr(common.Hessians, "__init__", counted_init)
    monkeypatch.setattr(common.Hessians, "__call__", counted_call)
    return live


def _run(model: torch.nn.Module, step: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = copy.deepcopy(model)
    rep = compress(model, parse_recipe({"steps": [step]}), StepContext(calibration=CALIB, batch_size=2))["steps"][0]
    return model, rep


def _assert_same(a: torch.nn.Module, b: torch.nn.Module, rep_a: dict[str, Any], rep_b: dict[str, Any]) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for (name, ma), mb in zip(a.named_modules(), b.modules(), strict=True):
        qa, qb = quantized_of(ma), quantized_of(mb)
        assert (qa is None) == (qb is None), name
        if qa is not None and qb is not None:
            assert torch.equal(qa.q, qb.q) and torch.equal(qa.scale, qb.scale), name
    assert rep_a["layers"] == rep_b["layers"]  # errors, token counts, fallbacks: the same numbers
    assert {k: v for k, v in rep_a["experts"].items() if k not in ("expert_chunk", "observation_passes")} == \
        {k: v for k, v in rep_b["experts"].items() if k not in ("expert_chunk", "observation_passes")}


GPTQ = {"method": "gptq", "bits": 4, "group_size": 16, "expert_min_tokens": 4}


@pytest.mark.parametrize(("kind", "chunk", "passes", "step"), [
    ("mixtral", 1, 4, GPTQ),
    ("qwen3_moe", 3, 3, GPTQ),  # 8 experts: 3 + 3 + 2
    ("qwen3_moe", 3, 3, {**GPTQ, "act_order": True}),
    ("qwen2_moe", 2, 3, {**GPTQ, "expert_calibration": "all"}),  # the shared expert's group holds every expert
    ("qwen3_moe", 3, 3, {"method": "sparsegpt", "sparsity": 0.5, "expert_min_tokens": 4}),
    ("qwen3_moe", 3, 3, {"method": "sparsegpt", "sparsity": 0.5, "bits": 4, "expert_min_tokens": 4}),
    ("mixtral", 1, 4, {"method": "wanda", "sparsity": 0.5, "expert_min_tokens": 4}),
])
def test_chunked_observation_equals_one_pass(models: dict[str, torch.nn.Module], kind: str, chunk: int, passes: int,
                                             step: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    gptq, sparsegpt = step["method"] == "gptq", step["method"] == "sparsegpt"
    count = _gptq_counting if gptq else _sparsegpt_counting
    live = count(monkeypatch)
    one, rep_one = _run(models[kind], step)
    peak_one = live.peak
    live = count(monkeypatch)
    chunked, rep_chunked = _run(models[kind], {**step, "expert_chunk": chunk})
    _assert_same(one, chunked, rep_one, rep_chunked)
    blocks = len(rep_one["experts"]["observation_passes"])
    assert rep_one["experts"]["observation_passes"] == [1] * blocks
    assert rep_chunked["experts"]["expert_chunk"] == chunk
    assert rep_chunked["experts"]["observation_passes"] == [passes] * blocks
    n_experts = rep_one["experts"]["experts"] // blocks
    if gptq and step.get("expert_calibration") != "all":
        # attention: q/k/v share one Hessian, o its own; an expert: gate/up one, down one
        assert peak_one == 2 + 2 * n_experts
        assert live.peak == 2 + 2 * chunk
    elif sparsegpt:  # one Hessian per linear: q, k, v, o and 3 per expert; the router is not targeted
        assert peak_one == 4 + 3 * n_experts
        assert live.peak == 4 + 3 * chunk


def test_every_expert_reached_in_a_later_batch_is_calibrated(models: dict[str, torch.nn.Module]) -> None:
    """An expert the router first sends tokens in a later calibration batch still gets its GPTQ solve (its input
    group is recorded on its first call, not only in the first batch)."""
    model, rep = _run(models["qwen3_moe"], {**GPTQ, "expert_min_tokens": 1})
    rows = [r for r in rep["layers"] if "expert" in r]
    assert all("no calibration input" not in r.get("fallback", "") for r in rows)
    assert all(("fallback" in r) == (r["tokens_seen"] == 0) for r in rows)


def test_a_chunk_as_large_as_the_experts_is_one_pass(models: dict[str, torch.nn.Module]) -> None:
    _, rep = _run(models["mixtral"], {**GPTQ, "expert_chunk": 4})
    assert rep["experts"]["observation_passes"] == [1, 1] and rep["experts"]["expert_chunk"] is None  # 2 blocks
    with pytest.raises(ValueError):
        parse_recipe({"steps": [{**GPTQ, "expert_chunk": 0}]})
    assert StepConfig.model_fields["expert_chunk"].default is None


def test_planner_counts_one_chunk_of_expert_statistics() -> None:
    """Qwen3-30B-A3B's block: 128 experts (gate/up 2048 wide, down 768), attention (q/k/v and o 4096 wide)."""
    lins = [Linear(f"model.layers.0.self_attn.{n}", 4096, 2048) for n in ("q_proj", "k_proj", "v_proj")]
    lins.append(Linear("model.layers.0.self_attn.o_proj", 2048, 4096))
    for e in range(128):
        p = f"model.layers.0.mlp.experts.{e}"
        lins += [Linear(f"{p}.gate_proj", 768, 2048), Linear(f"{p}.up_proj", 768, 2048),
                 Linear(f"{p}.down_proj", 2048, 768)]
    attn, expert = 4 * (2048**2 + 4096**2), 4 * (2048**2 + 768**2)
    assert expert_chunk_stats(lins, None, None) == attn + 128 * expert  # 2.43 GB of experts: every one at once
    assert expert_chunk_stats(lins, 16, None) == attn + 16 * expert
    assert expert_chunk_stats(lins, None, 1e9) == attn + 1e9 // expert * expert  # automatic: what fits


def test_automatic_chunk_on_a_gpu_fits_half_the_free_memory(models: dict[str, torch.nn.Module],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The automatic chunk's arithmetic (the device's free memory faked: no GPU here); a CPU gets one pass."""
    from presso.compression.core.expertchunks import plan_passes
    from presso.compression.core.targets import targeted_linears

    model = copy.deepcopy(models["qwen3_moe"])
    _, chosen = targeted_linears(model, parse_recipe({"steps": [GPTQ]}).steps[0])
    lins = chosen[0]
    per_expert, other = 8 * (64 * 64 + 64) + 8 * (32 * 32 + 32), 4 * 8 * (64 * 64 + 64)  # gate/up + down; q/k/v/o

    def plan(free: int, device: str) -> list[int]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _d=None: (free, 10 * free))
        obs = plan_passes(model, lins, None, torch.device(device), lambda k: 8 * (k * k + k), shared_input=True)
        return [sum(".experts." in n for n in p) // 3 for p in obs.passes]

    assert plan(2 * (other + 3 * per_expert), "cuda") == [3, 3, 2]
    assert plan(2 * (other + 3 * per_expert) - 1, "cuda") == [2, 2, 2, 2]
    assert plan(10**12, "cuda") == [8]  # every expert fits: one pass
    assert plan(1, "cuda") == [1] * 8  # at least one expert per pass
    assert plan(1, "cpu") == [8]
