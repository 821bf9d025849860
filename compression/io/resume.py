"""Resume a streamed job at the block where it stopped, with a byte-identical artifact.

After each finished block, ``Checkpoint.save_block`` writes into a local directory: the block's artifact
tensors (``block-<i>.safetensors``, and their order in ``state.json``), the activations that feed the next
block (``inputs-<i>.safetensors``: one hidden-state tensor per calibration batch; the other block inputs, such as
position embeddings and masks, are recomputed by the cheap capture pass up to block 0), and the block's report
and writer records. ``state.json`` is replaced last (write to a temporary name, fsync, rename), so a process
killed at any instant leaves the previous complete state.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from presso.compression.io.outdir import RESUME_DIR

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
        """Block ``i``'s artifact tensors (in writer order), its records and the next block's inputs."""
        if i != self.done:
            raise ValueError(f"block {i} saved after {self.done} blocks")
        name = f"block-{i:05d}.safetensors"
        save_file({n: t.contiguous() for n, t in tensors}, str(self.root / (name + ".tmp")))
        os.replace(self.root / (name + ".tmp"), self.root / name)
        previous = self.state.get("inputs")
        inputs = None
        if outputs is not None:
            inputs = f"inputs-{i:05d}.safetensors"
            save_file({f"batch_{j}": h.detach().to("cpu").contiguous() for j, h in enumerate(outputs)},
                      str(self.root / (inputs + ".tmp")))
            os.replace(self.root / (inputs + ".tmp"), self.root / inputs)
        self.state["blocks"].append({"file": name, "order": [n for n, _ in tensors], "record": record})
        self.state["inputs"] = inputs
        _write_atomic(self.root / STATE, json.dumps(self.state).encode())
        if previous and previous != inputs:
            (self.root / previous).unlink(missing_ok=True)
        if self.on_saved is not None:
            self.on_saved(self.root)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
