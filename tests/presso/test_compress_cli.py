"""`presso compress`: bad input fails first and in one line; --out never deletes what Presso did not write
(issue 18)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from presso.cli import main

RTN = json.dumps({"steps": [{"method": "rtn", "bits": 8, "group_size": 32}]})


@pytest.fixture
def no_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before the model is copied."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was fetched before the input was checked")

    monkeypatch.setattr("presso.commands.local._fetch_inputs", refuse)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ('{"steps": [{"method": "rtn", "group_size": 0}]}',
         "error: invalid recipe: recipe.steps.0.group_size: group_size must be -1 (per channel) or between 8"),
        ('{"steps": [{"method": "gptq", "bits": 17}]}', "error: invalid recipe: recipe.steps.0.bits: "),
        ('{"steps": [{"method": "nope"}]}', "error: invalid recipe: recipe.steps.0"),
        (json.dumps({"steps": [{"method": "rtn"}] * 5000}),
         "error: invalid recipe: recipe.steps: a recipe has at most 16"),
        ('{"steps": [', "error: --recipe is not valid JSON"),
        ("[1, 2]", 'error: --recipe: a recipe is a JSON object like {"steps": [...]}'),
        ("no-such-recipe.json", "error: recipe file no-such-recipe.json does not exist"),
    ],
)
def test_bad_recipe_is_one_line_exit_2_before_any_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_fetch: None,
    recipe: str, expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compress", str(tmp_path / "model"), "--recipe", recipe, "--out", str(tmp_path / "out")]) == 2
    assert _one_line_error(capsys).startswith(expected)
    assert not (tmp_path / "out").exists()


def test_recipe_file_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_fetch: None) -> None:
    bad = tmp_path / "recipe.json"
    bad.write_text("steps: [rtn]\n")
    assert main(["compress", str(tmp_path), "--recipe", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert _one_line_error(capsys).startswith(f"error: recipe file {bad} is not valid JSON")


def test_out_dot_in_a_project_is_refused_and_nothing_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_llama_dir: Path,
) -> None:
    """`--out .` used to rmtree the current directory after compressing."""
    work = tmp_path / "project"
    (work / "src").mkdir(parents=True)
    (work / "src" / "main.py").write_text("print('hello')")
    monkeypatch.chdir(work)
    code = main(["compress", str(tiny_llama_dir), "--recipe", RTN, "--out", ".", "--no-eval", "--device", "cpu"])
    assert code == 2
    assert "output_dir_refused" in _one_line_error(capsys)
    assert (work / "src" / "main.py").read_text() == "print('hello')"
    assert sorted(p.name for p in work.iterdir()) == ["src"]


def test_overwrite_replaces_only_a_previous_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_llama_dir: Path
) -> None:
    out = tmp_path / "out"
    argv = ["compress", str(tiny_llama_dir), "--recipe", RTN, "--out", str(out), "--no-eval", "--device", "cpu"]
    assert main(argv) == 0
    capsys.readouterr()
    listed = {f["path"] for f in json.loads((out / "presso.json").read_text())["files"]}
    assert {"model.safetensors", "config.json", "report.json"} <= listed
    (out / "notes.txt").write_text("the user's")
    first = (out / "presso.json").read_bytes()

    assert main(argv) == 2  # a previous artifact: only with --overwrite
    assert "--overwrite" in _one_line_error(capsys)
    assert (out / "presso.json").read_bytes() == first

    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert (out / "notes.txt").read_text() == "the user's"
    assert (out / "presso.json").read_bytes() != first
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert names == listed | {"presso.json", "notes.txt"}
