"""ModelOpt's AutoQuantize on SmolLM2-135M, in the peer venv (issue 23, BENCHMARKS.md §6): does it run on CPU, and
what does it pick? Not a Presso benchmark: nothing of presso is imported (run with .venv-peer's python, which has
``pip install nvidia-modelopt`` added beside llmcompressor; never in .venv).

AutoQuantize (``modelopt.torch.quantization.auto_quantize``) calibrates every candidate format on ``--calib``
batches, scores each (layer, format) by the Fisher/Taylor estimate of the loss change (gradient method: one forward
and backward per scoring batch) and solves the per-layer choice under ``effective_bits`` with an LP (PuLP).
Its formats are ModelOpt's fixed list (INT4 blockwise/AWQ, INT8, FP8, NVFP4, MXFP...) plus "not quantized"; here
INT4 blockwise weight-only (block 128) and INT8 weight-only, lm_head excluded (as Presso's rows ignore it; its
16-bit weights still count in ``effective_bits``, so with tied 28M-parameter embeddings the minimum is 6.53).

Perplexity here is the Hugging Face loss (labels = inputs) on the first ``--eval`` test windows of the §1 cache: a
plumbing figure, not §1's harness or window count. Example (CPU, 1 thread):
  OMP_NUM_THREADS=1 .venv-peer/bin/python bench/modelopt_autoquantize.py \
      --out bench/results/modelopt_autoquantize_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--calib", type=int, default=4, help="calibration batches (1 x 512 each; ModelOpt's default 512)")
    p.add_argument("--score", type=int, default=4, help="scoring batches (forward + backward; ModelOpt's default 128)")
    p.add_argument("--eval", type=int, default=2, help="test windows of 512 for perplexity")
    p.add_argument("--effective-bits", type=float, default=7.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    import modelopt
    import modelopt.torch.quantization as mtq
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(CACHE / "smollm2-f32", dtype=torch.float32).eval()
    calib = torch.from_numpy(np.load(CACHE / "calib_valid_64x512.npy")).long()
    evals = torch.from_numpy(np.load(CACHE / "eval_test_40x512.npy")).long()[: args.eval]

    @torch.no_grad()
    def ppl(m: torch.nn.Module) -> float:
        nll, n = 0.0, 0
        for w in evals:
            nll += float(m(input_ids=w[None], labels=w[None]).loss) * (w.numel() - 1)
            n += w.numel() - 1
        return math.exp(nll / n)

    dense = ppl(model)
    loader = [calib[i: i + 1] for i in range(max(args.calib, args.score))]
    t0 = time.perf_counter()
    model, state = mtq.auto_quantize(
        model, constraints={"effective_bits": args.effective_bits},
        quantization_formats=["INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "INT8_WEIGHT_ONLY_CFG"], data_loader=loader,
        forward_step=lambda m, b: m(input_ids=b, labels=b), loss_func=lambda out, b: out.loss,
        num_calib_steps=args.calib, num_score_steps=args.score, disabled_layers=["*lm_head*"])
    seconds = time.perf_counter() - t0
    best = state["best"]
    out = {"device": "CPU", "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
           "torch": torch.__version__, "modelopt": modelopt.__version__, "args": vars(args) | {"out": str(args.out)},
           "dense_ppl": dense, "searched_ppl": ppl(model), "auto_quantize_seconds": seconds,
           "effective_bits": best["constraints"], "score": best["score"], "satisfied": best["is_satisfied"],
           "formats": dict(Counter(str(v) for v in best["recipe"].values()))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
