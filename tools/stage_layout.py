"""Stage the installed layout of Presso for tools that walk packages on disk (mypy, import-linter).

    python tools/stage_layout.py [DEST]          # default build/layout; prints DEST
    python tools/stage_layout.py --lint-imports  # stage, then check the contracts in .importlinter

Copies ``presso/`` and the root folders it maps (setup.py) to ``DEST/presso/<name>``, as the wheel has
them, and adds an empty ``__init__.py`` where a mapped root folder has none (they are namespace
packages in the wheel; import-linter's graph builder only walks regular packages). Sources only:
no ``__pycache__``, no built libraries.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("app", "workers", "compression", "kernels", "codec", "fetch", "migrations")
IGNORE = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")


def stage(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ROOT / "presso", dest / "presso", ignore=IGNORE)
    for name in MAPPED:
        shutil.copytree(ROOT / name, dest / "presso" / name, ignore=IGNORE)
        (dest / "presso" / name / "__init__.py").touch()
    return dest


def lint_imports(dest: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the staged tree in an interpreter started without ``site`` processing, so the
    editable install's finder (a ``.pth`` hook that maps ``presso`` to the checkout) plays no part."""
    paths = [str(dest), *site.getsitepackages()]
    code = ("import sys; sys.path[:0] = " + repr(paths) + "; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / '.importlinter')!r}, no_cache=True, no_logo=True))")
    # cwd: import-linter puts the working directory first on sys.path, so it must be the staged tree
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=dest)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    staged = stage(Path(args[0]) if args else ROOT / "build" / "layout")
    if "--lint-imports" in sys.argv:
        res = lint_imports(staged)
        print(res.stdout + res.stderr)
        sys.exit(res.returncode)
    print(staged)
