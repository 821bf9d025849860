"""compress (the pipeline without the service), pack and unpack (the lossless codec)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from presso.commands.common import RecipeInputError, help_formatter
from presso.commands.jobargs import add_job_options, describe, job_spec


def register(sub: Any) -> None:
    p = sub.add_parser("compress", help="compress a model locally, no service needed",
                       formatter_class=help_formatter(), epilog="""examples:
  presso compress ./tiny-llama --recipe '{"steps":[{"method":"rtn","bits":4,"group_size":64}]}' --out ./out
  presso compress s3://models/llama --recipe gptq.json --calib file:///data/valid.txt --out ./out
  presso compress hf://HuggingFaceTB/SmolLM2-135M --recipe recipe.json --eval ./test.txt --out ./out
  presso compress ./llama-8b --recipe gptq.json --calib valid.txt --gpus 4 --no-eval --out ./out   # 4 ranks
  presso compress ./model.gguf --recipe rtn.json --streaming on --no-eval --out ./out       # block by block""")
    add_job_options(p)
    p.add_argument("--out", required=True, type=Path,
                   help="artifact directory to write: new or empty, or a previous artifact with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of the Presso artifact already in --out (its presso.json lists them); "
                   "nothing else there is ever deleted")
    p.add_argument("--device", help="cuda or cpu (default: CUDA when present)")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("pack", help="losslessly encode an artifact directory (*.pzst)")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(func=cmd_pack)
    p = sub.add_parser("unpack", help="restore a packed directory byte-identically")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(func=cmd_unpack)


class _Bars:
    """One tqdm bar per stage."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, fraction: float) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=1000, desc=f"{stage:<12}", unit="‰", leave=True, file=sys.stderr)
        target = int(1000 * max(0.0, min(1.0, fraction)))
        self.bar.update(max(0, target - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fetch_inputs(job: Any, tmp: Path) -> tuple[Path, Path | None, Path | None]:
    from presso.app.core.settings import get_settings
    from presso.fetch.api import fetch_file, fetch_model
    from presso.fetch.limits import FetchLimits

    limits = FetchLimits.from_settings(get_settings(), allowed_file_roots=(Path("/"),))
    model = fetch_model(job.model_uri, tmp / "model", limits)
    calib = fetch_file(job.calibration.uri, tmp / "calibration", limits) if job.calibration.uri else None
    evaluation = fetch_file(job.evaluation.uri, tmp / "evaluation", limits) if job.evaluation.uri else None
    return model, calib, evaluation


def _fetch_tasks(job: Any, tmp: Path) -> list[Path]:
    """The evaluation's multiple-choice task files (docs/search.md), each fetched like the evaluation text."""
    from presso.app.core.settings import get_settings
    from presso.fetch.api import fetch_file
    from presso.fetch.limits import FetchLimits

    limits = FetchLimits.from_settings(get_settings(), allowed_file_roots=(Path("/"),))
    return [fetch_file(t.uri, tmp / f"task{i}", limits) for i, t in enumerate(job.evaluation.tasks)]


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_compress(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from presso.compression.errors import CompressionError
    from presso.compression.io.outdir import check_out_dir

    # Everything that needs no model first: a bad recipe, option or --out costs no download and no traceback.
    try:
        job = job_spec(args)
    except RecipeInputError as exc:
        return _fail(str(exc))
    except ValidationError as exc:
        return _fail(describe(exc))
    try:
        check_out_dir(args.out, overwrite=args.overwrite)
    except CompressionError as exc:
        return _fail(f"{exc.code}: {exc.message}")

    from presso.compression.job import run_local
    from presso.compression.spec import LocalJobSpec

    bars = _Bars()
    try:
        with tempfile.TemporaryDirectory(prefix="presso-compress-") as tmp:
            model, calib, evaluation = _fetch_inputs(job, Path(tmp))
            tasks = _fetch_tasks(job, Path(tmp))
            spec = LocalJobSpec.for_run(job, model=model, calibration=calib, evaluation=evaluation, tasks=tasks,
                                        out_dir=args.out, overwrite=args.overwrite, device=args.device)
            result = run_local(spec, progress=bars, should_stop=lambda: False)
    except CompressionError as exc:
        bars.close()
        return _fail(f"{exc.code}: {exc.message}")
    bars.close()
    print(json.dumps(result.metrics, indent=2, default=str))
    print(f"artifact: {args.out}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from presso.codec.files import pack_dir

    pack_dir(args.src, args.out)
    print(f"packed {args.src} -> {args.out}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from presso.codec.files import unpack_dir

    unpack_dir(args.src, args.out)
    print(f"restored {args.src} -> {args.out}")
    return 0
