"""Entry point of the `modelfleet` command: the argparse tree and error policy.

Global flags (`--addr`, `--json`) are accepted before the subcommand and,
for convenience, after it too. Every failure ends as one line on stderr:
`error: <STATUS_CODE>: <details>` for gRPC errors (exit 1), `error: <msg>`
for local problems (exit 1, or 2 for bad usage, as argparse does). Ctrl-C
exits 130 without a traceback; a closed stdout pipe exits quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc

from modelfleet.cli import cmd_deployments, cmd_gateways, cmd_health, cmd_infer, cmd_keys, cmd_models, cmd_nodes, cmd_status, up
from modelfleet.cli.client import DEFAULT_ADDR, Client, Tls, format_rpc_error, resolve_credential, with_default_port
from modelfleet.cli.errors import CliError

EPILOG = """\
environment:
  MODELFLEET_ADDR        control plane HOST[:PORT] (default 127.0.0.1:7070; port default 7070; A,B: replicas)
  MODELFLEET_TOKEN       API key, sent as `authorization: Bearer <token>`
  MODELFLEET_TOKEN_FILE  a file holding the API key (--token-file)
  MODELFLEET_TLS_CA      CA certificate: use TLS and trust it (--tls-ca)
  with no token, a control plane on 127.0.0.1 is called with the admin key it
  wrote ($MODELFLEET_DATA_DIR/admin.key, .modelfleet/control-plane/admin.key or
  cp/admin.key) when this user can read it

examples:
  modelfleet up
  modelfleet models upload model.onnx --model-id resnet
  modelfleet deployments start resnet --wait-for started --timeout 1m
  modelfleet infer resnet --input 'x=[[1,2,3,4]]'
  modelfleet deployments update resnet --variant resnet:1=50 --variant resnet:2=50 --wait-for started
  modelfleet deployments events resnet
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("modelfleet")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (defaults read the environment now)."""
    parser = argparse.ArgumentParser(
        prog="modelfleet", description="Deploy ONNX and TorchScript models as real-time inference services.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--addr", default=os.environ.get("MODELFLEET_ADDR") or DEFAULT_ADDR,
                        type=with_default_port,
                        help="control plane HOST[:PORT] (env MODELFLEET_ADDR, default %(default)s; port default 7070); "
                             "several, comma-separated (replicas): the CLI goes to the leader")
    parser.add_argument("--json", action="store_true", help="print the reply as JSON (proto field names)")
    parser.add_argument("--token-file", default=os.environ.get("MODELFLEET_TOKEN_FILE") or None, metavar="PATH",
                        help="read the API key from PATH (env MODELFLEET_TOKEN_FILE; MODELFLEET_TOKEN wins)")
    parser.add_argument("--tls-ca", default=os.environ.get("MODELFLEET_TLS_CA", ""), metavar="PEM",
                        help="use TLS, trusting this CA certificate (env MODELFLEET_TLS_CA)")
    parser.add_argument("--tls-cert", default=os.environ.get("MODELFLEET_TLS_CERT", ""), metavar="PEM",
                        help="client certificate for mTLS (with --tls-key)")
    parser.add_argument("--tls-key", default=os.environ.get("MODELFLEET_TLS_KEY", ""), metavar="PEM",
                        help="private key of --tls-cert")
    parser.add_argument("--tls-server-name", default="", metavar="NAME",
                        help="check the server certificate for NAME instead of the address's host")
    parser.add_argument("--version", action="version", version=f"modelfleet {_version()}")
    # The same flags after the subcommand; SUPPRESS keeps the global value when absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", default=argparse.SUPPRESS, type=with_default_port, help=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for flag in ("--token-file", "--tls-ca", "--tls-cert", "--tls-key", "--tls-server-name"):
        common.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parents = [common]

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up.register(sub, parents)
    cmd_models.register(sub, parents)
    cmd_deployments.register(sub, parents)
    cmd_nodes.register(sub, parents)
    cmd_gateways.register(sub, parents)
    cmd_infer.register(sub, parents)
    cmd_keys.register(sub, parents)
    cmd_health.register(sub, parents)
    cmd_status.register(sub, parents)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse and run one command; returns the exit status (argparse may SystemExit)."""
    args = build_parser().parse_args(argv)
    try:
        token, source = resolve_credential(args.addr, token=os.environ.get("MODELFLEET_TOKEN"), token_file=args.token_file)
    except OSError as exc:
        print(f"error: cannot read the token file {args.token_file}: {exc.strerror}", file=sys.stderr)
        return 1
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = Tls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)
    client = Client(args.addr, token, tls)
    try:
        code: int = args.func(args, client)
        return code
    except grpc.RpcError as err:
        print(format_rpc_error(err, args.addr, token_source=source), file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except OSError as exc:  # a file that cannot be read, a full disk, ...
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        code = run(argv)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout went away (`| head`): exit quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
