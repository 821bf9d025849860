"""A streamed job's checkpoint goes to the attempt's prefix in the artifact store after each block, and the next
attempt (another process, another temporary directory) resumes from it with a byte-identical artifact (issue 21)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from presso.app.storage.local import LocalStore
from presso.compression.io.outdir import RESUME_DIR
from presso.compression.io.streamwrite import StreamedArtifact
from presso.compression.job import run_local
from presso.compression.recipe import parse_recipe
from presso.compression.spec import LocalJobSpec
from presso.workers.checkpoints import CheckpointSync
from presso.workers.lease import Claim

GPTQ = {"steps": [{"method": "gptq", "bits": 4, "group_size": 32}]}


def _claim(attempt: int) -> Claim:
    return Claim(job_id="job-1", tenant_id="t-1", attempt=attempt, max_attempts=3, queue="q", model_uri="file:///m",
                 request={})


def _spec(model_dir, calib, out):
    return LocalJobSpec(model_uri=str(model_dir), out_dir=out, recipe=parse_recipe(GPTQ), streaming="on",
                        calibration={"samples": 8, "seq_len": 32, "uri": str(calib)}, evaluation={"enabled": False})


def _digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.is_file() and p.name not in ("presso.json", "report.json")}


def test_next_attempt_resumes_from_the_stored_checkpoint(tmp_path, tiny_llama_dir, monkeypatch):
    model_dir, calib = tiny_llama_dir, tmp_path / "calib.npy"  # 2 blocks, with a tokenizer
    np.save(calib, np.random.default_rng(3).integers(0, 250, size=8 * 32).astype(np.int64))
    store = LocalStore(tmp_path / "store")
    done = StreamedArtifact.done

    def die_at_block_1(self, i, block, *rest):
        if i == 1:
            raise RuntimeError("worker lost at block 1")
        done(self, i, block, *rest)

    monkeypatch.setattr(StreamedArtifact, "done", die_at_block_1)
    first = CheckpointSync(store, _claim(1))
    assert first.restore(tmp_path / "a1" / RESUME_DIR) == 0
    with pytest.raises(RuntimeError):
        run_local(_spec(model_dir, calib, tmp_path / "a1"), on_checkpoint=first)
    stored = json.loads(store.get_bytes("tenants/t-1/jobs/job-1/attempt-1/resume/state.json"))
    assert len(stored["blocks"]) == 1

    monkeypatch.setattr(StreamedArtifact, "done", done)
    loaded = []
    load = StreamedArtifact.load
    monkeypatch.setattr(StreamedArtifact, "load", lambda self, i, b: (loaded.append(i), load(self, i, b)))
    second = CheckpointSync(store, _claim(2))
    out = tmp_path / "a2"  # another directory, as on another worker
    assert second.restore(out / RESUME_DIR) == 1
    run_local(_spec(model_dir, calib, out), on_checkpoint=second)
    assert loaded == [1]
    run_local(_spec(model_dir, calib, tmp_path / "ref"))
    assert _digests(out) == _digests(tmp_path / "ref")
    assert "tokenizer.json" in _digests(out)


def test_a_corrupt_stored_checkpoint_is_not_used(tmp_path):
    store = LocalStore(tmp_path / "store")
    prefix = "tenants/t-1/jobs/job-1/attempt-1/resume"
    store.put_bytes(f"{prefix}/block-00000.safetensors", b"garbage")
    store.put_bytes(f"{prefix}/digests.json", json.dumps({"block-00000.safetensors": "0" * 64}).encode())
    store.put_bytes(f"{prefix}/state.json", json.dumps({"blocks": [{"file": "block-00000.safetensors"}]}).encode())
    root = tmp_path / "o" / RESUME_DIR
    assert CheckpointSync(store, _claim(2)).restore(root) == 0
    assert not root.exists()
