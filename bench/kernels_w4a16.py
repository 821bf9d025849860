"""W4A16 kernel benchmark (benchmarks.md section 3) on one CUDA GPU.

Measures, in one run: device-to-device copy bandwidth (bytes read + written), the bf16
torch.matmul rate (8192^3), and the W4A16 kernels (tensor-core CUDA ``mma`` when nvcc is
there, and the Triton ones) at batch 1/16/64 on
(K, N) = 4096x4096, 4096x14336, 14336x4096 against bf16 ``F.linear`` of the same shape.
Every run first checks the kernel against the pure-torch reference on fresh random
inputs (relative error <= 1e-2) and fails loudly otherwise.

Timing: the median of ``triton.testing.do_bench`` over a CUDA graph that replays
``--calls`` matmuls, each on a different copy of the weights (enough copies to exceed the
L2 cache several times), divided by the number of calls: steady-state decode with launch
gaps amortized, never served from L2. A single-launch median (do_bench, L2 flushed) is
logged too.

    python bench/kernels_w4a16.py --out $OUT/kernels.md
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.kernels.w4a16 import reference as ref  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (K, N)
ROTATE_BYTES = 512 << 20


def log(msg: str) -> None:
    print(msg, flush=True)


def copy_bandwidth(do_bench) -> float:
    n = 1 << 30  # bytes per buffer
    src = torch.randn(n // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * n / (ms * 1e-3) / 1e9


def matmul_tflops(do_bench) -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    return 2 * n**3 / (ms * 1e-3) / 1e12


def quantize_sym(w: torch.Tensor, bits: int, gs: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = w.shape
    qmax = (1 << (bits - 1)) - 1
    wg = w.float().view(n, k // gs, gs)
    scale = (wg.abs().amax(dim=-1) / qmax).clamp(min=1e-8)
    q = torch.clamp(torch.round(wg / scale[..., None]), -qmax - 1, qmax).to(torch.int8).view(n, k)
    return ref.pack_int(q, bits), scale.to(torch.bfloat16)


def capture(fn, n_calls: int) -> torch.cuda.CUDAGraph:
    """``fn(i)`` for i in range(n_calls), run once eagerly (warm-up, autotuning) and captured as one graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(n_calls):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(n_calls):
            fn(i)
    return g


def graph_time(fn, n_calls: int, do_bench) -> float:
    """Median seconds per call of ``fn(i)`` for i in range(n_calls), replayed as one CUDA graph."""
    ms = do_bench(capture(fn, n_calls).replay, warmup=50, rep=300, return_mode="median")
    return ms * 1e-3 / n_calls


def measure(call, x, want, dense, calls, do_bench) -> dict:
    """Check ``call(x, 0)`` (weight copy 0 = the real weight) against ``want``, then time it: a CUDA graph
    of ``calls`` calls rotating over weight copies and activations, beside bf16 F.linear the same way,
    and single launches of both."""
    y = call(x, 0)
    err = float((y.float() - want.float()).norm() / want.float().norm())
    xs = [torch.randn_like(x) for _ in range(4)]
    return dict(
        t_q=graph_time(lambda i: call(xs[i % 4], i), calls, do_bench),
        t_d=graph_time(lambda i: F.linear(xs[i % 4], dense[i % len(dense)]), calls, do_bench),
        t_q1=do_bench(lambda: call(x, 0), return_mode="median") * 1e-3,
        t_d1=do_bench(lambda: F.linear(x, dense[0]), return_mode="median") * 1e-3,
        err=err,
        ok=bool(torch.isfinite(y).all()) and err <= 1e-2,
    )


def log_row(r: dict) -> None:
    log(f"K={r['k']} N={r['n']} M={r['label']}: w4 {r['t_q'] * 1e6:.2f} us (1-launch {r['t_q1'] * 1e6:.2f}), "
        f"bf16 {r['t_d'] * 1e6:.2f} us (1-launch {r['t_d1'] * 1e6:.2f}), err {r['err']:.2e} "
        f"{'OK' if r['ok'] else 'FAIL'} cfg {r['cfg']} {r['regs']}")


def bench_shape(tk, do_bench, k, n, batches, bits, gs, calls, args_dump=None, triton_rows=True):
    torch.manual_seed(k * 31 + n)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, scale = quantize_sym(w, bits, gs)
    pw = tk.prepare_weight(packed, scale, None, bits, gs, k)
    n_w4 = max(2, math.ceil(ROTATE_BYTES / pw.nbytes))
    copies = [pw] + [
        dataclasses.replace(
            pw,
            qweight=torch.randint(-(2**31), 2**31 - 1, pw.qweight.shape, device="cuda", dtype=torch.int32),
            scale=(torch.rand_like(pw.scale, dtype=torch.float32) * 0.002).to(pw.scale.dtype),
        )
        for _ in range(n_w4 - 1)
    ]
    n_bf = max(2, math.ceil(ROTATE_BYTES / (n * k * 2)))
    dense = [ref.dequantize(packed, scale, None, bits, gs, k, dtype=torch.bfloat16)]
    dense += [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(n_bf - 1)]
    rows = []
    runs = [(m, None) for m in batches]
    if 1 in batches:
        runs.insert(batches.index(1) + 1, (1, "loop"))  # the alternative M=1 kernel, for comparison
    from presso.kernels.w4a16 import mma

    if bits == 4 and mma.available():
        rows += bench_mma(mma, do_bench, k, n, batches, packed, scale, gs, calls, dense)
    for m, variant in runs if triton_rows else []:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

        def call(x, i, variant=variant):  # autotunes on first use
            return tk.w4a16_matmul_prepared(x, copies[i % n_w4], gemv=variant)

        res = measure(call, x, ref.w4a16_matmul_ref(x, packed, scale, None, bits, gs), dense, calls, do_bench)
        key = "gemm" if m > 1 else ("gemv" if variant == "loop" else "wide")
        ck = tk.last_launch.get("gemm" if m > 1 else "gemv")
        cfg = _config_of(tk, key)
        regs = f"{getattr(ck, 'n_regs', '?')}r/{getattr(ck, 'n_spills', '?')}s"
        label = f"{m} ({variant})" if variant else str(m)
        rows.append(dict(k=k, n=n, m=m, label=label, bytes=pw.nbytes, cfg=f"{key} {cfg}", regs=regs, **res))
        log_row(rows[-1])
        if m == 1 and args_dump is not None:
            for kind in ("sass", "ttgir"):
                try:
                    (args_dump / f"{key}_{k}x{n}.{kind}").write_text(str(ck.asm[kind]))
                except Exception as e:  # diagnostics only
                    log(f"no {kind}: {e}")
    return rows


def read_floor(do_bench, words: list[torch.Tensor], calls: int) -> tuple[float, float]:
    """What any kernel pays under this protocol: seconds a call of an empty kernel, and of a plain
    streaming read (Triton, sum of int32) of the same bytes, rotating over the same buffers."""
    import triton
    import triton.language as tl

    @triton.jit
    def _empty(out):
        pass

    @triton.jit
    def _read(p, out, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(p + offs, mask=offs < n, other=0, eviction_policy="evict_first")
        tl.store(out + pid, tl.sum(v, axis=0))

    out = torch.empty(1 << 16, device="cuda", dtype=torch.int32)
    block = 4096
    flat = [w.view(-1) for w in words]

    def read(i):
        w = flat[i % len(flat)]
        _read[(triton.cdiv(w.numel(), block),)](w, out, w.numel(), BLOCK=block, num_warps=8)

    return (graph_time(lambda i: _empty[(1,)](out), calls, do_bench), graph_time(read, calls, do_bench))


def bench_mma(mma, do_bench, k, n, batches, packed, scale, gs, calls, dense):
    """The tensor-core kernel (kernels/w4a16/mma.cu) on the same weight, same protocol: every launch
    configuration in both launch modes (logged), then the product's autotuned choice, without and with
    programmatic dependent launch (the next call's weight loads overlap this call's end)."""
    pw = mma.prepare(packed, scale, None, gs, k)
    n_w = max(2, math.ceil(ROTATE_BYTES / pw.nbytes))
    copies = [pw] + [
        dataclasses.replace(
            pw,
            words=torch.randint(-(2**31), 2**31 - 1, pw.words.shape, device="cuda", dtype=torch.int32),
            scale=torch.rand_like(pw.scale) * 0.002,
        )
        for _ in range(n_w - 1)
    ]
    empty, read = read_floor(do_bench, [c.words for c in copies], calls)
    log(f"K={k} N={n}: empty kernel {empty * 1e6:.2f} us/call; plain read of the words "
        f"{read * 1e6:.2f} us/call ({pw.words.numel() * 4 / read / 1e9:.0f} GB/s)")
    rows = []
    for m in [b for b in batches if b <= mma.MAX_BATCH]:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        want = ref.w4a16_matmul_ref(x, packed, scale, None, 4, gs)
        xs = [torch.randn_like(x) for _ in range(4)]
        best = {}
        for pdl in (False, True):  # every configuration, in both launch modes (logged)
            sweep = {cfg: graph_time(lambda i, cfg=cfg, xs=xs, pdl=pdl: mma.matmul(
                xs[i % 4], copies[i % n_w], config=cfg, pdl=pdl), calls, do_bench) for cfg in mma.usable_configs(pw, m)}
            best[pdl] = min(sweep.values())
            log(f"K={k} N={n} M={m} sweep{' (PDL)' if pdl else ''}: "
                + ", ".join(f"w{w}d{d}s{s} {t * 1e6:.2f}" for (w, d, s), t in sweep.items()))
        for pdl in (False, True):
            res = measure(lambda x, i, pdl=pdl: mma.matmul(x, copies[i % n_w], pdl=pdl),  # autotunes on first use
                          x, want, dense, calls, do_bench)
            warps, depth, stripes = mma.tuned_config(pw, m) or ("?", "?", "?")
            rows.append(dict(k=k, n=n, m=m, label=f"{m} (mma{'+PDL' if pdl else ''})", bytes=pw.nbytes,
                             cfg=f"mma w{warps} d{depth} s{stripes}",
                             regs=f"(sweep best {best[pdl] * 1e6:.2f})", **res))
            log_row(rows[-1])
    return rows


def _config_of(tk, key: str) -> str:
    tuner = {"gemv": tk._gemv_tuned, "wide": tk._wide_tuned, "gemm": tk._gemm_tuned}[key]
    cfg = getattr(tuner, "best_config", None)
    if cfg is None:
        return "?"
    return "BN{BN} KB{KB} w".format(**cfg.kwargs) + str(cfg.num_warps)


def render(meta: dict, rows: list[dict], copy_gbs: float, mm_tflops: float) -> str:
    lines = [
        "| K x N | batch | W4A16 us | weight GB/s | % of copy BW | TFLOP/s | bf16 us | bf16 TFLOP/s "
        "| speedup vs bf16 | rel err | config |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gbs = r["bytes"] / r["t_q"] / 1e9
        fl = 2 * r["m"] * r["n"] * r["k"]
        lines.append(
            f"| {r['k']}x{r['n']} | {r['label']} | {r['t_q'] * 1e6:.2f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% "
            f"| {fl / r['t_q'] / 1e12:.2f} | {r['t_d'] * 1e6:.2f} | {fl / r['t_d'] / 1e12:.2f} "
            f"| {r['t_d'] / r['t_q']:.2f}x | {r['err']:.1e}{'' if r['ok'] else ' FAIL'} | {r['cfg']} {r['regs']} |"
        )
    head = [
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}.",
        f"Copy bandwidth (device-to-device copy of 1 GiB, read + written): **{copy_gbs:.0f} GB/s**; "
        f"bf16 torch.matmul 8192^3: **{mm_tflops:.0f} TFLOP/s**.",
        f"W{meta['bits']}A16, group {meta['gs']}, symmetric; times are per call, median over a CUDA graph "
        f"of {meta['calls']} calls rotating over weight copies (> L2). Weight bytes = packed int32 + scales "
        "(bf16). `(mma)` rows: the tensor-core CUDA kernel (kernels/w4a16/mma.cu), every call a plain launch; "
        "`(mma+PDL)`: every call with programmatic dependent launch (each call's first weight loads overlap "
        "the previous call's end), the product's default from a weight's second call on sm_90; both with the "
        "autotuned configuration (tuned in the PDL mode); others: the Triton kernels.",
        "",
    ]
    return "\n".join(head + lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the markdown table here")
    ap.add_argument("--batches", default="1,16,64", help="comma-separated batch sizes (default 1,16,64)")
    ap.add_argument("--shapes", default="4096x4096,4096x14336,14336x4096", help="KxN list")
    ap.add_argument("--bits", type=int, default=4, choices=[4, 8])
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--calls", type=int, default=48, help="matmuls per CUDA graph replay")
    ap.add_argument("--no-triton", action="store_true", help="only the tensor-core kernel's rows")
    ap.add_argument("--dump-sass", type=Path, help="write the GEMV/GEMM kernels' SASS and PTX here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        log("needs a CUDA device")
        return 2
    import triton
    from triton.testing import do_bench

    from presso.kernels.w4a16 import triton as tk

    meta = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        bits=args.bits,
        gs=args.group_size,
        calls=args.calls,
    )
    copy_gbs = copy_bandwidth(do_bench)
    mm = matmul_tflops(do_bench)
    log(f"copy {copy_gbs:.0f} GB/s, bf16 matmul {mm:.0f} TFLOP/s")
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[dict] = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        dump = args.dump_sass if (args.dump_sass and (k, n) == (4096, 14336)) else None
        rows += bench_shape(tk, do_bench, k, n, batches, args.bits, args.group_size, args.calls, dump,
                            triton_rows=not args.no_triton)
    table = render(meta, rows, copy_gbs, mm)
    log("")
    log(table)
    if args.out:
        args.out.write_text(table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
