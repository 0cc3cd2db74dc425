"""The manifest: the only record of which part files are committed.

It is one JSON file, ``<home>/lake/manifest.json``, replaced atomically (temporary file, fsync,
rename, fsync of the folder) after every part it names is durable. A part file that it does not
name does not exist as far as readers are concerned.

Format (``format_version`` 1)::

    {"format": "shelf-lake", "format_version": 1, "version": 7, "committed_at": "...",
     "tables": {"events": [{"path": "events/v00000007-....parquet", "rows": 1000000,
                            "bytes": 23000000, "min_time_us": ..., "max_time_us": ...}],
                "items": [...], "users": [...]},
     "retired": [{"path": "...", "retired_at_us": ...}],
     "checksum": "sha256:<hex of the document without this field>"}

``min_time_us``/``max_time_us`` bound the table's time column (event ``timestamp``, version
``valid_from``) in epoch microseconds, so a snapshot skips parts wholly at or after ``as_of``.
``retired`` lists parts replaced by compaction: kept on disk for a grace period so that snapshots
taken before the compaction can still read them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shelf.errors import LakeError
from shelf.lake._files import atomic_write_bytes
from shelf.lake.tables import TABLES

FORMAT_NAME = "shelf-lake"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Part:
    """One immutable Parquet file of one table."""

    path: str  # relative to the lake folder
    rows: int
    bytes: int
    min_time_us: int | None
    max_time_us: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "min_time_us": self.min_time_us,
            "max_time_us": self.max_time_us,
        }


@dataclass(frozen=True)
class Retired:
    path: str
    retired_at_us: int


@dataclass(frozen=True)
class Manifest:
    version: int = 0
    committed_at: str = ""
    tables: dict[str, tuple[Part, ...]] = field(default_factory=lambda: {name: () for name in TABLES})
    retired: tuple[Retired, ...] = ()

    def parts(self, table: str) -> tuple[Part, ...]:
        return self.tables.get(table, ())

    def all_paths(self) -> set[str]:
        return {p.path for parts in self.tables.values() for p in parts}

    def next(self, *, tables: dict[str, tuple[Part, ...]], retired: tuple[Retired, ...] | None = None) -> Manifest:
        return replace(
            self,
            version=self.version + 1,
            committed_at=datetime.now(UTC).isoformat(timespec="microseconds"),
            tables=tables,
            retired=self.retired if retired is None else retired,
        )

    # -- serialisation ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "committed_at": self.committed_at,
            "tables": {name: [p.to_json() for p in self.parts(name)] for name in TABLES},
            "retired": [{"path": r.path, "retired_at_us": r.retired_at_us} for r in self.retired],
        }
        body["checksum"] = _checksum(body)
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: Path) -> Manifest:
        advice = (
            "The manifest is the only record of which part files are committed. Restore it from a "
            f"backup, or move {where.parent} aside and re-ingest the sources (ingest is idempotent)."
        )
        try:
            body = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LakeError(f"the lake manifest {where} is damaged (not valid JSON: {exc}). {advice}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
            raise LakeError(f"{where} is not a shelf lake manifest (no \"format\": \"{FORMAT_NAME}\"). {advice}")
        found_version = body.get("format_version")
        if not isinstance(found_version, int):
            raise LakeError(f"the lake manifest {where} is damaged (format_version {found_version!r}). {advice}")
        if found_version > FORMAT_VERSION:
            raise LakeError(
                f"the lake at {where.parent} was written by a newer shelf (manifest format "
                f"{found_version}; this shelf reads up to {FORMAT_VERSION}). Upgrade shelf to read it; "
                "do not write to it with this version."
            )
        expected = body.pop("checksum", None)
        if expected != _checksum(body):
            raise LakeError(f"the lake manifest {where} is damaged (checksum mismatch). {advice}")
        try:
            tables = {
                name: tuple(
                    Part(
                        path=str(p["path"]),
                        rows=int(p["rows"]),
                        bytes=int(p["bytes"]),
                        min_time_us=None if p["min_time_us"] is None else int(p["min_time_us"]),
                        max_time_us=None if p["max_time_us"] is None else int(p["max_time_us"]),
                    )
                    for p in body["tables"].get(name, [])
                )
                for name in TABLES
            }
            retired = tuple(Retired(str(r["path"]), int(r["retired_at_us"])) for r in body.get("retired", []))
            return cls(
                version=int(body["version"]),
                committed_at=str(body.get("committed_at", "")),
                tables=tables,
                retired=retired,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LakeError(f"the lake manifest {where} is damaged (bad field: {exc!r}). {advice}") from None


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def read_manifest(path: Path) -> Manifest | None:
    """The committed manifest, or None when none has been written yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LakeError(f"cannot read the lake manifest {path}: {exc}") from None
    return Manifest.from_bytes(data, path)


def write_manifest(path: Path, manifest: Manifest) -> None:
    atomic_write_bytes(path, manifest.to_bytes())
