"""API keys: roles, creation (secret shown once), hashed storage, listing, revocation.

Keys live in ``<home>/keys.json`` (replaced atomically)::

    {"keys": [{"id": "k_1a2b3c4d5e6f", "role": "admin", "sha256": "...",
               "created": "2024-05-01T12:00:00+00:00", "revoked": null}]}

A secret is ``shelf_<id>_<43 random url-safe characters>`` (256 bits). Only its SHA-256 is
stored: with that much entropy a fast hash is enough (nobody can brute-force 2^256), and it keeps
checking a key to a microsecond on every request. The id inside the secret finds the record
without scanning; the digest is compared in constant time.

:class:`KeyStore` checks keys for the service: it re-reads keys.json whenever the file changes
(one ``stat`` per request), so a revocation applies to the next request, and it remembers the
digests it verified (a bounded map from digest to key, emptied on every change of the file).

Roles: ``events:write`` (events and catalogue updates), ``recommendations:read``, ``admin``
(implies both).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

import orjson

from shelf.errors import InputError, ShelfError
from shelf.fsutil import atomic_write_bytes

Role = Literal["events:write", "recommendations:read", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
KEYS_FILE = "keys.json"
_PREFIX = "shelf_"
_ID_LENGTH = 14  # "k_" + 12 hex digits


class KeyStoreError(ShelfError):
    """keys.json is damaged or a key operation cannot be done."""


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never the secret."""

    id: str
    role: Role
    created: str
    revoked: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None


def grants(role: Role, required: Role) -> bool:
    """Whether a key with ``role`` may do what ``required`` guards (admin implies every role)."""
    return role == "admin" or role == required


def _path(home: Path | str) -> Path:
    return Path(home) / KEYS_FILE


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _load(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise KeyStoreError(f"{path} is damaged ({error}); restore it from a backup or create new keys") from error
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise KeyStoreError(f"{path} has no 'keys' list; restore it from a backup or create new keys")
    return [k for k in keys if isinstance(k, dict)]


def _save(path: Path, keys: list[dict[str, object]]) -> None:
    atomic_write_bytes(path, orjson.dumps({"keys": keys}, option=orjson.OPT_INDENT_2))
    os.chmod(path, 0o600)


_write_lock = threading.Lock()


def create_key(home: Path | str, role: str) -> tuple[str, str]:
    """Create a key; returns ``(key_id, secret)``. The secret is not stored: show it once."""
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    key_id = "k_" + secrets.token_hex(6)
    secret = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    path = _path(home)
    with _write_lock:
        keys = _load(path)
        keys.append(
            {"id": key_id, "role": role, "sha256": _digest(secret), "created": datetime.now(UTC).isoformat(), "revoked": None}
        )
        _save(path, keys)
    return key_id, secret


def list_keys(home: Path | str) -> list[ApiKey]:
    """Every key ever created (revoked ones too), oldest first; never a secret or its hash."""
    return [
        ApiKey(id=str(k["id"]), role=k["role"], created=str(k["created"]), revoked=k.get("revoked"))  # type: ignore[arg-type]
        for k in _load(_path(home))
    ]


def revoke_key(home: Path | str, key_id: str) -> ApiKey:
    """Revoke a key (kept in the list, marked with the time). Revoking twice is a no-op."""
    path = _path(home)
    with _write_lock:
        keys = _load(path)
        for k in keys:
            if k.get("id") == key_id:
                if k.get("revoked") is None:
                    k["revoked"] = datetime.now(UTC).isoformat()
                    _save(path, keys)
                return ApiKey(id=key_id, role=k["role"], created=str(k["created"]), revoked=str(k["revoked"]))  # type: ignore[arg-type]
    known = ", ".join(str(k.get("id")) for k in keys) or "none"
    raise InputError(f"no key {key_id!r}; known keys: {known}")


VERIFIED_CACHE_ENTRIES = 1024  # distinct active keys remembered between changes of keys.json


class KeyStore:
    """Checks bearer secrets against keys.json, re-reading it when it changes (revocations apply live)."""

    def __init__(self, home: Path | str) -> None:
        self.path = _path(home)
        self._file = os.fspath(self.path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_id: dict[str, dict[str, object]] = {}
        # digest of a verified secret → its key; only ever holds keys active in the current file
        self._verified: dict[str, ApiKey] = {}

    def _refresh(self) -> None:
        try:
            st = os.stat(self._file)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            keys = _load(self.path) if stamp is not None else []
            self._by_id = {str(k.get("id")): k for k in keys}
            self._verified = {}  # a revoked (or replaced) key is never answered from memory
            self._stamp = stamp

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key this secret belongs to, or None."""
        if not secret.startswith(_PREFIX):
            return None
        self._refresh()
        digest = _digest(secret)
        verified = self._verified  # read once: a refresh swaps in a new, empty map
        key = verified.get(digest)
        if key is not None:
            return key
        # "shelf_" + "k_<12 hex>" + "_" + token; the token may itself hold "_".
        key_id = secret[len(_PREFIX) : len(_PREFIX) + _ID_LENGTH]
        record = self._by_id.get(key_id)
        if record is None or record.get("revoked") is not None:
            return None
        if not hmac.compare_digest(str(record.get("sha256")), digest):
            return None
        key = ApiKey(id=key_id, role=record["role"], created=str(record["created"]))  # type: ignore[arg-type]
        if len(verified) >= VERIFIED_CACHE_ENTRIES:
            verified.clear()
        verified[digest] = key
        return key
