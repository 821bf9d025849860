"""Ranks of one job under torch.distributed (NCCL on GPUs, gloo on CPUs), and the fixed reduction order that
makes N ranks write the same bytes as one.

How a calibrated step splits its work (compression.core.sequential.run_blockwise, the GPTQ engine):

- the calibration batches are cut into at most ``MAX_SEGMENTS`` contiguous *segments*, a function of the number
  of batches only (never of the number of ranks); each rank owns whole, contiguous segments and runs the
  capture, the observation forward and the output forward of its own batches only;
- a statistic (a Hessian ``sum x^T x``, a per-channel sum) is summed inside a segment in batch order, then the
  segment sums are added left to right: ``((S0 + S1) + S2) + ...``. One rank does that fold as it goes; with
  several, rank r receives the fold of the segments before its own from rank r-1, adds its own segment sums to
  it in order and passes it on (:meth:`Ranks.chain_sum_`). The additions are the same, in the same order, so
  the result is bit-identical whatever the number of ranks (on one kind of hardware, at one thread count);
- the per-layer solves of a block are dealt out round-robin; each rank solves its share and the results are
  gathered by every rank (:meth:`Ranks.gather`) and applied in the block's order.

At most ``MAX_SEGMENTS`` ranks get calibration batches; a job with fewer batches than ranks runs its calibrated
steps on every rank in full (the same result, no speed-up).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import nn

from presso.compression.core.experts import expert_of

log = logging.getLogger(__name__)

MAX_SEGMENTS = 8  # calibration segments, and so the most ranks a calibrated step can use
T = TypeVar("T")


def segment_of(batch: int, n_batches: int) -> int:
    """The segment of calibration batch ``batch`` (of ``n_batches``): contiguous, at most ``MAX_SEGMENTS``."""
    return batch * min(n_batches, MAX_SEGMENTS) // max(n_batches, 1)


def segments(n_batches: int) -> int:
    return min(n_batches, MAX_SEGMENTS)


@dataclass
class Ranks:
    """This process's place among the ranks of one job (the default process group)."""

    rank: int
    world: int
    device: torch.device

    # -- setup -----------------------------------------------------------------------------------------------

    @staticmethod
    def init(rank: int, world: int, init_method: str, device: torch.device,
             timeout_s: float = 1800.0) -> Ranks:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                                 timeout=dt.timedelta(seconds=timeout_s))
        log.info("rank %d of %d up (%s on %s)", rank, world, backend, device)
        return Ranks(rank, world, device)

    @staticmethod
    def close() -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()

    # -- who does what ---------------------------------------------------------------------------------------

    def splits(self, n_batches: int) -> bool:
        """Whether calibrated work is split: every rank gets at least one segment."""
        return self.world > 1 and segments(n_batches) >= self.world

    def my_segments(self, n_batches: int) -> range:
        k = segments(n_batches)
        return range(self.rank * k // self.world, (self.rank + 1) * k // self.world)

    def my_batches(self, n_batches: int) -> list[int]:
        mine = self.my_segments(n_batches)
        return [b for b in range(n_batches) if segment_of(b, n_batches) in mine]

    def owns(self, index: int) -> bool:
        """Round-robin owner of the ``index``-th unit of work (a solve)."""
        return index % self.world == self.rank

    # -- collectives -----------------------------------------------------------------------------------------

    def broadcast(self, obj: T, src: int = 0) -> T:
        """``obj`` of rank ``src`` on every rank (picklable objects made by Presso's own ranks only)."""
        box = [obj if self.rank == src else None]
        tdist.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]  # type: ignore[return-value]

    def gather(self, mine: dict[int, Any]) -> dict[int, Any]:
        """Union of every rank's ``{index: result}`` (tensors moved to the CPU first), on every rank."""
        out: list[dict[int, Any] | None] = [None] * self.world
        tdist.all_gather_object(out, {k: _cpu(v) for k, v in mine.items()})
        merged: dict[int, Any] = {}
        for part in out:
            merged.update(part or {})
        return merged

    def union(self, items: Sequence[T]) -> list[list[T]]:
        """Every rank's list, in rank order."""
        out: list[list[T] | None] = [None] * self.world
        tdist.all_gather_object(out, list(items))
        return [o or [] for o in out]

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """In-place all-reduce SUM, for integer counts (exact in any order)."""
        assert not t.is_floating_point(), "float sums go through chain_sum_ (a fixed order)"
        work = t.to(self._tensor_device())
        tdist.all_reduce(work)
        t.copy_(work)
        return t

    def chain_sum_(self, prefix: torch.Tensor | None, mine: list[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        """Every rank's segment sums added in rank order onto zeros; the total, on every rank.

        ``prefix`` is rank 0's running fold of its own segments; the other ranks pass None and their segment
        sums in ``mine``: rank r receives the fold from rank r-1, adds its sums in order and passes it on."""
        dev = self._tensor_device()
        if self.rank == 0:
            acc = prefix.to(dev) if prefix is not None else torch.zeros(*shape, dtype=torch.float32, device=dev)
        else:
            acc = torch.empty(*shape, dtype=torch.float32, device=dev)
            tdist.recv(acc, src=self.rank - 1)
            for s in mine:
                acc.add_(s.to(dev))
        if self.rank < self.world - 1:
            tdist.send(acc, dst=self.rank + 1)
        tdist.broadcast(acc, src=self.world - 1)
        return acc

    def barrier(self) -> None:
        tdist.barrier()

    def _tensor_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _object_device(self) -> torch.device | None:
        return torch.device("cuda", torch.cuda.current_device()) if self.device.type == "cuda" else None


@contextmanager
def share_expert_counts(model: nn.Module, names: Iterable[str], ranks: Ranks | None) -> Iterator[None]:
    """Around a pass over this rank's batches: the routed-token counts the pass adds to the experts among
    ``names`` are summed over the ranks, so every rank sees what one rank running every batch would see."""
    if ranks is None:
        yield
        return
    where = expert_of(model)
    mods = list({id(where[n][0]): where[n][0] for n in names if n in where}.values())
    before = [m.tokens_seen.detach().cpu().clone() for m in mods]
    yield
    for m, b in zip(mods, before, strict=True):
        delta = m.tokens_seen.detach().cpu() - b
        m.tokens_seen = b + ranks.sum_(delta)


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if hasattr(obj, "cpu") and callable(obj.cpu):
        return obj.cpu()
    return obj
