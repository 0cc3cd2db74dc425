"""Bundles: cards, hashes, atomic promotion, rollback, refusal of damaged or newer bundles."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from shelf.registry import BUNDLE_FORMAT_VERSION, BundleError, Card, Registry


def make_card() -> Card:
    return Card(
        version="",
        created_at="2026-11-27T00:00:00+00:00",
        snapshot_as_of="2026-11-01T00:00:00+00:00",
        data_counts={"events": 10},
        parameters={"als": {"factors": 8}},
        metrics={"ndcg@10": 0.1},
        feature_set_version="f1",
        code_version="test",
    )


def publish(registry: Registry, payload: bytes = b"weights") -> str:
    with registry.stage() as folder:
        (folder / "model.bin").write_bytes(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "ids.json").write_text("[]")
        return registry.publish(folder, make_card()).version


def test_publish_versions_and_card(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert publish(registry) == "v0001"
    assert publish(registry) == "v0002"
    card = registry.verify("v0002")
    assert set(card.files) == {"model.bin", "sub/ids.json"}
    assert card.format_version == BUNDLE_FORMAT_VERSION
    assert not list((tmp_path / "registry" / "staging").iterdir())


def test_promote_and_rollback(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first, second = publish(registry), publish(registry)
    assert registry.promoted() is None
    registry.promote(first)
    registry.promote(second)
    assert registry.promoted() == second
    assert registry.rollback() == first
    assert registry.promoted() == first
    with pytest.raises(BundleError, match="nothing to roll back"):
        registry.rollback()


def test_corrupted_bundle_is_never_promoted(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    good, bad = publish(registry), publish(registry)
    registry.promote(good)
    (registry.path(bad) / "model.bin").write_bytes(b"flipped")
    with pytest.raises(BundleError, match="corrupted"):
        registry.promote(bad)
    assert registry.promoted() == good


def test_newer_format_and_damaged_card_are_refused(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    version = publish(registry)
    card_path = registry.path(version) / "card.json"
    raw = orjson.loads(card_path.read_bytes())
    raw["format_version"] = BUNDLE_FORMAT_VERSION + 1
    card_path.write_bytes(orjson.dumps(raw))
    with pytest.raises(BundleError, match="newer"):
        registry.promote(version)
    card_path.write_bytes(b"{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        registry.card(version)


def test_unknown_version_lists_known(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    publish(registry)
    with pytest.raises(BundleError, match="v0001"):
        registry.card("v0009")
