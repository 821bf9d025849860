"""Streaming (issue 21): a job compressed block by block from the shards writes the artifact the in-memory path
writes, byte for byte, holding at most one block's weights at a time."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch

from presso.compression.io import artifact
from presso.compression.job import run_local
from presso.compression.recipe import parse_recipe
from presso.compression.spec import LocalJobSpec

RTN = {"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]}
GPTQ = {"steps": [{"method": "gptq", "bits": 4, "group_size": 32}]}
GPTQ_ASYM = {"steps": [{"method": "gptq", "bits": 3, "group_size": -1, "symmetric": False,
                        "ignore": ["lm_head", "*.down_proj"]}]}


@pytest.fixture
def model_dir(tmp_path, tiny_llama_factory):
    d = tmp_path / "model"
    tiny_llama_factory(layers=3).save_pretrained(d)
    return d


@pytest.fixture
def untied_dir(tmp_path, tiny_llama_factory):
    d = tmp_path / "untied"
    tiny_llama_factory(layers=2, tie=False).save_pretrained(d, max_shard_size="100KB")  # input shards + index
    (d / "generation_config.json").unlink()  # the generation config from_pretrained derives from config.json
    assert (d / "model.safetensors.index.json").is_file()
    return d


@pytest.fixture
def calib_file(tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(3).integers(0, 300, size=8 * 32).astype(np.int64))
    return path


def _spec(model_dir, out, recipe, streaming, calib=None, **kw):
    return LocalJobSpec(model_uri=str(model_dir), out_dir=out, recipe=parse_recipe(recipe), streaming=streaming,
                        calibration={"samples": 8, "seq_len": 32, "uri": str(calib) if calib else None},
                        evaluation={"enabled": False}, **kw)


def _digests(out):
    """sha256 of every artifact file but presso.json / report.json (they hold timings)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.is_file() and p.name not in ("presso.json", "report.json")}


def _both(model_dir, tmp_path, recipe, calib=None, **kw):
    mem = run_local(_spec(model_dir, tmp_path / "mem", recipe, "off", calib, **kw))
    streamed = run_local(_spec(model_dir, tmp_path / "stream", recipe, "on", calib, **kw))
    assert "streamed" not in mem.metrics and streamed.metrics["streamed"] is True
    return mem, streamed


@pytest.mark.parametrize("recipe", [RTN, GPTQ, GPTQ_ASYM], ids=["rtn", "gptq", "gptq-asym-mixed"])
def test_streamed_artifact_is_byte_identical(model_dir, calib_file, tmp_path, recipe):
    mem, streamed = _both(model_dir, tmp_path, recipe, calib_file)
    a, b = _digests(tmp_path / "mem"), _digests(tmp_path / "stream")
    assert a == b and "model.safetensors" in a
    layers = [json.loads((tmp_path / d / "report.json").read_text())["layers"] for d in ("mem", "stream")]
    assert layers[0] == layers[1]
    assert mem.metrics["bits_per_weight"] == streamed.metrics["bits_per_weight"]
    assert mem.metrics["bytes_after"] == streamed.metrics["bytes_after"]
    manifest = json.loads((tmp_path / "stream" / "presso.json").read_text())
    assert manifest["forms"] == ["dense", "pack-quantized"] and "transformers" in manifest["loaders"]


def test_streamed_shards_and_index_match_in_memory(untied_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(artifact, "SHARD_BYTES", 60_000)  # several output shards from a tiny model
    _both(untied_dir, tmp_path, RTN)
    a, b = _digests(tmp_path / "mem"), _digests(tmp_path / "stream")
    assert a == b
    assert "model.safetensors.index.json" in a and sum(n.startswith("model-0") for n in a) >= 3
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    la = AutoModelForCausalLM.from_pretrained(tmp_path / "mem")(ids).logits
    lb = AutoModelForCausalLM.from_pretrained(tmp_path / "stream")(ids).logits
    assert torch.equal(la, lb) and la.isfinite().all()


def test_dense_output_streams_too(model_dir, calib_file, tmp_path):
    _both(model_dir, tmp_path, GPTQ, calib_file, output={"format": "dense"})
    assert _digests(tmp_path / "mem") == _digests(tmp_path / "stream")


def test_at_most_one_block_materialized(model_dir, calib_file, tmp_path, monkeypatch):
    from presso.compression.io.streamwrite import StreamedArtifact

    seen = []
    load = StreamedArtifact.load

    def spy(self, i, block):
        load(self, i, block)
        blocks = self.layout.blocks
        seen.append(sum(any(p.device.type != "meta" for p in b.parameters()) for b in blocks))

    monkeypatch.setattr(StreamedArtifact, "load", spy)
    run_local(_spec(model_dir, tmp_path / "o", GPTQ, "on", calib_file))
    assert seen == [1, 1, 1]


def test_unstreamable_job_runs_in_memory_and_says_why(model_dir, tmp_path, caplog):
    spec = LocalJobSpec(model_uri=str(model_dir), out_dir=tmp_path / "o", recipe=parse_recipe(RTN), streaming="on",
                        evaluation={"windows": 2, "seq_len": 32, "latency": False})
    with caplog.at_level(logging.WARNING):
        res = run_local(spec)
    assert "streamed" not in res.metrics and res.metrics["kl"] >= 0
    assert any("running in memory" in r.message and "evaluation" in r.message for r in caplog.records)


def test_auto_streams_over_the_host_budget(model_dir, calib_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PRESSO_STREAM_HOST_BYTES", "1000")
    res = run_local(_spec(model_dir, tmp_path / "o", GPTQ, "auto", calib_file))
    assert res.metrics["streamed"] is True
    monkeypatch.setenv("PRESSO_STREAM_HOST_BYTES", str(1 << 40))
    res = run_local(_spec(model_dir, tmp_path / "o2", GPTQ, "auto", calib_file))
    assert "streamed" not in res.metrics


def test_failed_stream_publishes_nothing_and_rerun_resumes(model_dir, calib_file, tmp_path, monkeypatch):
    from presso.compression.io.streamwrite import StreamedArtifact

    done, loaded = StreamedArtifact.done, []

    def fail_at_block_2(self, i, block, *rest):
        if i == 2:
            raise RuntimeError("killed at block 2")
        done(self, i, block, *rest)

    monkeypatch.setattr(StreamedArtifact, "done", fail_at_block_2)
    with pytest.raises(RuntimeError):
        run_local(_spec(model_dir, tmp_path / "o", GPTQ, "on", calib_file))
    assert [p.name for p in (tmp_path / "o").iterdir()] == [".presso-resume"]  # no artifact file published
    state = json.loads((tmp_path / "o" / ".presso-resume" / "state.json").read_text())
    assert len(state["blocks"]) == 2
    monkeypatch.setattr(StreamedArtifact, "done", done)
    load = StreamedArtifact.load
    monkeypatch.setattr(StreamedArtifact, "load", lambda self, i, b: (loaded.append(i), load(self, i, b)))
    run_local(_spec(model_dir, tmp_path / "o", GPTQ, "on", calib_file))
    assert loaded == [2]  # blocks 0 and 1 came from the checkpoint
    assert not (tmp_path / "o" / ".presso-resume").exists()
    run_local(_spec(model_dir, tmp_path / "ref", GPTQ, "on", calib_file))
    assert _digests(tmp_path / "o") == _digests(tmp_path / "ref")
    layers = [json.loads((tmp_path / d / "report.json").read_text())["layers"] for d in ("o", "ref")]
    assert layers[0] == layers[1]


def test_checkpoint_of_another_job_is_discarded(model_dir, calib_file, tmp_path, monkeypatch):
    from presso.compression.io.streamwrite import StreamedArtifact

    done = StreamedArtifact.done

    def fail_at_block_1(self, i, block, *rest):
        if i == 1:
            raise RuntimeError("killed at block 1")
        done(self, i, block, *rest)

    monkeypatch.setattr(StreamedArtifact, "done", fail_at_block_1)
    with pytest.raises(RuntimeError):
        run_local(_spec(model_dir, tmp_path / "o", GPTQ, "on", calib_file))
    monkeypatch.setattr(StreamedArtifact, "done", done)
    run_local(_spec(model_dir, tmp_path / "o", RTN, "on"))  # another recipe: starts over
    run_local(_spec(model_dir, tmp_path / "ref", RTN, "on"))
    assert _digests(tmp_path / "o") == _digests(tmp_path / "ref")
