"""Durable file operations: atomic replace, fsync of files and folders, the writer lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from shelf.errors import LakeError

TMP_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """Where a file is written before it is renamed into place (hidden, same folder)."""
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, never a mix."""
    tmp = temporary_name(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class WriterLock:
    """An exclusive ``flock`` on one file, held for a writer session.

    The kernel drops the lock when the holder dies (even by SIGKILL), so a crashed writer never
    leaves the lake locked. The file holds the holder's pid and host, for the error message only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, timeout_s: float = 0.0) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    os.close(fd)
                    waited = f" after waiting {timeout_s:g} s" if timeout_s > 0 else ""
                    raise LakeError(
                        f"the lake is locked by another writer{waited} ({holder}; lock file {self.path}). "
                        "Only one writer (ingest, compaction) may run at a time: wait for it to finish, "
                        "or pass a timeout to wait for the lock."
                    ) from None
                time.sleep(0.05)
        stamp = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC).isoformat(timespec='seconds')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        self._fd = fd

    def _holder(self) -> str:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        return f"held by {text}" if text else "holder unknown"

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None
