#!/usr/bin/env python3
"""GPTQ W4A16 on a mixture-of-experts model, Presso beside llm-compressor (issues 20 and 25, run 3).

Builds a model from a real MoE config (Qwen3-30B-A3B's or Mixtral-8x7B's, with fewer layers so one call
fits) with random bf16 weights, saves it once as safetensors, then per implementation: load -> GPTQ W4A16
g128 -> write, timed end to end, peak GPU memory, and per expert linear the relative weight error
||W_hat - W|| / ||W|| against the original weights. Presso's side also reports the routed calibration tokens
each expert saw and which experts fell back to data-free rounding (its step report); the peer's side counts
the expert linears it quantized and the ones it left in bf16.

Presso runs its default GPTQ (MSE group ranges, dynamic groups); llm-compressor its default GPTQModifier
(scheme W4A16, the router ignored as in its MoE examples). Calibration: random token ids.

    python3 bench/moe_gpu.py --shape qwen3-30b-a3b --layers 4 --out $OUT/moe.json           # on the H200
    python3 bench/moe_gpu.py --layers 1 --impl presso-b1,presso   # experts one at a time vs batched
    python3 bench/moe_gpu.py --shape tiny --impl presso --device cpu --samples 4 --seq-len 64 --group 16
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench.moe_gpu")
GROUP = 128
EVAL_IDS = torch.zeros(0, 0, dtype=torch.long)
REF_HIDDEN: torch.Tensor | None = None

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3-30b-a3b": ("Qwen3MoeConfig", dict(
        hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        vocab_size=151936, norm_topk_prob=True, max_position_embeddings=32768, rope_theta=1000000.0)),
    "mixtral-8x7b": ("MixtralConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
        max_position_embeddings=32768, rope_theta=1000000.0)),
    "tiny": ("Qwen3MoeConfig", dict(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        vocab_size=256, norm_topk_prob=True)),
}


def build_model(path: Path, shape: str, layers: int, device: str) -> None:
    import transformers

    if (path / "config.json").exists():
        return
    cls_name, kw = SHAPES[shape]
    cfg = getattr(transformers, cls_name)(**{**kw, "num_hidden_layers": layers}, torch_dtype="bfloat16")
    model_cls = transformers.AutoModelForCausalLM
    torch.set_default_dtype(torch.bfloat16)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_cls.from_config(cfg)
    torch.set_default_dtype(torch.float32)
    model.to("cpu").save_pretrained(path)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


_KIND = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}


def _expert_weights(model: torch.nn.Module) -> dict[tuple[str, int, str], torch.Tensor]:
    """(layer prefix, expert, gate|up|down) -> [out, in] float32 CPU copy of every expert matrix, whether the
    model holds them fused (``experts.gate_up_proj`` [E, 2I, H], ``experts.down_proj`` [E, H, I]) or unfused
    (``experts.<e>.gate_proj.weight``, Mixtral's ``w1/w3/w2``)."""
    out: dict[tuple[str, int, str], torch.Tensor] = {}
    for name, p in model.named_parameters():
        if ".experts." not in name:
            continue
        prefix, _, rest = name.partition(".experts.")
        parts = rest.split(".")
        if p.dim() == 3 and parts[0] in ("gate_up_proj", "down_proj"):
            for e in range(p.shape[0]):
                w = p[e].detach().float().cpu()
                if parts[0] == "down_proj":
                    out[(prefix, e, "down")] = w.clone()
                else:
                    gate, up = w.chunk(2, dim=0)
                    out[(prefix, e, "gate")], out[(prefix, e, "up")] = gate.clone(), up.clone()
        elif p.dim() == 2 and len(parts) == 3 and parts[0].isdigit() and parts[2] == "weight" and parts[1] in _KIND:
            out[(prefix, int(parts[0]), _KIND[parts[1]])] = p.detach().float().cpu().clone()
    return out


@torch.no_grad()
def final_hidden(model: torch.nn.Module, ids: torch.Tensor, device: str) -> torch.Tensor:
    """The decoder's last hidden states (float32, CPU) on held-out ids, one sequence at a time."""
    model.to(device)
    base = getattr(model, "model", model)
    return torch.cat([base(input_ids=row[None].to(device), use_cache=False).last_hidden_state.float().cpu()
                      for row in ids])


def hidden_error(h: torch.Tensor, ref: torch.Tensor) -> float:
    return float((h - ref).norm() / ref.norm())


def weight_errors(orig: dict, model: torch.nn.Module) -> list[float]:
    after = _expert_weights(model)
    return [float((after[k] - w0).norm() / w0.norm()) for k, w0 in orig.items() if k in after]


def run_presso(model_dir: Path, ids: torch.Tensor, out: Path, device: str,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from presso.compression.core.context import StepContext
    from presso.compression.io.artifact import write_model
    from presso.compression.io.loading import load_model
    from presso.compression.pipeline import compress
    from presso.compression.recipe import parse_recipe

    t0 = time.perf_counter()
    lm = load_model(model_dir)
    t_load = time.perf_counter() - t0
    orig = _expert_weights(lm.model)  # a copy for the errors below: not timed
    t1 = time.perf_counter()
    ctx = StepContext(calibration=ids, device=torch.device(device), batch_size=8)
    step = {"method": "gptq", "bits": 4, "group_size": GROUP, **(extra or {})}
    report = compress(lm.model, parse_recipe({"steps": [step]}), ctx)
    t_comp = time.perf_counter() - t1
    write_model(lm.model, None, out)
    t_write = time.perf_counter() - t1 - t_comp
    wall = t_load + t_comp + t_write
    werr = weight_errors(orig, lm.model)
    h_err = hidden_error(final_hidden(lm.model, EVAL_IDS, device), REF_HIDDEN) if REF_HIDDEN is not None else None
    step = report["steps"][0]
    recs = [r for r in step.get("layers", []) if r.get("expert") is not None or ".experts." in r.get("name", "")]
    errs = [r["rel_error"] for r in recs if "rel_error" in r]
    outs = [r["output_error"] for r in recs if "output_error" in r]
    tokens = [r["tokens_seen"] for r in recs if "tokens_seen" in r]
    summary = step.get("experts", {})
    return {
        "load_s": t_load, "compress_s": t_comp, "write_s": t_write, "timed_wall_s": wall,
        "weight_rel_error_mean": sum(werr) / len(werr) if werr else None,
        "weight_rel_error_max": max(werr) if werr else None, "expert_matrices_compared": len(werr),
        "final_hidden_rel_error": h_err,
        "experts_summary": {k: v for k, v in summary.items() if k != "fallbacks"},
        "fallbacks": len(summary.get("fallbacks", {})),
        "fallback_examples": dict(list(summary.get("fallbacks", {}).items())[:3]),
        "expert_linears_reported": len(recs),
        "report_rel_error_mean": sum(errs) / len(errs) if errs else None,
        "output_error_mean": sum(outs) / len(outs) if outs else None,
        "tokens_seen_min": min(tokens) if tokens else None, "tokens_seen_median": sorted(tokens)[len(tokens) // 2]
        if tokens else None,
    }


def run_llmcompressor(model_dir: Path, ids: torch.Tensor, out: Path, device: str) -> dict[str, Any]:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=None)
    t_load = time.perf_counter() - t0
    orig = _expert_weights(model)  # a copy for the errors below: not timed
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP))
    recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head", "re:.*mlp.gate$"])
    t1 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, processor=tok, max_seq_length=ids.shape[1],
            num_calibration_samples=ids.shape[0])
    t_comp = time.perf_counter() - t1
    # measured before the save (which packs the weights in place), not timed
    errs = weight_errors(orig, model)
    quantized = sum(1 for n, m in model.named_modules() if ".experts." in n and hasattr(m, "weight_scale"))
    left = sum(1 for n, m in model.named_modules() if ".experts." in n and isinstance(m, torch.nn.Linear)
               and not hasattr(m, "weight_scale"))
    fused_left = sum(1 for n, p in model.named_parameters() if ".experts." in n and p.dim() == 3)
    h_err: float | str | None = None
    if REF_HIDDEN is not None:
        try:  # the model after oneshot runs its quantize-dequantize forward
            h_err = hidden_error(final_hidden(model, EVAL_IDS, device), REF_HIDDEN)
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            h_err = f"{type(exc).__name__}: {exc}"[:200]
    t2 = time.perf_counter()
    model.save_pretrained(out, save_compressed=True)
    t_save = time.perf_counter() - t2
    return {
        "load_s": t_load, "compress_s": t_comp, "write_s": t_save, "timed_wall_s": t_load + t_comp + t_save,
        "final_hidden_rel_error": h_err, "expert_linears_quantized": quantized,
        "expert_linears_left_bf16": left, "fused_expert_matrices_left": fused_left,
        "changed_expert_matrices": sum(1 for e in errs if e > 0), "expert_matrices": len(orig),
        "weight_rel_error_mean": sum(errs) / len(errs) if errs else None,
        "weight_rel_error_max": max(errs) if errs else None,
    }


def measure(impl: str, model_dir: Path, ids: torch.Tensor, work: Path, device: str) -> dict[str, Any]:
    out = work / f"{impl}-moe-gptq"
    shutil.rmtree(out, ignore_errors=True)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        if impl.startswith("presso"):  # presso-b1: experts solved one at a time (expert_solve_batch 1)
            extra = {"expert_solve_batch": 1} if impl == "presso-b1" else None
            detail = run_presso(model_dir, ids, out, device, extra)
        else:
            detail = run_llmcompressor(model_dir, ids, out, device)
        ok = True
    except Exception as exc:  # a failure is a result to record
        log.exception("%s failed", impl)
        detail, ok = {"error": f"{type(exc).__name__}: {exc}"[:600]}, False
    wall = detail.get("timed_wall_s", time.perf_counter() - t0)
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors")) if out.exists() else 0
    shutil.rmtree(out, ignore_errors=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"impl": impl, "ok": ok, "wall_s": wall, "peak_gpu_gib": peak, "artifact_bytes": size, **detail}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-30b-a3b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--impl", default="presso,llmcompressor")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--device", default="cuda")
    p.add_argument("--work", type=Path, default=Path("/tmp/presso-moe-bench"))
    p.add_argument("--eval-samples", type=int, default=8, help="held-out sequences for the hidden-state error")
    p.add_argument("--group", type=int, default=128, help="group size (W4A16 g128 by default)")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    global GROUP
    GROUP = a.group
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a.work.mkdir(parents=True, exist_ok=True)
    model_dir = a.work / f"{a.shape}-{a.layers}l"
    t = time.perf_counter()
    build_model(model_dir, a.shape, a.layers, a.device)
    log.info("model ready in %.1fs", time.perf_counter() - t)
    vocab = SHAPES[a.shape][1]["vocab_size"]
    ids = torch.randint(0, vocab, (a.samples, a.seq_len), generator=torch.Generator().manual_seed(0))
    global EVAL_IDS, REF_HIDDEN
    EVAL_IDS = torch.randint(0, vocab, (a.eval_samples, min(512, a.seq_len)),
                             generator=torch.Generator().manual_seed(1))
    if a.eval_samples:
        from transformers import AutoModelForCausalLM

        ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        REF_HIDDEN = final_hidden(ref_model, EVAL_IDS, a.device)
        del ref_model
    rows = []
    for impl in a.impl.split(","):
        row = measure(impl, model_dir, ids, a.work, a.device)
        log.info("RESULT %s", json.dumps(row, default=str))
        rows.append(row)
        if a.out:
            a.out.write_text(json.dumps({"shape": a.shape, "layers": a.layers, "samples": a.samples,
                                         "seq_len": a.seq_len, "torch": torch.__version__, "rows": rows},
                                        indent=2, default=str))
    print("| impl | ok | wall s | peak GPU GiB | expert weight rel. error mean / max | final hidden rel. error "
          "| experts quantized / left / fallbacks |")
    print("|---|---|---:|---:|---|---|---|")
    for r in rows:
        q = r.get("experts_summary", {}).get("expert_linears_compressed", r.get("expert_linears_quantized"))
        left = r.get("expert_linears_left_bf16", r.get("fused_expert_matrices_left"))
        print(f"| {r['impl']} | {r['ok']} | {r['wall_s']:.1f} | {r['peak_gpu_gib']} | "
              f"{r.get('weight_rel_error_mean')} / {r.get('weight_rel_error_max')} | "
              f"{r.get('final_hidden_rel_error')} | {q} / {left} / {r.get('fallbacks')} |")


if __name__ == "__main__":
    main()
