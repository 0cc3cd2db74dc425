"""A bundle is a folder of artefacts plus ``card.json``: what it was trained on and how.

Layout under ``<home>/registry``::

    bundles/<version>/card.json      the card, with a SHA-256 of every artefact
    bundles/<version>/...            artefacts (models, vocabularies, ...)
    promoted.json                    {"version": ..., "history": [...]}, replaced atomically

A bundle is staged in ``staging/`` and renamed into ``bundles/`` only once complete, so a crash
never leaves half a bundle that looks whole. Promotion re-checks every hash first: a corrupted
bundle is never promoted. Rollback moves the pointer to the previously promoted version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from shelf import __version__
from shelf.errors import ShelfError
from shelf.fsutil import atomic_write_bytes, file_sha256, fsync_dir

BUNDLE_FORMAT_VERSION = 1
CARD_NAME = "card.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class BundleError(ShelfError):
    """A bundle is missing, corrupted, or from a newer format than this shelf reads."""


@dataclass(frozen=True)
class Card:
    """What a bundle holds and where it came from."""

    version: str
    created_at: str
    snapshot_as_of: str | None
    data_counts: dict[str, int]
    parameters: dict[str, Any]
    metrics: dict[str, float]
    feature_set_version: str
    code_version: str
    files: dict[str, str] = field(default_factory=dict)  # relative path → sha256
    format_version: int = BUNDLE_FORMAT_VERSION
    notes: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> Card:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise BundleError(f"{where}: card is not valid JSON ({error}); the bundle is damaged") from error
        if not isinstance(raw, dict):
            raise BundleError(f"{where}: card is not a JSON object; the bundle is damaged")
        fmt = raw.get("format_version")
        if not isinstance(fmt, int):
            raise BundleError(f"{where}: card has no integer format_version; the bundle is damaged")
        if fmt > BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format {fmt} is newer than this shelf reads ({BUNDLE_FORMAT_VERSION}); "
                "upgrade shelf or promote a bundle made by this version"
            )
        try:
            return cls(**raw)
        except TypeError as error:
            raise BundleError(f"{where}: card fields are not what format {fmt} expects ({error})") from error


def code_version() -> str:
    """shelf's version plus the git commit when running from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


class Registry:
    """Bundles under ``<home>/registry`` and the promoted pointer."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "registry"
        self.bundles = self.root / "bundles"
        self.pointer = self.root / "promoted.json"

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def stage(self) -> Iterator[Path]:
        """A folder to write artefacts into; ``publish`` turns it into a bundle."""
        staging = self.root / "staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def publish(self, staging: Path, card: Card) -> Card:
        """Hash the staged artefacts, write the card, and move the folder into place."""
        self.bundles.mkdir(parents=True, exist_ok=True)
        version = self._next_version()
        files: dict[str, str] = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = path.relative_to(staging).as_posix()
            if rel == CARD_NAME:
                raise BundleError(f"an artefact may not be called {CARD_NAME}")
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            files[rel] = file_sha256(path)
        final = Card(**{**asdict(card), "version": version, "files": files})
        atomic_write_bytes(staging / CARD_NAME, final.to_json())
        os.replace(staging, self.bundles / version)
        fsync_dir(self.bundles)
        return final

    def _next_version(self) -> str:
        numbers = [int(m.group(1)) for p in self.bundles.iterdir() if (m := _VERSION_RE.match(p.name))]
        return f"v{max(numbers, default=0) + 1:04d}"

    # -- reading ---------------------------------------------------------------------------

    def versions(self) -> list[str]:
        if not self.bundles.is_dir():
            return []
        found = [p.name for p in self.bundles.iterdir() if _VERSION_RE.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def path(self, version: str) -> Path:
        path = self.bundles / version
        if not _VERSION_RE.match(version) or not path.is_dir():
            known = ", ".join(self.versions()) or "none"
            raise BundleError(f"no bundle {version!r} in {self.bundles}; known versions: {known}")
        return path

    def card(self, version: str) -> Card:
        where = self.path(version) / CARD_NAME
        if not where.is_file():
            raise BundleError(f"{where} is missing; the bundle is damaged")
        return Card.from_json(where.read_bytes(), where)

    def verify(self, version: str) -> Card:
        """The card, after checking every artefact's hash; BundleError names what is wrong."""
        card = self.card(version)
        root = self.path(version)
        for rel, expected in card.files.items():
            path = root / rel
            if not path.is_file():
                raise BundleError(f"bundle {version}: artefact {rel} is missing")
            actual = file_sha256(path)
            if actual != expected:
                raise BundleError(f"bundle {version}: artefact {rel} is corrupted (sha256 {actual[:12]}…, card says {expected[:12]}…)")
        return card

    # -- the promoted pointer --------------------------------------------------------------

    def _pointer(self) -> dict[str, Any]:
        if not self.pointer.is_file():
            return {"version": None, "history": []}
        try:
            data = orjson.loads(self.pointer.read_bytes())
        except orjson.JSONDecodeError as error:
            raise BundleError(f"{self.pointer} is damaged ({error}); promote a version again to rewrite it") from error
        return data if isinstance(data, dict) else {"version": None, "history": []}

    def promoted(self) -> str | None:
        version = self._pointer().get("version")
        return version if isinstance(version, str) else None

    def promote(self, version: str) -> Card:
        """Point serving at ``version`` (after verifying it) with one atomic file replace."""
        card = self.verify(version)
        state = self._pointer()
        history = [v for v in state.get("history", []) if isinstance(v, str)]
        current = state.get("version")
        if isinstance(current, str) and current != version:
            history.append(current)
        record = {"version": version, "history": history[-50:], "promoted_at": datetime.now(UTC).isoformat()}
        atomic_write_bytes(self.pointer, orjson.dumps(record, option=orjson.OPT_INDENT_2))
        return card

    def rollback(self) -> str:
        """Return to the previously promoted version (skipping ones that no longer verify)."""
        state = self._pointer()
        history = [v for v in state.get("history", []) if isinstance(v, str)]
        while history:
            candidate = history.pop()
            try:
                self.verify(candidate)
            except BundleError:
                continue
            record = {"version": candidate, "history": history, "promoted_at": datetime.now(UTC).isoformat()}
            atomic_write_bytes(self.pointer, orjson.dumps(record, option=orjson.OPT_INDENT_2))
            return candidate
        raise BundleError("nothing to roll back to: no earlier promoted version that still verifies")
