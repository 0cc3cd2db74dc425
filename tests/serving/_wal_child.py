"""Child process for the kill -9 test: appends from several threads, prints acknowledged ids.

Usage: python _wal_child.py WAL_DIR PREFIX THREADS
Each line on stdout is one acknowledged event id, printed only after ``append`` returned.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime

import pyarrow as pa

from shelf.lake.wal import WriteAheadLog
from shelf.schema import EVENT_SCHEMA


def batch(ids: list[str]) -> pa.Table:
    n = len(ids)
    now = datetime(2024, 5, 1, tzinfo=UTC)
    columns = {name: pa.nulls(n, field.type) for name, field in zip(EVENT_SCHEMA.names, EVENT_SCHEMA, strict=True)}
    columns["event_id"] = pa.array(ids, pa.string())
    columns["item_id"] = pa.array(["i1"] * n, pa.string())
    columns["type"] = pa.array(["view"] * n, pa.string())
    columns["timestamp"] = pa.array([now] * n, EVENT_SCHEMA.field("timestamp").type)
    return pa.table(columns, schema=EVENT_SCHEMA)


def main() -> None:
    root, prefix, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    wal = WriteAheadLog(root, segment_bytes=64 * 1024)
    out = threading.Lock()

    def work(t: int) -> None:
        deadline = time.monotonic() + 20  # bounded even if the parent never kills us
        for i in range(1_000_000):
            if time.monotonic() > deadline:
                return
            ids = [f"{prefix}-{t}-{i}-{j}" for j in range(20)]
            wal.append(batch(ids))
            with out:
                sys.stdout.write("\n".join(ids) + "\n")
                sys.stdout.flush()

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    print("READY", flush=True)  # never an id: the parent skips it
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
