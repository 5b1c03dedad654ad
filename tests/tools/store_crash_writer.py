"""Crash-test writer for tests/unit/store/test_store_sqlite.py: run as a subprocess, then SIGKILLed.

Usage: python store_crash_writer.py DB_PATH_OR_URL COUNT

Step i writes, in one transaction, deployment d<i:07d> (revision i, a ~12 KiB
stop_reason so one record spans several pages), allocation a<key> with the
same payload, and model "m" version i + 1. Only after the transaction has
returned does it print the key and flush: a printed key is an acknowledged
write. The test kills this process mid-way and checks the file on reopen.
"""

from __future__ import annotations

import hashlib
import sys

from control_plane.store import open_store
from modelfleet.store.v1 import records_pb2
from modelfleet.v1 import models_pb2


def main() -> None:
    store = open_store(sys.argv[1])  # a SQLite file or a postgresql:// URL
    for i in range(int(sys.argv[2])):
        key = f"d{i:07d}"
        payload = hashlib.sha256(key.encode()).hexdigest() * 192
        with store.transaction():
            store.put_deployment(records_pb2.DeploymentRecord(deployment_id=key, revision=i, stop_reason=payload))
            store.put_allocation(
                records_pb2.AllocationRecord(allocation_id="a" + key, deployment_id=key, node_id="n1", reason=payload)
            )
            store.put_model(models_pb2.Model(model_id="m", version=i + 1))
        sys.stdout.write(key + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
