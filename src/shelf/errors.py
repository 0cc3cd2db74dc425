"""Exceptions shared by every layer. Each carries a message a person at 3 a.m. can act on."""

from __future__ import annotations


class ShelfError(Exception):
    """Base of every error shelf raises on purpose (the CLI prints these in one line)."""


class SettingsError(ShelfError):
    """The process was started with settings it must refuse (e.g. a default secret)."""


class InputError(ShelfError):
    """Input that cannot be read at all: wrong format, missing column, empty file."""


class LakeError(ShelfError):
    """The lake is missing, locked by another writer, or its manifest is damaged."""
