"""The resource planner: a job's peak accelerator memory, host memory, disk and wall time, before it starts.

Pure Python (no torch, no numpy): the inputs are the model's ``config.json`` and its safetensors headers (names,
dtypes and shapes of the tensors: the first 8 bytes of a file give the header's length, and only the header is
read), the recipe's steps as JSON, the data sizes of the request, and a worker class (what one worker process
has: GPUs and their memory, host memory, disk, and effective speeds).

What is counted is what the code does (compression/job.py, core/sequential.py, eval/, io/):

- **load**: the whole model in host memory in its loaded dtype (``M = params x bytes``; the checkpoint's dtype,
  or ``config.torch_dtype``), plus the largest shard while it is read.
- **data**: with no calibration (or evaluation) file, the model writes its own text: the whole model moves to
  the device and generates batches of 16 (plus their KV cache).
- **compress**: every attempt works on a deep copy (``2 M`` in host memory) and keeps each quantized layer's
  int8 codes and fp32 scales on the host (``1 + 4/group`` bytes a weight). Calibrated methods (GPTQ, AWQ,
  Wanda, SparseGPT, SVD-LLM, EoRA, structured pruning) run layer-sequentially: the modules outside the block
  list (embeddings, head) plus one block, the calibration activations in and out of the block
  (``2 x samples x seq_len x hidden``), the fp32 statistics of the block (one ``in x in`` Hessian per distinct
  input for GPTQ/SparseGPT/SVD-LLM/EoRA) and the solve's working set of its largest layer group are on the
  device. Data-free methods (RTN, HQQ, magnitude, SVD) move one weight at a time.
- **evaluate**: both the original and the compressed model on the device at once, plus the logits of a batch of
  4 windows (fp32 log-softmax of both models).
- **write**: the compressed model back in host memory next to the original, plus its packed tensors.
- **disk**: the fetched files plus the artifact (plus the encoded copy when the recipe ends with ``lossless``).
- **time**: fetch and load by bandwidth; generation, calibration forwards, statistics and solves by FLOPs at the
  class's effective rate; write and upload by bandwidth. The effective rates are calibrated on measured runs
  (BENCHMARKS.md §5), so the wall time is an order of magnitude, the memory figures are the plan's real use.

On a worker class without GPUs the device is the host: every phase's device bytes add to its host bytes.
A GPU class fits when each phase's device bytes plus ``CUDA_RESERVE`` fit one GPU (Presso runs a job on one
device per rank; a job of ``resources.gpus`` ranks needs a class with that many GPUs, or ``cpu_ranks``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from presso.compression.errors import CompressionError
from presso.compression.planmodel import (
    GB,
    Linear,
    ModelInfo,
    PlanError,
    Shape,
    TensorInfo,
    expert_batch_solve,
    expert_chunk_stats,
    header_length,
    hessian_groups,
    model_shape,
    parse_safetensors_header,
    read_safetensors_header,
    stored_layout,
    targeted,
)

__all__ = [  # the planner's names, with those of compression.planmodel it uses (callers import them from here)
    "GB", "CALIBRATED", "EXPERT_STATS_FRACTION", "Estimate", "InsufficientResources", "JobShape", "Linear",
    "ModelInfo", "Phase", "Plan", "PlanError", "Shape", "TensorInfo", "WorkerClass", "estimate", "header_length",
    "model_shape", "parse_safetensors_header", "plan", "read_safetensors_header",
]

GiB = 2**30

# Constants of the model (measured: BENCHMARKS.md §5 says where).
RUNTIME_HOST_BYTES = 1.0 * GB  # python + torch + transformers + the job's own objects
CUDA_RESERVE_BYTES = 1.5 * GB  # CUDA context and allocator slack beyond what the tensors take
GEN_BATCH = 16  # calibration/evaluation text generated 16 sequences at a time (io/calibration.py)
CALIB_BATCH = 8  # StepContext.batch_size
EVAL_BATCH = 4  # eval/perplexity.py
LATENCY_TOKENS = 4 * 128 * (1 + 8)  # eval/latency.py: warm-up + 3 runs of 128 tokens at batch 1 and 8
CALIBRATED = {"gptq", "awq", "wanda", "sparsegpt", "svd_llm", "eora", "prune_structured", "expert_prune",
              "expert_merge"}
HESSIAN = {"gptq", "sparsegpt", "svd_llm", "eora"}
EXPERT_STATS_FRACTION = 0.5  # compression.core.expertchunks: automatic chunks use at most this share of the GPU


class InsufficientResources(CompressionError):
    """No worker class has the memory or disk the job needs: failed before the work, never retried."""

    code = "insufficient_resources"


# -- the job and the worker -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerClass:
    """What one worker process has. Rates are effective (measured), not peak."""

    name: str
    gpus: int = 0
    cpu_ranks: int = 1  # a CPU class: how many CPU ranks (gloo processes) one job may run as
    gpu_memory_gb: float = 0.0
    host_memory_gb: float = 0.0
    disk_gb: float = 0.0
    # Effective rates, calibrated on measured runs (BENCHMARKS §5): the H200 on an 8B-shaped GPTQ job at two
    # calibration sizes (BENCHMARKS §3a and §5), the CPU on SmolLM2-135M on 2 shared cores.
    gpu_tflops: float = 270.0  # forwards, Hessian accumulation, evaluation (bf16 / tf32 matmuls)
    gpu_solve_tflops: float = 7.0  # GPTQ/SparseGPT column solves, Cholesky, SVD (fp32, sequential)
    gpu_bandwidth_gbs: float = 3000.0  # decode steps of generation are memory-bound
    h2d_gbs: float = 20.0  # per-weight host <-> device copies (pinned staging)
    model_move_gbs: float = 3.5  # a whole model moved to or from the device (pageable, many tensors)
    copy_gbs: float = 2.0  # the deep copy of the model each attempt starts with
    gpu_layer_step_s: float = 0.35e-3  # per layer and decode step of generation, besides its FLOPs
    gpu_linear_s: float = 0.02  # per weight of a data-free step (RTN of 224 linears: 5 s, §3a); half that to pack
    cpu_tflops: float = 0.025  # fp32, 2 cores shared at load 6-13 (the machine of BENCHMARKS §5)
    cpu_solve_tflops: float = 0.0007  # the column solves' reference loop (no Triton on the CPU)
    cpu_half_ratio: float = 0.025  # bf16/fp16 matmuls on CPUs without native support (0.4 vs 17 GFLOP/s here)
    cpu_layer_step_s: float = 0.07
    cpu_linear_s: float = 0.08
    fetch_mbs: float = 200.0  # model download and artifact upload
    disk_gbs: float = 1.0  # load and write

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 and self.gpu_memory_gb > 0 else "cpu"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerClass:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise PlanError(f"unknown worker class keys: {sorted(unknown)}")
        if not data.get("name"):
            raise PlanError("a worker class needs a name")
        return cls(**data)


@dataclass(frozen=True)
class JobShape:
    """The parts of a job request that drive resources."""

    recipes: tuple[tuple[dict[str, Any], ...], ...]  # the recipe, then its fallbacks: steps as JSON
    calibration_samples: int = 64
    calibration_seq_len: int = 512
    calibration_file: bool = False
    evaluation: bool = True
    eval_windows: int = 8
    eval_seq_len: int = 512
    eval_file: bool = False
    latency: bool = True
    output_format: str = "compressed"
    lossless_output: bool = False  # output.encoding "lossless" (the same codec as a final lossless step)
    streaming: str = "auto"  # JobSpec.streaming (compression/streamjob.py)
    ranks: int = 1  # resources.gpus (compression/multirank.py): each rank holds the model and its working copy
    checkpoint: bool = True  # a streamed job's resume checkpoint (about the artifact's size on disk)

    @classmethod
    def from_request(cls, body: dict[str, Any]) -> JobShape:
        """From a POST /v1/jobs body (as JSON)."""
        recipes = [body["recipe"], *(body.get("fallbacks") or [])]
        calib = body.get("calibration") or {}
        ev = body.get("evaluation") or {}
        return cls(
            recipes=tuple(tuple(dict(s) for s in r["steps"]) for r in recipes),
            calibration_samples=int(calib.get("samples", 64)), calibration_seq_len=int(calib.get("seq_len", 512)),
            calibration_file=bool(calib.get("uri")), evaluation=bool(ev.get("enabled", True)),
            eval_windows=int(ev.get("windows") or 8), eval_seq_len=int(ev.get("seq_len", 512)),
            eval_file=bool(ev.get("uri")), latency=bool(ev.get("latency", True)),
            output_format=str((body.get("output") or {}).get("format", "compressed")),
            lossless_output=(body.get("output") or {}).get("encoding") == "lossless",
            streaming=str(body.get("streaming", "auto")),
            ranks=int((body.get("resources") or {}).get("gpus", 1)),
        )

    @property
    def streamable(self) -> bool:
        """What compression/streamjob.py streams: one rtn/gptq step, no evaluation, calibration from a file."""
        if (len(self.recipes) != 1 or len(self.recipes[0]) != 1 or self.evaluation or self.streaming == "off"
                or self.ranks > 1):
            return False
        method = self.recipes[0][0].get("method")
        return (method in ("rtn", "gptq") and self.output_format in ("compressed", "dense")
                and (method == "rtn" or self.calibration_file))

    @property
    def needs_calibration(self) -> bool:
        return any(s.get("method") in CALIBRATED for r in self.recipes for s in r)


# -- the estimate ---------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    device_bytes: float = 0.0  # tensors on the GPU (0 on a CPU class: everything is in host_bytes)
    host_bytes: float = 0.0  # resident host memory besides the runtime
    seconds: float = 0.0


@dataclass
class Estimate:
    worker_class: str
    device: str
    gpu_memory_bytes: int  # peak bytes of tensors on one GPU (what torch.cuda.max_memory_allocated reports)
    host_memory_bytes: int  # peak resident memory of the job process
    disk_bytes: int  # peak bytes in the job's work directory
    wall_s: float
    artifact_bytes: int
    fits: bool
    shortfalls: list[str] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    streamed: bool = False  # planned as a streamed job (docs/streaming.md): host memory of two blocks, not the model


def _fmt(n: float) -> str:
    return f"{n / GB:.1f} GB"


def _generated(job: JobShape) -> list[tuple[int, int]]:
    """(sequences, length) of the text the model writes itself: calibration and/or evaluation."""
    gen = []
    if job.needs_calibration and not job.calibration_file:
        gen.append((job.calibration_samples, job.calibration_seq_len))
    if job.evaluation and not job.eval_file:
        gen.append((job.eval_windows, job.eval_seq_len))
    return gen


def _rates(worker: WorkerClass, dtype_bytes: int) -> tuple[float, float, float]:
    """FLOP/s of (matmuls in the model's dtype, fp32 matmuls, fp32 solves) on the class's device."""
    if worker.device == "cuda":
        return worker.gpu_tflops * 1e12, worker.gpu_tflops * 1e12, worker.gpu_solve_tflops * 1e12
    fp32 = worker.cpu_tflops * 1e12
    return fp32 * (worker.cpu_half_ratio if dtype_bytes == 2 else 1.0), fp32, worker.cpu_solve_tflops * 1e12


def estimate(model: ModelInfo, job: JobShape, worker: WorkerClass, shape: Shape | None = None) -> Estimate:
    """The peaks and the wall time of ``job`` on one worker of class ``worker``."""
    s = shape or model_shape(model)
    gpu = worker.device == "cuda"
    flops = _rates(worker, s.dtype_bytes)[0]
    b, M = s.dtype_bytes, float(s.model_bytes)
    move = 2 * M / (worker.model_move_gbs * GB) if gpu else 0.0  # the whole model to the device and back
    phases = [Phase("load", host_bytes=M + model.largest_file_bytes,
                    seconds=model.files_bytes / (worker.fetch_mbs * 1e6) + s.checkpoint_bytes / (worker.disk_gbs * GB)
                    + 2.0)]

    gen = _generated(job)
    if gen:  # the whole model on the device, generating GEN_BATCH sequences at a time
        kv = max(min(n, GEN_BATCH) * (length + 8) * s.layers * 2 * s.kv_width * b for n, length in gen)
        work = kv + GEN_BATCH * s.vocab * 4 * 3
        seconds = move
        for n, length in gen:
            per_step = 2 * s.params * min(n, GEN_BATCH) / flops
            if gpu:
                per_step = max(per_step, M / (worker.gpu_bandwidth_gbs * GB))
            layer_step = worker.gpu_layer_step_s if gpu else worker.cpu_layer_step_s
            seconds += math.ceil(n / GEN_BATCH) * length * (per_step + s.layers * layer_step)
        phases.append(Phase("data", device_bytes=M + work, host_bytes=0.0, seconds=seconds) if gpu
                      else Phase("data", host_bytes=M + work, seconds=seconds))

    # Compression: memory of the worst attempt (the recipe and its fallbacks run one at a time, each on a fresh
    # copy); time of the recipe alone (a fallback runs only when the gate is missed).
    attempts = [_attempt(steps, s, job, worker, flops) for steps in job.recipes]
    comp, write, artifact, extra = max(attempts, key=lambda a: a[0].device_bytes + a[0].host_bytes + a[1].host_bytes)
    comp.seconds, write.seconds = attempts[0][0].seconds, attempts[0][1].seconds
    phases.append(comp)

    if job.evaluation:  # both models on the device, and the logits of a batch of windows
        tokens = job.eval_windows * job.eval_seq_len
        logits = EVAL_BATCH * job.eval_seq_len * s.vocab * 14  # bf16 logits, fp32 copy and log-softmax, both models
        seconds = (2 * 2 * s.params * (tokens + (LATENCY_TOKENS if job.latency else 0))) / flops
        if gpu:
            phases.append(Phase("evaluate", device_bytes=M + extra["kept"] + logits, host_bytes=extra["host_side"],
                                seconds=seconds + 2 * move))
        else:
            phases.append(Phase("evaluate", host_bytes=comp.host_bytes - extra["work"] + logits, seconds=seconds))
    phases.append(write)

    peak_device = max(p.device_bytes for p in phases)
    peak_host = RUNTIME_HOST_BYTES + max(p.host_bytes for p in phases)
    lossless = job.lossless_output or any(st.get("method") == "lossless" for st in job.recipes[0])
    non_weight = max(0, model.files_bytes - s.checkpoint_bytes)
    disk = model.files_bytes + artifact + non_weight + (artifact * 0.8 if lossless else 0)
    upload = artifact * (0.75 if lossless else 1.0) / (worker.fetch_mbs * 1e6)
    if lossless:
        write.seconds += artifact / (40 * 1e6)  # the codec encodes ~40 MB/s a core (BENCHMARKS §2)
    wall = sum(p.seconds for p in phases) + upload

    streamed = job.streamable and (job.streaming == "on" or bool(
        worker.host_memory_gb and peak_host > worker.host_memory_gb * GB))
    if streamed:  # the job will stream: the host holds the outside tensors or two blocks and their work
        peak_host, disk = _streamed_host(s, job, gpu), disk + (artifact if job.checkpoint else 0.0)
        for p in phases:
            p.host_bytes = min(p.host_bytes, peak_host - RUNTIME_HOST_BYTES)
    if job.ranks > 1:  # every other rank loads the model and compresses a copy of it in a process of its own
        peak_host += (job.ranks - 1) * (RUNTIME_HOST_BYTES + 2 * M)
    shortfalls = []
    slots = worker.gpus if gpu else worker.cpu_ranks
    if job.ranks > max(slots, 1):
        shortfalls.append(f"ranks: needs {job.ranks} ({'GPUs' if gpu else 'CPU ranks'}), has {max(slots, 1)}")
    if gpu and peak_device + CUDA_RESERVE_BYTES > worker.gpu_memory_gb * GB:
        worst = max(phases, key=lambda p: p.device_bytes)
        shortfalls.append(f"GPU memory: needs {_fmt(peak_device + CUDA_RESERVE_BYTES)} on one GPU in {worst.name}, "
                          f"has {worker.gpu_memory_gb:g} GB")
    if worker.host_memory_gb and peak_host > worker.host_memory_gb * GB:
        worst = max(phases, key=lambda p: p.host_bytes)
        shortfalls.append(f"host memory: needs {_fmt(peak_host)} in {worst.name}, has {worker.host_memory_gb:g} GB")
    if worker.disk_gb and disk > worker.disk_gb * GB:
        shortfalls.append(f"disk: needs {_fmt(disk)}, has {worker.disk_gb:g} GB")
    return Estimate(
        worker_class=worker.name, device=worker.device, gpu_memory_bytes=int(peak_device),
        host_memory_bytes=int(peak_host), disk_bytes=int(disk), wall_s=round(wall, 1), artifact_bytes=int(artifact),
        fits=not shortfalls, shortfalls=shortfalls,
        phases=[{"name": p.name, "gpu_bytes": int(p.device_bytes), "host_bytes": int(p.host_bytes + RUNTIME_HOST_BYTES),
                 "seconds": round(p.seconds, 1)} for p in phases],
        streamed=streamed,
    )


def _streamed_host(s: Shape, job: JobShape, gpu: bool) -> float:
    """Peak host bytes of a streamed job: the tensors outside the blocks while block 0's inputs are captured,
    then two blocks (the one being compressed and its exported tensors), the calibration activations (input
    and output of a block) and, on a CPU class, the engine's fp32 work on the largest linear."""
    b = s.dtype_bytes
    acts = 2.0 * job.calibration_samples * job.calibration_seq_len * s.hidden * b if job.needs_calibration else 0.0
    largest = max((lin.out_features * lin.in_features for lin in s.block_linears), default=0)
    work = 0.0 if gpu else 6 * 4 * float(largest)
    loop = 2.0 * s.block_params * b + acts + work
    return RUNTIME_HOST_BYTES + max(float(s.outside_params * b), loop)


def _lin_numel(lins: Iterable[Linear]) -> int:
    return sum(lin.out_features * lin.in_features for lin in lins)


def _attempt(steps: Sequence[dict[str, Any]], s: Shape, job: JobShape, worker: WorkerClass,
             flops: float) -> tuple[Phase, Phase, float, dict[str, float]]:
    """(compress phase, write phase, artifact bytes, figures the evaluate phase needs) of one recipe."""
    gpu = worker.device == "cuda"
    _, fp32_flops, solve_flops = _rates(worker, s.dtype_bytes)
    b, M = s.dtype_bytes, float(s.model_bytes)
    T = job.calibration_samples * job.calibration_seq_len
    inter = max((lin.in_features for lin in s.block_linears), default=s.hidden)  # the MLP's inner width
    A = 1.0 * T * s.hidden * b  # one copy of the block's inputs (or outputs) for every calibration sample
    # one batch through a block: the MLP's gate, up, activation and product, attention's q/k/v/out and residuals
    fwd = CALIB_BATCH * job.calibration_seq_len * (4 * inter + 6 * s.hidden) * b
    work_peak = 0.0  # device working set besides the model's own weights
    seconds = M / (worker.copy_gbs * GB)  # the attempt's deep copy of the model
    weights_on_device = 0.0  # model weights a step moves to the device (outside modules + one block)
    eora = any(st.get("method") == "eora" for st in steps)
    eora_originals = 4.0 * _lin_numel(s.linears) if eora else 0.0  # fp32 copies of every linear (EoRA)
    quantized: dict[str, tuple[int, int, bool, int]] = {}  # linear -> stored_layout(): bits, group, zeros, scale B
    removed = 0.0  # parameters removed by low-rank or structured steps
    adapter = 0.0
    for step in steps:
        method = step.get("method")
        chosen = targeted(step, s.linears)
        in_block = targeted(step, s.block_linears)
        big = max((lin.out_features * lin.in_features for lin in in_block), default=0)
        if method in CALIBRATED:
            # per block: (a) observe: inputs + a batch's forward + statistics (+ the fp32 copy of the widest input
            # being accumulated); (b) solve: inputs + statistics + the largest group's working set; (c) forward
            # into the next block's inputs: inputs + outputs + a batch's forward
            stats, acc, solve = 0.0, 0.0, 4.0 * 4 * big
            f = 4.0 * s.block_params * s.layers * T  # observe + forward, every block (the model's dtype)
            f_fp32, f_solve = 0.0, 0.0
            if method in HESSIAN:
                groups = hessian_groups(in_block)
                copies = 2 if method == "gptq" else 1  # see `observing` below
                budget = EXPERT_STATS_FRACTION * worker.gpu_memory_gb * GB / copies if gpu else None
                stats = expert_chunk_stats(in_block, step.get("expert_chunk"), budget)
                acc = 4.0 * CALIB_BATCH * job.calibration_seq_len * max(g[0].in_features for g in groups.values())
                # fp32 weights (and their stack), H, its damped copy and inverse
                solve = max(4.0 * (2 * g[0].in_features * sum(x.out_features for x in g) + 3 * g[0].in_features ** 2)
                            for g in groups.values())
                if method == "gptq" and not step.get("act_order"):  # same-shape experts solved together
                    solve = max(solve, expert_batch_solve(in_block, int(step.get("expert_solve_batch", 32))))
                for g in hessian_groups(chosen).values():
                    k, n = g[0].in_features, sum(x.out_features for x in g)
                    f_fp32 += 2 * k * k * T
                    f_solve += k**3 + 2 * n * k * k
            elif method == "awq":  # the grid search runs a group's linears on its cached inputs
                groups = hessian_groups(in_block)
                solve = max(T * (g[0].in_features + sum(x.out_features for x in g)) * b for g in groups.values())
                f += int(step.get("grid", 20)) * 2 * _lin_numel(chosen) * T
            # GPTQ sums its statistics segment by segment (compression.core.distributed): while observing, a
            # segment's sums sit beside the fold of the earlier ones
            observing = 2 * stats if method == "gptq" else stats
            work_peak = max(work_peak, A + fwd + observing + acc, A + stats + solve, 2 * A + fwd)
            weights_on_device = max(weights_on_device, (s.outside_params + s.block_params) * b)
            seconds += (f / flops + f_fp32 / fp32_flops + f_solve / solve_flops
                        + (2 * M / (worker.h2d_gbs * GB) if gpu else 0.0))
        elif method in ("rtn", "hqq", "magnitude", "svd"):  # one weight at a time
            work_peak = max(work_peak, (8.0 if method in ("hqq", "svd") else 5.0) * 4 * big)
            p_lin = _lin_numel(chosen)
            f = 30.0 * p_lin * (int(step.get("iters", 20)) if method == "hqq" else 1)
            seconds += f / fp32_flops + (5.0 * p_lin / (worker.h2d_gbs * GB) if gpu else 0.0)
            seconds += len(chosen) * (worker.gpu_linear_s if gpu else worker.cpu_linear_s)
            if method == "svd":
                seconds += sum(4.0 * lin.out_features * lin.in_features * min(lin.out_features, lin.in_features)
                               for lin in chosen) / solve_flops
        for lin in chosen:
            layout = stored_layout(step, lin, b)
            if layout is not None:
                quantized[lin.name] = layout
        if method in ("svd", "svd_llm"):
            removed += float(step.get("ratio") or 0.0) * _lin_numel(chosen)
        if method == "prune_structured":
            removed += float(step.get("ratio") or step.get("mlp_ratio") or 0.0) * _lin_numel(chosen)
            removed += len(step.get("drop_blocks") or []) * s.block_params
        if method == "eora":
            adapter += float(step.get("rank", 32)) * sum(lin.out_features + lin.in_features for lin in chosen) * b
    by_name = {lin.name: lin for lin in s.linears}
    codes, q_numel, q_bytes = 0.0, 0, 0.0
    for name, (bits, gs, asym, scale_bytes) in quantized.items():
        numel = by_name[name].out_features * by_name[name].in_features
        codes += numel + 4.0 * numel / gs + (numel / gs if asym else 0)  # int8 codes, fp32 scales, int8 zeros
        q_numel += numel
        q_bytes += numel * bits / 8 + numel / gs * scale_bytes + (numel / gs * bits / 8 if asym else 0)
    kept = M - removed * b  # the compressed model in memory: dense (dequantized) weights
    if job.output_format == "dense" or not quantized:
        artifact, packed = kept + adapter, 0.0
    else:
        artifact, packed = kept - q_numel * b + q_bytes + adapter, q_bytes
    staging = 2 * max(4.0 * max((lin.out_features * lin.in_features for lin in s.block_linears), default=0), 64 * 2**20)
    host_side = codes + eora_originals + (staging if gpu else 0.0)
    host = M + kept + host_side  # the original, the working copy, what the engines keep on the host
    if gpu:
        comp = Phase("compress", device_bytes=weights_on_device + work_peak, host_bytes=host, seconds=seconds)
    else:
        comp = Phase("compress", host_bytes=host + work_peak, seconds=seconds)
    shard = min(artifact, 4 * GiB)  # safetensors serializes one shard at a time in memory
    pack_s = (len(quantized) * (worker.gpu_linear_s if gpu else worker.cpu_linear_s) / 2) if packed else 0.0
    write = Phase("write", host_bytes=host + packed + shard,
                  seconds=artifact / (worker.disk_gbs * 0.7 * GB) + packed / (2 * GB) + pack_s)
    return comp, write, artifact, {"kept": kept, "host_side": host_side, "work": work_peak}


# -- plans over worker classes --------------------------------------------------------------------------


@dataclass
class Plan:
    model: dict[str, Any]
    estimates: list[Estimate]
    runnable_on: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"status": "planned", "model": self.model, "estimates": [asdict(e) for e in self.estimates],
                "runnable_on": self.runnable_on, "notes": self.notes}

    def refusal(self) -> str | None:
        """The message of an insufficient_resources refusal, or None when some class can run the job."""
        if self.runnable_on:
            return None
        parts = [f"{e.worker_class}: {'; '.join(e.shortfalls)}" for e in self.estimates]
        return "no worker class can run this job: " + " | ".join(parts)


def plan(model: ModelInfo, job: JobShape, workers: Sequence[WorkerClass]) -> Plan:
    s = model_shape(model)
    estimates = [estimate(model, job, w, s) for w in workers]
    return Plan(
        model={"params": s.params, "layers": s.layers, "hidden_size": s.hidden, "vocab_size": s.vocab,
               "dtype_bytes": s.dtype_bytes, "model_bytes": s.model_bytes, "checkpoint_bytes": s.checkpoint_bytes,
               "block_params": s.block_params, "files_bytes": model.files_bytes},
        estimates=estimates, runnable_on=[e.worker_class for e in estimates if e.fits],
        notes=["wall_s is an order-of-magnitude estimate from effective rates (BENCHMARKS.md §5); memory and disk "
               "follow the code's phases (docs/service.md, Resource planner)"],
    )
