"""SASRec: the conformance suite, a planted sequential pattern, persistence and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shelf.models.base import IdIndex, Interactions, Query
from shelf.models.conformance import CHECKS, RetrieverCase, make_interactions
from shelf.models.io import ModelError, ModelFitError, ModelFormatError, NotFittedError
from shelf.models.retrieval.sasrec import SASRec, SASRecConfig, _gbce_beta, _Sequences, _windows

TINY = SASRecConfig(hidden=16, max_len=8, layers=1, heads=1, dropout=0.0, negatives=16, epochs=3, batch_size=64, seed=3)
CASE = RetrieverCase("sasrec", lambda: SASRec(TINY))


@pytest.fixture(scope="module")
def shop() -> Interactions:
    return make_interactions(seed=0)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_conformance(check, shop: Interactions, tmp_path: Path) -> None:
    check(CASE, shop, tmp_path)


def planted(n_items: int = 30, n_users: int = 400, n_sessions: int = 100, seed: int = 0) -> Interactions:
    """Every sequence walks the catalogue: item i is always followed by item i + 1 (mod n)."""
    rng = np.random.default_rng(seed)
    user, item, session = [], [], []
    for owner in range(n_users + n_sessions):
        start, length = rng.integers(n_items), rng.integers(3, 12)
        walk = (start + np.arange(length)) % n_items
        item.extend(walk)
        anonymous = owner >= n_users
        user.extend([-1 if anonymous else owner] * length)
        session.extend([owner - n_users if anonymous else -1] * length)
    n = len(item)
    return Interactions(
        user=np.asarray(user, dtype=np.int32),
        item=np.asarray(item, dtype=np.int32),
        session=np.asarray(session, dtype=np.int32),
        kind=np.zeros(n, dtype=np.int8),
        timestamp=np.arange(n, dtype=np.int64),
        value=np.full(n, np.nan, dtype=np.float32),
        users=IdIndex([f"u{u}" for u in range(n_users)]),
        items=IdIndex([f"i{i}" for i in range(n_items)]),
        sessions=IdIndex([f"s{s}" for s in range(n_sessions)]),
        event_types=("view",),
    )


PLANTED = SASRecConfig(hidden=32, max_len=10, layers=1, heads=2, dropout=0.0, negatives=16, epochs=15, batch_size=64, lr=5e-3, seed=1)


@pytest.fixture(scope="module")
def planted_data() -> Interactions:
    return planted()


@pytest.fixture(scope="module")
def planted_model(planted_data: Interactions) -> SASRec:
    return SASRec(PLANTED).fit(planted_data)


def test_learns_planted_sequence(planted_model: SASRec) -> None:
    hits = [planted_model.retrieve(Query(session_items=(f"i{i}",)), 1).items[0] == f"i{(i + 1) % 30}" for i in range(30)]
    assert np.mean(hits) >= 0.8, f"hit@1 {np.mean(hits):.2f}; chance is 1/30"


def test_session_overrides_history_and_reads_order(planted_model: SASRec) -> None:
    result = planted_model.retrieve(Query(user_id="u0", session_items=("i3", "i4", "i5")), 3)
    assert result.items[0] == "i6"
    assert planted_model.retrieve(Query(session_items=("no-such-item",)), 3).items.size == 0


def test_user_history_and_score_users(planted_model: SASRec, planted_data: Interactions) -> None:
    users = np.arange(50)
    scores = planted_model.score_users(users)
    assert scores.shape == (50, 30) and scores.dtype == np.float32
    last = np.array([planted_data.item[planted_data.user == u][-1] for u in users])
    assert np.mean(scores.argmax(axis=1) == (last + 1) % 30) >= 0.8
    assert np.isneginf(planted_model.score_users(np.array([-1, 10_000]))).all()


def test_exclude(planted_model: SASRec) -> None:
    result = planted_model.retrieve(Query(session_items=("i3",), exclude=frozenset({"i4", "i5"})), 5)
    assert not {"i4", "i5"} & set(result.items.tolist())
    assert len(result) == 5


def test_exclude_seen() -> None:
    model = SASRec(SASRecConfig(**{**PLANTED.to_json(), "epochs": 1, "exclude_seen": True})).fit(planted())
    result = model.retrieve(Query(session_items=("i1", "i2", "i3")), 30)
    assert not {"i1", "i2", "i3"} & set(result.items.tolist()) and len(result) == 27


def test_save_load_identical(planted_model: SASRec, tmp_path: Path) -> None:
    loaded = SASRec.load(planted_model.save(tmp_path / "m"))
    users = np.arange(20)
    np.testing.assert_array_equal(planted_model.score_users(users), loaded.score_users(users))
    q = Query(session_items=("i7", "i8"))
    np.testing.assert_array_equal(planted_model.retrieve(q, 10).scores, loaded.retrieve(q, 10).scores)


def test_refuses_newer_and_corrupted(planted_model: SASRec, tmp_path: Path) -> None:
    path = planted_model.save(tmp_path / "m")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="newer"):
        SASRec.load(path)
    path = planted_model.save(tmp_path / "m2")
    weights = path / "sasrec.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match="checksum"):
        SASRec.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="corrupted"):
        SASRec.load(path)


def test_deterministic(planted_data: Interactions) -> None:
    config = SASRecConfig(**{**PLANTED.to_json(), "epochs": 2, "dropout": 0.3})
    a, b = SASRec(config).fit(planted_data), SASRec(config).fit(planted_data)
    np.testing.assert_array_equal(a.score_users(np.arange(10)), b.score_users(np.arange(10)))
    c = SASRec(SASRecConfig(**{**config.to_json(), "seed": 2})).fit(planted_data)
    assert not np.array_equal(a.score_users(np.arange(10)), c.score_users(np.arange(10)))


def test_early_stopping_keeps_best(planted_data: Interactions) -> None:
    config = SASRecConfig(**{**PLANTED.to_json(), "epochs": 60, "validation_sequences": 100, "patience": 3})
    model = SASRec(config).fit(planted_data)
    assert len(model.validation_history_) == model.epochs_trained_ <= 60
    assert max(model.validation_history_) >= 0.9
    if model.epochs_trained_ < 60:  # stopped early: the last `patience` epochs did not improve
        assert max(model.validation_history_[-3:]) <= max(model.validation_history_[:-3])


def test_event_type_filter_and_no_sessions(planted_data: Interactions) -> None:
    with pytest.raises(ModelFitError, match="event_types"):
        SASRec(SASRecConfig(**{**TINY.to_json(), "event_types": ("purchase",)})).fit(planted_data)
    model = SASRec(SASRecConfig(**{**TINY.to_json(), "event_types": ("view",), "include_sessions": False}))
    assert model.fit(planted_data).is_fitted


@pytest.mark.parametrize(
    "bad",
    [{"hidden": 0}, {"hidden": 30, "heads": 4}, {"dropout": 1.0}, {"gbce_t": 1.5}, {"lr": float("nan")},
     {"negatives": 0}, {"batch_size": 2.5}, {"event_types": "view"}, {"patience": 0}],
)
def test_bad_config(bad: dict) -> None:
    with pytest.raises(ModelError):
        SASRecConfig(**bad)


def test_not_fitted_and_nan_guard(planted_data: Interactions) -> None:
    with pytest.raises(NotFittedError):
        SASRec(TINY).score_users(np.arange(3))
    with pytest.raises(ModelFitError, match="NaN|nan|inf"):
        SASRec(SASRecConfig(**{**TINY.to_json(), "lr": 1e30})).fit(planted_data)


def test_gbce_beta() -> None:
    assert _gbce_beta(16, 1001, 0.0) == pytest.approx(1.0)  # plain BCE
    assert _gbce_beta(16, 1001, 1.0) == pytest.approx(16 / 1000)  # beta = alpha
    assert _gbce_beta(16, 1001, 0.75) == pytest.approx(1 - 0.75 * (1 - 16 / 1000))


def test_windows_cover_every_transition_once() -> None:
    items = np.arange(1, 13)  # one sequence of 12 items -> 11 transitions
    seqs = _Sequences(items, np.array([0]), np.array([12]), np.array([0]))
    inputs, targets, lengths = _windows(seqs, max_len=4)
    assert inputs.shape == (3, 4) and lengths.tolist() == [4, 4, 3]
    pairs = {(int(a), int(b)) for a, b in zip(inputs[inputs > 0], targets[inputs > 0], strict=True)}
    assert pairs == {(i, i + 1) for i in range(1, 12)}
    assert inputs[0].tolist() == [8, 9, 10, 11]  # newest window first and full; older ones left-padded
    assert inputs[2].tolist() == [0, 1, 2, 3]


def test_fast_dropout_keeps_expectation_and_seed() -> None:
    import torch

    from shelf.models.retrieval.sasrec import _dropout

    x = torch.ones(200_000)
    torch.manual_seed(0)
    a = _dropout(x, 0.2, training=True)
    assert abs(float((a == 0).float().mean()) - 51 / 256) < 0.005  # rate rounded to 1/256
    assert abs(float(a.mean()) - 1.0) < 0.01  # kept values rescaled: expectation unchanged
    torch.manual_seed(0)
    assert torch.equal(a, _dropout(x, 0.2, training=True))
    assert _dropout(x, 0.2, training=False) is x
