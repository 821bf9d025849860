"""submit, status, cancel, download: talk to a running server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from presso.client import ConfigError, Job, PressoClient, PressoError
from presso.commands.common import RecipeInputError, help_formatter, load_recipe
from presso.commands.jobargs import add_job_options, describe, job_request, job_spec


def server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="API base URL (env PRESSO_SERVER, then the user config file, "
                   "default http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (env PRESSO_API_KEY, then ~/.config/presso/config.toml, then the "
                   "dev key of `presso serve`)")
    p.add_argument("--profile", help="a [profiles.NAME] table of the user config file (env PRESSO_PROFILE)")




def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a compression job", formatter_class=help_formatter(),
                       epilog="""examples:
  presso submit s3://models/llama --recipe '{"steps":[{"method":"rtn","bits":4,"group_size":64}]}'
  presso submit file:///data/tiny --recipe recipe.json --eval file:///data/wiki.txt --wait
  presso submit s3://models/llama --recipe gptq4.json --fallback gptq8.json --gate-ppl 5 --no-latency
  presso submit s3://models/llama --recipe gptq4.json --name llama-gptq4 --label team=nlp --label exp=7 \\
      --metadata '{"ticket": "ML-42"}'""")
    add_job_options(p)
    p.add_argument("--name", help="a name for the job (filter: presso list --name)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label (repeat for several; filter: presso list --label KEY=VALUE)")
    p.add_argument("--metadata", help="free JSON object kept with the job (inline or a file; at most 16 KiB)")
    p.add_argument("--callback-url", help="https:// URL that gets a signed POST when the job finishes")
    p.add_argument("--force", action="store_true",
                   help="compress even when a succeeded job had the same inputs (default: reuse its artifact)")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="wait for a terminal state, showing progress")
    server_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a job", epilog="example:\n  presso status JOB_ID --wait",
                       formatter_class=help_formatter())
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true")
    server_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cancel", help="cancel a job", epilog="example:\n  presso cancel JOB_ID",
                       formatter_class=help_formatter())
    p.add_argument("job_id")
    server_args(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("download", help="download an artifact, verify every sha256, restore lossless files",
                       epilog="example:\n  presso download JOB_ID ./artifact", formatter_class=help_formatter())
    p.add_argument("job_id")
    p.add_argument("out", type=Path)
    p.add_argument("--keep-encoded", action="store_true", help="do not decode *.pzst files")
    p.add_argument("--overwrite", action="store_true",
                   help="OUT holds a previous Presso artifact: replace its files (nothing else there is touched)")
    server_args(p)
    p.set_defaults(func=cmd_download)


def client_for(args: argparse.Namespace) -> PressoClient:
    return PressoClient(args.server, args.api_key, profile=getattr(args, "profile", None))




def build_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request body from the flags, validated here first (the same JobSpec the API validates)."""
    body = job_request(args)
    job_spec(args)
    if getattr(args, "name", None):
        body["name"] = args.name
    labels = {}
    for item in getattr(args, "label", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeInputError(f"--label {item!r}: give KEY=VALUE")
        labels[key] = value
    if labels:
        body["labels"] = labels
    if getattr(args, "metadata", None):
        body["metadata"] = load_recipe(args.metadata, what="metadata")
    if getattr(args, "callback_url", None):
        body["callback_url"] = args.callback_url
    if getattr(args, "force", False):
        body["force"] = True
    return body


def _finish(job: Job) -> int:
    print(json.dumps(job.to_dict(), indent=2))
    return 0 if job.state in ("succeeded", "queued", "running") else 1


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

    def submit(client: PressoClient) -> Job:
        job = client.submit(body, idempotency_key=args.idempotency_key)
        return client.wait(job.id, progress=True) if args.wait else job

    return _run(args, submit)


def _run(args: argparse.Namespace, action: Callable[[PressoClient], Job]) -> int:
    """One call with a client: the job printed as JSON, or one error line and exit 2."""
    try:
        with client_for(args) as client:
            job = action(client)
    except (PressoError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _finish(job)


def cmd_status(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.wait(args.job_id, progress=True) if args.wait else c.get(args.job_id))


def cmd_cancel(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.cancel(args.job_id))


def cmd_download(args: argparse.Namespace) -> int:
    from presso.compression.errors import CompressionError

    try:
        with client_for(args) as client:
            files = client.download(args.job_id, args.out, restore=not args.keep_encoded, overwrite=args.overwrite)
    except (PressoError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CompressionError as exc:  # a refused OUT, a lossless file that does not decode
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    print(f"{len(files)} files in {args.out} (sha256 verified)")
    return 0
