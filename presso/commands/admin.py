"""presso admin: tenants and API keys through /v1/admin (needs the admin key)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

from presso.commands.common import help_formatter


def register(sub: Any) -> None:
    p = sub.add_parser("admin", help="manage tenants and API keys", formatter_class=help_formatter(),
                       epilog="""examples:
  export PRESSO_ADMIN_KEY=...            # the server's admin key
  presso admin create-tenant acme
  presso admin create-key TENANT_ID --name ci     # prints the key once
  presso admin revoke-key KEY_ID
  presso admin list-tenants""")
    p.add_argument("--server", help="API base URL (env PRESSO_SERVER)")
    p.add_argument("--admin-key", help="admin key (env PRESSO_ADMIN_KEY)")
    asub = p.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    a = asub.add_parser("create-tenant", help="create a tenant")
    a.add_argument("name")
    a.add_argument("--max-active-jobs", type=int)
    a.set_defaults(func=cmd_admin, action=_create_tenant)
    a = asub.add_parser("list-tenants", help="list tenants")
    a.set_defaults(func=cmd_admin, action=lambda c, _: c.get("/v1/admin/tenants"))
    a = asub.add_parser("create-key", help="create an API key for a tenant (shown once)")
    a.add_argument("tenant_id")
    a.add_argument("--name", default="")
    a.set_defaults(func=cmd_admin, action=lambda c, a: c.post(f"/v1/admin/tenants/{a.tenant_id}/keys",
                                                               json={"name": a.name}))
    a = asub.add_parser("revoke-key", help="revoke an API key")
    a.add_argument("key_id")
    a.set_defaults(func=cmd_admin, action=lambda c, a: c.post(f"/v1/admin/keys/{a.key_id}/revoke"))


def _create_tenant(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    body: dict[str, Any] = {"name": args.name}
    if args.max_active_jobs:
        body["max_active_jobs"] = args.max_active_jobs
    return client.post("/v1/admin/tenants", json=body)


def cmd_admin(args: argparse.Namespace) -> int:
    server = args.server or os.environ.get("PRESSO_SERVER", "http://127.0.0.1:8000")
    key = args.admin_key or os.environ.get("PRESSO_ADMIN_KEY")
    if not key:
        print("error: set PRESSO_ADMIN_KEY or pass --admin-key", file=sys.stderr)
        return 2
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        resp = args.action(client, args)
    print(json.dumps(resp.json(), indent=2))
    return 0 if resp.status_code < 400 else 2
