#!/usr/bin/env python3
"""Speed of the deployment formats' matmuls on the GPU (issue 25, run 4): FP8, INT8 W8A8 and NVFP4 vs bf16.

For each Llama-3-8B layer shape (N x K) and batch M in 1/16/256/4096, one call of each path, the activation
quantization included where the scheme quantizes activations (it runs on every call in a served model):

- ``bf16``: ``F.linear``.
- ``fp8 token/channel`` (FP8_DYNAMIC): per-token E4M3 activations (absmax / 448, per call), per-channel E4M3
  weights from ``presso.compression.core.floatquant.quantize_fp8``; ``torch._scaled_mm`` with row-wise scales.
- ``fp8 block`` (FP8_BLOCK): 1x128 activation groups, 128x128 weight blocks; ``torch._scaled_mm`` with
  block-wise scales where this torch/cuBLAS supports them on the device (else the row says why).
- ``int8 token/channel`` (W8A8): per-token int8 activations, per-channel int8 weights, ``torch._int_mm``
  (int32 accumulate) and the scale epilogue in torch. ``_int_mm`` needs M > 16: batches 1 and 16 run padded to
  M = 32 (stated in the row).
- ``nvfp4 (emulated)``: Hopper has no FP4 tensor cores. The packed E2M1 codes + E4M3 group scales are decoded
  to bf16 on every call and multiplied with ``F.linear`` (weight-only emulation, activations not quantized):
  this measures what serving NVFP4 on a Hopper costs without a native kernel, not Blackwell speed.

Each path is checked first against a float32 matmul of its own quantized operands (relative error <= 1e-2) on
fresh random inputs. Timing: a CUDA graph of calls rotating over enough weight copies to exceed 4x the L2,
median of ``triton.testing.do_bench`` over replays, divided by the calls in the graph.

    python3 bench/gemm_formats.py --out $OUT/gemm_formats.md
    python3 bench/gemm_formats.py --gemm-only --out $OUT/gemm_formats_only.md   # the matmuls alone
    python3 bench/gemm_formats.py --shapes 4096x4096 --batches 1,16 --out /tmp/g.md     # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.compression.core import floatquant as fq  # noqa: E402

SHAPES = {"q/o": (4096, 4096), "k/v": (1024, 4096), "gate/up": (14336, 4096), "down": (4096, 14336)}
FP8_MAX = 448.0
L2_BYTES = 60e6


def _token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = (x.abs().amax(-1, keepdim=True).float() / FP8_MAX).clamp_min(1e-12)
    return (x.float() / s).to(torch.float8_e4m3fn), s


def _group_fp8(x: torch.Tensor, g: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    m, k = x.shape
    xg = x.float().view(m, k // g, g)
    s = (xg.abs().amax(-1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
    return (xg / s).to(torch.float8_e4m3fn).view(m, k), s.view(m, k // g)


def _token_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = (x.abs().amax(-1, keepdim=True).float() / 127.0).clamp_min(1e-12)
    return (x.float() / s).round().clamp(-127, 127).to(torch.int8), s


class Path_:
    """One matmul path: ``prepare(w)`` once per weight copy, ``call(x, prepared)`` per call,
    ``reference(x, prepared)`` = float32 matmul of the quantized operands."""

    name = ""
    note = ""

    def prepare(self, w: torch.Tensor) -> tuple:  # pragma: no cover - interface
        raise NotImplementedError

    def act(self, x: torch.Tensor) -> tuple:
        """What the call does to the activations before the matmul (quantization, padding)."""
        return (x,)

    def mm(self, a: tuple, p: tuple, m: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def call(self, x: torch.Tensor, p: tuple) -> torch.Tensor:
        return self.mm(self.act(x), p, x.shape[0])

    def reference(self, x: torch.Tensor, p: tuple) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def weight_bytes(self, p: tuple) -> int:
        return sum(t.numel() * t.element_size() for t in p if isinstance(t, torch.Tensor))


class BF16(Path_):
    name = "bf16"

    def prepare(self, w):
        return (w,)

    def mm(self, a, p, m):
        return F.linear(a[0], p[0])

    def reference(self, x, p):
        return x.float() @ p[0].float().t()


class FP8Token(Path_):
    name = "fp8 token/channel"

    def prepare(self, w):
        q, s = fq.quantize_fp8(w, "channel")
        return q.contiguous(), s.float().reshape(1, -1).contiguous()

    def act(self, x):
        return _token_fp8(x)

    def mm(self, a, p, m):
        return torch._scaled_mm(a[0], p[0].t(), scale_a=a[1], scale_b=p[1], out_dtype=torch.bfloat16)

    def reference(self, x, p):
        xq, sx = _token_fp8(x)
        return (xq.float() * sx) @ (p[0].float() * p[1].t()).t()


class FP8Block(Path_):
    name = "fp8 block"

    def prepare(self, w):
        q, s = fq.quantize_fp8(w, "block")
        return q.contiguous(), s.float().contiguous()  # s: [N/128, K/128]

    def act(self, x):
        m = x.shape[0]
        if m % 16:  # cuBLAS' block-scaled FP8 matmul refuses M that is not a multiple of 16 (seen on an H200)
            x = F.pad(x, (0, 0, 0, 16 - m % 16))
        xq, sx = _group_fp8(x)
        # cuBLAS wants the activation scales outer-dim-major ([M, K/128] stored K/128-major)
        return xq, sx.t().contiguous().t()

    def mm(self, a, p, m):
        # the weight's scales as those of mat_b = w.t(): [K/128, N/128]
        return torch._scaled_mm(a[0], p[0].t(), scale_a=a[1], scale_b=p[1].t(), out_dtype=torch.bfloat16)[:m]

    def reference(self, x, p):
        xq, sx = _group_fp8(x)
        m, k = x.shape
        xd = (xq.float().view(m, k // 128, 128) * sx.unsqueeze(-1)).view(m, k)
        return xd @ fq.dequantize_fp8(p[0], p[1], "block").t()


class INT8Token(Path_):
    name = "int8 token/channel"

    def prepare(self, w):
        s = (w.abs().amax(-1, keepdim=True).float() / 127.0).clamp_min(1e-12)
        q = (w.float() / s).round().clamp(-127, 127).to(torch.int8)
        return q.contiguous(), s.reshape(1, -1).contiguous()

    def act(self, x):
        m = x.shape[0]
        xq, sx = _token_int8(x)
        if m <= 16:  # torch._int_mm needs more than 16 rows
            xq = F.pad(xq, (0, 0, 0, 32 - m))
        return xq, sx

    def mm(self, a, p, m):
        acc = torch._int_mm(a[0], p[0].t())[:m]
        return (acc.float() * a[1] * p[1]).to(torch.bfloat16)

    def reference(self, x, p):
        xq, sx = _token_int8(x)
        return (xq.float() * sx) @ (p[0].float() * p[1].t()).t()


class NVFP4Emulated(Path_):
    name = "nvfp4 (emulated: decode + bf16)"

    def prepare(self, w):
        fw = fq.quantize_nvfp4(w)
        # the E2M1 value table on the device, made once: nothing crosses from the host inside a captured graph
        lut = fq.e2m1_decode(torch.arange(16, dtype=torch.uint8, device=w.device)).to(torch.bfloat16)
        gscale = fw.global_scale.float().reshape(()).to(w.device)
        return fq.pack_e2m1(fw.codes).contiguous(), fw.scale.contiguous(), gscale, w.shape[1], lut

    def _decode(self, p) -> torch.Tensor:
        packed, scale, gscale, k, lut = p
        codes = fq.unpack_e2m1(packed, k)
        vals = lut[codes.long()]
        n = vals.shape[0]
        s = (scale.to(torch.bfloat16).float() / gscale).to(torch.bfloat16)
        return (vals.view(n, k // 16, 16) * s.view(n, k // 16, 1)).view(n, k)

    def mm(self, a, p, m):
        return F.linear(a[0], self._decode(p))

    def reference(self, x, p):
        return x.float() @ self._decode(p).float().t()

    def weight_bytes(self, p):
        return sum(t.numel() * t.element_size() for t in p[:2])


PATHS: list[Callable[[], Path_]] = [BF16, FP8Token, FP8Block, INT8Token, NVFP4Emulated]


def check(path: Path_, n: int, k: int, gen: torch.Generator) -> float:
    w = torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) * k**-0.5
    x = torch.randn(16, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    p = path.prepare(w)
    out = torch.full((16, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    out.copy_(path.call(x, p))
    ref = path.reference(x, p)
    return float((out.float() - ref).norm() / ref.norm())


def time_path(path: Path_, n: int, k: int, m: int, gen: torch.Generator, gemm_only: bool = False
              ) -> tuple[float, int]:
    from triton.testing import do_bench

    w0 = torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) * k**-0.5
    p0 = path.prepare(w0)
    per = path.weight_bytes(p0)
    copies = max(2, min(64, math.ceil(4 * L2_BYTES / per)))
    preps = [p0] + [path.prepare(torch.randn_like(w0) * k**-0.5) for _ in range(copies - 1)]
    del w0
    x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    a = path.act(x)  # gemm_only: activations quantized once, outside the timed graph

    def one(p: tuple) -> torch.Tensor:
        return path.mm(a, p, m) if gemm_only else path.call(x, p)

    for p in preps:  # warm up (handles, autotuning) outside the capture
        one(p)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        for p in preps:
            one(p)
    torch.cuda.synchronize()
    t = do_bench(graph.replay, warmup=25, rep=200, return_mode="median") * 1e-3 / copies
    del preps, graph
    torch.cuda.empty_cache()
    return t, per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES.values()), help="NxK list")
    ap.add_argument("--batches", default="1,16,256,4096")
    ap.add_argument("--paths", default="", help="only these paths (comma list of class names, e.g. NVFP4Emulated)")
    ap.add_argument("--gemm-only", action="store_true",
                    help="time the matmul alone: activations quantized once, outside the timed graph")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    batches = [int(b) for b in a.batches.split(",")]
    only = {p for p in a.paths.split(",") if p}
    paths = [cls() for cls in PATHS if not only or cls.__name__ in only or cls is BF16]
    status: dict[str, str] = {}
    for path in paths:
        try:
            err = check(path, 1024, 4096, gen)
            status[path.name] = "ok" if err <= 1e-2 else f"wrong: relative error {err:.2e}"
            print(f"check {path.name}: relative error {err:.2e}", flush=True)
        except Exception as exc:  # a path this torch/cuBLAS cannot run is a result
            status[path.name] = f"unavailable: {type(exc).__name__}: {str(exc)[:160]}"
            print(f"check {path.name}: {status[path.name]}", flush=True)
    rows = []
    for n, k in shapes:
        for m in batches:
            base = None
            for path in paths:
                if status[path.name] != "ok":
                    continue
                try:
                    t, nbytes = time_path(path, n, k, m, gen, a.gemm_only)
                except RuntimeError as exc:  # a shape this library cannot run is a result
                    print(f"{n}x{k} m={m} {path.name}: {str(exc)[:120]}", flush=True)
                    continue
                base = t if path.name == "bf16" else base
                rows.append({"n": n, "k": k, "m": m, "path": path.name, "us": t * 1e6, "weight_bytes": nbytes,
                             "vs_bf16": (base / t) if base else None,
                             "tflops": 2 * m * n * k / t / 1e12})
                print(f"{n}x{k} m={m} {path.name}: {t * 1e6:.2f} us ({base / t if base else 0:.2f}x bf16)",
                      flush=True)
    what = ("the matmul alone (activations quantized once, outside the timed graph)" if a.gemm_only else
            "activation quantization included")
    lines = [f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}. Per call, {what}; median over "
             "CUDA-graph replays rotating weight copies > 4x L2. int8 at M <= 16 runs padded "
             "to M = 32 (torch._int_mm), fp8 block to a multiple of 16 (cuBLAS). nvfp4 is an emulation on Hopper "
             "(decode to bf16 + bf16 matmul).", ""]
    lines += [f"- {name}: {st}" for name, st in status.items()] + [""]
    lines += ["| N x K | M | path | µs | vs bf16 | TFLOP/s | weight MB |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']}x{r['k']} | {r['m']} | {r['path']} | {r['us']:.2f} | "
                     f"{r['vs_bf16']:.2f}x | {r['tflops']:.1f} | {r['weight_bytes'] / 1e6:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        a.out.write_text(table)
        a.out.with_suffix(".json").write_text(json.dumps({"status": status, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
