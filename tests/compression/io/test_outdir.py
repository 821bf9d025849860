"""compression.io.outdir: Presso never deletes what it did not write (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from presso.compression.io.outdir import OutputDirRefused, check_out_dir, publish, staged_output


def _artifact(out: Path, files: dict[str, bytes]) -> None:
    """A previous artifact as run_local writes it: the files, and presso.json listing them."""
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    table = [{"path": rel, "size": len(data), "sha256": "0" * 64} for rel, data in files.items()]
    (out / "presso.json").write_text(json.dumps({"files": table}))


def _write(out: Path, files: dict[str, bytes], *, overwrite: bool = False) -> list[str]:
    with staged_output(out, overwrite=overwrite) as stage:
        for rel, data in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(data)
        return publish(stage, out, overwrite=overwrite)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_new_and_empty_directories_are_used(tmp_path: Path) -> None:
    assert _write(tmp_path / "new" / "out", {"a.safetensors": b"1", "sub/b.json": b"2"}) == [
        "a.safetensors", "sub/b.json"]
    assert _tree(tmp_path / "new" / "out") == {"a.safetensors": b"1", "sub/b.json": b"2"}
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty", {"x": b"x"})
    assert _tree(tmp_path / "empty") == {"x": b"x"}


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_with_other_files_is_refused_and_untouched(tmp_path: Path, overwrite: bool) -> None:
    """`--out .` in a project: refused, whatever the flags; not one file goes."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("print(1)")
    (tmp_path / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(OutputDirRefused) as info:
        _write(tmp_path, {"model.safetensors": b"new"}, overwrite=overwrite)
    assert info.value.code == "output_dir_refused" and "holds no Presso artifact" in info.value.message
    assert _tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "src"]


def test_a_previous_artifact_needs_overwrite(tmp_path: Path) -> None:
    _artifact(tmp_path, {"model.safetensors": b"old"})
    with pytest.raises(OutputDirRefused) as info:
        check_out_dir(tmp_path)
    assert "--overwrite" in info.value.message
    assert (tmp_path / "model.safetensors").read_bytes() == b"old"


def test_overwrite_replaces_only_the_previous_artifacts_files(tmp_path: Path) -> None:
    _artifact(tmp_path, {"model.safetensors": b"old", "report.json": b"{}", "adapter/adapter_model.safetensors": b"a",
                         "model.safetensors.pzst": b"p"})
    (tmp_path / "model.safetensors").write_bytes(b"decoded")  # what `presso download` decoded from the .pzst
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "adapter" / "README.md").write_text("mine too")
    written = _write(tmp_path, {"model.safetensors": b"new", "config.json": b"{}", "presso.json": b"{\"files\": []}"},
                     overwrite=True)
    assert sorted(written) == ["config.json", "model.safetensors", "presso.json"]
    assert _tree(tmp_path) == {
        "adapter/README.md": b"mine too", "config.json": b"{}", "model.safetensors": b"new", "notes.txt": b"mine",
        "presso.json": b"{\"files\": []}",
    }
    assert not any(p.name.startswith(".presso-staging-") for p in tmp_path.iterdir())


def test_a_new_file_over_a_file_presso_did_not_write_is_refused_before_any_removal(tmp_path: Path) -> None:
    _artifact(tmp_path, {"model.safetensors": b"old"})
    (tmp_path / "tokenizer.json").write_text("the user's")
    before = _tree(tmp_path)
    with pytest.raises(OutputDirRefused) as info:
        _write(tmp_path, {"model.safetensors": b"new", "tokenizer.json": b"ours"}, overwrite=True)
    assert "tokenizer.json exists and is not part of the previous Presso artifact" in info.value.message
    assert _tree(tmp_path) == before


def test_listed_paths_are_never_followed_out_of_the_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.safetensors").write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter").symlink_to(outside)
    (out / "presso.json").write_text(json.dumps({"files": [{"path": "adapter/precious.safetensors"}]}))
    with pytest.raises(OutputDirRefused):
        _write(out, {"model.safetensors": b"new"}, overwrite=True)
    (out / "presso.json").write_text(json.dumps({"files": [{"path": "../outside/precious.safetensors"}]}))
    with pytest.raises(OutputDirRefused):
        _write(out, {"model.safetensors": b"new"}, overwrite=True)
    assert (outside / "precious.safetensors").read_bytes() == b"keep"


def test_a_failed_write_leaves_the_directory_as_it_was(tmp_path: Path) -> None:
    _artifact(tmp_path / "out", {"model.safetensors": b"old"})
    before = _tree(tmp_path / "out")
    with pytest.raises(RuntimeError), staged_output(tmp_path / "out", overwrite=True) as stage:
        (stage / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert _tree(tmp_path / "out") == before
    with pytest.raises(RuntimeError), staged_output(tmp_path / "fresh") as stage:
        raise RuntimeError("failed before writing")
    assert not (tmp_path / "fresh").exists()  # created by the run, removed with it


def test_staging_left_by_a_killed_run_does_not_count(tmp_path: Path) -> None:
    (tmp_path / ".presso-staging-abc123").mkdir()
    (tmp_path / ".presso-staging-abc123" / "model.safetensors").write_bytes(b"half")
    assert check_out_dir(tmp_path) == set()
    _write(tmp_path, {"model.safetensors": b"new"})
    assert _tree(tmp_path) == {"model.safetensors": b"new"}
