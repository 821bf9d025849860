"""Resume a streamed job at the block where it stopped, with a byte-identical artifact.

After each finished block, ``Checkpoint.save_block`` writes into a local directory: the block's artifact
tensors (``block-<i>.safetensors``, and their order in ``state.json``), the activations that feed the next
block (``inputs-<i>.safetensors``: one hidden-state tensor per calibration batch; the other block inputs, such as
position embeddings and masks, are recomputed by the cheap capture pass up to block 0), and the block's report
and writer records. ``state.json`` is replaced last (write to a temporary name, fsync, rename), so a process
killed at any instant leaves the previous complete state.

The block's own tensors are written before ``save_block`` returns; the activations (128 × 2048 tokens of a
70B-wide model are 4.3 GB) and ``state.json`` are written by one background thread while the next block
computes, each activation tensor copied to the host alone (``shards.save_one_at_a_time``). The next
``save_block``, ``flush`` and ``clear`` wait for it first, and its error, if any, is raised there.

A rerun of the same job (same ``key``: the job's options and the input model's files) reads the state, feeds
the saved blocks' tensors to the new shard writer in their order (so the shards are the same bytes), and
continues at the first unfinished block with the saved activations. A different key discards the directory.

The checkpoint is a plain directory: ``presso compress`` keeps it inside the output directory
(``.presso-resume``, removed when the artifact is published); a worker uploads it to the job's attempt prefix in
the artifact store after each block and downloads it before the next attempt (presso.workers.checkpoints).
No pickles: tensors in safetensors, the rest JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from presso.compression.io.outdir import RESUME_DIR
from presso.compression.io.shards import save_one_at_a_time

log = logging.getLogger(__name__)
STATE = "state.json"
FORMAT_VERSION = 1


__all__ = ["RESUME_DIR", "Checkpoint", "job_key"]


def job_key(options: dict[str, Any], model_dir: Path, data: Path | None = None) -> str:
    """What must be equal for a checkpoint to be reused: the job's options, the input model's files (names,
    sizes, JSON contents) and the calibration file's bytes."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    if data is not None and data.is_file():
        from presso.codec.files import sha256_file

        h.update(sha256_file(data).encode())
    for f in sorted(Path(model_dir).iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """A resume directory; ``on_saved(dir)`` runs after each saved block (a worker uploads the directory)."""

    def __init__(self, root: Path, key: str, on_saved: Callable[[Path], None] | None = None) -> None:
        self.root = Path(root)
        self.key = key
        self.on_saved = on_saved
        self.state: dict[str, Any] = {"version": FORMAT_VERSION, "key": key, "blocks": []}
        self.root.mkdir(parents=True, exist_ok=True)
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None
        found = self._read_state()
        if found is not None and found.get("key") == key and found.get("version") == FORMAT_VERSION:
            self.state = found
        elif found is not None:
            log.warning("%s: a checkpoint of another job or version; discarded", self.root)
            self.clear()
            self.root.mkdir(parents=True, exist_ok=True)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.root / STATE).read_text())
            return data
        except (OSError, ValueError):
            return None

    @property
    def done(self) -> int:
        """Blocks finished and saved (the next block to run)."""
        return len(self.state["blocks"])

    def block_tensors(self, i: int) -> list[tuple[str, torch.Tensor]]:
        entry = self.state["blocks"][i]
        tensors = load_file(str(self.root / entry["file"]))
        return [(name, tensors[name]) for name in entry["order"]]

    def block_record(self, i: int) -> dict[str, Any]:
        record: dict[str, Any] = self.state["blocks"][i]["record"]
        return record

    def inputs(self) -> list[torch.Tensor] | None:
        """The saved activations feeding the next block (None when the engine runs without any)."""
        name = self.state.get("inputs")
        if not self.state["blocks"] or not name:
            return None
        tensors = load_file(str(self.root / name))
        return [tensors[f"batch_{j}"] for j in range(len(tensors))]

    def save_block(self, i: int, tensors: list[tuple[str, torch.Tensor]], record: dict[str, Any],
                   outputs: list[torch.Tensor] | None) -> None:
        """Block ``i``'s artifact tensors (in writer order, written now), its records and the next block's
        inputs (written in the background with the new state; ``outputs`` must not change until then)."""
        self.flush()
        if i != self.done:
            raise ValueError(f"block {i} saved after {self.done} blocks")
        name = f"block-{i:05d}.safetensors"
        save_file({n: t.contiguous() for n, t in tensors}, str(self.root / (name + ".tmp")))
        os.replace(self.root / (name + ".tmp"), self.root / name)
        previous = self.state.get("inputs")
        inputs = None if outputs is None else f"inputs-{i:05d}.safetensors"
        self.state["blocks"].append({"file": name, "order": [n for n, _ in tensors], "record": record})
        self.state["inputs"] = inputs
        state = json.dumps(self.state).encode()
        self._pending = threading.Thread(target=self._finish_block, args=(inputs, outputs, state, previous),
                                         name=f"presso-checkpoint-{i}", daemon=True)
        self._pending.start()

    def _finish_block(self, inputs: str | None, outputs: list[torch.Tensor] | None, state: bytes,
                      previous: str | None) -> None:
        try:
            self._write_rest(inputs, outputs, state, previous)
        except BaseException as exc:  # raised in the job's thread by flush()
            self._error = exc

    def _write_rest(self, inputs: str | None, outputs: list[torch.Tensor] | None, state: bytes,
                    previous: str | None) -> None:
        if inputs is not None and outputs is not None:
            save_one_at_a_time([(f"batch_{j}", h) for j, h in enumerate(outputs)], self.root / (inputs + ".tmp"))
            os.replace(self.root / (inputs + ".tmp"), self.root / inputs)
        _write_atomic(self.root / STATE, state)  # last: a process killed before this keeps the previous state
        if previous and previous != inputs:
            (self.root / previous).unlink(missing_ok=True)
        if self.on_saved is not None:
            self.on_saved(self.root)

    def flush(self, raise_errors: bool = True) -> None:
        """Wait until the last saved block is on disk (and ``on_saved`` ran); raise what the writing raised."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.join()
        error, self._error = self._error, None
        if error is None:
            return
        if raise_errors:
            raise error
        log.error("%s: writing the checkpoint failed: %s", self.root, error)

    def clear(self) -> None:
        self.flush(raise_errors=False)
        shutil.rmtree(self.root, ignore_errors=True)
