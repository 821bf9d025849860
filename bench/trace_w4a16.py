"""Where a chain of W4A16 launches spends its time (one CUDA GPU, sm_90 for the programmatic mode).

Two studies, both under the protocol of bench/kernels_w4a16.py (a CUDA graph of ``--calls`` launches,
each on its own copy of the weight, together larger than L2):

1. **Streaming floor** (bench/pdl_floor.cu): a kernel that only reads the same number of bytes through
   a cp.async ring in shared memory, the first stages requested before ``griddepcontrol.wait``, for
   every grid shape (blocks x threads), ring depth and launch mode. The best of it is what any kernel
   that reads its weights this way can reach in such a chain.
2. **Timeline of the real kernel** (mma.cu built with ``-DPRESSO_W4A16_TRACE``): every block stamps
   %globaltimer at entry, after requesting its first weights, after the wait, once its activations are
   at hand, after its loop and at exit. Summarized per launch: period, the lag between one launch's last
   block and the next one's release from the wait, how many blocks of a launch were already resident
   before the previous one ended, and where a block's time goes.

    python3 bench/trace_w4a16.py --out $OUT/trace
    python3 bench/trace_w4a16.py --plot trace/14336x4096_w16d4s1_pdl.npy timeline.png   # no GPU needed
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernels_w4a16 import capture  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (K, N)
ROTATE_BYTES = 512 << 20
PHASES = ("entry->issued", "issued->waited", "waited->staged", "staged->loop", "loop->exit")
# the configurations the autotuner chose at batch 1 in the programmatic mode (session 6), and a neighbour
TRACE_CONFIGS = {
    (4096, 4096): [(16, 4, 2), (8, 8, 2)],
    (4096, 14336): [(8, 4, 2)],
    (14336, 4096): [(16, 4, 1)],
}


def log(msg: str) -> None:
    print(msg, flush=True)


def per_call(g: torch.cuda.CUDAGraph, n_calls: int, do_bench) -> float:
    return do_bench(g.replay, warmup=25, rep=120, return_mode="median") * 1e-3 / n_calls


def floor_study(nvcc: str, arch: str, do_bench, calls: int) -> dict:
    from presso.kernels.w4a16 import mma

    lib = ctypes.CDLL(str(mma.build(nvcc, arch, Path(__file__).with_name("pdl_floor.cu"))))
    lib.presso_stream_floor.restype = ctypes.c_int
    lib.presso_stream_floor.argtypes = (
        [ctypes.c_void_p] + [ctypes.c_int] * 4 + [ctypes.c_void_p] * 2 + [ctypes.c_int, ctypes.c_void_p]
    )
    smem_cap = torch.cuda.get_device_properties(0).shared_memory_per_multiprocessor - 1024
    x = torch.randn(64 * 8, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(1 << 20, device="cuda", dtype=torch.int32)
    results = {}
    for nbytes in sorted({k * n // 2 for k, n in SHAPES}):
        pieces = nbytes // 16
        copies = [
            torch.randint(-(2**31), 2**31 - 1, (nbytes // 4,), device="cuda", dtype=torch.int32)
            for _ in range(max(2, math.ceil(ROTATE_BYTES / nbytes)))
        ]
        rows = []
        for threads in (128, 256, 512):
            for blocks in (112, 128, 132, 224, 256, 264, 448, 512, 896, 1024, 1792, 2048):
                if pieces % (blocks * threads):
                    continue
                steps = pieces // (blocks * threads)
                for depth in (2, 4, 8, 16, 32):
                    if depth * threads * 16 > smem_cap or depth > 2 * steps + 1:
                        continue
                    for pdl in (0, 1):

                        def fn(i, blocks=blocks, threads=threads, steps=steps, depth=depth, pdl=pdl, copies=copies):
                            err = lib.presso_stream_floor(
                                copies[i % len(copies)].data_ptr(),
                                blocks,
                                threads,
                                steps,
                                depth,
                                x.data_ptr(),
                                y.data_ptr(),
                                pdl,
                                torch.cuda.current_stream().cuda_stream,
                            )
                            assert err == 0, err

                        t = per_call(capture(fn, calls), calls, do_bench)
                        rows.append(
                            dict(blocks=blocks, threads=threads, depth=depth, pdl=pdl, us=t * 1e6, gbs=nbytes / t / 1e9)
                        )
        del copies
        for pdl in (0, 1):
            best = sorted((r for r in rows if r["pdl"] == pdl), key=lambda r: r["us"])[:5]
            log(
                f"floor {nbytes / 2**20:.0f} MiB pdl={pdl}: "
                + "; ".join(
                    f"{r['blocks']}x{r['threads']} d{r['depth']} {r['us']:.2f} us ({r['gbs']:.0f} GB/s)" for r in best
                )
            )
        results[nbytes] = rows
    return results


def summarize(rec: np.ndarray) -> dict:
    """rec: [records, 8] (y, block | smid << 32, t_entry, t_issued, t_waited, t_loop, t_exit, clocks)."""
    tags = rec[:, 0]
    t = rec[:, 2:8].astype(np.int64)
    t = t - t[:, 0].min()
    calls = sorted(set(tags.tolist()), key=lambda tag: t[tags == tag, 0].min())
    first = {tag: t[tags == tag, 0].min() for tag in calls}
    end = {tag: t[tags == tag, 5].max() for tag in calls}
    release = {tag: t[tags == tag, 2].min() for tag in calls}
    mid = calls[2:-2]  # steady state
    pairs = list(zip(calls[1:-3], mid, strict=True))
    period = np.median([end[b] - end[a] for a, b in pairs])
    lag = np.median([release[b] - end[a] for a, b in pairs])
    early = np.median([np.mean(t[tags == b, 0] < end[a]) for a, b in pairs])
    post = np.median([end[b] - release[b] for b in mid])
    span = np.median([end[b] - first[b] for b in mid])
    sel = np.isin(tags, mid)
    d = np.diff(t[sel], axis=1)
    smid = (rec[sel, 1] >> 32).astype(np.int64)
    diffs = np.diff(np.unique(t[:, 0]))
    return dict(
        launches=len(calls),
        period_us=period / 1e3,
        release_lag_us=lag / 1e3,
        started_before_prev_end=float(early),
        after_release_us=post / 1e3,
        span_us=span / 1e3,
        block_us={name: float(np.median(d[:, i]) / 1e3) for i, name in enumerate(PHASES)},
        blocks_per_sm=float(np.bincount(smid).max() / max(1, len(mid))),
        timer_step_ns=int(diffs[diffs > 0].min()) if (diffs > 0).any() else -1,
    )


def _stamps(rec: np.ndarray) -> np.ndarray:
    """[records, 4] ns since the first entry: entry, waited, loop done, exit (records of 8 or 9 words)."""
    t = rec[:, 2 : rec.shape[1] - 1].astype(np.int64)
    t = t - t[:, 0].min()
    return t[:, [0, 2, t.shape[1] - 2, t.shape[1] - 1]]


def plot_timeline(rec: np.ndarray, path: Path, title: str, sms: int = 10, launches: int = 5) -> None:
    """Blocks of ``launches`` consecutive steady-state launches on the first ``sms`` SMs: a bar a block from
    entry to exit, light while it waits (weights requested, previous launch still running), dark while
    it computes, grey for its cross-warp sum; launches alternate in hue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = _stamps(rec)
    tags = rec[:, 0]
    calls = sorted(set(tags.tolist()), key=lambda tag: t[tags == tag, 0].min())
    index = {tag: i for i, tag in enumerate(calls)}
    call = np.array([index[x] for x in tags.tolist()])
    smid = (rec[:, 1] >> 32).astype(np.int64)
    first = len(calls) // 2
    keep = (call >= first) & (call < first + launches) & (smid < sms)
    t0 = t[keep, 0].min()
    hues = [("#9ecae1", "#2171b5"), ("#fdae6b", "#d94801")]
    fig, ax = plt.subplots(figsize=(11, 0.9 * sms + 1.2))
    for sm in range(sms):
        lanes: list[int] = []  # end time of each sub-row of this SM
        for r in sorted(np.nonzero(keep & (smid == sm))[0], key=lambda r: t[r, 0]):
            lane = next((i for i, end in enumerate(lanes) if end <= t[r, 0]), len(lanes))
            if lane == len(lanes):
                lanes.append(0)
            lanes[lane] = t[r, 3]
            y = sm * 2 + lane * 0.9
            light, dark = hues[call[r] % 2]
            for (a, b), color in zip(((0, 1), (1, 2), (2, 3)), (light, dark, "#969696"), strict=True):
                ax.barh(
                    y,
                    (t[r, b] - t[r, a]) / 1e3,
                    left=(t[r, a] - t0) / 1e3,
                    height=0.8,
                    color=color,
                    edgecolor="white",
                    linewidth=0.3,
                )
    ax.set_yticks([sm * 2 + 0.45 for sm in range(sms)], [f"SM {sm}" for sm in range(sms)])
    ax.invert_yaxis()
    ax.set_xlabel("microseconds")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trace_study(do_bench, calls: int, out: Path) -> dict:
    from presso.kernels.w4a16 import mma
    from presso.kernels.w4a16 import reference as ref

    lib = mma._library()
    assert lib is not None and hasattr(lib, "presso_w4a16_trace_reset"), "needs a build with -DPRESSO_W4A16_TRACE"
    lib.presso_w4a16_trace_reset.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.presso_w4a16_trace_count.restype = ctypes.c_uint
    results = {}
    for k, n in SHAPES:
        torch.manual_seed(k + n)
        q = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
        packed = ref.pack_int(q, 4)
        scale = (torch.rand(n, k // 128, device="cuda") * 0.01).to(torch.bfloat16)
        pw = mma.prepare(packed, scale, None, 128, k)
        copies = [pw] + [
            mma.MMAWeight(
                words=torch.randint(-(2**31), 2**31 - 1, pw.words.shape, device="cuda", dtype=torch.int32),
                scale=pw.scale.clone(),
                zoff=None,
                n=pw.n,
                k=pw.k,
                chunks_per_group=pw.chunks_per_group,
            )
            for _ in range(max(2, math.ceil(ROTATE_BYTES / pw.nbytes)) - 1)
        ]
        xs = [torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
        for cfg in TRACE_CONFIGS[(k, n)]:
            for pdl in (False, True):
                outs: list[torch.Tensor] = []

                def fn(i, cfg=cfg, pdl=pdl, outs=outs, xs=xs, copies=copies):
                    outs.append(mma.matmul(xs[i % 4], copies[i % len(copies)], config=cfg, pdl=pdl))

                g = capture(fn, calls)
                us = per_call(g, calls, do_bench) * 1e6
                blocks = -(-pw.npad // 16 // cfg[2])
                buf = torch.zeros(calls * blocks * 9 + 64, device="cuda", dtype=torch.int64)
                torch.cuda.synchronize()
                assert lib.presso_w4a16_trace_reset(buf.data_ptr(), calls * blocks + 8) == 0
                g.replay()
                torch.cuda.synchronize()
                count = lib.presso_w4a16_trace_count()
                assert lib.presso_w4a16_trace_reset(None, 0) == 0
                rec = buf[: count * 9].view(count, 9).cpu().numpy().view(np.uint64)
                name = f"{k}x{n}_w{cfg[0]}d{cfg[1]}s{cfg[2]}_{'pdl' if pdl else 'plain'}"
                np.save(out / f"{name}.npy", rec)
                s = summarize(rec)
                s["graph_us"] = us
                results[name] = s
                log(f"{name}: {us:.2f} us/call; " + json.dumps(s))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for the summary (JSON) and raw traces (.npy)")
    ap.add_argument("--calls", type=int, default=48, help="launches per CUDA graph")
    ap.add_argument("--skip", default="", help="comma list of studies to skip: floor, trace")
    ap.add_argument("--plot", nargs=2, metavar=("NPY", "PNG"), help="only draw a saved trace's timeline (no GPU)")
    args = ap.parse_args(argv)
    if args.plot:
        plot_timeline(np.load(args.plot[0]), Path(args.plot[1]), Path(args.plot[0]).stem)
        return 0
    if args.out is None:
        ap.error("--out is required unless --plot is given")
    os.environ["PRESSO_W4A16_NVCC_FLAGS"] = os.environ.get("PRESSO_W4A16_NVCC_FLAGS", "") + " -DPRESSO_W4A16_TRACE"
    from triton.testing import do_bench

    from presso.kernels.w4a16 import mma

    args.out.mkdir(parents=True, exist_ok=True)
    nvcc = mma.nvcc_path()
    if not torch.cuda.is_available() or nvcc is None:
        log("needs a CUDA device and nvcc")
        return 2
    major, minor = torch.cuda.get_device_capability()
    skip = set(args.skip.split(","))
    summary: dict = {"device": torch.cuda.get_device_name()}
    if "trace" not in skip:
        summary["trace"] = trace_study(do_bench, args.calls, args.out)
    if "floor" not in skip:
        summary["floor"] = {str(k): v for k, v in floor_study(nvcc, f"sm_{major}{minor}", do_bench, args.calls).items()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
