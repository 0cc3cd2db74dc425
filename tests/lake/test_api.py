"""The public API other packages code against."""

import shelf.lake


def test_public_names() -> None:
    assert set(shelf.lake.__all__) == {
        "FORMAT_VERSION", "AppendReport", "EventSource", "Lake", "LakeOptions", "LakeStats",
        "LakeWriter", "Manifest", "ParquetParts", "Part", "Snapshot",
    }
    for name in ("events", "items", "users", "item_history", "sql", "count_events"):
        assert callable(getattr(shelf.lake.Snapshot, name))
    for name in ("append_events", "append_items", "append_users", "commit", "abort"):
        assert callable(getattr(shelf.lake.LakeWriter, name))
