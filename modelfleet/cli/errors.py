"""The CLI's own error: a message for one `error:` line and an exit status.

Commands raise `CliError` for problems found on this side of the wire (a
missing file, an input that does not parse, a watch that ended early);
`main` prints it and exits with its code. gRPC failures stay `grpc.RpcError`
and are formatted by `client.format_rpc_error`.
"""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure. `code` is the exit status (1; 2 for usage)."""

    def __init__(self, message: str, *, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
