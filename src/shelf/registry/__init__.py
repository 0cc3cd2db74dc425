"""Versioned model bundles with cards, and the promoted pointer (promote / rollback)."""

from shelf.registry.bundles import BUNDLE_FORMAT_VERSION, BundleError, Card, Registry

__all__ = ["BUNDLE_FORMAT_VERSION", "BundleError", "Card", "Registry"]
