"""The built wheel, installed into a clean venv outside the repository, works as a user gets it.

This is the check that would have caught the `kernels` clash (issue 17): nothing of the checkout is on
``sys.path`` there, so ``presso`` and everything under it must come from the wheel, and transformers must
find PyPI's ``kernels`` rather than ours. The clean venv borrows this venv's third-party packages
through a ``.pth`` line (installing torch and transformers again would take minutes), but not Presso:
the editable install's finder lives in a ``.pth`` file of this venv, which a path line does not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return res


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # Build from a copy of the tracked tree, so the checkout's own build/ and in-place .so play no part.
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        path = ROOT / rel
        if path.is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(path.read_bytes())
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
         cwd=tmp, env=env)
    wheels = list(dist.glob("presso-*.whl"))
    assert len(wheels) == 1, wheels

    target = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    py = target / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)
                .stdout.strip())
    (site / "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheels[0])],
         cwd=tmp, env=env)
    return target, env


def test_wheel_installs_only_the_presso_name(wheel_venv: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    target, env = wheel_venv
    records = next((target / "lib").glob("python3*/site-packages/presso-*.dist-info/RECORD")).read_text()
    paths = [line.split(",", 1)[0] for line in records.splitlines() if line]
    tops = {p.split("/", 1)[0] for p in paths if not p.startswith("../")}  # ../../../bin/presso: the script
    assert tops == {"presso", "presso-0.1.0.dist-info"}, tops
    assert any(p.endswith("bin/presso") for p in paths)
    for sub in ("app/main.py", "workers/tasks.py", "compression/registry.py", "kernels/w4a16/mma.cu",
                "codec/pzst.py", "codec/_native.c", "fetch/api.py",
                "migrations/env.py", "migrations/script.py.mako"):
        assert f"presso/{sub}" in paths, sub


def test_wheel_compresses_and_loads_packed_outside_the_repo(wheel_venv: tuple[Path, dict[str, str]],
                                                            tmp_path: Path, tiny_llama_dir: Path) -> None:
    target, env = wheel_venv
    out = tmp_path / "artifact"
    recipe = json.dumps({"steps": [{"method": "rtn", "bits": 4, "group_size": 32}]})
    _run([str(target / "bin" / "presso"), "compress", str(tiny_llama_dir), "--recipe", recipe, "--out", str(out),
          "--no-eval", "--device", "cpu"], cwd=tmp_path, env=env)
    assert (out / "presso.json").is_file()

    BORROWED = sysconfig.get_paths()["purelib"]  # noqa: N806  (the borrowed deps may sit inside the checkout)
    probe = f"""
import json, sys, torch, transformers, importlib.util
import presso
from presso.codec import native
from presso.compression.io.packed_linear import PackedLinear
kernels = importlib.util.find_spec("kernels")
packed = presso.load({str(out)!r}, packed=True)
dense = presso.load({str(out)!r})
ids = torch.arange(1, 17).unsqueeze(0)
with torch.no_grad():
    a = packed(ids).logits
    b = dense(ids).logits
print(json.dumps({{
    "presso": presso.__file__, "path": [p for p in sys.path if p.startswith({str(ROOT)!r}) and p != {BORROWED!r}],
    "codec": native.STATUS, "kernels": kernels.origin if kernels else None,
    "packed_layers": sum(isinstance(m, PackedLinear) for m in packed.modules()),
    "max_diff": float((a - b).abs().max()), "scale": float(b.abs().max()),
}}))
"""
    res = _run([str(target / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert str(target) in info["presso"], info  # the wheel's presso, not the checkout
    assert info["path"] == [], info
    assert info["codec"].startswith("native (") and str(target) in info["codec"], info  # C coder built at install
    if info["kernels"] is not None:  # transformers' PyPI `kernels` is never shadowed by Presso's
        assert "presso" not in info["kernels"], info
    assert info["packed_layers"] == 14, info  # 2 blocks x 7 projections stay packed
    assert info["max_diff"] <= 1e-3 * max(1.0, info["scale"]), info
