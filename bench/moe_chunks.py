#!/usr/bin/env python3
"""Experts observed in chunks (``expert_chunk``, compression/core/expertchunks.py; issue 20): peak memory and time.

One Qwen3-MoE decoder layer with random fp32 weights (default: 64 experts, top-8, hidden 1024, expert width 384),
GPTQ W4A16 g128 on random calibration tokens, once per ``expert_chunk`` value, each in a fresh process so its
peak RSS (``ru_maxrss``) is its own. Also: the peak number and bytes of Hessian accumulators alive at once, and a
sha256 over the compressed weights and codes (equal for every chunk: the result is bit-identical).

    nice -n 10 .venv/bin/python bench/moe_chunks.py --chunks all,16,4 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench.moe_chunks")


def one(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM

    from presso.compression.core.context import StepContext
    from presso.compression.core.layout import quantized_of
    from presso.compression.engines.quantization.gptq import observe
    from presso.compression.engines.quantization.gptq.gptq_math import HessianAccumulator
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe

    torch.set_num_threads(args.threads)
    live: weakref.WeakSet[Any] = weakref.WeakSet()
    peak = {"n": 0, "bytes": 0}

    class Counted(HessianAccumulator):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            live.add(self)
            peak["n"] = max(peak["n"], len(live))
            peak["bytes"] = max(peak["bytes"], sum(8 * (h.k * h.k + h.k) for h in live))  # fold + open segment

    observe.HessianAccumulator = Counted  # type: ignore[misc]
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "qwen3_moe", hidden_size=args.hidden, moe_intermediate_size=args.inter, intermediate_size=4 * args.inter,
        num_hidden_layers=1, num_attention_heads=16, num_key_value_heads=4, head_dim=args.hidden // 16,
        num_experts=args.experts, num_experts_per_tok=args.top_k, vocab_size=args.vocab, max_position_embeddings=4096)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    calib = torch.randint(0, args.vocab, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(1))
    step: dict[str, Any] = {"method": "gptq", "bits": 4, "group_size": 128}
    if args.chunk != "all":
        step["expert_chunk"] = int(args.chunk)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rep = compress(model, parse_recipe({"steps": [step]}), StepContext(calibration=calib, batch_size=4))["steps"][0]
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256()
    for name, mod in model.named_modules():
        q = quantized_of(mod)
        if q is not None:
            digest.update(name.encode() + q.q.numpy().tobytes() + q.scale.float().numpy().tobytes())
    return {"expert_chunk": args.chunk, "passes": rep["experts"]["observation_passes"], "seconds": round(seconds, 1),
            "peak_rss_mb_before": round(rss0 / 1024), "peak_rss_mb": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024), "peak_hessians": peak["n"],
            "peak_hessian_mb": round(peak["bytes"] / 2**20), "fallbacks": len(rep["experts"]["fallbacks"]),
            "codes_sha256": digest.hexdigest()[:16]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", default="all,16,4")
    p.add_argument("--chunk", default=None, help=argparse.SUPPRESS)  # one run, in a child process
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--inter", type=int, default=384)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.chunk is not None:
        print(json.dumps(one(args)))  # noqa: T201 - the child's result, read by the parent
        return
    for chunk in args.chunks.split(","):
        argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("chunks", "chunk")]
        done = subprocess.run([sys.executable, __file__, *argv, "--chunk", chunk], capture_output=True, text=True,
                              check=True)
        print(done.stdout.strip().splitlines()[-1], flush=True)  # noqa: T201 - a benchmark's output


if __name__ == "__main__":
    main()
