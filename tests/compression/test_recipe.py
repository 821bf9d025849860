import pytest
from pydantic import ValidationError

from presso.compression.configs.base import matches, selected
from presso.compression.recipe import methods_catalog, parse_recipe

ALL = {"rtn", "gptq", "awq", "hqq", "magnitude", "wanda", "sparsegpt", "prune_structured", "svd", "svd_llm",
       "eora", "lossless"}


def test_catalog_lists_every_method_with_schema():
    cat = {m["method"]: m for m in methods_catalog()}
    assert set(cat) == ALL
    assert cat["gptq"]["needs_calibration"] and not cat["rtn"]["needs_calibration"]
    assert "bits" in cat["gptq"]["schema"]["properties"]
    assert cat["gptq"]["schema"]["additionalProperties"] is False


@pytest.mark.parametrize(
    "steps, where",
    [
        ([{"method": "nope"}], "steps.0"),
        ([{"method": "rtn", "bitz": 4}], "bitz"),
        ([{"method": "rtn", "bits": 9}], "bits"),
        ([{"method": "rtn", "bits": 1}], "bits"),
        ([{"method": "rtn", "group_size": 4}], "group_size"),
        ([{"method": "wanda", "sparsity": 1.0}], "sparsity"),
        ([{"method": "wanda", "pattern": "4:2"}], "pattern"),
        ([{"method": "eora", "rank": 8}], "eora"),
        ([{"method": "lossless"}, {"method": "rtn"}], "lossless"),
        ([], "steps"),
    ],
)
def test_bad_recipes_name_the_field(steps, where):
    with pytest.raises(ValidationError) as exc:
        parse_recipe({"steps": steps})
    assert where in str(exc.value)


def test_chain_and_overrides():
    r = parse_recipe({"steps": [
        {"method": "sparsegpt", "pattern": "2:4"},
        {"method": "gptq", "bits": 4,
         "overrides": [{"pattern": "down_proj", "bits": 8}, {"pattern": "re:\\.0\\.", "skip": True}]},
        {"method": "eora", "rank": 32},
        {"method": "lossless"},
    ]})
    gptq = r.steps[1]
    assert gptq.scheme_for("model.layers.3.mlp.down_proj").bits == 8
    assert gptq.scheme_for("model.layers.3.mlp.up_proj").bits == 4
    assert gptq.scheme_for("model.layers.0.mlp.up_proj") is None
    assert r.steps[0].nm == (2, 4) and r.steps[0].effective_sparsity == 0.5
    assert r.needs_calibration


def test_patterns():
    assert matches("model.layers.0.mlp.down_proj", "down_proj")
    assert matches("model.layers.0.mlp.down_proj", "model.layers.0.*")
    assert matches("model.layers.10.mlp.down_proj", "re:layers\\.1\\d\\.")
    assert not matches("model.layers.1.mlp.down_proj", "re:layers\\.1\\d\\.")
    assert not selected("lm_head", ["*"], ["lm_head"])
