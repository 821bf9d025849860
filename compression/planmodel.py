"""What the planner reads of a model and of a recipe's steps: safetensors headers and config.json into a
:class:`ModelInfo`, its :class:`Shape` (blocks, linears, dtype), and which linears a step targets and how it stores
them. Pure Python (no torch); compression/plan.py estimates from these.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GB = 1e9
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
CONFIG_DTYPES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "float64": 8}
MAX_HEADER_BYTES = 100 * 2**20
SHARED_INPUT = {  # linears that read the same tensor share one Hessian (gptq/observe.py)
    "q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "qkv_proj": "attn_in",
    "gate_proj": "mlp_in", "up_proj": "mlp_in", "gate_up_proj": "mlp_in", "w1": "mlp_in", "w3": "mlp_in",
}  # fmt: skip
QUANT = {"rtn", "gptq", "awq", "hqq"}
SOLVE_BATCH_BYTES = 2 << 30  # GPTQ's batched expert solves: a batch's Hessians, factors and copies (gptq/batched.py)
EXPERT_RE = re.compile(r"^(?P<expert>.*\.experts\.\d+)\.")  # a per-expert linear of a mixture-of-experts block
BLOCK_RE = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|block|layer))\.(?P<index>\d+)\.")


class PlanError(ValueError):
    """The inputs cannot be planned (not a safetensors header, no blocks found, ...)."""


# -- reading the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)


def header_length(prefix: bytes) -> int:
    """The safetensors header's length: the first 8 bytes, little-endian."""
    if len(prefix) < 8:
        raise PlanError("safetensors file shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if not 2 <= length <= MAX_HEADER_BYTES:
        raise PlanError(f"implausible safetensors header length {length}")
    return int(length)


def parse_safetensors_header(data: bytes) -> list[TensorInfo]:
    """Tensors declared by a safetensors header: ``data`` starts at the file's first byte (8 + header bytes)."""
    length = header_length(data)
    if len(data) < 8 + length:
        raise PlanError("safetensors header truncated")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as exc:
        raise PlanError("safetensors header is not JSON") from exc
    if not isinstance(header, dict):
        raise PlanError("safetensors header is not an object")
    out = []
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise PlanError(f"tensor {name!r} has an invalid shape")
        out.append(TensorInfo(name, str(info.get("dtype")), tuple(shape)))
    return out


def read_safetensors_header(path: Path) -> list[TensorInfo]:
    """Read only the header bytes of a local safetensors file."""
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        return parse_safetensors_header(prefix + fh.read(header_length(prefix)))


@dataclass(frozen=True)
class ModelInfo:
    """What the planner knows of a model: its config, its tensors and the bytes a fetch brings."""

    config: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    files_bytes: int  # every file the fetch brings (weights, tokenizer, config)
    largest_file_bytes: int = 0

    @classmethod
    def from_dir(cls, path: Path) -> ModelInfo:
        """A local model directory (config.json + *.safetensors); reads headers only."""
        path = Path(path)
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise PlanError(f"no *.safetensors files in {path}")
        tensors = [t for shard in shards for t in read_safetensors_header(shard)]
        sizes = [p.stat().st_size for p in path.iterdir() if p.is_file()]
        return cls(config, tuple(tensors), sum(sizes), max(p.stat().st_size for p in shards))


# -- the model's shape ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    name: str
    out_features: int
    in_features: int


@dataclass
class Shape:
    params: int
    checkpoint_bytes: int
    dtype_bytes: int
    layers: int
    hidden: int
    vocab: int
    kv_width: int  # kv heads x head dim
    outside_params: int
    block_params: int  # the largest block
    linears: list[Linear]  # every linear weight inside the blocks
    block_linears: list[Linear]  # those of the largest block

    @property
    def model_bytes(self) -> int:
        return self.params * self.dtype_bytes


def _cfg(config: dict[str, Any], *keys: str, default: int = 0) -> int:
    for source in (config, config.get("text_config") or {}):
        for k in keys:
            v = source.get(k)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return default


def model_shape(model: ModelInfo) -> Shape:
    tensors = model.tensors
    if not tensors:
        raise PlanError("the model declares no tensors")
    blocks: dict[int, list[TensorInfo]] = {}
    for t in tensors:
        m = BLOCK_RE.match(t.name)
        if m:
            blocks.setdefault(int(m.group("index")), []).append(t)
    if not blocks:
        raise PlanError("no repeated blocks (model.layers.N...) found among the tensor names")
    params = sum(t.numel for t in tensors)
    in_blocks = sum(t.numel for ts in blocks.values() for t in ts)
    largest = max(blocks.values(), key=lambda ts: sum(t.numel for t in ts))

    def linears(ts: Iterable[TensorInfo]) -> list[Linear]:
        return [Linear(t.name[: -len(".weight")], t.shape[0], t.shape[1]) for t in ts
                if len(t.shape) == 2 and t.name.endswith(".weight")]

    config = model.config
    dtype = str(config.get("torch_dtype") or config.get("dtype") or (config.get("text_config") or {}).get("dtype")
                or "")
    if dtype in CONFIG_DTYPES:
        dtype_bytes = CONFIG_DTYPES[dtype]
    else:
        by_dtype: dict[str, int] = {}
        for t in tensors:
            if t.dtype in FLOAT_DTYPES:
                by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.numel
        dtype_bytes = FLOAT_DTYPES[max(by_dtype, key=by_dtype.__getitem__)] if by_dtype else 4
    hidden = _cfg(config, "hidden_size", "n_embd", "d_model") or largest_linear_in(linears(largest))
    heads = _cfg(config, "num_attention_heads", "n_head", default=1)
    kv_heads = _cfg(config, "num_key_value_heads", default=heads)
    head_dim = _cfg(config, "head_dim", default=hidden // max(heads, 1))
    vocab = _cfg(config, "vocab_size") or max((t.shape[0] for t in tensors if "embed" in t.name and t.shape), default=0)
    return Shape(
        params=params, checkpoint_bytes=sum(t.nbytes for t in tensors), dtype_bytes=dtype_bytes,
        layers=len(blocks), hidden=hidden, vocab=vocab, kv_width=kv_heads * head_dim,
        outside_params=params - in_blocks, block_params=sum(t.numel for t in largest),
        linears=[lin for ts in blocks.values() for lin in linears(ts)], block_linears=linears(largest),
    )


def largest_linear_in(lins: Sequence[Linear]) -> int:
    return max((lin.in_features for lin in lins), default=0)


# -- steps ----------------------------------------------------------------------------------------------


def _match(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.rsplit(".", 1)[-1], pattern) or pattern in name


def targeted(step: dict[str, Any], lins: Sequence[Linear]) -> list[Linear]:
    targets = step.get("targets") or []
    ignore = step.get("ignore") or []
    chosen = [lin for lin in lins if not targets or any(_match(lin.name, p) for p in targets)]
    return [lin for lin in chosen if not any(_match(lin.name, p) for p in ignore)]


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def hessian_groups(lins: Sequence[Linear]) -> dict[str, list[Linear]]:
    """Linears grouped by the input they read (one Hessian each); an expert's gate/up are that expert's group."""
    groups: dict[str, list[Linear]] = {}
    for lin in lins:
        shared, expert = SHARED_INPUT.get(_short(lin.name)), EXPERT_RE.match(lin.name)
        key = (f"{expert['expert']}.{shared}" if expert else shared) if shared else lin.name
        groups.setdefault(key, []).append(lin)
    return groups


def expert_chunk_stats(block: Sequence[Linear], chunk: int | None, budget: float | None) -> float:
    """fp32 Hessian bytes a calibrated step holds at once for one block's linears ``block``: every non-expert group
    and one chunk of experts (compression.core.expertchunks). ``chunk``: the step's ``expert_chunk``; unset, the
    experts whose statistics fit in ``budget`` bytes (automatic on a GPU; the engine's budget, from the free memory,
    is at most this), or all of them (``budget`` None: a CPU)."""
    other = 0.0
    per_expert: dict[str, float] = {}
    for key, g in hessian_groups(block).items():
        expert = EXPERT_RE.match(key + ".")
        if expert:
            per_expert[expert["expert"]] = per_expert.get(expert["expert"], 0.0) + 4.0 * g[0].in_features ** 2
        else:
            other += 4.0 * g[0].in_features ** 2
    if not per_expert:
        return other
    per = max(per_expert.values())
    if chunk is None and budget is not None:
        chunk = max(1, int(budget // per))
    return other + per * min(chunk or len(per_expert), len(per_expert))


def expert_batch_solve(block: Sequence[Linear], batch: int) -> float:
    """Working bytes of GPTQ's batched expert solves (compression/engines/quantization/gptq/batched.py) for one
    block's linears: per expert of the largest batch its fp32 weights (and their copy), its Hessian stacked, the
    factor and the factorisation's transient copies; a batch holds at most ``batch`` experts of one shape and at most
    ``SOLVE_BATCH_BYTES`` of k x k matrices."""
    same: dict[tuple[int, int], int] = {}
    for key, g in hessian_groups(block).items():
        if EXPERT_RE.match(key + "."):
            shape = (g[0].in_features, sum(x.out_features for x in g))
            same[shape] = same.get(shape, 0) + 1
    best = 0.0
    for (k, n), count in same.items():
        size = max(1, min(batch, count, SOLVE_BATCH_BYTES // (16 * k * k)))
        best = max(best, size * 4.0 * (2 * n * k + 4 * k * k))
    return best


def _group_size(step: dict[str, Any], in_features: int) -> int:
    g = step.get("group_size", 128)
    return in_features if g in (-1, None) or g > in_features else int(g)


FLOAT_FORMATS = {"fp8", "int8", "nvfp4", "mxfp4"}
_FP8_WEIGHTS = {"FP8_DYNAMIC": "channel", "FP8": "tensor", "FP8_BLOCK": "block"}  # configs/formats.py presets


def stored_layout(step: dict[str, Any], lin: Linear, dtype_bytes: int) -> tuple[int, int, bool, int] | None:
    """(code bits, weights per scale, zero points, bytes per scale) of a quantizing step's codes in the artifact,
    or None for a step that writes no codes. Float formats (also ``awq`` with ``format``) store their own scales:
    FP8/INT8 float32 per channel (FP8 also per tensor, or per 128x128 block), NVFP4 one FP8 byte per 16 weights,
    MXFP4 one E8M0 byte per 32 (the global scales are a few bytes per layer)."""
    method = str(step.get("method"))
    fmt = str(step.get("format") or "int") if method == "awq" else method
    numel = lin.out_features * lin.in_features
    if fmt == "nvfp4":
        return 4, 16, False, 1
    if fmt == "mxfp4":
        return 4, 32, False, 1
    if fmt in ("fp8", "int8"):
        where = step.get("weights") or _FP8_WEIGHTS.get(str(step.get("scheme") or "FP8_DYNAMIC"), "channel")
        per = {"tensor": numel, "block": 128 * 128}.get(str(where), lin.in_features) if fmt == "fp8" else 0
        return 8, min(per or lin.in_features, numel), False, 4
    if method in QUANT or (method == "sparsegpt" and step.get("bits")):
        asym = not step.get("symmetric", method != "hqq")
        return int(step.get("bits", 4)), _group_size(step, lin.in_features), asym, dtype_bytes
    return None
