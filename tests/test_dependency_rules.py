"""The layering rules of docs/architecture: checked in fresh interpreters."""

import subprocess
import sys

import pytest


def _loaded_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("stmt", ["import presso.compression.recipe", "import presso.compression.spec",
                                  "import presso.codec.files", "import presso.app.main"])
def test_torch_free_modules(stmt):
    assert "torch" not in _loaded_after(stmt)


def test_compression_imports_no_service_stack():
    mods = _loaded_after(
        "import presso.compression.job, presso.compression.registry; presso.compression.registry._discover()")
    assert "torch" in mods
    for forbidden in ("presso.app", "presso.workers", "celery", "sqlalchemy", "boto3", "fastapi"):
        assert forbidden not in mods, forbidden


def test_import_contracts(tmp_path):
    """The contracts in .importlinter (import-linter on the staged installed layout; static, so imports
    inside functions count too)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("stage_layout", root / "tools" / "stage_layout.py")
    assert spec is not None and spec.loader is not None
    stage_layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage_layout)
    res = stage_layout.lint_imports(stage_layout.stage(tmp_path / "layout"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout, res.stdout
