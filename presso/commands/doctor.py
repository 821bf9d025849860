"""presso doctor / version / build-kernels: what this installation is and which native paths it uses."""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Any

import presso
from presso.commands.common import help_formatter
from presso.compression.version import presso_version


def report() -> dict[str, Any]:
    """Everything ``presso doctor`` prints. Imports torch only if it is installed (the API image has none)."""
    from presso.codec import native

    out: dict[str, Any] = {
        "presso": presso_version(),
        "python": platform.python_version(),
        "location": str(Path(presso.__file__).parent),
        "layout": "source tree" if len(presso.__path__) > 1 else "installed package",
        "codec": native.STATUS,
    }
    spec = importlib.util.find_spec("kernels")  # PyPI's `kernels` (transformers imports it): never ours
    out["pypi_kernels"] = spec.origin if spec is not None and spec.origin else None
    if importlib.util.find_spec("torch") is None:
        out["torch"] = None
        out["w4a16_tensor_core"] = "off (torch not installed)"
        return out
    import torch

    from presso.kernels.support import triton_available
    from presso.kernels.w4a16 import mma

    out["torch"] = torch.__version__
    out["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out["triton"] = triton_available()
    out["w4a16_tensor_core"] = mma.status()
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    info = report()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    if args.verbose_version:
        return cmd_doctor(argparse.Namespace(json=False))
    print(presso_version())
    return 0


def cmd_build_kernels(args: argparse.Namespace) -> int:
    from presso.kernels.w4a16 import mma

    for arch in args.arch:
        try:
            print(mma.prebuild(arch))
        except RuntimeError as exc:
            print(f"presso build-kernels: {arch}: {exc}", file=sys.stderr)
            return 1
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="show the installation and which native paths are active",
                       formatter_class=help_formatter(), epilog="""examples:
  presso doctor          # version, location, codec C coder, CUDA / Triton / tensor-core kernel status
  presso doctor --json   # the same as JSON""")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_doctor)
    v = sub.add_parser("version", help="print Presso's version", formatter_class=help_formatter(),
                       epilog="""examples:
  presso version
  presso version --verbose   # what presso doctor prints""")
    v.add_argument("--verbose", dest="verbose_version", action="store_true", help="also the native paths")
    v.set_defaults(func=cmd_version)
    b = sub.add_parser("build-kernels", help="compile the CUDA kernels ahead of time (needs nvcc)",
                       formatter_class=help_formatter(), epilog="""examples:
  PRESSO_KERNEL_CACHE=/opt/presso/kernels presso build-kernels --arch sm_80 sm_90   # at image build""")
    b.add_argument("--arch", nargs="+", required=True, help="GPU architectures, e.g. sm_90")
    b.set_defaults(func=cmd_build_kernels)
