"""The llmcompressor side of the quality benchmark (../shared/docs/benchmarks.md §1).

Runs INSIDE the peer venv (.venv-peer: torch 2.13 CPU + llmcompressor), never in the product's: it
imports nothing from Presso. bench/quality.py calls it once per row through subprocess and reads
the JSON it writes.

The perplexity function below is a line-for-line copy of the product's harness
(compression/eval/perplexity.py: each window on its own, labels = inputs, mean token NLL -> exp),
copied because this venv cannot import Presso; the 'dense' row checks both give the same number
on the same cached model and the same token windows (.npy written by bench/common.py).

Examples:
  .venv-peer/bin/python bench/peer_llmcompressor.py --list
  .venv-peer/bin/python bench/peer_llmcompressor.py --row gptq_w4_g64 \\
      --model-dir bench/.cache/smollm2-f32 --calib bench/.cache/calib_valid_64x512.npy \\
      --eval bench/.cache/eval_test_40x512.npy --out /tmp/peer_gptq.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IGNORE = ["lm_head"]


def _scheme(bits: int, group: int, symmetric: bool = True) -> dict[str, Any]:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy="group", group_size=group)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def _rtn(bits: int, group: int) -> list[Any]:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(config_groups=_scheme(bits, group), ignore=IGNORE)]


def _gptq(bits: int, group: int, actorder: str | None) -> Any:
    from llmcompressor.modifiers.quantization import GPTQModifier

    return GPTQModifier(config_groups=_scheme(bits, group), ignore=IGNORE, actorder=actorder, dampening_frac=0.01,
                        block_size=128)


def _awq(bits: int, group: int) -> list[Any]:
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier

    return [AWQModifier(n_grid=20), QuantizationModifier(config_groups=_scheme(bits, group), ignore=IGNORE)]


def _sparsegpt(sparsity: float, mask: str) -> Any:
    from llmcompressor.modifiers.pruning import SparseGPTModifier

    return SparseGPTModifier(sparsity=sparsity, mask_structure=mask, ignore=IGNORE, block_size=128,
                             dampening_frac=0.01)


def _wanda(sparsity: float, mask: str) -> Any:
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    return WandaPruningModifier(sparsity=sparsity, mask_structure=mask, ignore=IGNORE)


# row name -> (description, recipe factory). Same names as bench/quality.py's rows.
ROWS: dict[str, tuple[str, Any]] = {
    "dense": ("no compression (harness check)", lambda: None),
    "rtn_w4_g64": ("QuantizationModifier W4 g64 sym", lambda: _rtn(4, 64)),
    "gptq_w4_g64": ("GPTQModifier W4 g64 sym, actorder=None", lambda: [_gptq(4, 64, None)]),
    "gptq_w4_g64_act": ("GPTQModifier W4 g64 sym, actorder=static", lambda: [_gptq(4, 64, "static")]),
    "gptq_w3_g64": ("GPTQModifier W3 g64 sym, actorder=None", lambda: [_gptq(3, 64, None)]),
    "awq_w4_g64": ("AWQModifier + QuantizationModifier W4 g64 sym", lambda: _awq(4, 64)),
    "wanda_50": ("WandaPruningModifier 50%", lambda: [_wanda(0.5, "0:0")]),
    "wanda_24": ("WandaPruningModifier 2:4", lambda: [_wanda(0.5, "2:4")]),
    "sparsegpt_50": ("SparseGPTModifier 50%", lambda: [_sparsegpt(0.5, "0:0")]),
    "sparsegpt_24": ("SparseGPTModifier 2:4", lambda: [_sparsegpt(0.5, "2:4")]),
    "sparsegpt_50_w4": ("SparseGPTModifier 50% then GPTQModifier W4 g64", lambda: [_sparsegpt(0.5, "0:0"),
                                                                                  _gptq(4, 64, None)]),
    "sparse24_w4": ("SparseGPTModifier 2:4 then GPTQModifier W4 g64", lambda: [_sparsegpt(0.5, "2:4"),
                                                                              _gptq(4, 64, None)]),
}


# --- copy of compression/eval/perplexity.py (token_nll + perplexity); keep in step with it ---------------
def perplexity(model: Any, windows: Any, batch_size: int = 4) -> float:
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad():
        for batch in windows.split(batch_size):
            ids = batch.to(next(model.parameters()).device)
            logits = model(input_ids=ids, use_cache=False).logits.float()[:, :-1]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            out.append(nll.view(ids.shape[0], -1).cpu())
    return math.exp(float(torch.cat(out).double().mean()))
# ---------------------------------------------------------------------------------------------------------


def _bytes(path: Path) -> dict[str, int]:
    files = [f for f in path.rglob("*") if f.is_file()]
    return {"weights_bytes": sum(f.stat().st_size for f in files if f.name.endswith(".safetensors")),
            "total_bytes": sum(f.stat().st_size for f in files)}


def _linear_bits_on_disk(artifact: Path, numels: dict[str, int]) -> float | None:
    """Bits per dense weight of the block-list linears as stored (same rule as bench/common.py)."""
    names = sorted(numels, key=len, reverse=True)
    nbytes = 0
    for f in artifact.glob("*.safetensors"):
        with f.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for key, info in header.items():
            if key != "__metadata__" and any(key.startswith(n + ".") for n in names):
                nbytes += info["data_offsets"][1] - info["data_offsets"][0]
    total = sum(numels.values())
    return 8 * nbytes / total if total and nbytes else None


def _versions() -> dict[str, str]:
    import compressed_tensors
    import llmcompressor
    import torch
    import transformers

    return {"llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}


def run_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    desc, factory = ROWS[row]
    result: dict[str, Any] = {"row": row, "peer_recipe": desc, "versions": _versions(),
                              "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()[0]}
    device = os.environ.get("PRESSO_BENCH_DEVICE", "cpu")  # as bench/common.py
    model = AutoModelForCausalLM.from_pretrained(str(args.model_dir), dtype=torch.float32).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir))
    numels = {n: m.weight.numel() for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    calib = np.load(args.calib).astype(np.int64)
    evals = torch.from_numpy(np.load(args.eval).astype(np.int64))
    recipe = factory()
    if recipe is not None:
        from llmcompressor import oneshot

        ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": np.ones_like(calib).tolist()})
        torch.manual_seed(0)
        cpu0, t0 = time.process_time(), time.perf_counter()
        oneshot(model=model, dataset=ds, recipe=recipe, processor=tokenizer, num_calibration_samples=len(calib),
                max_seq_length=calib.shape[1], shuffle_calibration_samples=False, output_dir=None, log_dir=None)
        result["seconds"] = time.perf_counter() - t0
        result["cpu_seconds"] = time.process_time() - cpu0
    else:
        result["seconds"] = 0.0
        result["cpu_seconds"] = 0.0
    t = time.perf_counter()
    result["ppl"] = perplexity(model, evals)
    result["ppl_ood"] = {}
    for spec in args.eval_ood:  # out-of-domain windows, same protocol
        dom, path = spec.split("=", 1)
        result["ppl_ood"][dom] = perplexity(model, torch.from_numpy(np.load(path).astype(np.int64)))
    result["eval_seconds"] = time.perf_counter() - t
    out_dir = Path(tempfile.mkdtemp(prefix=f"peer-{row}-", dir=args.work_dir))
    try:
        t = time.perf_counter()
        model.save_pretrained(str(out_dir), save_compressed=True)
        result["write_seconds"] = time.perf_counter() - t
        result.update(_bytes(out_dir))
        result["disk_bits_per_weight"] = _linear_bits_on_disk(out_dir, numels)
        cfg = json.loads((out_dir / "config.json").read_text())
        qc = cfg.get("quantization_config") or cfg.get("compression_config") or {}
        result["artifact_format"] = qc.get("format") or (qc.get("sparsity_config") or {}).get("format") or "dense"
        if args.keep_artifacts:
            result["artifact_dir"] = str(out_dir)
    finally:
        if not args.keep_artifacts:
            shutil.rmtree(out_dir, ignore_errors=True)
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", choices=sorted(ROWS), help="the benchmark row to run")
    p.add_argument("--list", action="store_true", help="print the rows this peer runs (JSON) and exit")
    p.add_argument("--model-dir", type=Path, help="cached dense safetensors dir (bench/common.py)")
    p.add_argument("--calib", type=Path, help="calibration windows .npy [64, 512]")
    p.add_argument("--eval", type=Path, help="evaluation windows .npy [40, 512]")
    p.add_argument("--eval-ood", action="append", default=[], metavar="NAME=NPY",
                   help="out-of-domain evaluation windows (.npy [40, 512]); repeatable")
    p.add_argument("--out", type=Path, help="JSON result file")
    p.add_argument("--work-dir", type=Path, default=None, help="where the temporary artifact is written")
    p.add_argument("--keep-artifacts", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        print(json.dumps({k: v[0] for k, v in ROWS.items()}, indent=2))
        return 0
    if not (args.row and args.model_dir and args.calib and args.eval and args.out):
        p.error("--row, --model-dir, --calib, --eval and --out are required")
    try:
        result = run_row(args.row, args)
        result["status"] = "ok"
    except Exception as exc:  # reported, never hidden: the caller prints it in the table
        import traceback

        result = {"row": args.row, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-4000:]}
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, default=str))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
