"""`modelfleet keys create|list|revoke|whoami`: API keys.

A new key's token is shown once: printed, or with `--output FILE` written
to a new file of mode 0600 (never world-readable, unlike a shell redirect;
an existing file is kept unless `--force`), e.g. `modelfleet keys create
--role agent --output agent.key`. `--join [--uses N] [--ttl D]` makes a
join token that any number of hosts may register with (each then gets its
own key); `keys list` shows its uses left. The server keeps only a salted hash. `whoami` shows which key the CLI is
using and what it may do.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from google.protobuf import duration_pb2

from modelfleet.cli import pages, render
from modelfleet.cli.client import DEFAULT_RPC_TIMEOUT, Client
from modelfleet.cli.errors import CliError
from modelfleet.cli.parsing import arg_type, parse_duration
from modelfleet.v1 import auth_pb2

ROLES = ("admin", "deployer", "viewer", "inference", "agent", "gateway")
PRIVILEGES = ("manage_deployments", "manage_models", "monitor", "infer", "manage_nodes", "manage_security", "agent", "gateway")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys; show who you are", parents=parents)
    ksub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = ksub.add_parser("create", help="create an API key (its token is shown once)", parents=parents)
    p.add_argument("--role", action="append", default=[], choices=ROLES, help="a role (repeatable)")
    p.add_argument("--privilege", action="append", default=[], choices=PRIVILEGES,
                   help="an extra privilege beyond the roles (repeatable)")
    p.add_argument("--user", default="", help="the key's user (default: yours); deployments it starts are this user's")
    p.add_argument("--name", default="", help="a note shown in lists")
    p.add_argument("--ttl", type=arg_type(parse_duration, "duration"), default=0.0, metavar="DURATION",
                   help="expire after this long (e.g. 90d, 12h; default never)")
    p.add_argument("--node-id", default="",
                   help="agent keys: the only node it may act for (default: the first it registers; '*': any node)")
    p.add_argument("--join", action="store_true",
                   help="a join token (with --role agent): any number of hosts may register with it; each gets its own key")
    p.add_argument("--uses", type=int, default=0, metavar="N",
                   help="with --join: at most N hosts may register with it (default any number)")
    p.add_argument("--token-only", action="store_true", help="print only the token")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="write the token to FILE (created with mode 0600) instead of printing it")
    p.add_argument("--force", action="store_true", help="with --output: replace FILE if it exists")
    p.set_defaults(func=create_key)
    p = ksub.add_parser("list", help="list API keys", parents=parents)
    p.add_argument("--user", default="", help="only this user's keys")
    p.add_argument("--all", action="store_true", help="revoked and expired keys too")
    pages.add_limit(p)
    p.set_defaults(func=list_keys)
    p = ksub.add_parser("revoke", help="revoke an API key", parents=parents)
    p.add_argument("key_id", metavar="KEY_ID")
    p.set_defaults(func=revoke_key)
    ksub.add_parser("whoami", help="the key in use and its privileges", parents=parents).set_defaults(func=whoami)


def _uses(key: auth_pb2.ApiKey) -> str:
    """How much of a join token is left: 'N of M uses left' / 'N used, no limit'."""
    if key.max_uses:
        return f"{max(0, key.max_uses - key.uses)} of {key.max_uses} uses left"
    return f"{key.uses} used, no limit"


def _row(key: auth_pb2.ApiKey) -> tuple[object, ...]:
    if key.HasField("revoked_at"):
        state = "revoked"
    elif key.join and key.max_uses and key.uses >= key.max_uses:
        state = "used up"
    elif not key.active:
        state = "expired"
    else:
        state = f"join: {_uses(key)}" if key.join else "active"
    return (key.key_id, key.user, ",".join(key.roles) or "-", state,
            render.timestamp(key.expires_at, empty="never"), key.node_id or "-", key.name or "-")  # fmt: skip


def _print_key(key: auth_pb2.ApiKey) -> None:
    rows = [
        ("key_id", key.key_id),
        ("user", key.user),
        ("roles", ", ".join(key.roles) or "-"),
        ("privileges", ", ".join(key.privileges) or "-"),
        ("name", key.name or "-"),
        ("created_at", render.timestamp(key.created_at)),
        ("expires_at", render.timestamp(key.expires_at, empty="never")),
        ("revoked_at", render.timestamp(key.revoked_at)),
        ("node_id", key.node_id or "-"),
        ("active", str(key.active).lower()),
    ]
    if key.join:
        rows.insert(-1, ("join", f"join token: {_uses(key)}"))
    for name, value in rows:
        print(f"{name + ':':<13}{value}")


def write_private(path: Path, text: str, *, force: bool = False) -> None:
    """Write `text` to a file only its owner can read (0600), created so from the
    start; an existing file is refused unless `force` (then replaced, mode 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise CliError(f"--output {path} exists: give --force to replace it", code=2) from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # a replaced file keeps its old mode otherwise
        f.write(text)


def create_key(args: argparse.Namespace, client: Client) -> int:
    if args.output is not None and args.output.exists() and not args.force:
        raise CliError(f"--output {args.output} exists: give --force to replace it", code=2)
    req = auth_pb2.CreateApiKeyRequest(
        user=args.user, roles=args.role, privileges=args.privilege, name=args.name, node_id=args.node_id,
        join=args.join, max_uses=args.uses,
    )
    if args.ttl:
        req.ttl.CopyFrom(duration_pb2.Duration(seconds=int(args.ttl), nanos=int(args.ttl % 1 * 1e9)))
    resp = client.auth.CreateApiKey(req, timeout=DEFAULT_RPC_TIMEOUT)
    if args.output is not None:
        write_private(args.output, resp.token + "\n", force=args.force)
        resp.token = ""  # shown nowhere else
        if args.json:
            render.print_proto(resp)
        elif not args.token_only:
            _print_key(resp.api_key)
            print(f"\ntoken written to {args.output} (mode 0600)")
        return 0
    if args.token_only:
        print(resp.token)
    elif args.json:
        render.print_proto(resp)
    else:
        _print_key(resp.api_key)
        print(f"\ntoken (shown only now; keep it secret):\n{resp.token}")
    return 0


def list_keys(args: argparse.Namespace, client: Client) -> int:
    resp = pages.collect(
        client.auth.ListApiKeys, auth_pb2.ListApiKeysRequest(user=args.user, include_inactive=args.all), "api_keys",
        limit=args.limit,
    )
    if args.json:
        render.print_proto(resp)
        return 0
    render.table(("key_id", "user", "roles", "state", "expires", "node", "name"), [_row(k) for k in resp.api_keys])
    return 0


def revoke_key(args: argparse.Namespace, client: Client) -> int:
    resp = client.auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(key_id=args.key_id), timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(resp)
    else:
        print(f"revoked API key {resp.api_key.key_id} (user {resp.api_key.user})")
    return 0


def whoami(args: argparse.Namespace, client: Client) -> int:
    resp = client.auth.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=DEFAULT_RPC_TIMEOUT)
    if args.json:
        render.print_proto(resp)
        return 0
    print(f"user:        {resp.user}")
    if not resp.authentication_enabled:
        print("auth:        off (the control plane runs with --auth off)")
    else:
        print(f"key_id:      {resp.api_key.key_id}")
        print(f"roles:       {', '.join(resp.api_key.roles) or '-'}")
        print(f"expires_at:  {render.timestamp(resp.api_key.expires_at, empty='never')}")
    print(f"privileges:  {', '.join(resp.privileges) or '-'}")
    return 0
