"""Local output directories: Presso never deletes what it did not create. Torch-free.

``presso compress --out DIR``, ``run_local`` and ``presso download`` write artifacts into a directory the
user names. The rule for that directory:

- missing or empty: it is used (and created when missing);
- holding a previous Presso artifact (a ``presso.json``) and ``overwrite`` given: only the files that
  artifact lists (its ``presso.json`` ``files``, the ``*.safetensors`` a ``presso download`` decoded from
  listed ``*.safetensors.pzst``, and ``presso.json`` itself) are replaced; everything else stays;
- anything else (other files, or a previous artifact without ``overwrite``): refused, nothing touched.

The new files are written into a staging directory inside ``DIR`` (``.presso-staging-*``) and moved into
place only at the end, so a run that fails leaves ``DIR`` as it was. A new file that would replace a file
the previous artifact does not list is refused before anything is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from presso.compression.errors import CompressionError

MANIFEST = "presso.json"
STAGING_PREFIX = ".presso-staging-"
RESUME_DIR = ".presso-resume"  # compression.io.resume


class OutputDirRefused(CompressionError):
    """The output directory holds something Presso did not write (or a previous artifact, without overwrite)."""

    code = "output_dir_refused"


def _safe_rel(name: object) -> str | None:
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return None
    if any(part in ("", ".", "..") for part in name.split("/")):
        return None
    return name


def _entries(out_dir: Path) -> list[Path]:
    """The directory's entries, less staging directories a killed run left (Presso's own, removed later) and
    a streamed job's resume checkpoint (compression.io.resume, removed when its artifact is published)."""
    return [p for p in out_dir.iterdir()
            if not ((p.name.startswith(STAGING_PREFIX) or p.name == RESUME_DIR) and p.is_dir())]


def previous_artifact_files(out_dir: Path) -> set[str]:
    """Relative paths the artifact in ``out_dir`` (its ``presso.json``) consists of; raises when unreadable."""
    manifest = out_dir / MANIFEST
    try:
        data = json.loads(manifest.read_text())
        listed = [entry["path"] for entry in data["files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputDirRefused(
            f"{out_dir} has a {MANIFEST} that does not list its files ({exc}); not overwriting it"
        ) from exc
    files = {MANIFEST}
    for name in listed:
        rel = _safe_rel(name)
        if rel is None:
            raise OutputDirRefused(f"{manifest} lists an unsafe path {name!r}; not overwriting it")
        files.add(rel)
        if rel.endswith(".pzst"):  # `presso download` decodes it next to where it was
            files.add(rel[: -len(".pzst")])
    return files


def check_out_dir(out_dir: Path, *, overwrite: bool = False) -> set[str]:
    """Raise OutputDirRefused unless Presso may write into ``out_dir``; return the files it may replace there."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        if out_dir.is_symlink():
            raise OutputDirRefused(f"{out_dir} is a dangling symlink; choose another output directory")
        return set()
    if not out_dir.is_dir():
        raise OutputDirRefused(f"{out_dir} exists and is not a directory")
    entries = _entries(out_dir)
    if not entries:
        return set()
    if not (out_dir / MANIFEST).is_file():
        shown = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputDirRefused(
            f"{out_dir} is not empty ({shown}) and holds no Presso artifact ({MANIFEST}); Presso only writes "
            "into a new or empty directory, or over its own previous artifact with --overwrite"
        )
    if not overwrite:
        raise OutputDirRefused(
            f"{out_dir} holds a previous Presso artifact; pass --overwrite to replace its files "
            "(nothing else in the directory is touched)"
        )
    return previous_artifact_files(out_dir)


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def publish(staging: Path, out_dir: Path, *, overwrite: bool = False) -> list[str]:
    """Move every file of ``staging`` into ``out_dir`` under the rule above; return their relative paths.

    The previous artifact's files are removed only once it is known that every new file may be placed.
    """
    out_dir = Path(out_dir)
    previous = check_out_dir(out_dir, overwrite=overwrite)
    new = _files_under(staging)
    for rel in sorted(previous | set(new)):  # never through a symlinked or non-directory parent
        parent = out_dir
        for part in Path(rel).parts[:-1]:
            parent = parent / part
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                raise OutputDirRefused(f"{parent} is not a directory Presso wrote; not writing or removing {rel}")
    for rel in new:
        target = out_dir / rel
        if (target.exists() or target.is_symlink()) and rel not in previous:
            raise OutputDirRefused(f"{target} exists and is not part of the previous Presso artifact; not replacing it")
    dirs: set[Path] = set()
    for rel in sorted(previous):
        path = out_dir / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
        for parent in Path(rel).parents:
            if parent != Path("."):
                dirs.add(out_dir / parent)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):  # directories the old files emptied
        try:
            d.rmdir()
        except OSError:
            pass  # not empty: something else lives there
    for rel in new:
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, target)
    return new


@contextmanager
def staged_output(out_dir: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A fresh staging directory inside ``out_dir`` (created when missing) to write an artifact into.

    Checks ``out_dir`` first (so a refusal costs nothing). On error the staging directory is removed, and
    ``out_dir`` too when this call created it and it is empty again. The caller calls :func:`publish`.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite=overwrite)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(STAGING_PREFIX + "*"):  # left by a run that was killed; Presso's own
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            try:
                out_dir.rmdir()  # only when empty: a published artifact stays
            except OSError:
                pass
