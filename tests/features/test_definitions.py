"""Declarations are checked when they are made; the version hashes them; JSON round-trips."""

from __future__ import annotations

import pytest

from shelf.features import (
    DAY,
    Attribute,
    EventAggregate,
    FeatureDefinitionError,
    FeatureSet,
    Vocabulary,
    default_feature_set,
)


def test_unknown_event_field_is_refused_at_declaration() -> None:
    with pytest.raises(FeatureDefinitionError, match="field 'revenue' is not a numeric event field"):
        EventAggregate("spend", "user", "user", "sum", ("purchase",), DAY, field="revenue")


def test_unknown_item_field_is_refused_at_declaration() -> None:
    with pytest.raises(FeatureDefinitionError, match="unknown item field 'colour'"):
        Attribute("item_colour", "item", "item", "colour", categorical=True)


def test_unknown_event_type_and_bad_window_are_refused() -> None:
    with pytest.raises(FeatureDefinitionError, match="unknown event type 'click'"):
        EventAggregate("clicks", "user", "user", "count", ("click",), DAY)
    with pytest.raises(FeatureDefinitionError, match="window_s"):
        EventAggregate("views", "user", "user", "count", ("view",), -5)
    with pytest.raises(FeatureDefinitionError, match="group"):
        EventAggregate("views", "users", "user", "count", ("view",), DAY)
    with pytest.raises(FeatureDefinitionError, match="affinity needs by="):
        EventAggregate("aff", "user", "user", "affinity", ("view",), DAY, by="colour")


def test_duplicate_names_refused() -> None:
    f = EventAggregate("views", "user", "user", "count", ("view",), DAY)
    with pytest.raises(FeatureDefinitionError, match="duplicate"):
        FeatureSet([f, f])


def test_version_hashes_declarations_and_json_round_trips() -> None:
    fs = default_feature_set()
    again = FeatureSet.from_json(fs.to_json())
    assert again.version == fs.version and again.names == fs.names
    assert fs.version.startswith("fs-")
    assert fs.without(["candidate"]).version != fs.version
    assert set(fs.groups) == {"user", "item", "user_item", "context", "session", "candidate"}
    with pytest.raises(FeatureDefinitionError, match="unknown feature group"):
        fs.without(["users"])


def test_vocabulary_oov() -> None:
    vocab = Vocabulary.build(["a", "b", "a", None, "c"], min_count=1)
    assert vocab.values[0] == "a" and len(vocab) == 4
    assert vocab.encode(["a", "zzz", None]).tolist() == [1, 0, 0]
    assert Vocabulary.build(["a", "b", "a"], min_count=2).encode(["b"]).tolist() == [0]
