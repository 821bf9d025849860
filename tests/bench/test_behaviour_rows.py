"""bench/behaviour_rows.py on a tiny model (issue 23): the cloze task it writes is a valid product task file whose
gold choice is the text's own continuation, and a row reports every behavioural measure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.svc_helpers import write_tiny_llama

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_behaviour_rows", REPO / "bench" / "behaviour_rows.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cloze_task_and_a_row(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from presso.compression.eval.tasks import load_task
    from presso.compression.io.loading import load_model

    b = _bench()
    src = write_tiny_llama(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(src)
    text = " ".join(f"word{i % 97} is followed by token{(i * 7) % 89}." for i in range(400))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    path = b.make_cloze(ids, tok, tmp_path / "cloze.jsonl", questions=12, context_tokens=24, choice_tokens=6)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 12
    for r in rows:
        assert len(r["choices"]) == 4 and (r["context"] + r["choices"][r["gold"]]) in text  # gold = the continuation
        assert all(c.startswith(" ") for c in r["choices"])  # joined to the context as is (no added delimiter)
    qs = load_task(path, tok, 12, "cloze")
    lm = load_model(src)
    calib, evals = torch.randint(0, 200, (4, 32)), torch.randint(0, 200, (2, 32))
    out = b.measure_row("rtn_w4_g64", [{"method": "rtn", "bits": 4, "group_size": 32}], lm.model, calib, evals,
                        [("cloze", qs)])
    assert all(out[k] is not None for k in ("ppl_after", "kl", "top1_agreement", "generation_agreement",
                                            "flip_rate")), out
    assert out["tasks"]["cloze"]["questions"] == 12
    same = b.measure_row("dense", None, lm.model, calib, evals, [("cloze", qs)])
    assert same["flip_rate"] == 0.0 and same["top1_agreement"] == 1.0 and same["generation_exact"] == 1.0
