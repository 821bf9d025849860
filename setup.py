"""Packaging: one import name, ``presso``, and the codec's C coder built at install.

The design card keeps ``app/``, ``workers/``, ``compression/`` and ``kernels/`` at the repository
root. They carry no top-level ``__init__.py`` (so a checkout on ``sys.path`` never shadows a PyPI
package such as ``kernels``) and are installed as ``presso.app``, ``presso.workers``,
``presso.compression`` and ``presso.kernels`` through ``package_dir``. Metadata and dependencies
live in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
MAPPED = ("app", "workers", "compression", "kernels", "codec", "fetch", "migrations")


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = ["presso"], {"presso": "presso"}
    for sub in sorted((HERE / "presso").rglob("__init__.py")):
        name = ".".join(sub.parent.relative_to(HERE).parts)
        if name != "presso":
            packages.append(name)
    for top in MAPPED:
        for folder in [HERE / top, *sorted(p for p in (HERE / top).rglob("*") if p.is_dir())]:
            if "__pycache__" in folder.parts or not any(folder.glob("*.py")) and folder != HERE / top:
                continue
            rel = folder.relative_to(HERE)
            name = "presso." + ".".join(rel.parts)
            packages.append(name)
            package_dir[name] = rel.as_posix()
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"presso.kernels": ["**/*.cu", "**/*.cuh", "**/*.h"], "presso.codec": ["_native.c"],
                  "presso.migrations": ["script.py.mako"],
                  "presso.app.console": ["templates/*.html", "static/*"],
                  "presso.app.api.apidocs": ["static/*.md", "static/swagger-ui/*", "static/redoc/*"]},
    ext_modules=[
        # A plain C library (no Python API), loaded with ctypes so every call drops the GIL.
        Extension(
            "presso.codec._native",
            sources=["codec/_native.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=False,
        )
    ],
)
