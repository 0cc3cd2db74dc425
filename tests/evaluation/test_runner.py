from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pytest

from shelf.errors import ShelfError
from shelf.evaluation.batch import recommend_sessions_csv, recommend_users_csv
from shelf.evaluation.errors import (
    EmptySplitError,
    InvalidCutoffError,
    ModelOutputError,
    NoTestUsersError,
)
from shelf.evaluation.peers import (
    ALSPeer,
    BPRPeer,
    Popularity,
    RecentThenPopular,
    Trending,
    default_peers,
)
from shelf.evaluation.report import write_report
from shelf.evaluation.runner import EvaluationOptions, evaluate
from shelf.evaluation.splits import TableSource, TemporalSplit, session_split_from_tables
from shelf.evaluation.targets import CART_OR_PURCHASE, PURCHASE, WEIGHTED
from shelf.models.base import BatchRetriever, Interactions, Query, Scored

from .conftest import START, event_table

CUT = START + timedelta(days=45)
SPLIT = TemporalSplit(CUT, timedelta(days=15))


def test_peers_are_batch_retrievers() -> None:
    for peer in (Popularity(), Trending(), RecentThenPopular(), ALSPeer(), BPRPeer()):
        assert isinstance(peer, BatchRetriever)


def test_end_to_end_with_peers(shop) -> None:
    source = TableSource(*shop)
    result = evaluate(source, SPLIT, default_peers(), ks=(5, 10), options=EvaluationOptions(batch_size=32))
    assert set(result.runs) == {"popularity", "trending", "recent+popular", "als", "bpr"}
    assert "any engagement" in result.target and "any engagement" in result.table()
    for model in result.runs:
        for view in ("all", "new"):
            for metric in ("ndcg", "recall", "precision", "hitrate", "mrr", "map", "coverage", "novelty", "diversity", "exposure_gini", "new_item_share", "avg_popularity"):
                value = result.value(model, metric, 10, view)
                assert np.isfinite(value), (model, view, metric)
                assert value >= 0 or metric == "novelty"
    assert result.runs["als"].params and set(result.runs["als"].params) == {"factors", "regularization"}
    # the new view removes seen items: recent+popular then equals popularity there
    assert result.value("recent+popular", "ndcg", 10, "new") == pytest.approx(result.value("popularity", "ndcg", 10, "new"))
    # recall grows with K
    assert result.value("als", "recall", 10) >= result.value("als", "recall", 5)
    cmp = result.compare("recent+popular", "popularity", "ndcg", 10)
    assert cmp.n_users == result.rows[0].n_users or cmp.n_users > 0
    segs = result.segments("als", "ndcg", 10)
    assert {r.kind for r in segs} >= {"history length", "age band", "gender"}
    assert sum(r.n_users for r in segs if r.kind == "gender") == len(result.users["all"])
    groups = result.item_groups("als", 10)
    assert {g.kind for g in groups} == {"category", "price band", "new launch"}
    assert sum(g.exposure_share for g in groups if g.kind == "category") == pytest.approx(1.0)


def test_targets_are_configurable_and_stated(shop) -> None:
    source = TableSource(*shop)
    models = {"popularity": Popularity}
    for target in (CART_OR_PURCHASE, PURCHASE, WEIGHTED):
        result = evaluate(source, SPLIT, models, ks=(10,), target=target, views=("all",))
        assert result.target == target.describe() and target.name in result.table()
    n_purchase = len(evaluate(source, SPLIT, models, ks=(10,), target=PURCHASE).users["all"])
    n_any = len(evaluate(source, SPLIT, models, ks=(10,)).users["all"])
    assert n_purchase < n_any


def test_cold_users_view(shop) -> None:
    events, items, users = shop
    import pyarrow as pa

    newcomer = event_table([{"user_id": "new1", "item_id": "i001", "timestamp": CUT + timedelta(days=1)}])
    source = TableSource(pa.concat_tables([events, newcomer]), items, users)
    split = TemporalSplit(CUT, timedelta(days=15), include_cold=True)
    result = evaluate(source, split, {"popularity": Popularity}, ks=(10,))
    assert result.value("popularity", "recall", 10, "cold") in (0.0, 1.0)
    kinds = {(r.kind, r.segment) for r in result.segments("popularity", "recall", 10)}
    assert ("new vs returning", "new (no history)") in kinds and ("new vs returning", "returning") in kinds


@dataclass
class Broken:
    """A model whose outputs are wrong in a chosen way."""

    mode: str
    name: str = "broken"

    def fit(self, data: Interactions) -> Broken:
        self.data_ = data
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        if self.mode == "shape":
            return np.zeros((len(users), self.data_.n_items + 1), dtype=np.float32)
        if self.mode == "nan":
            return np.full((len(users), self.data_.n_items), np.nan, dtype=np.float32)
        return np.random.default_rng(0).random((len(users), self.data_.n_items)).astype(np.float32)

    def retrieve(self, query: Query, n: int) -> Scored:
        ids = self.data_.items.ids[:n]
        if self.mode == "unknown":
            ids = np.array(["no-such-item", *ids[1:]], dtype=object)
        if self.mode == "duplicate":
            ids = np.array([ids[0], ids[0], *ids[2:]], dtype=object)
        return Scored(ids, np.linspace(1, 0, len(ids)).astype(np.float32))


def test_bad_inputs_raise_clear_errors(shop) -> None:
    source = TableSource(*shop)
    with pytest.raises(InvalidCutoffError, match="larger than the catalogue"):
        evaluate(source, SPLIT, {"p": Popularity}, ks=(10, 10_000))
    for mode in ("shape", "nan"):
        with pytest.raises(ModelOutputError):
            evaluate(source, SPLIT, {"b": lambda mode=mode: Broken(mode)}, ks=(10,))
    train = event_table([{"session_id": f"s{i}", "item_id": it, "timestamp": START + timedelta(minutes=i)} for i, it in enumerate(["a", "b", "c", "a", "b"])])
    test = event_table([{"session_id": "t", "item_id": it, "timestamp": START + timedelta(days=1, minutes=i)} for i, it in enumerate(["a", "b", "c"])])
    sessions = session_split_from_tables(train, test)
    for mode, message in (("unknown", "unknown"), ("duplicate", "duplicated")):
        with pytest.raises(ModelOutputError, match=message):
            evaluate(None, sessions, {"b": lambda mode=mode: Broken(mode)}, ks=(2,))
    with pytest.raises(EmptySplitError):
        evaluate(source, TemporalSplit(START + timedelta(days=300), timedelta(days=1)), {"p": Popularity})
    only_new = event_table([{"user_id": "a", "item_id": "x", "timestamp": START}, {"user_id": "b", "item_id": "y", "timestamp": CUT}])
    with pytest.raises(NoTestUsersError):
        evaluate(TableSource(only_new), TemporalSplit(CUT, timedelta(days=1)), {"p": Popularity}, ks=(1,))
    assert issubclass(ModelOutputError, ShelfError) and issubclass(EmptySplitError, ShelfError)


def test_session_evaluation_with_peers() -> None:
    rng = np.random.default_rng(1)
    rows, t = [], 0
    for s in range(200):
        base = int(rng.integers(0, 10)) * 3
        for j in range(int(rng.integers(2, 6))):
            rows.append({"session_id": f"s{s}", "item_id": f"i{(base + j) % 30}", "timestamp": START + timedelta(minutes=t)})
            t += 1
    events = event_table(rows)
    cut_row = int(len(rows) * 0.8)
    while rows[cut_row]["session_id"] == rows[cut_row - 1]["session_id"]:
        cut_row += 1
    split = session_split_from_tables(events.slice(0, cut_row), events.slice(cut_row), validation_window=timedelta(hours=2))
    result = evaluate(None, split, default_peers(), ks=(5, 10))
    # the sequence is deterministic within a session: co-occurrence models beat popularity
    assert result.value("als", "hitrate", 5) > result.value("popularity", "hitrate", 5)
    assert "next item" in result.target


class RetrieveOnly:
    """Only fit/retrieve: forces the runner's retrieve() path for sessions."""

    name = "retrieve-only"

    def fit(self, data: Interactions) -> RetrieveOnly:
        self.inner = Popularity().fit(data)
        return self

    def retrieve(self, query: Query, n: int) -> Scored:
        return self.inner.retrieve(query, n)


def test_session_retrieve_path_matches_batch_path() -> None:
    train = event_table([{"session_id": f"s{i // 3}", "item_id": f"i{i % 7}", "timestamp": START + timedelta(minutes=i)} for i in range(60)])
    test = event_table([{"session_id": f"t{i // 3}", "item_id": f"i{i % 5}", "timestamp": START + timedelta(days=1, minutes=i)} for i in range(30)])
    split = session_split_from_tables(train, test)
    a = evaluate(None, split, {"m": Popularity}, ks=(3,))
    b = evaluate(None, split, {"m": RetrieveOnly}, ks=(3,))
    for view in ("all", "new"):
        assert a.value("m", "ndcg", 3, view) == pytest.approx(b.value("m", "ndcg", 3, view))


def test_batch_csv(shop, tmp_path) -> None:
    events, items, users = shop
    data = Interactions.from_events(events, item_table=items)
    model = RecentThenPopular().fit(data)
    pseudonymize = lambda raw: raw.removeprefix("shop-")  # noqa: E731
    out = tmp_path / "recs.csv"
    n = recommend_users_csv(model, data, ["shop-u001", "shop-u002", "shop-unknown"], pseudonymize, out, n=5)
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert n == len(rows) == 15
    assert {r["user"] for r in rows} == {"shop-u001", "shop-u002", "shop-unknown"}
    seen = set(events.filter(events["user_id"].to_numpy(zero_copy_only=False) == "u001")["item_id"].to_pylist())
    assert not seen & {r["item"] for r in rows if r["user"] == "shop-u001"}
    assert [r["rank"] for r in rows[:5]] == ["1", "2", "3", "4", "5"]
    sess = tmp_path / "sessions.csv"
    sess.write_text("session,item,type,ts\nA,i001,view,1700000002\nA,i002,view,1700000001\nB,i003,view,1700000000\n")
    out2 = tmp_path / "srecs.csv"
    recommend_sessions_csv(model, sess, out2, n=3)
    srows = list(csv.DictReader(out2.read_text().splitlines()))
    assert [r["item"] for r in srows if r["session"] == "A"][0] == "i001"  # most recent item first
    assert {r["session"] for r in srows} == {"A", "B"}


@dataclass
class Probabilistic(Popularity):
    outputs_probabilities: bool = True
    name: str = "proba"

    def score_users(self, users: np.ndarray) -> np.ndarray:
        s = super().score_users(users)
        return s / (s.max() + 1.0)


def test_probabilities_and_report(shop, tmp_path) -> None:
    result = evaluate(TableSource(*shop), SPLIT, {"proba": Probabilistic, "popularity": Popularity}, ks=(5, 10))
    for metric in ("log_loss", "auc", "ece"):
        assert np.isfinite(result.value("proba", metric, 0))
    path = write_report(result, tmp_path)
    page = path.read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    assert (tmp_path / "calibration.png").exists() and (tmp_path / "exposure.png").exists()
