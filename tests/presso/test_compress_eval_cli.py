"""`presso compress` with issue 23's evaluation flags: --task files, --gate-top1, --gate-flip-rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presso.cli import main
from tests.compression.test_eval_measures import write_task
from tests.svc_helpers import write_tiny_llama

RTN2 = json.dumps({"steps": [{"method": "rtn", "bits": 2, "group_size": 32}]})
SMALL = ["--samples", "4", "--seq-len", "32", "--windows", "2", "--no-latency", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compress_reports_flip_rate_and_gates_on_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_tiny_llama(tmp_path / "model")
    task = write_task(tmp_path / "mc.jsonl", n=8)
    rc = main(["compress", str(model), "--recipe", RTN2, "--task", str(task), "--gate-flip-rate", "1.0",
               "--out", str(tmp_path / "a"), *SMALL])
    out = capsys.readouterr().out
    assert rc == 0, out
    metrics = json.loads(out[: out.rindex("artifact:")])
    assert metrics["tasks"]["task0"]["questions"] == 8 and 0.0 <= metrics["flip_rate"] <= 1.0
    assert 0.0 <= metrics["top1_agreement"] < 1.0  # 2 bits changes some next-token choices
    rc = main(["compress", str(model), "--recipe", RTN2, "--gate-top1", "1.0", "--out", str(tmp_path / "b"),
               *SMALL])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert rc == 2 and err.startswith("error: accuracy_gate: ") and "top-1 agreement" in err, err
    rc = main(["compress", str(model), "--recipe", RTN2, "--gate-flip-rate", "0.1", "--out", str(tmp_path / "c"),
               *SMALL])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "need evaluation.tasks" in err, err
