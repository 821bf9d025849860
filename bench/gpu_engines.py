#!/usr/bin/env python3
"""GPU engine benchmark (docs/benchmarks §3): a Llama-3-8B-shaped model, Presso vs llm-compressor.

Builds the model from its config with random bf16 weights (on the GPU, in seconds), saves it
once as safetensors, then for each implementation and method measures end-to-end wall time
(load -> compress -> write artifact) and peak GPU memory. Calibration: 128 x 2048 random ids.

Examples (on the H200 through the device tool; the repository root is the working dir):
  python bench/gpu_engines.py --impl presso --methods gptq,sparsegpt,rtn --out $OUT/gpu_presso.json
  python bench/gpu_engines.py --impl llmcompressor --methods gptq --out $OUT/gpu_peer.json
  python bench/gpu_engines.py --impl presso,llmcompressor --methods fp8_dynamic,fp8_block,int8_w8a8,nvfp4
  python bench/gpu_engines.py --layers 2 --samples 8 --impl presso   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)
PROFILE = False
PRESSO_RECIPES = {
    "gptq": {"method": "gptq", "bits": 4, "group_size": 128, "observer": "minmax"},
    "sparsegpt": {"method": "sparsegpt", "sparsity": 0.5},
    "rtn": {"method": "rtn", "bits": 4, "group_size": 128, "observer": "minmax"},
    # the deployment formats (issue 19); the peer runs the compressed-tensors preset of the same name
    "fp8_dynamic": {"method": "fp8", "scheme": "FP8_DYNAMIC"},
    "fp8_block": {"method": "fp8", "scheme": "FP8_BLOCK"},
    "int8_w8a8": {"method": "int8"},
    "nvfp4": {"method": "nvfp4"},
}
PEER_SCHEMES = {"rtn": "W4A16", "fp8_dynamic": "FP8_DYNAMIC", "fp8_block": "FP8_BLOCK", "int8_w8a8": "W8A8",
                "nvfp4": "NVFP4"}


def build_model(path: Path, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "config.json").exists():
        return
    cfg = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers}, torch_dtype="bfloat16")
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.to("cpu").save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def calibration(samples: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (samples, seq_len), generator=torch.Generator().manual_seed(0))


def run_presso(model_dir: Path, method: str, ids: torch.Tensor, out: Path) -> dict:
    from presso.compression.core.context import StepContext
    from presso.compression.io.artifact import write_model
    from presso.compression.io.loading import load_model
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe

    t0 = time.perf_counter()
    lm = load_model(model_dir)
    t_load = time.perf_counter() - t0
    ctx = StepContext(calibration=ids, device=torch.device("cuda"), batch_size=8)
    recipe = parse_recipe({"steps": [PRESSO_RECIPES[method]]})
    if PROFILE:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            report = compress(lm.model, recipe, ctx)
        for key in ("self_cuda_time_total", "self_cpu_time_total"):
            print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    else:
        report = compress(lm.model, recipe, ctx)
    t_comp = time.perf_counter() - t0 - t_load
    write_model(lm.model, None, out)
    return {
        "load_s": t_load,
        "compress_s": t_comp,
        "write_s": time.perf_counter() - t0 - t_load - t_comp,
        "steps": [{k: v for k, v in s.items() if k != "layers"} for s in report["steps"]],
    }


def run_llmcompressor(model_dir: Path, method: str, ids: torch.Tensor, out: Path) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier  # noqa: F401
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=None)
    t_load = time.perf_counter() - t0
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    if method == "gptq":
        recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    elif method in PEER_SCHEMES:
        recipe = QuantizationModifier(targets="Linear", scheme=PEER_SCHEMES[method], ignore=["lm_head"])
    else:
        from llmcompressor.modifiers.pruning import SparseGPTModifier as S

        recipe = S(sparsity=0.5, targets=["re:.*layers.*(proj)$"], ignore=["lm_head"])
    oneshot(
        model=model,
        dataset=ds,
        recipe=recipe,
        processor=tok,
        max_seq_length=ids.shape[1],
        num_calibration_samples=ids.shape[0],
    )
    t_comp = time.perf_counter() - t0 - t_load
    model.save_pretrained(out, save_compressed=True)
    return {"load_s": t_load, "compress_s": t_comp}


def measure(impl: str, model_dir: Path, method: str, ids: torch.Tensor, work: Path) -> dict:
    out = work / f"{impl}-{method}"
    shutil.rmtree(out, ignore_errors=True)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        fn = run_presso if impl == "presso" else run_llmcompressor
        detail = fn(model_dir, method, ids, out)
        ok = True
    except Exception as exc:  # a peer failure is a result to record, not a crash
        logging.exception("%s %s failed", impl, method)
        detail, ok = {"error": f"{type(exc).__name__}: {exc}"[:500]}, False
    wall = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors")) if out.exists() else 0
    shutil.rmtree(out, ignore_errors=True)
    return {
        "impl": impl,
        "method": method,
        "ok": ok,
        "wall_s": wall,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
        "artifact_bytes": size,
        **detail,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", default="presso", help="presso, llmcompressor, or both (comma list)")
    p.add_argument("--methods", default="gptq,sparsegpt,rtn")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--work", type=Path, default=Path("/tmp/presso-gpu-bench"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--profile", action="store_true", help="print torch.profiler op tables of Presso's compress step")
    a = p.parse_args()
    global PROFILE
    PROFILE = a.profile
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a.work.mkdir(parents=True, exist_ok=True)
    model_dir = a.work / f"llama8b-shape-{a.layers}l"
    t = time.perf_counter()
    build_model(model_dir, a.layers)
    logging.info("model ready in %.1fs", time.perf_counter() - t)
    ids = calibration(a.samples, a.seq_len)
    impls = ["presso", "llmcompressor"] if a.impl == "both" else a.impl.split(",")
    rows = []
    for impl in impls:
        for method in a.methods.split(","):
            row = measure(impl, model_dir, method, ids, a.work)
            logging.info("RESULT %s", json.dumps(row))
            rows.append(row)
            if a.out:
                a.out.write_text(
                    json.dumps(
                        {
                            "gpu": torch.cuda.get_device_name(),
                            "torch": torch.__version__,
                            "layers": a.layers,
                            "samples": a.samples,
                            "seq_len": a.seq_len,
                            "rows": rows,
                        },
                        indent=2,
                    )
                )
    print("| impl | method | ok | wall s | peak GPU GiB | artifact GB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['impl']} | {r['method']} | {r['ok']} | {r['wall_s']:.1f} | {r['peak_gpu_gib']:.1f} "
            f"| {r['artifact_bytes'] / 1e9:.2f} |"
        )


if __name__ == "__main__":
    main()
