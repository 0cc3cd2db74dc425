"""Saving and loading models without pickle, and the errors models raise.

A saved model is a folder::

    manifest.json   {"format": "shelf-model", "format_version": 1, "kind": ..., "config": {...},
                     "meta": {...}, "arrays": {"file": "arrays.npz", "sha256": ..., "text": [...]}}
    arrays.npz      numeric arrays and raw ids (as fixed-width unicode), read with allow_pickle=False
    <sub>/          nested models (a blend keeps one folder per source)

The manifest is written last, so a half-written folder has no manifest and is refused. The
checksum of ``arrays.npz`` catches a truncated or altered file before numpy parses it. A model
written by a newer shelf (higher ``format_version``) is refused with a message saying so, rather
than being misread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

from shelf.errors import ShelfError
from shelf.fsutil import file_sha256

FORMAT_NAME = "shelf-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"


class ModelError(ShelfError):
    """A model was misused or misconfigured: bad parameters, not fitted, unknown kind."""


class ModelFitError(ModelError):
    """Training cannot run on this data (empty, one item) or produced NaN/inf."""


class NotFittedError(ModelError):
    """A model was asked to predict or save before ``fit``."""


class ModelFormatError(ModelError):
    """A saved model is missing, corrupted, of another kind, or from a newer shelf."""


@dataclass(frozen=True)
class Bundle:
    """What ``load_bundle`` read: the model kind, its config dict, arrays and free metadata."""

    kind: str
    config: dict[str, Any]
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path
    format_version: int


def save_bundle(
    path: Path | str,
    *,
    kind: str,
    config: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write one model folder. Object arrays (raw ids) are stored as unicode and restored on load."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    manifest_path = path / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()  # the folder is invalid until the new manifest lands
    stored: dict[str, np.ndarray] = {}
    text: list[str] = []
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype == object:
            text.append(name)
            value = np.asarray([str(v) for v in value.tolist()], dtype=np.str_) if value.size else np.array([], dtype="<U1")
        if value.dtype == object:  # pragma: no cover - guarded above
            raise ModelError(f"array {name!r} would need pickle")
        stored[name] = value
    arrays_path = path / ARRAYS
    with arrays_path.open("wb") as f:
        np.savez(f, **stored)
    return write_manifest(path, kind=kind, config=config, meta=meta, data_file=ARRAYS, text=text)


def write_manifest(
    path: Path,
    *,
    kind: str,
    config: Mapping[str, Any],
    meta: Mapping[str, Any] | None,
    data_file: str,
    text: list[str] | None = None,
) -> Path:
    """Write ``manifest.json`` (last, atomically) for a folder whose data file is ``data_file``.

    Models with their own weight format (SASRec's safetensors) write their file, then call this.
    """
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": dict(config),
        "meta": dict(meta or {}),
        "arrays": {"file": data_file, "sha256": file_sha256(path / data_file), "text": list(text or [])},
    }
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False))
    os.replace(tmp, path / MANIFEST)
    return path


def _read_manifest(path: Path) -> tuple[Path, Any]:
    """The parsed ``manifest.json`` of a model folder, or a clear ModelFormatError."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelFormatError(f"{path}: no {MANIFEST}; not a saved shelf model (or its save did not finish)")
    try:
        return manifest_path, json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{manifest_path}: corrupted manifest ({e})") from e


def read_manifest(path: Path | str, *, kind: str | None = None) -> tuple[dict[str, Any], Path]:
    """The checked manifest of a model folder and the path of its data file, whose checksum is
    verified: format, version (newer ones refused), kind, file present and intact."""
    path = Path(path)
    manifest_path, manifest = _read_manifest(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFormatError(f"{manifest_path}: not a shelf model manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFormatError(f"{manifest_path}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{path}: saved with model format version {version}, newer than this shelf reads "
            f"({FORMAT_VERSION}); upgrade shelf to load it"
        )
    found_kind = manifest.get("kind")
    if kind is not None and found_kind != kind:
        raise ModelFormatError(f"{path}: holds a {found_kind!r} model, expected {kind!r}")
    info = manifest.get("arrays") or {}
    arrays_path = path / str(info.get("file", ARRAYS))
    if not arrays_path.is_file():
        raise ModelFormatError(f"{arrays_path}: missing")
    if file_sha256(arrays_path) != info.get("sha256"):
        raise ModelFormatError(f"{arrays_path}: checksum mismatch; the file is corrupted or was altered")
    return manifest, arrays_path


def load_bundle(path: Path | str, *, kind: str | None = None) -> Bundle:
    """Read a model folder written by ``save_bundle``; refuse anything doubtful with a clear error."""
    path = Path(path)
    manifest, arrays_path = read_manifest(path, kind=kind)
    info = manifest["arrays"]
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError) as e:  # pragma: no cover - the checksum catches these first
        raise ModelFormatError(f"{arrays_path}: unreadable ({e})") from e
    for name in info.get("text", []):
        arrays[name] = arrays[name].astype(object)
    return Bundle(
        kind=str(manifest["kind"]),
        config=dict(manifest.get("config") or {}),
        arrays=arrays,
        meta=dict(manifest.get("meta") or {}),
        path=path,
        format_version=int(manifest["format_version"]),
    )


def read_kind(path: Path | str) -> str:
    """The kind of model saved at ``path`` (to pick its class from a registry).

    Reads only the manifest, so models with their own weight formats (safetensors) are found too;
    the class's own ``load`` then checks everything else.
    """
    manifest_path, manifest = _read_manifest(Path(path))
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if not isinstance(kind, str) or not kind:
        raise ModelFormatError(f"{manifest_path}: names no model kind")
    return kind


# ---------------------------------------------------------------------------------------------
# Helpers for configs and sparse matrices


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen dataclass config as JSON-ready values (tuples become lists, mappings dicts)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ModelError(f"config must be a dataclass instance, got {type(config).__name__}")

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, (np.floating, np.integer)):
            return value.item()
        return value

    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


C = TypeVar("C")


def _restore(annotation: Any, value: Any) -> Any:
    """Turn JSON lists back into tuples where the annotation says tuple (recursively)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            if value is not None and (typing.get_origin(arg) is tuple or arg is tuple):
                return _restore(arg, value)
        return value
    if (origin is tuple or annotation is tuple) and isinstance(value, list):
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_restore(args[0], v) for v in value)
        if args and len(args) == len(value):
            return tuple(_restore(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    return value


def config_from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """Rebuild a config dataclass; unknown keys are refused (a typo must not pass silently)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise ModelFormatError(f"{cls.__name__}: unknown config field(s) {sorted(unknown)}")
    kwargs = {k: _restore(hints.get(k, Any), v) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{cls.__name__}: invalid saved config ({e})") from e


def pack_csr(prefix: str, matrix: sp.csr_matrix | sp.csr_array) -> dict[str, np.ndarray]:
    """A CSR matrix as plain arrays ``prefix.data``, ``.indices``, ``.indptr``, ``.shape``."""
    m = sp.csr_matrix(matrix)
    return {
        f"{prefix}.data": m.data,
        f"{prefix}.indices": m.indices,
        f"{prefix}.indptr": m.indptr,
        f"{prefix}.shape": np.asarray(m.shape, dtype=np.int64),
    }


def unpack_csr(arrays: Mapping[str, np.ndarray], prefix: str) -> sp.csr_matrix:
    shape = tuple(int(s) for s in arrays[f"{prefix}.shape"])
    return sp.csr_matrix(
        (arrays[f"{prefix}.data"], arrays[f"{prefix}.indices"], arrays[f"{prefix}.indptr"]), shape=shape
    )


def check_finite(name: str, *arrays: np.ndarray) -> None:
    """Raise ModelFitError when training produced NaN or inf (like implicit's ModelFitError)."""
    for a in arrays:
        if a.size and not np.all(np.isfinite(a)):
            raise ModelFitError(
                f"{name}: training produced NaN or infinite values; lower the learning rate or "
                f"raise the regularization"
            )


__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "ModelError",
    "ModelFitError",
    "ModelFormatError",
    "NotFittedError",
    "check_finite",
    "config_from_dict",
    "config_to_dict",
    "load_bundle",
    "pack_csr",
    "read_kind",
    "save_bundle",
    "unpack_csr",
]
