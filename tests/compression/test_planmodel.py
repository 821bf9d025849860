"""compression.planmodel: GPTQ's batched expert solves in the planner's working set (expert_batch_solve, issue 20)."""

from __future__ import annotations

from presso.compression.planmodel import SOLVE_BATCH_BYTES, Linear, expert_batch_solve


def _experts(n: int, hidden: int, width: int) -> list[Linear]:
    out = []
    for e in range(n):
        p = f"model.layers.0.mlp.experts.{e}"
        out += [Linear(f"{p}.gate_proj", width, hidden), Linear(f"{p}.up_proj", width, hidden),
                Linear(f"{p}.down_proj", hidden, width)]  # (name, out_features, in_features)
    return out


def test_batch_working_set_grows_with_the_batch_and_stops_at_the_cap() -> None:
    block = [Linear("model.layers.0.self_attn.q_proj", 4096, 2048), *_experts(128, 2048, 768)]
    one = expert_batch_solve(block, 1)
    assert one == 4.0 * (2 * 1536 * 2048 + 4 * 2048 * 2048)  # gate/up stacked: the widest group of one expert
    assert expert_batch_solve(block, 8) == 8 * one
    capped = expert_batch_solve(block, 4096)
    assert capped == (SOLVE_BATCH_BYTES // (16 * 2048 * 2048)) * one  # 32 experts of 2048-wide inputs
    assert expert_batch_solve(_experts(3, 2048, 768), 32) == 3 * one  # never more than the experts of one shape
    assert expert_batch_solve(block[:1], 32) == 0.0  # no experts: nothing batched
