"""The audit log: one JSON line per mutating call, rotated.

Every call of a method the access table marks mutating (uploads and
deletes of models, start/stop/update/delete of deployments, drain and
uncordon, API key creation and revocation, Triton repository load/unload)
is written once, whatever its outcome, refused calls included, as
`{"time", "user", "key_id", "method", "target", "outcome", "message",
"client"}`: time in RFC 3339 UTC, target the id the call acted on
(deployment, model[:version], node or key id), outcome "OK" or the status
code's name, message the error's text (trimmed). Tokens, secrets and env
values are never written: only ids. Lines go through a queue to a
RotatingFileHandler on its own thread, so a slow disk never blocks the
event loop.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import queue
from pathlib import Path
from typing import Any

MESSAGE_LIMIT = 500
_TARGET_FIELDS = ("deployment_id", "model_id", "node_id", "key_id")


class AuditLog:
    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, self._handler)
        self._logger = logging.Logger("modelfleet.audit")  # its own: never the root logger's handlers
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._listener.start()

    def record(self, *, method: str, user: str, key_id: str, target: str, outcome: str, message: str, client: str) -> None:
        line = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "user": user,
            "key_id": key_id,
            "method": method,
            "target": target,
            "outcome": outcome,
            "message": message[:MESSAGE_LIMIT],
            "client": client,
        }
        self._logger.info(json.dumps(line, ensure_ascii=False))

    def close(self) -> None:
        self._listener.stop()  # writes what is queued
        self._handler.close()


def target_of(request: Any, reply: Any = None) -> str:
    """The id a call acts on, from its request (or, for an upload or a new key, its reply)."""
    for message in (request, reply, getattr(reply, "api_key", None)):
        if message is None or not hasattr(message, "DESCRIPTOR"):
            continue
        names = {f.name for f in message.DESCRIPTOR.fields}
        for name in _TARGET_FIELDS:
            value = getattr(message, name, "") if name in names else ""
            if value:
                version = getattr(message, "version", 0) if "version" in names else 0
                return f"{value}:{version}" if name == "model_id" and version else str(value)
    return ""


def add_flags(parser: Any) -> None:
    """The control plane's audit-log flags."""
    parser.add_argument("--audit-log", default="", metavar="PATH",
                        help="JSON lines of every mutating call (default DATA_DIR/audit.log; 'off' = none)")
    parser.add_argument("--audit-log-max-bytes", type=int, default=50 << 20, metavar="BYTES",
                        help="rotate the audit log past this size (default 50 MiB)")
    parser.add_argument("--audit-log-backups", type=int, default=5, metavar="N",
                        help="rotated audit logs kept (default 5)")


def from_flags(args: Any, data_dir: Path) -> AuditLog | None:
    """The audit log the flags ask for (None for --audit-log off); bad values name the flag."""
    if args.audit_log == "off":
        return None
    if args.audit_log_max_bytes < 1024:
        raise SystemExit(f"error: --audit-log-max-bytes must be >= 1024, got {args.audit_log_max_bytes}")
    if args.audit_log_backups < 1:
        raise SystemExit(f"error: --audit-log-backups must be >= 1, got {args.audit_log_backups}")
    path = Path(args.audit_log) if args.audit_log else data_dir / "audit.log"
    return AuditLog(path, max_bytes=args.audit_log_max_bytes, backups=args.audit_log_backups)
