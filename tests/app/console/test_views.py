"""The console's pure parts: report.json back into steps, the SVG charts, the submit form from the schemas."""

from __future__ import annotations

import re

from presso.app.console import charts, forms, views
from presso.compression.recipe import methods_catalog

SVD_RTN = {  # the shape `presso compress` writes for svd then rtn (layer names change: q_proj -> q_proj.A/.B)
    "layers": [
        {"name": "model.layers.0.self_attn.q_proj", "rank": 22, "params_before": 4096, "params_after": 2816,
         "rel_error": 0.49},
        {"name": "model.layers.0.mlp.down_proj", "rank": 40, "params_before": 8192, "params_after": 5000,
         "rel_error": 0.41},
        {"name": "model.layers.0.self_attn.q_proj.A", "bits": 4, "group_size": -1, "symmetric": True,
         "rel_error": 0.10},
        {"name": "model.layers.0.self_attn.q_proj.B", "bits": 4, "group_size": -1, "symmetric": True,
         "rel_error": 0.09},
    ],
    "steps": [{"method": "svd"}, {"method": "rtn"}],
}


def test_report_is_split_back_into_its_steps() -> None:
    view = views.report_view(SVD_RTN, {})
    assert [g["label"] for g in view["groups"]] == ["step 1: svd", "step 2: rtn"]
    assert [c["key"] for c in view["groups"][0]["charts"]] == ["rank", "rel_error"]
    assert [c["key"] for c in view["groups"][1]["charts"]] == ["bits", "rel_error"]
    assert view["groups"][1]["charts"][0]["svg"].count("<rect class=\"bar\"") == 2
    assert "params_before" in view["columns"] and len(view["layers"]) == 4


def test_a_report_that_does_not_split_cleanly_is_shown_whole() -> None:
    view = views.report_view({**SVD_RTN, "steps": [{"method": "svd"}]}, {})
    assert [g["label"] for g in view["groups"]] == ["all steps"]
    assert views.report_view({"layers": []}, {})["groups"] == []


def test_charts_escape_names_and_skip_missing_values() -> None:
    svg = charts.columns([("<script>", 1.0), ("b", None), ("c", float("nan")), ("d", 2.0)], title="t & u")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "t &amp; u" in svg
    assert svg.count('<rect class="bar"') == 2
    empty = charts.scatter([], title="nothing", x_label="x", y_label="y")
    assert "nothing to plot" in empty
    points = [charts.Point(x=1000.0, y=5.0, label="a", tooltip="a", href="/console/jobs/a"),
              charts.Point(x=1000.0, y=5.0, label="b", tooltip="b", href="/console/jobs/b")]
    svg = charts.scatter(points, title="t", x_label="x", y_label="y")
    assert svg.count("<circle") == 2 and svg.count("a; b") == 1  # one label for points on one spot


def test_ticks_cover_the_range() -> None:
    for lo, hi in ((172_000, 450_000), (211.4, 213.5), (0, 1), (0.07, 0.09), (5, 5), (-3, 2)):
        ticks = charts.nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and len(ticks) <= 12, (lo, hi, ticks)


def test_form_fields_and_body_from_the_methods_schemas() -> None:
    method_forms = forms.method_forms(methods_catalog())
    gptq = next(f for f in method_forms if f.method == "gptq")
    kinds = {f.name: f.kind for f in gptq.fields}
    assert kinds["bits"] == "int" and kinds["symmetric"] == "bool" and kinds["observer"] == "enum"
    assert kinds["targets"] == "list" and kinds["overrides"] == "json"
    built = forms.build_body({
        "model_uri": " s3://models/m ", "s0.method": "gptq", "s0.gptq.bits": "3", "s0.gptq.damp_percent": "0.05",
        "s0.gptq.overrides": '[{"pattern": "down_proj", "bits": 8}]', "s0.gptq.act_order": "true",
        "s0.rtn.bits": "8",  # another method's input: ignored
        "s2.method": "lossless", "evaluation.enabled": "false", "output.format": "dense",
    }, method_forms)
    assert built.errors == [] and built.body == {
        "model_uri": "s3://models/m", "output": {"format": "dense"}, "evaluation": {"enabled": False},
        "recipe": {"steps": [{"method": "gptq", "bits": 3, "damp_percent": 0.05, "act_order": True,
                              "overrides": [{"pattern": "down_proj", "bits": 8}]}, {"method": "lossless"}]},
    }
    assert forms.input_for("recipe.steps.1.chunk_bytes", built.inputs) == "s2.lossless.chunk_bytes"
    body, errors = forms.validate({**built.body, "recipe": {"steps": [{"method": "gptq", "bits": "x"}]}})
    assert body is None and errors[0]["field"] == "recipe.steps.0.bits"
    assert re.search("valid integer", errors[0]["message"])
