"""Dedup keys read evaluation.tasks files by content (issue 23), like the other data files."""

from __future__ import annotations

from pathlib import Path

from presso.workers.dedup import dedup_key

RTN = {"steps": [{"method": "rtn", "bits": 4}]}


def test_task_files_enter_the_key_by_content_not_uri(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"abc")
    task = tmp_path / "task0"
    task.mkdir()
    (task / "mc.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "gold": 0}\n')
    req = {"model_uri": "s3://a/m", "recipe": RTN, "evaluation": {"tasks": [{"uri": "s3://a/t.jsonl"}]}}
    key = dedup_key(req, model, None, None, [task])
    assert key == dedup_key({**req, "evaluation": {"tasks": [{"uri": "https://x/t.jsonl"}]}}, model, None, None,
                            [task])
    (task / "mc.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "gold": 1}\n')
    assert key != dedup_key(req, model, None, None, [task])
    plain = {"model_uri": "s3://a/m", "recipe": RTN}
    assert dedup_key(plain, model, None, None) == dedup_key(plain, model, None, None, [])  # older keys unchanged
