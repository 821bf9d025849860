"""Resume (issue 21): `presso compress` killed with SIGKILL at block k and run again finishes from block k with an
artifact whose every file has the sha256 of an uninterrupted run's."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
GPTQ = json.dumps({"steps": [{"method": "gptq", "bits": 4, "group_size": 64}]})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("resume")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(d / "model", max_shard_size="2MB")
    np.save(d / "calib.npy", np.random.default_rng(0).integers(0, 512, size=16 * 128).astype(np.int64))
    return d


def _cmd(inputs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "presso.cli", "compress", str(inputs / "model"), "--recipe", GPTQ, "--out", str(out),
            "--calib", str(inputs / "calib.npy"), "--samples", "16", "--seq-len", "128", "--no-eval",
            "--streaming", "on"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
            "PRESSO_SHARD_BYTES": "1500000"}  # several output shards


def _digests(out: Path) -> dict[str, str]:
    """Every file's sha256 (presso.json holds timings: its file list is compared instead)."""
    found = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
             if p.is_file() and p.name not in ("presso.json", "report.json")}
    manifest = json.loads((out / "presso.json").read_text())
    found["presso.json:files"] = json.dumps([f for f in manifest["files"] if f["path"] != "report.json"])
    found["report.json:layers"] = json.dumps(json.loads((out / "report.json").read_text())["layers"])
    return found


def _run_and_kill_at(inputs: Path, out: Path, k: int) -> None:
    state = out / ".presso-resume" / "state.json"
    proc = subprocess.Popen(_cmd(inputs, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(json.loads(state.read_text())["blocks"]) >= k:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        assert proc.poll() is None, f"the job ended before block {k}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "presso.json").exists() and not list(out.glob("*.safetensors"))  # nothing published


@pytest.fixture(scope="module")
def uninterrupted(inputs: Path) -> dict[str, str]:
    out = inputs / "ref"
    subprocess.run(_cmd(inputs, out), env=_env(), check=True, stdout=subprocess.DEVNULL)
    assert not (out / ".presso-resume").exists()
    return _digests(out)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_sigkill_at_block_k_then_rerun_is_byte_identical(inputs: Path, uninterrupted: dict[str, str], k: int,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run_and_kill_at(inputs, out, k)
    done = len(json.loads((out / ".presso-resume" / "state.json").read_text())["blocks"])
    assert done >= k
    run = subprocess.run(_cmd(inputs, out), env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"resuming at block {done}/6" in run.stderr
    assert _digests(out) == uninterrupted
    assert not (out / ".presso-resume").exists()
    assert len([n for n in uninterrupted if n.endswith(".safetensors")]) >= 2  # several output shards
