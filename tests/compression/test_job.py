"""run_local end to end on a tiny model: metrics, the accuracy gate, fallbacks, artifact loading."""

import json
import math

import pytest
import torch

from presso.compression.errors import AccuracyGateFailed
from presso.compression.job import run_local
from presso.compression.recipe import parse_recipe
from presso.compression.spec import LocalJobSpec


@pytest.fixture
def model_dir(tmp_path, tiny_llama):
    d = tmp_path / "model"
    tiny_llama.save_pretrained(d)
    return d


def _spec(model_dir, out, recipe, **kw):
    return LocalJobSpec(
        model_uri=str(model_dir), out_dir=out, recipe=parse_recipe(recipe),
        calibration={"samples": 4, "seq_len": 32},
        evaluation={"windows": 2, "seq_len": 32, "latency": False, **kw.pop("evaluation", {})}, **kw,
    )


def test_rtn_job_writes_loadable_artifact_with_metrics(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    stages = []
    spec = _spec(model_dir, tmp_path / "out", {"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]})
    res = run_local(spec, progress=lambda s, f: stages.append(s))
    m = res.metrics
    assert {"load", "evaluation-data", "evaluate", "write"} <= set(stages)
    assert any(s.startswith("compress:") for s in stages)
    # 4-bit codes + one fp32 scale per group; K=96 -> group 32, K=200 -> group 25 (largest divisor <= 32)
    shapes = [(96, 96), (48, 96), (48, 96), (96, 96), (200, 96), (200, 96), (96, 200)]
    bits = sum(n * k * 4 + n * (k // (32 if k == 96 else 25)) * 32 for n, k in shapes)
    assert m["bits_per_weight"] == pytest.approx(bits / sum(n * k for n, k in shapes), rel=1e-9)
    assert m["bytes_after"] < m["bytes_before"] / 2
    assert m["ppl_after"] > 0 and m["kl"] >= 0
    manifest = json.loads((spec.out_dir / "presso.json").read_text())
    assert {f["path"] for f in manifest["files"]} >= {"config.json", "model.safetensors", "report.json"}
    layers = json.loads((spec.out_dir / "report.json").read_text())["layers"]
    assert len(layers) == 14 and all(0 < lay["rel_error"] < 0.5 for lay in layers), [lay["rel_error"] for lay in layers]
    loaded = AutoModelForCausalLM.from_pretrained(spec.out_dir)
    assert loaded(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_gate_fails_one_bit_like_recipe_and_falls_back(model_dir, tmp_path):
    bad = {"steps": [{"method": "rtn", "bits": 2, "group_size": -1, "observer": "minmax"}]}
    good = {"steps": [{"method": "rtn", "bits": 8, "group_size": 32}]}
    gate = {"gate": {"max_kl": 1e-4}}
    with pytest.raises(AccuracyGateFailed) as exc:
        run_local(_spec(model_dir, tmp_path / "o1", bad, evaluation=gate))
    assert exc.value.code == "accuracy_gate"
    assert exc.value.details["attempts"][0]["quality"]["kl"] > 1e-4
    res = run_local(_spec(model_dir, tmp_path / "o2", bad, evaluation=gate, fallbacks=[parse_recipe(good),
                                                                                         parse_recipe(good)]))
    attempts = res.metrics["attempts"]
    assert [a["passed"] for a in attempts] == [False, True]  # stops at the first passing recipe
    assert res.metrics["recipe_used"]["steps"][0]["bits"] == 8


def test_identity_has_zero_kl(tiny_llama, calib_ids):
    from presso.compression.eval.perplexity import compare, perplexity

    q = compare(tiny_llama, tiny_llama, calib_ids, torch.device("cpu"))
    assert q["kl"] == pytest.approx(0.0, abs=1e-6)
    assert q["ppl_before"] == pytest.approx(q["ppl_after"])
    assert q["ppl_before"] == pytest.approx(perplexity(tiny_llama, calib_ids, torch.device("cpu")), rel=1e-5)


def test_perplexity_by_hand():
    """A model whose logits are fixed: NLL computed by hand."""
    from presso.compression.eval.perplexity import perplexity

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            b, t = input_ids.shape
            logits = torch.zeros(b, t, 4)
            logits[..., 0] = math.log(3.0)  # p(0) = 3/6, p(others) = 1/6

            class Out:
                pass

            o = Out()
            o.logits = logits
            return o

    ids = torch.tensor([[0, 0, 1, 2]])  # predicted tokens 0, 1, 2
    expected = math.exp((-math.log(0.5) - 2 * math.log(1 / 6)) / 3)
    assert perplexity(Fixed(), ids, torch.device("cpu")) == pytest.approx(expected, rel=1e-6)


def test_model_dependent_recipe_errors_fail_before_any_compute(model_dir, tmp_path):
    """An explicit group wider than a layer (K=96), in a fallback: invalid_recipe right after loading, not after
    the evaluation data, the first attempt's compression and its evaluation."""
    from presso.compression.errors import InvalidRecipe

    stages = []
    good = {"steps": [{"method": "rtn", "bits": 8, "group_size": 32}]}
    wide = {"steps": [{"method": "rtn", "bits": 4, "group_size": 128}]}
    spec = _spec(model_dir, tmp_path / "out", good, fallbacks=[parse_recipe(wide)],
                 evaluation={"gate": {"max_kl": 1e-12}})
    with pytest.raises(InvalidRecipe) as exc:
        run_local(spec, progress=lambda s, f: stages.append(s))
    assert exc.value.code == "invalid_recipe"
    assert "group_size 128 is larger than the input width 96" in exc.value.message
    assert set(stages) == {"load"}, stages
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "step, message",
    [
        ({"method": "magnitude", "pattern": "2:7"}, "multiple of M"),
        ({"method": "prune_structured", "drop_blocks": 2}, "would remove all 2 blocks"),
        ({"method": "svd", "ratio": 0.2, "targets": ["nothing_matches"]}, "match no linear layer"),
        ({"method": "rtn", "overrides": [{"pattern": "down_proj", "group_size": 256}]}, "input width 200"),
    ],
)
def test_preflight_raises_what_the_engine_would(tiny_llama, step, message):
    from presso.compression.errors import CompressionError
    from presso.compression.pipeline import preflight

    with pytest.raises(CompressionError) as exc:
        preflight(tiny_llama, parse_recipe({"steps": [{"method": "rtn", "bits": 8}, step]}))
    assert message in exc.value.message


def test_default_group_wider_than_a_layer_falls_back_per_channel(model_dir, tmp_path):
    """The default group_size 128 on K=96 layers: per channel there, 100 (a divisor of 200) on down_proj."""
    run_local(_spec(model_dir, tmp_path / "out", {"steps": [{"method": "rtn"}]}))
    layers = json.loads((tmp_path / "out" / "report.json").read_text())["layers"]
    groups = {lay["name"].rsplit(".", 1)[-1]: lay["group_size"] for lay in layers}
    assert groups["q_proj"] == -1 and groups["down_proj"] == 100
