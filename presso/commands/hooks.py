"""webhooks: the tenant's signing key and default callback URL."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from presso.client import ConfigError, PressoError
from presso.commands.common import help_formatter
from presso.commands.remote import client_for, server_args


def register(sub: Any) -> None:
    p = sub.add_parser("webhooks", help="the tenant's webhook signing key and default callback URL",
                       formatter_class=help_formatter(), epilog="""examples:
  presso webhooks secret                        the key that signs this tenant's webhooks (Presso-Signature)
  presso webhooks secret --rotate               replace it
  presso webhooks default https://hooks.example.com/presso    callback of jobs that give none
  presso webhooks default --clear
  presso webhooks default                       show it""")
    p.add_argument("what", choices=["secret", "default"])
    p.add_argument("url", nargs="?", help="(default) the URL to set")
    p.add_argument("--rotate", action="store_true", help="(secret) replace the key")
    p.add_argument("--clear", action="store_true", help="(default) remove the default URL")
    server_args(p)
    p.set_defaults(func=cmd_webhooks)


def cmd_webhooks(args: argparse.Namespace) -> int:
    try:
        with client_for(args) as client:
            if args.what == "secret":
                print(client.webhook_secret(rotate=args.rotate))
            elif args.clear or args.url:
                print(client.set_default_callback(None if args.clear else args.url) or "(none)")
            else:
                print(client.default_callback() or "(none)")
    except (PressoError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
