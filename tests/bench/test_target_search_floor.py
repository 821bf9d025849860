"""bench/target_search.py's floor row (issue 23, `max_ppl_increase_pct` alone vs the uniform GPTQ grid), run on a
tiny model: the plumbing the GPU run relies on, and the comparison it reports."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from tests.svc_helpers import write_tiny_llama

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_target_search", REPO / "bench" / "target_search.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_floor_row_compares_the_smallest_artifacts(tmp_path: Path) -> None:
    from presso.compression.eval.perplexity import perplexity
    from presso.compression.io.loading import load_model

    ts = _bench()
    source = write_tiny_llama(tmp_path / "model")
    lm = load_model(source)
    g = torch.Generator().manual_seed(5)
    calib, select, evals = (torch.randint(0, 200, (n, 32), generator=g) for n in (8, 2, 3))
    dense = perplexity(lm.model, evals, torch.device("cpu"))
    args = argparse.Namespace(generations=1, offspring=2, fitness_samples=2, candidates=3, sensitivity_scale="block",
                              sensitivity_rounding="fast")
    space = {"methods": ["gptq"], "bits": [2, 4, 8], "group_sizes": [32]}
    f = ts.floor_row(lm, 50.0, space, calib, select, evals, source, args, dense, [(2, 32), (4, 32), (8, 32)])
    assert [u["recipe"]["bits"] for u in f["uniform"]] == [2, 4, 8]
    meeting = [u for u in f["uniform"] if u["ppl_increase_pct"] <= 50.0]
    assert f["smallest_uniform"] == (min(meeting, key=lambda u: u["bytes"]) if meeting else None)
    s = f["searched"]
    assert s["bytes"] > 0 and s["target"]["max_ppl_increase_pct"] == 50.0 and "max_bytes" not in s["target"]
    assert s["selection_quality"]["ppl_increase_pct"] <= 50.0  # the floor, met where the search judged it
    if f["smallest_uniform"] is not None:
        assert f["bytes_vs_smallest_uniform"] == pytest.approx(s["bytes"] / f["smallest_uniform"]["bytes"])
    md = "\n".join(ts._md_floor(f))
    assert "max_ppl_increase_pct: 50" in md and "**searched**" in md
