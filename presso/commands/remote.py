"""submit, status, cancel, download: talk to a running server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from presso.client import PressoClient, PressoError
from presso.commands.common import RecipeInputError, help_formatter
from presso.commands.jobargs import add_job_options, describe, job_request, job_spec


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="API base URL (env PRESSO_SERVER, default http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (env PRESSO_API_KEY, else the dev key of `presso serve`)")


def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a compression job", formatter_class=help_formatter(),
                       epilog="""examples:
  presso submit s3://models/llama --recipe '{"steps":[{"method":"rtn","bits":4,"group_size":64}]}'
  presso submit file:///data/tiny --recipe recipe.json --eval file:///data/wiki.txt --wait
  presso submit s3://models/llama --recipe gptq4.json --fallback gptq8.json --gate-ppl 5 --no-latency""")
    add_job_options(p)
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="wait for a terminal state, showing progress")
    _server_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a job", epilog="example:\n  presso status JOB_ID --wait",
                       formatter_class=help_formatter())
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true")
    _server_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    _server_args(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("download", help="download an artifact, verify every sha256, restore lossless files",
                       epilog="example:\n  presso download JOB_ID ./artifact", formatter_class=help_formatter())
    p.add_argument("job_id")
    p.add_argument("out", type=Path)
    p.add_argument("--keep-encoded", action="store_true", help="do not decode *.pzst files")
    p.add_argument("--overwrite", action="store_true",
                   help="OUT holds a previous Presso artifact: replace its files (nothing else there is touched)")
    _server_args(p)
    p.set_defaults(func=cmd_download)


def _client(args: argparse.Namespace) -> PressoClient:
    return PressoClient(args.server, args.api_key)


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request body from the flags, validated here first (the same JobSpec the API validates)."""
    body = job_request(args)
    job_spec(args)
    return body


def show_progress(job: dict[str, Any]) -> None:
    prog = job.get("progress") or {}
    stage = prog.get("stage") or "-"
    sys.stderr.write(f"\r{job['state']:<10} {stage:<16} {100 * prog.get('fraction', 0):5.1f}%   ")
    sys.stderr.flush()
    if job["state"] in ("succeeded", "failed", "cancelled"):
        sys.stderr.write("\n")


def _finish(job: dict[str, Any]) -> int:
    print(json.dumps(job, indent=2))
    return 0 if job["state"] in ("succeeded", "queued", "running") else 1


def cmd_submit(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        body = build_body(args)
    except RecipeInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2

    def submit(client: PressoClient) -> dict[str, Any]:
        job = client.submit(body, idempotency_key=args.idempotency_key)
        return client.wait(job["id"], on_update=show_progress) if args.wait else job

    return _run(args, submit)


def _run(args: argparse.Namespace, action: Callable[[PressoClient], dict[str, Any]]) -> int:
    """One call with a client: the job printed as JSON, or one error line and exit 2."""
    try:
        with _client(args) as client:
            job = action(client)
    except PressoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _finish(job)


def cmd_status(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.wait(args.job_id, on_update=show_progress) if args.wait else c.get(args.job_id))


def cmd_cancel(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.cancel(args.job_id))


def cmd_download(args: argparse.Namespace) -> int:
    from presso.compression.errors import CompressionError

    try:
        with _client(args) as client:
            files = client.download(args.job_id, args.out, restore=not args.keep_encoded, overwrite=args.overwrite)
    except PressoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CompressionError as exc:  # a refused OUT, a lossless file that does not decode
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    print(f"{len(files)} files in {args.out} (sha256 verified)")
    return 0
