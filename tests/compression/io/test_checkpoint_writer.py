"""Checkpoint.save_block writes the block now and the activations + state.json in the background: state.json
never names a file that is not complete, the next save waits for the last, and a failed write is raised."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from presso.compression.io import resume
from presso.compression.io.resume import Checkpoint


def _block(i: int) -> list[tuple[str, torch.Tensor]]:
    return [(f"layers.{i}.w", torch.full((4, 4), float(i)))]


def test_activations_and_state_written_after_the_block_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    gate = threading.Event()
    real = resume.save_one_at_a_time
    seen_states: list[int] = []

    def slow(tensors, path):  # type: ignore[no-untyped-def]
        gate.wait(10)
        seen_states.append(len(json.loads((tmp_path / "ck" / "state.json").read_text())["blocks"])
                           if (tmp_path / "ck" / "state.json").exists() else 0)
        real(tensors, path)

    monkeypatch.setattr(resume, "save_one_at_a_time", slow)
    saved: list[int] = []
    ck = Checkpoint(tmp_path / "ck", "k", on_saved=lambda root: saved.append(len(json.loads(
        (root / "state.json").read_text())["blocks"])))
    outs = [torch.randn(2, 3, 8) for _ in range(3)]
    ck.save_block(0, _block(0), {"r": 0}, outs)
    assert (tmp_path / "ck" / "block-00000.safetensors").is_file()  # the block itself: written before return
    assert not (tmp_path / "ck" / "state.json").exists()  # the state only once the activations are on disk
    gate.set()
    ck.save_block(1, _block(1), {"r": 1}, [o + 1 for o in outs])  # waits for block 0's write first
    ck.flush()
    assert seen_states == [0, 1] and saved == [1, 2]
    again = Checkpoint(tmp_path / "ck", "k")
    assert again.done == 2 and again.block_record(1) == {"r": 1}
    got = again.inputs()
    assert got is not None and all(torch.equal(g, o + 1) for g, o in zip(got, outs, strict=True))
    assert not (tmp_path / "ck" / "inputs-00000.safetensors").exists()  # the previous activations removed


def test_a_failed_background_write_is_raised_by_the_next_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    def broken(tensors, path):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(resume, "save_one_at_a_time", broken)
    ck = Checkpoint(tmp_path / "ck", "k")
    ck.save_block(0, _block(0), {}, [torch.zeros(1, 2)])
    with pytest.raises(OSError, match="No space left"):
        ck.save_block(1, _block(1), {}, [torch.zeros(1, 2)])
    assert not (tmp_path / "ck" / "state.json").exists()  # nothing names the missing activations
    ck.flush()  # the error was handed over once
