"""Experts solved together (compression.engines.quantization.gptq.batched, issue 20): the batched GPTQ gives each
layer the codes it gets alone, batches are planned from definition order within one signature and pass, and a
mixture-of-experts job batched or one expert at a time writes the same codes and the same report."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from presso.compression.configs.quantization import GPTQConfig, QuantArgs
from presso.compression.core.context import StepContext
from presso.compression.core.layout import quantized_of
from presso.compression.engines.quantization.gptq import batched
from presso.compression.engines.quantization.gptq.batched import member_errors, plan_batches
from presso.compression.engines.quantization.gptq.gptq_math import output_error, quantize_weight, quantize_weights
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe


def _layers(e: int, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ws, hs = [], []
    for _ in range(e):
        x = torch.randn(8 * k, k, generator=g) @ (torch.randn(k, k, generator=g) / k**0.5)
        hs.append(2 * x.t() @ x / x.shape[0])
        ws.append(torch.randn(n, k, generator=g))
    return torch.stack(ws), torch.stack(hs)


@pytest.mark.parametrize(("group", "static", "observer"), [(16, False, "mse"), (16, True, "minmax"), (-1, True, "mse")])
def test_batched_gptq_gives_each_layer_its_codes_alone(group: int, static: bool, observer: str) -> None:
    w, h = _layers(4, 24, 48)
    h[2, 5, :] = 0  # a dead input in one layer only
    h[2, :, 5] = 0
    w[1, :, ::2] = 0  # a pruned layer (half its weights exactly zero) keeps its zeros
    scheme = QuantArgs(bits=4, group_size=group, symmetric=False, observer=observer)
    together, losses = quantize_weights(w, h, scheme, block_size=16, static_groups=static)
    assert len(together) == 4 and len(losses) == 4
    for e in range(4):
        alone, stats = quantize_weight(w[e], h[e], scheme, block_size=16, static_groups=static)
        assert torch.equal(together[e].q, alone.q), e
        torch.testing.assert_close(together[e].scale, alone.scale)
        assert losses[e] == pytest.approx(stats["loss"], rel=1e-4)
    assert torch.all(together[2].q[:, 5] == together[2].zero[:, 0].to(torch.int8))  # dead column: zero weight
    assert torch.all(together[1].dequantize()[:, ::2] == 0)


def test_member_errors_match_the_per_layer_formulas() -> None:
    w, h = _layers(3, 12, 32, seed=1)
    w_hat = w + 0.05 * torch.randn(w.shape, generator=torch.Generator().manual_seed(2))
    rel, out = member_errors(w, w_hat, h, [4, 8])
    for e in range(3):
        for j, rows in enumerate((slice(0, 4), slice(4, 12))):
            want = float((w[e, rows] - w_hat[e, rows]).norm() / w[e, rows].norm())
            assert rel[e][j] == pytest.approx(want, rel=1e-5)
            assert out[e][j] == pytest.approx(output_error(w[e, rows], w_hat[e, rows], h[e]), rel=1e-4)


def _lin(k: int, n: int) -> nn.Linear:
    return nn.Linear(k, n, bias=False)


def test_batches_follow_definition_order_signature_pass_and_size() -> None:
    a = QuantArgs(bits=4, group_size=16)
    b = QuantArgs(bits=8, group_size=16)
    mods = {f"e{i}.gate_up": _lin(32, 8) for i in range(5)} | {f"e{i}.down": _lin(16, 32) for i in range(5)}
    mods |= {"attn.q": _lin(32, 32), "e9.down": _lin(16, 32)}
    order = ["attn.q", *[f"e{i}.{p}" for i in range(5) for p in ("gate_up", "down")], "e9.down"]
    schemes: dict[str, QuantArgs | None] = {n: a for n in mods} | {"e9.down": b}
    experts = {n for n in mods if n.startswith("e")}
    work = [{n: mods[n]} for n in reversed(order)]  # the router's first-call order: any
    cfg = GPTQConfig(bits=4, expert_solve_batch=3)
    plan = plan_batches(work, schemes, experts, [set(mods)], order, cfg)
    names = [[next(iter(work[k])) for k in ks] for ks in plan]
    assert names == [["attn.q"], ["e0.gate_up", "e1.gate_up", "e2.gate_up"], ["e0.down", "e1.down", "e2.down"],
                     ["e3.gate_up", "e4.gate_up"], ["e3.down", "e4.down"], ["e9.down"]]
    # two observation passes: experts of different passes are never in one batch
    passes = [{"attn.q", *[f"e{i}.{p}" for i in range(2) for p in ("gate_up", "down")]},
              {f"e{i}.{p}" for i in range(2, 5) for p in ("gate_up", "down")} | {"e9.down"}]
    plan = plan_batches(work, schemes, experts, passes, order, GPTQConfig(bits=4))
    names = [[next(iter(work[k])) for k in ks] for ks in plan]
    assert ["e0.gate_up", "e1.gate_up"] in names and ["e2.gate_up", "e3.gate_up", "e4.gate_up"] in names
    assert sorted(k for ks in plan for k in ks) == list(range(len(work)))
    # act_order and expert_solve_batch 1: every group alone
    for cfg in (GPTQConfig(bits=4, act_order=True), GPTQConfig(bits=4, expert_solve_batch=1)):
        assert all(len(ks) == 1 for ks in plan_batches(work, schemes, experts, [set(mods)], order, cfg))


def test_batch_size_capped_by_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batched, "BATCH_BYTES", 16 * 32 * 32 * 2)  # two 32-wide experts' factors
    mods = {f"e{i}": _lin(32, 8) for i in range(5)}
    work = [{n: m} for n, m in mods.items()]
    plan = plan_batches(work, dict.fromkeys(mods, QuantArgs(bits=4)), set(mods), [set(mods)], list(mods),
                        GPTQConfig(bits=4))
    assert [len(ks) for ks in plan] == [2, 2, 1]


def _moe() -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model("qwen3_moe", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=128, head_dim=16,
                               max_position_embeddings=64, num_experts=8, num_experts_per_tok=2,
                               moe_intermediate_size=32, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _gptq(model: nn.Module, **extra: Any) -> tuple[nn.Module, dict[str, Any]]:
    model = copy.deepcopy(model)
    calib = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(5))
    step = {"method": "gptq", "bits": 4, "group_size": 16, "expert_min_tokens": 4, **extra}
    rep = compress(model, parse_recipe({"steps": [step]}), StepContext(calibration=calib, batch_size=2))
    return model, rep["steps"][0]


def test_moe_job_batched_equals_one_expert_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = batched.quantize_weights

    def counted(w: torch.Tensor, *a: Any, **kw: Any) -> Any:
        calls.append(w.shape[0])
        return real(w, *a, **kw)

    monkeypatch.setattr(batched, "quantize_weights", counted)
    base = _moe()
    one, rep_one = _gptq(base, expert_solve_batch=1)
    assert calls == []  # one expert at a time never batches
    together, rep_together = _gptq(base)
    assert calls and max(calls) > 1 and sum(calls) <= 2 * 2 * 8  # 2 blocks x (gate/up, down) x 8 experts
    n_quant = 0
    for (name, a), b in zip(one.named_modules(), together.modules(), strict=True):
        qa, qb = quantized_of(a), quantized_of(b)
        assert (qa is None) == (qb is None), name
        if qa is not None and qb is not None:
            n_quant += 1
            assert torch.equal(qa.q, qb.q) and torch.equal(qa.scale, qb.scale), name
    assert n_quant == 2 * (4 + 3 * 8)  # q, k, v, o and every expert's three linears, in both blocks
    assert rep_one["layers"] == rep_together["layers"]


def test_strided_weights_are_quantized_like_their_copies() -> None:
    """A Conv1D weight reaches the solver as a transposed view (get_weight's ``w.t()``), and a caller may stack
    such views: the flat row view the batched loop takes must not depend on the caller's strides."""
    w, h = _layers(3, 24, 48, seed=4)
    strided = w.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major layers
    assert not strided.is_contiguous()
    scheme = QuantArgs(bits=4, group_size=16)
    got, _ = quantize_weights(strided, h, scheme, block_size=16)
    want, _ = quantize_weights(w.contiguous(), h, scheme, block_size=16)
    assert all(torch.equal(a.q, b.q) for a, b in zip(got, want, strict=True))
    one, _ = quantize_weight(strided[0], h[0], scheme, block_size=16)
    assert torch.equal(one.q, want[0].q)


def test_a_batch_member_that_is_not_positive_definite_gets_its_own_retries() -> None:
    from presso.compression.core.stats import inverse_cholesky_upper

    _, h = _layers(3, 4, 16, seed=6)
    h[1] = torch.full((16, 16), 2.0)  # with a unit diagonal: eigenvalues down to -1, not positive definite
    diag = torch.diagonal(h, dim1=-2, dim2=-1).clone()
    diag[1] = 1.0
    failing = h[1].clone()
    torch.diagonal(failing).copy_(diag[1])
    assert int(torch.linalg.cholesky_ex(failing).info) != 0  # the batched factorisation fails for this one only
    together = inverse_cholesky_upper(h, diag)
    assert torch.isfinite(together).all()
    for e in (0, 2):
        torch.testing.assert_close(together[e], inverse_cholesky_upper(h[e], diag[e]))
    torch.testing.assert_close(together[1], inverse_cholesky_upper(h[1], diag[1]))
