"""GPTQ W4A16 on a mixture-of-experts model built from a real MoE config's expert shape (issue 20).

Random weights (the router included, so routing is near uniform: real routers are skewed), Presso only: wall time,
how many experts fell back to RTN for want of routed calibration tokens (``expert_min_tokens``), how many no token
reached, and the mean layer-output error of the expert linears (GPTQ's ``output_error``), with routed calibration
and with ``expert_calibration: "all"``. Default shape: Qwen3-30B-A3B's experts (128 experts, top-8, hidden 2048,
moe_intermediate 768) with fewer layers; ``--hidden`` / ``--inter`` shrink it for a CPU.

    python bench/moe_experts.py --layers 1 --hidden 1024 --inter 384 --samples 16 --seq-len 128
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch

from presso.compression.core.context import StepContext, pick_device
from presso.compression.pipeline import compress
from presso.compression.recipe import parse_recipe

log = logging.getLogger("bench.moe_experts")


def build(args: argparse.Namespace) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "qwen3_moe", hidden_size=args.hidden, moe_intermediate_size=args.inter, intermediate_size=4 * args.inter,
        num_hidden_layers=args.layers, num_attention_heads=32, num_key_value_heads=4, head_dim=args.hidden // 32,
        num_experts=args.experts, num_experts_per_tok=args.top_k, vocab_size=args.vocab, max_position_embeddings=4096)
    return AutoModelForCausalLM.from_config(cfg).eval()


@torch.no_grad()
def logits_error(original: torch.nn.Module, compressed: torch.nn.Module, ids: torch.Tensor) -> float:
    ref = original(ids).logits.float()
    return float((compressed(ids).logits.float() - ref).norm() / ref.norm())


def run(args: argparse.Namespace, calibration: str) -> dict[str, object]:
    import copy

    original = build(args)
    model = copy.deepcopy(original)
    held_out = torch.randint(0, args.vocab, (4, args.seq_len), generator=torch.Generator().manual_seed(2))
    calib = torch.randint(0, args.vocab, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(1))
    step = {"method": "gptq", "bits": 4, "group_size": 128, "expert_min_tokens": args.min_tokens,
            "expert_calibration": calibration}
    t0 = time.perf_counter()
    rep = compress(model, parse_recipe({"steps": [step]}),
                   StepContext(calibration=calib, device=pick_device(args.device), batch_size=4))["steps"][0]
    seconds = time.perf_counter() - t0
    rows = [r for r in rep["layers"] if "expert" in r]
    tokens = [r["tokens_seen"] for r in rows if r["name"].endswith("gate_proj")]
    return {
        "calibration": calibration, "seconds": round(seconds, 1), **rep["experts"],
        "fallbacks": len(rep["experts"]["fallbacks"]) // 3,  # experts (3 linears each)
        "experts_never_reached": sum(t == 0 for t in tokens),
        "tokens_per_expert_min_median_max": [min(tokens), statistics.median(tokens), max(tokens)],
        # each linear's error on its own calibration statistics (routed tokens, or all tokens): not comparable
        # across modes; the held-out logits error is
        "expert_output_error_mean": statistics.fmean(r["output_error"] for r in rows if "output_error" in r),
        "held_out_logits_rel_error": logits_error(original, model, held_out),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--inter", type=int, default=768)
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--min-tokens", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--modes", default="routed,all")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for mode in args.modes.split(","):
        print(json.dumps(run(args, mode)))  # noqa: T201 - a benchmark's output


if __name__ == "__main__":
    main()
