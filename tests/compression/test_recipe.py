import pytest
from pydantic import ValidationError

from presso.compression.configs.base import matches, selected
from presso.compression.recipe import methods_catalog, parse_recipe

ALL = {"rtn", "gptq", "awq", "hqq", "magnitude", "wanda", "sparsegpt", "prune_structured", "svd", "svd_llm",
       "eora", "lossless", "fp8", "int8", "nvfp4", "mxfp4", "smoothquant", "rotate", "expert_prune", "expert_merge"}


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


# -- caps and bounds checked without the model (issue 18) ----------------------------------------------


def test_recipe_steps_are_capped():
    from presso.compression.recipe import MAX_STEPS

    assert len(parse_recipe({"steps": [{"method": "rtn"}] * MAX_STEPS}).steps) == MAX_STEPS
    with pytest.raises(ValidationError) as exc:
        parse_recipe({"steps": [{"method": "rtn"}] * 5000})
    err = exc.value.errors()[0]
    assert err["loc"] == ("steps",) and f"at most {MAX_STEPS} steps, got 5000" in err["msg"]


def test_fallbacks_and_total_steps_are_capped(tmp_path):
    from presso.compression.recipe import MAX_FALLBACKS, MAX_TOTAL_STEPS
    from presso.compression.spec import LocalJobSpec

    r16 = parse_recipe({"steps": [{"method": "rtn"}] * 16})
    one = parse_recipe({"steps": [{"method": "rtn"}]})
    ok = LocalJobSpec(model_uri=str(tmp_path), out_dir=tmp_path, recipe=r16, fallbacks=[r16])
    assert sum(len(r.steps) for r in [ok.recipe, *ok.fallbacks]) == MAX_TOTAL_STEPS
    with pytest.raises(ValidationError) as exc:
        LocalJobSpec(model_uri=str(tmp_path), out_dir=tmp_path, recipe=one, fallbacks=[one] * (MAX_FALLBACKS + 1))
    assert exc.value.errors()[0]["loc"] == ("fallbacks",) and "at most 4 fallback" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        LocalJobSpec(model_uri=str(tmp_path), out_dir=tmp_path, recipe=r16, fallbacks=[r16, one])
    assert exc.value.errors()[0]["loc"] == ("fallbacks",) and "33 steps together; at most 32" in str(exc.value)


@pytest.mark.parametrize("value", [0, 1, 7, -2, 65537, 10**18])
@pytest.mark.parametrize(
    "step, loc",
    [
        (lambda g: {"method": "rtn", "group_size": g}, ("steps", 0, "rtn", "group_size")),
        (lambda g: {"method": "gptq", "group_size": g}, ("steps", 0, "gptq", "group_size")),
        (lambda g: {"method": "sparsegpt", "bits": 4, "group_size": g}, ("steps", 0, "sparsegpt", "group_size")),
        (lambda g: {"method": "rtn", "overrides": [{"pattern": "down_proj", "group_size": g}]},
         ("steps", 0, "rtn", "overrides", 0, "group_size")),
    ],
)
def test_group_size_out_of_range_has_one_message(step, loc, value):
    """0 used to pass as 'per channel' while 7 said '-1 or at least 8'; 10**18 passed and failed in the worker."""
    with pytest.raises(ValidationError) as exc:
        parse_recipe({"steps": [step(value)]})
    err = exc.value.errors()[0]
    assert err["loc"] == loc
    assert f"group_size must be -1 (per channel) or between 8 and 65536, got {value}" in err["msg"]


@pytest.mark.parametrize("value", [-1, 8, 128, 65536])
def test_group_size_in_range(value):
    assert parse_recipe({"steps": [{"method": "rtn", "group_size": value}]}).steps[0].group_size == value


def test_owl_with_nm_pattern_needs_no_model():
    for method in ("wanda", "sparsegpt"):
        with pytest.raises(ValidationError) as exc:
            parse_recipe({"steps": [{"method": method, "pattern": "2:4", "allocation": "owl"}]})
        assert "use one or the other" in str(exc.value)
