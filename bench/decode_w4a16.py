"""One decode step's projections and MLP of a Llama-3-8B-shaped stack, bf16 against the packed W4A16 path.

What a user of a Presso W4 artifact runs at batch 1: per layer, RMSNorm, the q/k/v projections, an
elementwise stand-in for attention (attention itself is left out: at short contexts it is a few small
kernels that do not depend on the weight format), the o projection and residual, RMSNorm, gate/up, SiLU
times up, down and residual; 32 layers, random weights, one CUDA graph a step. The W4 side calls the
product's entry point ``presso.kernels.w4a16_matmul`` on compressed-tensors ``weight_packed`` / ``weight_scale``
tensors (g128, symmetric), i.e. the tensor-core kernel with its defaults (autotuned; programmatic
dependent launch from each weight's second call), and once more with ``PRESSO_W4A16_PDL=0``. Between
the matmuls sit the small elementwise kernels of an eager model, which do not trigger the next launch
early: this is the kernel in its real surroundings, not in a chain of matmuls.

Checked first: layer 0's output through the W4 path against the same layer run with F.linear on the
dequantized weights (relative error <= 1e-2).

``--fused`` adds two rows where the step is built as a serving engine builds it, for both weight formats:
q/k/v merged into one projection and gate/up into one (as vLLM's QKVParallelLinear and
MergedColumnParallelLinear do: the packed W4 codes and group scales of merged rows are the rows'
concatenation), and the elementwise work between the matmuls fused by ``torch.compile`` into one kernel per
gap (residual add + RMSNorm, the attention stand-in, SiLU x up): 4 matmuls and 3 fused kernels a layer
instead of 7 matmuls and ~25 small kernels. The fused step is checked against the plain one first.

    python3 bench/decode_w4a16.py --out $OUT/decode.md
    python3 bench/decode_w4a16.py --fused --out $OUT/decode_fused.md
    python3 bench/decode_w4a16.py --device cpu --layers 1 --hidden 256 --inter 512 --kv 64   # logic only
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernels_w4a16 import capture, quantize_sym  # noqa: E402
from presso.kernels import w4a16  # noqa: E402
from presso.kernels.w4a16 import reference as ref  # noqa: E402

GROUP = 128
NAMES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass
class Layer:
    dense: dict[str, torch.Tensor]  # bf16 [out, in]
    packed: dict[str, tuple[torch.Tensor, torch.Tensor]]  # (weight_packed int32, weight_scale bf16)
    norms: tuple[torch.Tensor, torch.Tensor]


def make_layer(hidden: int, inter: int, kv: int, device: str, gen: torch.Generator) -> Layer:
    shapes = {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden),
              "gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
    dense, packed = {}, {}
    for name, (n, k) in shapes.items():
        w = torch.randn(n, k, device=device, generator=gen, dtype=torch.bfloat16) * (k**-0.5)
        packed[name] = quantize_sym(w, 4, GROUP)
        dense[name] = w
    norms = (torch.ones(hidden, device=device, dtype=torch.bfloat16),) * 2
    return Layer(dense, packed, norms)  # type: ignore[arg-type]


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w


Linear = Callable[[torch.Tensor, Layer, str], torch.Tensor]


def step(x: torch.Tensor, layers: list[Layer], linear: Linear) -> torch.Tensor:
    for layer in layers:
        h = rms_norm(x, layer.norms[0])
        q, k, v = linear(h, layer, "q"), linear(h, layer, "k"), linear(h, layer, "v")
        rep = q.shape[-1] // k.shape[-1]
        a = q * torch.sigmoid(k.repeat(1, rep)) + v.repeat(1, rep)  # stands in for attention
        x = x + linear(a, layer, "o")
        h = rms_norm(x, layer.norms[1])
        x = x + linear(F.silu(linear(h, layer, "gate")) * linear(h, layer, "up"), layer, "down")
    return x


def dense_linear(h: torch.Tensor, layer: Layer, name: str) -> torch.Tensor:
    return F.linear(h, layer.dense[name])


def w4_linear(h: torch.Tensor, layer: Layer, name: str) -> torch.Tensor:
    packed, scale = layer.packed[name]
    return w4a16.w4a16_matmul(h, packed, scale, None, 4, GROUP)


def dequantized_linear(h: torch.Tensor, layer: Layer, name: str) -> torch.Tensor:
    packed, scale = layer.packed[name]
    k = h.shape[-1]
    return F.linear(h, ref.dequantize(packed, scale, None, 4, GROUP, k, dtype=torch.bfloat16))


MERGED = {"qkv": ("q", "k", "v"), "gu": ("gate", "up")}


def merge_layer(layer: Layer) -> Layer:
    """The same layer with q/k/v and gate/up merged row-wise (dense and packed alike)."""
    dense = {k: v for k, v in layer.dense.items()}
    packed = {k: v for k, v in layer.packed.items()}
    for merged, parts in MERGED.items():
        dense[merged] = torch.cat([layer.dense[p] for p in parts])
        codes = torch.cat([layer.packed[p][0] for p in parts])
        packed[merged] = (codes, torch.cat([layer.packed[p][1] for p in parts]))
    return Layer(dense, packed, layer.norms)


def _glue():
    """The elementwise work between the merged matmuls, one compiled (fused) function per gap."""

    def add_norm(x: torch.Tensor, d: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + d
        return x, rms_norm(x, w)

    def attn(qkv: torch.Tensor, kv: int) -> torch.Tensor:
        q, k, v = qkv.split([qkv.shape[-1] - 2 * kv, kv, kv], dim=-1)
        rep = q.shape[-1] // kv
        return q * torch.sigmoid(k.repeat(1, rep)) + v.repeat(1, rep)

    def silu_mul(gu: torch.Tensor) -> torch.Tensor:
        g, u = gu.chunk(2, dim=-1)
        return F.silu(g) * u

    c = lambda f: torch.compile(f, fullgraph=True, dynamic=False)  # noqa: E731
    return c(add_norm), c(attn), c(silu_mul), c(rms_norm)


def fused_step(x: torch.Tensor, layers: list[Layer], linear: Linear, glue, kv: int) -> torch.Tensor:
    add_norm, attn, silu_mul, norm = glue
    h = norm(x, layers[0].norms[0])
    for i, layer in enumerate(layers):
        x, h = add_norm(x, linear(attn(linear(h, layer, "qkv"), kv), layer, "o"), layer.norms[1])
        d = linear(silu_mul(linear(h, layer, "gu")), layer, "down")
        nxt = layers[i + 1].norms[0] if i + 1 < len(layers) else layer.norms[0]
        x, h = add_norm(x, d, nxt)
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the markdown table here")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=14336)
    ap.add_argument("--kv", type=int, default=1024, help="k/v projection width (8 KV heads x 128)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--fused", action="store_true", help="add the merged-projection, fused-elementwise rows")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA device (or --device cpu for a logic check)", file=sys.stderr)
        return 2
    gen = torch.Generator(device=args.device).manual_seed(0)
    layers = [make_layer(args.hidden, args.inter, args.kv, args.device, gen) for _ in range(args.layers)]
    x = torch.randn(1, args.hidden, device=args.device, generator=gen, dtype=torch.bfloat16)

    want = step(x, layers[:1], dequantized_linear)
    got = step(x, layers[:1], w4_linear)
    err = float((got.float() - want.float()).norm() / want.float().norm())
    print(f"layer 0, W4 path against F.linear on the dequantized weights: relative error {err:.2e}", flush=True)
    if not err <= 1e-2:
        return 1
    glue, merged = None, []
    if args.fused:
        glue = _glue()
        merged = [merge_layer(layer) for layer in layers]
        for label, linear, ref_linear in (("bf16", dense_linear, dense_linear), ("W4", w4_linear, w4_linear)):
            got_f = fused_step(x, merged[:2], linear, glue, args.kv)
            want_f = step(x, layers[:2], ref_linear)
            err_f = float((got_f.float() - want_f.float()).norm() / want_f.float().norm())
            print(f"layers 0-1, fused {label} step against the plain {label} step: relative error {err_f:.2e}",
                  flush=True)
            if not err_f <= 1e-2:
                return 1
    if args.device != "cuda":
        return 0
    from triton.testing import do_bench

    weight_bytes = {
        "bf16": sum(w.numel() * 2 for layer in layers for w in layer.dense.values()),
        "w4": sum(p.numel() * 4 + s.numel() * 2 for layer in layers for p, s in layer.packed.values()),
    }
    times = {}
    for label, linear, pdl in (("bf16 F.linear", dense_linear, None), ("W4A16 (default: PDL)", w4_linear, "auto"),
                               ("W4A16, PRESSO_W4A16_PDL=0", w4_linear, "0")):
        if pdl is not None:
            os.environ["PRESSO_W4A16_PDL"] = pdl
        graph = capture(lambda _i, linear=linear: step(x, layers, linear), 1)  # eager run first: autotunes
        times[label] = do_bench(graph.replay, warmup=20, rep=200, return_mode="median") * 1e-3
        print(f"{label}: {times[label] * 1e3:.3f} ms a step", flush=True)
    os.environ.pop("PRESSO_W4A16_PDL", None)
    if args.fused:
        for label, linear in (("bf16 fused (merged qkv/gate-up, compiled glue)", dense_linear),
                              ("W4A16 fused (merged qkv/gate-up, compiled glue)", w4_linear)):
            graph = capture(lambda _i, linear=linear: fused_step(x, merged, linear, glue, args.kv), 1)
            times[label] = do_bench(graph.replay, warmup=20, rep=200, return_mode="median") * 1e-3
            print(f"{label}: {times[label] * 1e3:.3f} ms a step", flush=True)
        bf = times["bf16 fused (merged qkv/gate-up, compiled glue)"]
        w4 = times["W4A16 fused (merged qkv/gate-up, compiled glue)"]
        print(f"W4A16 fused vs bf16 fused: {bf / w4:.2f}x; vs the plain bf16 step: {times['bf16 F.linear'] / w4:.2f}x")
    base = times["bf16 F.linear"]
    lines = [
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}. {args.layers} layers, hidden "
        f"{args.hidden}, intermediate {args.inter}, k/v {args.kv}; batch 1, one CUDA graph a step (median of "
        "do_bench); attention replaced by an elementwise stand-in. W4: g128 symmetric, bf16 scales, "
        f"`presso.kernels.w4a16_matmul`. Layer 0 checked against the dequantized weights: relative error {err:.1e}.",
        "",
        "| path | ms a step | vs bf16 | weight bytes a step | weight GB/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, t in times.items():
        nbytes = weight_bytes["bf16" if label.startswith("bf16") else "w4"]
        lines.append(f"| {label} | {t * 1e3:.3f} | {base / t:.2f}x | {nbytes / 1e9:.2f} GB | {nbytes / t / 1e9:.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
