"""Peak host memory of a streamed job vs the in-memory path (issue 21; docs/streaming.md).

1. Writes a random-weight Llama of a given shape as safetensors shards + index, ONE TENSOR AT A TIME (the
   model is built on the meta device only for its tensor names and shapes; each tensor is generated, appended
   to the current shard by compression.io.shards.ShardWriter and dropped), so a 70B-shaped model is written
   with a few GB of host memory. Norm weights are ones, the rest N(0, 0.02) (seeded per tensor).
2. Runs ``run_local`` (what ``presso compress`` and the worker run) in a child process per mode: ``stream``
   (``streaming="on"``) and ``memory`` (``streaming="off"``), evaluation off, calibration on random token ids,
   and reads the child's peak resident set (``wait4``'s ru_maxrss of that child alone) and its wall time.
3. Prints a table and writes --json: peak RSS, block size, target (2 blocks + 1.5 GB), time, and whether the
   two artifacts hold the same bytes (every file but presso.json / report.json, which hold timings).

  .venv/bin/python bench/stream_memory.py --shape 3b --method rtn                       # this machine
  .venv/bin/python bench/stream_memory.py --shape 3b --layers 4 --method gptq --dtype float32 --samples 4 --seq-len 128
  python3 bench/stream_memory.py --shape 70b --layers 8 --method gptq --device cuda --modes stream   # a GPU host
  python3 bench/stream_memory.py --shape 70b --method gptq --device cuda --modes stream --work /big/disk

Disk: the model (bf16: ~2 bytes per parameter; a full 70B is 141 GB) plus the artifact (~0.3 of it at W4) per
mode, plus the streamed run's resume checkpoint (~0.3 again; --no-checkpoint leaves it out) and one shard in
flight (--shard-gb). The script refuses when --work has less free space than that. The child processes run the
checkout's code (PYTHONPATH), so a GPU host needs torch, transformers and safetensors installed, not Presso.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # presso from the checkout (a GPU machine may have no install)
log = logging.getLogger("stream_memory")

SHAPES: dict[str, dict[str, Any]] = {  # Llama-3.x shapes
    "tiny": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 2, "vocab_size": 4096, "tie_word_embeddings": True},
    "3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
            "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
}
RECIPES = {
    "rtn": {"steps": [{"method": "rtn", "bits": 4, "group_size": 128}]},
    "gptq": {"steps": [{"method": "gptq", "bits": 4, "group_size": 128}]},
    # min-max group ranges, as llm-compressor's GPTQModifier (the --modes peer run) and §3's 8B rows
    "gptq-minmax": {"steps": [{"method": "gptq", "bits": 4, "group_size": 128, "observer": "minmax"}]},
}


def llama_config(shape: str, layers: int | None, dtype: str) -> Any:
    import torch
    from transformers import LlamaConfig

    kw = dict(SHAPES[shape])
    if layers:
        kw["num_hidden_layers"] = layers
    return LlamaConfig(**kw, rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       dtype=getattr(torch, dtype), architectures=["LlamaForCausalLM"])


def _fill(shape: tuple[int, ...], dtype: Any, seed: int, norm: bool) -> Any:
    """One tensor: ones for norms, else N(0, 0.02) made in row chunks (no float32 copy of a large tensor)."""
    import torch

    if norm or len(shape) == 1:
        return torch.ones(shape, dtype=dtype) if norm else torch.zeros(shape, dtype=dtype)
    out = torch.empty(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    rows = max(1, (64 << 20) // (4 * shape[-1]))
    for start in range(0, shape[0], rows):
        part = out[start: start + rows]
        part.copy_(torch.randn(part.shape, generator=gen).mul_(0.02))
    return out


def write_random_model(out: Path, shape: str, layers: int | None, dtype: str, shard_gb: float) -> dict[str, Any]:
    """config.json + shards + index of a random-weight Llama, written tensor by tensor."""
    from transformers import AutoModelForCausalLM

    from presso.compression.io.lazy import parameters_on_meta
    from presso.compression.io.shards import ShardWriter

    config = llama_config(shape, layers, dtype)
    with parameters_on_meta():
        skeleton = AutoModelForCausalLM.from_config(config, dtype=config.dtype)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, int(shard_gb * (1 << 30)))
    seen: set[int] = set()
    n_params = 0
    t0 = time.perf_counter()
    for i, (name, p) in enumerate(skeleton.named_parameters()):  # ties appear once
        if id(p) in seen:
            continue
        seen.add(id(p))
        writer.add(name, _fill(tuple(p.shape), p.dtype, seed=i, norm=name.endswith("norm.weight")))
        n_params += p.numel()
    files = writer.finish()
    config.save_pretrained(out)
    info = {"shape": shape, "layers": config.num_hidden_layers, "dtype": dtype, "params": n_params,
            "bytes": writer.total, "shards": len(files) - (len(files) > 1), "seconds": time.perf_counter() - t0}
    (out / "random_model.json").write_text(json.dumps(info, indent=2))
    return info


def block_bytes(config: Any, dtype_bytes: int) -> int:
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    return (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) * dtype_bytes


def _vmhwm() -> int | None:
    status = Path("/proc/self/status").read_text()
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")), None)


def peer_child(args: argparse.Namespace) -> int:
    """llm-compressor 0.14's GPTQModifier (W4A16, min-max, lm_head kept) on the same model and calibration ids:
    from_pretrained on the host (its sequential pipeline moves one block at a time to the GPU), oneshot, and
    save_pretrained(save_compressed=True); writes {seconds, vmhwm, gpu peak} to --result."""
    import numpy as np
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    ids = torch.from_numpy(np.load(args.calib)).long().reshape(args.samples, args.seq_len)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, device_map=None)
    load_s = time.perf_counter() - t0
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    oneshot(model=model, dataset=ds, recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
            processor=tok, max_seq_length=args.seq_len, num_calibration_samples=args.samples)
    compress_s = time.perf_counter() - t0 - load_s
    model.save_pretrained(args.out, save_compressed=True)
    extra = {"gpu_peak_bytes": torch.cuda.max_memory_allocated()} if torch.cuda.is_available() else {}
    Path(args.result).write_text(json.dumps({"seconds": time.perf_counter() - t0, "vmhwm_bytes": _vmhwm(),
                                             "load_s": load_s, "compress_s": compress_s, **extra}))
    return 0


def child(args: argparse.Namespace) -> int:
    """One run_local in this process; writes {seconds, vmhwm} to --result."""
    if args.mode == "peer":
        return peer_child(args)
    from presso.compression.job import run_local
    from presso.compression.recipe import parse_recipe
    from presso.compression.spec import LocalJobSpec

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    spec = LocalJobSpec(model_uri=str(args.model), out_dir=args.out, recipe=parse_recipe(RECIPES[args.method]),
                        streaming="on" if args.mode == "stream" else "off", device=args.device,
                        calibration={"uri": str(args.calib), "samples": args.samples, "seq_len": args.seq_len},
                        evaluation={"enabled": False}, checkpoint=not args.no_checkpoint)
    res = run_local(spec)
    seconds = time.perf_counter() - t0
    hwm = _vmhwm()
    extra: dict[str, Any] = {}
    if args.device == "cuda":
        import torch

        extra["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
    Path(args.result).write_text(json.dumps({"seconds": seconds, "vmhwm_bytes": hwm, "timings": res.metrics["timings"],
                                             "streamed": bool(res.metrics.get("streamed")), **extra}))
    return 0


def child_env() -> dict[str, str]:
    """The checkout first, then whatever PYTHONPATH already holds (a GPU host's carried wheels)."""
    rest = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), rest) if p)}


def digests(out: Path) -> dict[str, str]:
    found = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name not in ("presso.json", "report.json"):
            h = hashlib.sha256()
            with p.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            found[str(p.relative_to(out))] = h.hexdigest()
    return found


def measure(args: argparse.Namespace, mode: str, model: Path, calib: Path, work: Path) -> dict[str, Any]:
    out = work / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    result = work / f"result-{mode}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", mode, "--model", str(model),
           "--out", str(out), "--calib", str(calib), "--method", args.method, "--samples", str(args.samples),
           "--seq-len", str(args.seq_len), "--result", str(result), "--device", args.device,
           *(["--no-checkpoint"] if args.no_checkpoint else [])]
    env = child_env()
    t0 = time.perf_counter()
    with (work / f"log-{mode}.txt").open("w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    got: dict[str, Any] = {"mode": mode, "exit": os.waitstatus_to_exitcode(status),
                           "wall_s": time.perf_counter() - t0, "rss_peak_bytes": usage.ru_maxrss * 1024}
    if got["exit"] == 0:
        got.update(json.loads(result.read_text()))
        got["digests"] = digests(out)
    else:
        got["log_tail"] = (work / f"log-{mode}.txt").read_text()[-3000:]
    return got


def measure_resume(args: argparse.Namespace, model: Path, calib: Path, work: Path, k: int) -> dict[str, Any]:
    """A streamed run killed (SIGKILL) once its checkpoint holds ``k`` blocks, then run again to the end: the
    wall time of both parts against an uninterrupted streamed run, and whether the artifacts are identical."""
    import signal

    full = measure(args, "stream", model, calib, work)
    out = work / "out-resumed"
    shutil.rmtree(out, ignore_errors=True)
    state = out / ".presso-resume" / "state.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--mode", "stream", "--model", str(model),
           "--out", str(out), "--calib", str(calib), "--method", args.method, "--samples", str(args.samples),
           "--seq-len", str(args.seq_len), "--result", str(work / "result-resumed.json"), "--device", args.device]
    env = child_env()
    t0 = time.perf_counter()
    with (work / "log-killed.txt").open("w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            try:
                if len(json.loads(state.read_text())["blocks"]) >= k:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        proc.wait()
    killed_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    with (work / "log-resumed.txt").open("w") as logf:
        rerun = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    resumed_s = time.perf_counter() - t1
    same = rerun.returncode == 0 and full.get("digests") == digests(out)
    return {"kill_at_block": k, "killed_exit": proc.returncode, "killed_s": killed_s, "resumed_s": resumed_s,
            "uninterrupted_s": full["wall_s"], "ratio": (killed_s + resumed_s) / full["wall_s"],
            "identical": same, "rerun_exit": rerun.returncode}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    p.add_argument("--layers", type=int, help="blocks (default: the shape's)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--method", choices=sorted(RECIPES), default="rtn")
    p.add_argument("--modes", default="stream,memory",
                   help="comma list of stream, memory, peer (llm-compressor GPTQ on the same model and ids)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--shard-gb", type=float, default=4.0, help="input shard size (the artifact's is 4 GB)")
    p.add_argument("--work", type=Path, default=Path("/tmp/presso-stream-bench"))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the artifacts")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="streamed runs keep no resume checkpoint (it takes about the artifact's size on disk)")
    p.add_argument("--kill-at-block", type=int, metavar="K",
                   help="resume test instead: kill a streamed run (SIGKILL) at block K, rerun it, compare wall time "
                   "and bytes with an uninterrupted streamed run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--mode", "--model", "--out", "--calib", "--result"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.model, args.out, args.calib = Path(args.model), Path(args.out), Path(args.calib)
        return child(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    import numpy as np

    config = llama_config(args.shape, args.layers, args.dtype)
    elt = {"bfloat16": 2, "float16": 2, "float32": 4}[args.dtype]
    tag = f"{args.shape}-L{config.num_hidden_layers}-{args.dtype}"
    model = args.work / f"model-{tag}"
    args.work.mkdir(parents=True, exist_ok=True)
    blk = block_bytes(config, elt)
    est = blk * config.num_hidden_layers + config.vocab_size * config.hidden_size * elt * (
        1 if config.tie_word_embeddings else 2)
    runs_disk = int(est * 0.35) * (len(args.modes.split(",")) + (0 if args.no_checkpoint else 1))
    need = (0 if (model / "random_model.json").is_file() else est) + runs_disk
    free = shutil.disk_usage(args.work).free
    if free < need + (int(args.shard_gb * (1 << 30)) << 1):
        log.error("%s has %.1f GB free; this run needs about %.1f GB (model + artifacts + a shard in flight)",
                  args.work, free / 1e9, need / 1e9)
        return 2
    if not (model / "random_model.json").is_file():
        shutil.rmtree(model, ignore_errors=True)
        info = write_random_model(model, args.shape, args.layers, args.dtype, args.shard_gb)
        log.info("wrote %s: %.2f GB in %d shards, %.0f s", model, info["bytes"] / 1e9, info["shards"],
                 info["seconds"])
    info = json.loads((model / "random_model.json").read_text())
    calib = args.work / f"calib-{args.samples}x{args.seq_len}.npy"
    np.save(calib, np.random.default_rng(0).integers(0, config.vocab_size, args.samples * args.seq_len))
    if args.kill_at_block is not None:
        r = measure_resume(args, model, calib, args.work, args.kill_at_block)
        print(f"\n{tag} {args.method}: killed at block {r['kill_at_block']}/{config.num_hidden_layers} "
              f"after {r['killed_s']:.0f} s, rerun {r['resumed_s']:.0f} s; uninterrupted {r['uninterrupted_s']:.0f} s; "
              f"ratio {r['ratio']:.2f}; identical artifacts: {r['identical']}")
        if args.json:
            args.json.write_text(json.dumps({"model": info, "method": args.method, "resume": r}, indent=2))
        return 0 if r["identical"] else 1
    runs = []
    for mode in args.modes.split(","):
        log.info("running %s ...", mode)
        runs.append(measure(args, mode, model, calib, args.work))
        r = runs[-1]
        log.info("%s: exit %s, peak RSS %.2f GB, %.0f s", mode, r["exit"], r["rss_peak_bytes"] / 1e9, r["wall_s"])
    ok = [r for r in runs if r["exit"] == 0 and r["mode"] != "peer"]
    same = len(ok) == 2 and ok[0]["digests"] == ok[1]["digests"]
    target = 2 * blk + int(1.5 * (1 << 30))
    report = {"model": info, "method": args.method, "device": args.device, "samples": args.samples,
              "seq_len": args.seq_len, "block_bytes": blk, "target_bytes": target, "runs": runs,
              "identical_artifacts": same if len(ok) == 2 else None, "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"\n{tag} {args.method} on {args.device}: model {info['bytes'] / 1e9:.2f} GB, block {blk / 1e9:.3f} GB, "
          f"target (2 blocks + 1.5 GiB) {target / 1e9:.2f} GB")
    print(f"{'mode':8} {'peak RSS GB':>12} {'wall s':>8} {'GPU peak GiB':>13}  within target")
    for r in runs:
        gpu = f"{r['gpu_peak_bytes'] / 2**30:13.1f}" if "gpu_peak_bytes" in r else f"{'-':>13}"
        print(f"{r['mode']:8} {r['rss_peak_bytes'] / 1e9:12.2f} {r['wall_s']:8.0f} {gpu}  "
              f"{'yes' if r['rss_peak_bytes'] <= target else 'no'}{'' if r['exit'] == 0 else ' (FAILED)'}")
    if len(ok) == 2:
        print(f"artifacts identical (every file but presso.json, report.json): {same}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if not args.keep:
        for mode in args.modes.split(","):
            shutil.rmtree(args.work / f"out-{mode}", ignore_errors=True)
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
