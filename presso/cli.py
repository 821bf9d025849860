"""The ``presso`` command.

Examples:
  presso serve                                  # API + worker + SQLite + local store, one command
  presso compress ./my-model --recipe '{"steps":[{"method":"rtn","bits":4}]}' --out ./out
  presso submit s3://models/llama --recipe recipe.json --wait
  presso status JOB_ID
  presso download JOB_ID ./artifact
  presso admin create-tenant acme
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from presso.commands import admin, browse, doctor, hooks, local, remote, service

EPILOG = """examples:
  presso serve                       start the embedded service (prints a dev API key)
  presso compress ./model --recipe '{"steps":[{"method":"rtn","bits":4}]}' --out ./out
  presso submit file:///models/tiny --recipe recipe.json --wait
  presso status 3f2a...              show one job
  presso list --label team=nlp       jobs with that label (table; --json)
  presso report 3f2a...              per-layer report of a finished job
  presso methods gptq                a method's parameters
  presso logs 3f2a... --follow       the worker's log lines of a job
  presso login --server URL          check a key, save it in ~/.config/presso/config.toml
  presso webhooks secret             the key that signs this tenant's webhooks
  presso download 3f2a... ./out      fetch, verify sha256 and restore the artifact
  presso admin create-tenant acme    (needs PRESSO_ADMIN_KEY)
  presso doctor                      which native paths (codec, CUDA kernels) this install uses

environment: PRESSO_SERVER, PRESSO_API_KEY, PRESSO_PROFILE, PRESSO_CONFIG, PRESSO_DATABASE_URL, PRESSO_BROKER_URL,
PRESSO_STORE_URL, PRESSO_DATA_DIR ... (see docs/service.md)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presso", description="Presso: compression-as-a-service for neural-network models.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (service, local, remote, browse, hooks, admin, doctor):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from presso.app.core.logs import configure

    # PRESSO_LOG_FORMAT=json: one JSON object per line, with job_id and tenant_id where known
    configure(logging.DEBUG if args.verbose else getattr(logging, os.environ.get("PRESSO_LOG_LEVEL", "INFO")))
    if not args.verbose:  # one INFO line per HTTP request would break `--wait`'s progress line
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
