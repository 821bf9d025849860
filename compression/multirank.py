"""A job's compression as several ranks (``resources.gpus`` > 1): rank 0 is the caller of ``run_local``, the
others are processes it starts (``python -m presso.compression.multirank``) and owns.

Rank 0 loads the model, makes the calibration data and broadcasts it, then before each compression it runs
(an attempt: the recipe, a fallback, a target's candidate) broadcasts the recipe; every rank compresses its
own copy of the model with ``ctx.dist`` set, so GPTQ splits its batches and solves (compression.core.distributed)
and other steps run whole everywhere. Only rank 0 evaluates and writes. The other ranks die with rank 0
(``PR_SET_PDEATHSIG``) and are killed when it leaves ``RankGroup`` early (an error, a cancelled job), so a
worker never leaves ranks behind. Ranks meet through a file store in a fresh temporary directory.

On CUDA, rank r uses ``cuda:r``; on CPU every rank runs with rank 0's torch thread count (the same arithmetic
as one rank: byte-identical artifacts need the same kernels and thread counts).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from presso.compression.core.context import StepContext
from presso.compression.core.distributed import Ranks
from presso.compression.recipe import Recipe
from presso.compression.spec import LocalJobSpec

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 300.0
# Ranks wait for rank 0 between attempts while it evaluates: as long as a job may run.
COLLECTIVE_TIMEOUT_S = 48 * 3600.0


def rank_device(requested: str | None, rank: int) -> torch.device:
    use_cuda = requested == "cuda" or (requested is None and torch.cuda.is_available())
    if requested not in (None, "cuda", "cpu"):
        raise ValueError(f"multi-rank jobs run on 'cuda' or 'cpu', not {requested!r}")
    if use_cuda and rank >= torch.cuda.device_count():
        raise RuntimeError(f"rank {rank} needs GPU {rank}, this worker has {torch.cuda.device_count()}")
    return torch.device("cuda", rank) if use_cuda else torch.device("cpu")


class RankGroup:
    """Rank 0's side: start the other ranks, meet them, and tell them what to compress."""

    def __init__(self, spec: LocalJobSpec, world: int) -> None:
        self.world = world
        self.device = rank_device(spec.device, 0)
        self._dir = Path(tempfile.mkdtemp(prefix="presso-ranks-"))
        spec_file = self._dir / "spec.json"
        spec_file.write_text(spec.model_dump_json())
        init = (self._dir / "rendezvous").as_uri()
        self._procs = [
            subprocess.Popen([sys.executable, "-m", "presso.compression.multirank", "--spec", str(spec_file),
                              "--rank", str(r), "--world", str(world), "--init", init,
                              "--threads", str(torch.get_num_threads()), "--ready", str(self._dir / f"ready{r}")])
            for r in range(1, world)
        ]
        try:
            self._wait_ready(READY_TIMEOUT_S)
            self.ranks = Ranks.init(0, world, init, self.device, timeout_s=COLLECTIVE_TIMEOUT_S)
        except BaseException:
            self.close(ok=False)
            raise
        log.info("%d ranks started (%s)", world, self.device)

    def _wait_ready(self, timeout_s: float) -> None:
        """Until every rank has started (imports done), so a rank that cannot start fails the job now instead of
        leaving rank 0 waiting at the rendezvous."""
        deadline = time.monotonic() + timeout_s
        while not all((self._dir / f"ready{r}").exists() for r in range(1, self.world)):
            dead = [p.returncode for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a compression rank exited at start (exit codes {dead}); see the worker log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the compression ranks did not start within {timeout_s:.0f} s")
            time.sleep(0.05)

    def share_calibration(self, calibration: torch.Tensor | None) -> None:
        self.ranks.broadcast(calibration)

    def announce(self, recipe: Recipe) -> None:
        """Every rank compresses a fresh copy of the model with ``recipe`` next (rank 0 too, after this)."""
        self.ranks.broadcast({"recipe": recipe.model_dump(mode="json")})

    def failure(self, wait_s: float = 1.0) -> str | None:
        """Why the group broke, when a rank has exited with an error (rank 0 sees only a closed connection, maybe
        a moment before the rank's exit status is there: waits up to ``wait_s`` for it)."""
        deadline = time.monotonic() + wait_s
        while True:
            for r, proc in enumerate(self._procs, start=1):
                code = proc.poll()
                if code not in (None, 0):
                    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    return f"compression rank {r} of {self.world} died ({how}; out of memory?), so the job stopped"
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def close(self, *, ok: bool = True) -> None:
        """``ok``: tell the ranks to finish and wait for them (a rank that failed raises here); otherwise kill."""
        try:
            if ok:
                self.ranks.broadcast(None)
            codes = [p.wait(timeout=120) if ok else _kill(p) for p in self._procs]
        finally:
            for p in self._procs:
                _kill(p)
            Ranks.close()
            shutil.rmtree(self._dir, ignore_errors=True)
        if ok and any(codes):
            raise RuntimeError(f"a compression rank failed (exit codes {codes}); see the worker log")


class RankFailed(RuntimeError):
    """A rank other than rank 0 died: an infrastructure failure (the worker retries the job), with the reason."""


def _kill(p: subprocess.Popen[Any]) -> int:
    if p.poll() is None:
        p.kill()
    return p.wait()


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: rank 0 still kills its ranks when it leaves RankGroup
        log.debug("PR_SET_PDEATHSIG unavailable")


def serve(spec: LocalJobSpec, rank: int, world: int, init: str) -> None:
    """A rank after the first: load the model, take the calibration, compress what rank 0 announces."""
    from presso.compression.io.loading import load_model
    from presso.compression.pipeline import compress

    device = rank_device(spec.device, rank)
    ranks = Ranks.init(rank, world, init, device, timeout_s=COLLECTIVE_TIMEOUT_S)
    try:
        lm = load_model(spec.model_dir, max_params=spec.max_params)
        calibration = ranks.broadcast(None)
        while (command := ranks.broadcast(None)) is not None:
            recipe = Recipe.model_validate(command["recipe"])
            model = copy.deepcopy(lm.model)
            ctx = StepContext(calibration=calibration, device=device, seed=spec.seed, dist=ranks)
            compress(model, recipe, ctx)
            del model
    finally:
        Ranks.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="One rank (after the first) of a multi-rank Presso job; started by "
                                "rank 0 (compression.multirank.RankGroup), not by hand.")
    p.add_argument("--spec", type=Path, required=True)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--ready", type=Path, help="file to create once started")
    a = p.parse_args(argv)
    _die_with_parent()
    if a.ready is not None:
        a.ready.touch()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{a.rank} %(name)s %(levelname)s %(message)s")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    serve(LocalJobSpec.model_validate_json(a.spec.read_text()), a.rank, a.world, a.init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
