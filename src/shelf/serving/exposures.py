"""The exposure log: what was shown to whom, append-only JSONL under ``<home>/exposures/``.

Records are buffered in memory and written by :meth:`ExposureLog.flush` (a background task calls
it every second or so, and shutdown calls it last), one file per UTC day. Experiments join
outcomes to exposures by ``exposure_id``. A crash loses at most the unflushed buffer: exposures
are measurement, not commitments (events are the ones acknowledged durably).
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


class ExposureLog:
    """Thread-safe buffered appender; ``max_buffer`` records force a flush by the caller."""

    def __init__(self, folder: Path, *, max_buffer: int = 10_000) -> None:
        self.folder = Path(folder)
        self.max_buffer = max_buffer
        self._buffer: list[bytes] = []
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one writer at a time, in order
        self.written = 0

    def log(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        with self._lock:
            self._buffer.append(line)
            full = len(self._buffer) >= self.max_buffer
        if full:
            self.flush()

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Append the buffer to today's file and fsync it; returns how many records were written."""
        with self._write_lock:
            with self._lock:
                lines, self._buffer = self._buffer, []
            if not lines:
                return 0
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"exposures-{datetime.now(UTC):%Y-%m-%d}.jsonl"
            with path.open("ab") as handle:
                handle.write(b"".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
            self.written += len(lines)
            return len(lines)
