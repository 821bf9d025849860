"""Presso: compression as a service for neural-network models.

Everything Presso installs lives under this one import name: ``presso.app`` (the FastAPI tier, never
imports torch), ``presso.workers`` (Celery glue), ``presso.compression`` (the engine library),
``presso.kernels`` (GPU kernels with pure-torch references) and the user-facing parts here: the
``presso`` command, ``presso.client`` and ``presso.load(dir)``.

In the source tree those four subpackages sit at the repository root (``app/``, ``workers/``,
``compression/``, ``kernels/``) with no ``__init__.py`` of their own, so a checkout on ``sys.path``
never shadows a PyPI package of the same name (transformers imports the PyPI ``kernels``). They
become ``presso.*`` through the lines below; a built wheel carries them physically under
``presso/`` (setup.py maps them), where the lines below do nothing. See docs/architecture.md.
"""

from pathlib import Path as _Path

_here = _Path(__file__).resolve().parent
_root = _here.parent
if not (_here / "compression").is_dir() and (_root / "compression" / "registry.py").is_file():
    __path__.append(str(_root))  # source tree: presso.app -> <root>/app, ...

# Both are cheap to import (torch and transformers load on the first call of ``load``).
from presso.client import PressoClient, PressoError  # noqa: E402
from presso.load import load  # noqa: E402

__all__ = ["PressoClient", "PressoError", "load"]
