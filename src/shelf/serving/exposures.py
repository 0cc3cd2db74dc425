"""The exposure log: what was shown to whom, append-only JSONL under ``<home>/exposures/``.

A request only serializes its record (orjson, a couple of microseconds) and appends the line to
an in-memory buffer; :meth:`ExposureLog.flush` appends the buffered lines to one file per UTC day
with one fsync per flush. (Lines are bytes, which the cyclic garbage collector does not track:
a second's worth of buffered records does not make its full collections longer or more frequent.) A background task calls it every second or so, shutdown calls it last, and a full buffer
(``max_buffer`` records) wakes a flush on a background thread instead of writing on the request
path. Should the disk stall so long that the buffer reaches ``2 * max_buffer``, the request that
finds it so writes the buffer itself: memory stays bounded, and nothing is dropped.

Experiments join outcomes to exposures by ``exposure_id``. A crash loses at most the unflushed
buffer: exposures are measurement, not commitments (events are the ones acknowledged durably).
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


class ExposureLog:
    """Thread-safe buffered appender; ``max_buffer`` records wake a background flush."""

    def __init__(self, folder: Path, *, max_buffer: int = 10_000) -> None:
        self.folder = Path(folder)
        self.max_buffer = max_buffer
        self._buffer: list[bytes] = []
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one writer at a time, in order
        self._waking = False  # a background flush is on its way
        self.written = 0

    def log(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, option=_OPTIONS)
        with self._lock:
            self._buffer.append(line)
            held = len(self._buffer)
            wake = held >= self.max_buffer and not self._waking
            if wake:
                self._waking = True
        if held >= 2 * self.max_buffer:
            self.flush()  # the background writer cannot keep up: bound the memory here
        elif wake:
            threading.Thread(target=self._background_flush, name="shelf-exposure-flush", daemon=True).start()

    def _background_flush(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                self._waking = False

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
