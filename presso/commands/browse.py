"""list, report, methods, logs, login: read what a running server holds (and remember how to reach it)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from presso.client import ConfigError, PressoClient, PressoError
from presso.commands.common import help_formatter
from presso.commands.remote import client_for, server_args

PREFERRED = ("method", "bits", "group_size", "sparsity", "rank", "rel_error", "error", "bytes", "bits_per_weight")


def register(sub: Any) -> None:
    p = sub.add_parser("list", help="list jobs (newest first), filtered by state, name, labels",
                       formatter_class=help_formatter(), epilog="""examples:
  presso list                                   the 20 newest jobs
  presso list --state running
  presso list --label team=nlp --label exp=7    jobs that carry both labels
  presso list --name llama-gptq4 --json         as JSON (one page: pass next_cursor as --cursor)
  presso list --all --state failed              every failed job, following the cursor""")
    p.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--name")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--limit", type=int, default=20, help="jobs per page (1-200, default 20)")
    p.add_argument("--cursor", help="next_cursor of a previous page")
    p.add_argument("--all", action="store_true", help="every page")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    server_args(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="a succeeded job's per-layer report", formatter_class=help_formatter(),
                       epilog="""examples:
  presso report JOB_ID                          one row per compressed layer
  presso report JOB_ID --json > report.json     the whole report.json""")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    server_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("methods", help="the compression methods and their parameters",
                       formatter_class=help_formatter(), epilog="""examples:
  presso methods                                every method, one line each
  presso methods gptq                           gptq's parameters, types, defaults
  presso methods --json                         the JSON schemas (GET /v1/methods)""")
    p.add_argument("method", nargs="?")
    p.add_argument("--json", action="store_true")
    server_args(p)
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("logs", help="a job's log lines (the worker's, every attempt)",
                       formatter_class=help_formatter(), epilog="""examples:
  presso logs JOB_ID
  presso logs JOB_ID --follow                   keep printing until the job is finished""")
    p.add_argument("job_id")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--after", type=int, default=0, help="only lines after this seq")
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    server_args(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("login", help="check an API key and save it in the user config file (mode 0600)",
                       formatter_class=help_formatter(), epilog="""examples:
  presso login --server https://presso.example.com          asks for the key (not echoed)
  echo "$KEY" | presso login --server https://presso.example.com --api-key -
  presso login --profile staging --server https://staging.example.com""")
    server_args(p)
    p.set_defaults(func=cmd_login)


def _call(args: argparse.Namespace, action: Callable[[PressoClient], int]) -> int:
    try:
        with client_for(args) as client:
            return action(client)
    except (PressoError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PressoError(0, "invalid_label", f"--label {item!r}: give KEY=VALUE")
        out[key] = value
    return out


def cmd_list(args: argparse.Namespace) -> int:
    def run(client: PressoClient) -> int:
        filters = {"state": args.state, "name": args.name, "labels": _labels(args.label), "limit": args.limit}
        if args.all:
            jobs, cursor = list(client.iter_jobs(**filters)), None
        else:
            page = client.list_jobs(cursor=args.cursor, **filters)
            jobs, cursor = page.data, page.next_cursor
        if args.json:
            print(json.dumps({"data": [j.to_dict() for j in jobs], "next_cursor": cursor}, indent=2))
            return 0
        rows = [(j.id, j.state, f"{100 * j.progress.fraction:.0f}% {j.progress.stage or ''}".strip(),
                 j.name or "", _short(j.model_uri), j.created_at.strftime("%Y-%m-%d %H:%M"),
                 ",".join(f"{k}={v}" for k, v in sorted(j.labels.items())))
                for j in jobs]
        print(table(rows, ("ID", "STATE", "PROGRESS", "NAME", "MODEL", "CREATED", "LABELS")))
        if cursor:
            print(f"more: presso list --cursor {cursor}", file=sys.stderr)
        return 0

    return _call(args, run)


def _short(uri: str, width: int = 40) -> str:
    return uri if len(uri) <= width else "..." + uri[-(width - 3):]


def cmd_report(args: argparse.Namespace) -> int:
    def run(client: PressoClient) -> int:
        report = client.report(args.job_id)
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
            return 0
        layers = report.layers
        scalar = {k for layer in layers for k, v in layer.items() if isinstance(v, int | float | str) and k != "name"}
        first = [k for k in PREFERRED if k in scalar]
        columns = first + sorted(scalar - set(PREFERRED))[: max(0, 8 - len(first))]
        rows = [(layer.get("name", ""), *(_fmt(layer.get(c)) for c in columns)) for layer in layers]
        print(table(rows, ("LAYER", *(c.upper() for c in columns))))
        print(f"{len(layers)} layers", file=sys.stderr)
        return 0

    return _call(args, run)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def cmd_methods(args: argparse.Namespace) -> int:
    def run(client: PressoClient) -> int:
        methods = client.methods()
        if args.method:
            chosen = [m for m in methods if m.method == args.method]
            if not chosen:
                names = ", ".join(m.method for m in methods)
                raise PressoError(0, "unknown_method", f"no method {args.method!r} (one of: {names})")
            methods = chosen
        if args.json:
            print(json.dumps([m.to_dict() for m in methods], indent=2))
            return 0
        if not args.method:
            rows = [(m.method, "lossy" if m.lossy else "lossless", "yes" if m.needs_calibration else "no",
                     m.summary) for m in methods]
            print(table(rows, ("METHOD", "KIND", "CALIBRATION", "SUMMARY")))
            return 0
        method = methods[0]
        print(f"{method.method}: {method.summary}")
        props = method.json_schema.get("properties", {})
        rows = [(name, _type(spec), json.dumps(spec.get("default")) if "default" in spec else "",
                 (spec.get("description") or "")[:90]) for name, spec in props.items() if name != "method"]
        print(table(rows, ("PARAMETER", "TYPE", "DEFAULT", "DESCRIPTION")))
        return 0

    return _call(args, run)


def _type(spec: dict[str, Any]) -> str:
    if "enum" in spec:
        return "|".join(str(v) for v in spec["enum"])
    if "anyOf" in spec:
        return "|".join(_type(s) for s in spec["anyOf"])
    if "const" in spec:
        return json.dumps(spec["const"])
    return str(spec.get("type", "object"))


def cmd_logs(args: argparse.Namespace) -> int:
    def run(client: PressoClient) -> int:
        after = args.after
        while True:
            page = client.logs(args.job_id, after=after)
            for line in page.data:
                print(f"{line.at:%Y-%m-%d %H:%M:%S} {line.level:<7} [{line.attempt}] {line.message}", flush=True)
            after = page.next_after or after
            if page.data:
                continue  # more may be waiting: read until a page is empty
            if not args.follow or client.get(args.job_id).done:
                return 0
            time.sleep(args.poll)

    return _call(args, run)


def cmd_login(args: argparse.Namespace) -> int:
    from presso.client.config import write_config

    key = args.api_key
    if key == "-":
        key = sys.stdin.readline().strip()
    elif not key:
        import getpass

        key = getpass.getpass("API key: ").strip()
    if not key:
        print("error: no API key given", file=sys.stderr)
        return 2
    try:
        with PressoClient(args.server, key, profile=args.profile) as client:
            client.list_jobs(limit=1)  # 401 for a wrong key, before anything is saved
            server = client.server
    except (PressoError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = write_config(server, key, profile=args.profile)
    print(f"saved {server} and the key in {path} (mode 0600)")
    return 0
