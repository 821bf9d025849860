"""Several ranks (issue 21): `presso compress --gpus 2` on this CPU runs two gloo ranks (rank 0 and a process it
starts) and writes the same bytes as one rank: GPTQ alone, a chain whose first step runs whole on every rank,
and a mixture-of-experts model (routed-token counts summed over ranks)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import save_tiny_mixtral

ROOT = Path(__file__).resolve().parents[2]
GPTQ = {"steps": [{"method": "gptq", "bits": 4, "group_size": 32}]}
# the search measures on rank 0 alone, its candidates are compressed on every rank
TARGET = {"target": {"bits_per_weight": 3.5, "generations": 2, "candidates": 1}}
CHAIN = {"steps": [{"method": "wanda", "sparsity": 0.5}, {"method": "gptq", "bits": 4, "group_size": 32}]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(d / "llama")
    save_tiny_mixtral(d / "mixtral")
    np.save(d / "calib.npy", np.random.default_rng(0).integers(0, 256, size=40 * 32).astype(np.int64))
    return d


def _compress(inputs: Path, model: str, recipe: dict, out: Path, gpus: int) -> subprocess.CompletedProcess[str]:
    what = ["--target", json.dumps(recipe["target"])] if "target" in recipe else ["--recipe", json.dumps(recipe)]
    cmd = [sys.executable, "-m", "presso.cli", "compress", str(inputs / model), *what, "--out", str(out),
           "--calib", str(inputs / "calib.npy"), "--samples", "40", "--seq-len", "32", "--no-eval", "--gpus", str(gpus)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _digests(out: Path) -> dict[str, str]:
    """Every weight and config file's sha256, and the per-layer report (errors included)."""
    found = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
             if p.is_file() and p.name not in ("presso.json", "report.json")}
    found["report.json:layers"] = json.dumps(json.loads((out / "report.json").read_text())["layers"])
    return found


@pytest.mark.parametrize(("model", "recipe"), [("llama", GPTQ), ("llama", CHAIN), ("mixtral", GPTQ), ("llama", TARGET)],
                         ids=["gptq", "wanda-then-gptq", "mixtral-gptq", "target-search"])
def test_two_ranks_write_the_bytes_of_one(inputs: Path, tmp_path: Path, model: str, recipe: dict) -> None:
    one = _compress(inputs, model, recipe, tmp_path / "one", 1)
    two = _compress(inputs, model, recipe, tmp_path / "two", 2)
    assert "2 ranks started" in two.stderr and "ranks started" not in one.stderr
    assert "rank1" in two.stderr  # the second rank's own log lines: it really ran
    a, b = _digests(tmp_path / "one"), _digests(tmp_path / "two")
    assert any(name.endswith(".safetensors") for name in a)
    assert a == b


def test_streaming_on_with_several_ranks_is_refused(inputs: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "presso.cli", "compress", str(inputs / "llama"), "--recipe", json.dumps(GPTQ),
           "--out", str(tmp_path / "o"), "--gpus", "2", "--streaming", "on", "--no-eval"]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "streaming with resources.gpus > 1 is not supported" in done.stderr


def test_two_ranks_with_chunked_experts_write_the_bytes_of_one_pass(inputs: Path, tmp_path: Path) -> None:
    """Experts observed in chunks (compression.core.expertchunks) on two ranks: each pass's statistics are summed
    over the ranks in the fixed order, so the artifact is the one-rank, one-pass artifact."""
    chunked = {"steps": [{**GPTQ["steps"][0], "expert_chunk": 1}]}
    _compress(inputs, "mixtral", GPTQ, tmp_path / "one", 1)
    two = _compress(inputs, "mixtral", chunked, tmp_path / "two", 2)
    assert "2 ranks started" in two.stderr
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    experts = json.loads((tmp_path / "two" / "report.json").read_text())["steps"][0]["experts"]
    assert experts["expert_chunk"] == 1 and experts["observation_passes"] == [4, 4]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_a_rank_that_dies_fails_the_job_with_the_reason(tmp_path: Path) -> None:
    """SIGKILL of rank 1 mid-job: rank 0 stops at its next collective (not at a timeout) and says which rank died."""
    import time

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).integers(0, 256, size=64 * 128).astype(np.int64))
    cmd = [sys.executable, "-m", "presso.cli", "compress", str(tmp_path / "llama"), "--recipe", json.dumps(GPTQ),
           "--out", str(tmp_path / "out"), "--calib", str(tmp_path / "calib.npy"), "--samples", "64", "--seq-len",
           "128", "--no-eval", "--gpus", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "log"
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "rank 1 of 2 up" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    ranks = _children(proc.pid)
    assert len(ranks) == 1, log.read_text()[-2000:]
    os.kill(ranks[0], 9)
    killed_at = time.monotonic()
    assert proc.wait(timeout=120) != 0
    assert time.monotonic() - killed_at < 60
    text = log.read_text()
    assert "compression rank 1 of 2 died (killed by signal 9" in text, text[-3000:]
    assert not (tmp_path / "out" / "presso.json").exists()  # nothing published
