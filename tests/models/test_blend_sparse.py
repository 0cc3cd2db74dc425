"""The blend's per-request path (sparse per-source lists) gives exactly what the dense definition
gives: every source's whole-catalogue vector, fused, with the fallback filling up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shelf.models.base import Interactions, Query
from shelf.models.conformance import make_interactions, sample_queries
from shelf.models.retrieval import BlendConfig, BlendRetriever, PopularityRetriever, default_blend
from shelf.models.retrieval._base import NEG_INF, top_indices


def dense_reference(blend: BlendRetriever, query: Query, n: int) -> list[str]:
    """The blend as first written: dense vectors over the catalogue for every source."""
    stage = blend.stage(query)
    weights = blend.weights_for(stage)
    size = len(blend.item_ids_)
    excluded = np.zeros(size, dtype=bool)
    if query.exclude:
        idx = blend.items_lookup(query.exclude)
        excluded[idx[idx >= 0]] = True
    raw = {}
    fused = np.zeros(size, dtype=np.float64)
    for name, source in blend.active_sources.items():
        scores = source.score_query(query)
        raw[name] = scores
        w = weights.get(name, 0.0)
        if w <= 0 or stage == "context":
            continue
        masked = np.where(excluded, NEG_INF, scores)
        top = top_indices(masked, blend.config.candidates_per_source)
        if len(top):
            fused[top] += blend._contributions(top, masked[top].astype(np.float64), w)
    demoted = np.zeros(size, dtype=bool)
    if stage == "user":
        demoted[blend._seen_items(query.user_id)] = True
    fused[demoted] = 0.0
    chosen = top_indices(np.where((fused > 0) & ~excluded, fused, -np.inf), n)
    if len(chosen) < n:
        fill = blend._fill_order(raw)
        fill[demoted] -= 10.0
        fill[excluded] = -np.inf
        fill[chosen] = -np.inf
        chosen = np.concatenate([chosen, top_indices(fill, n - len(chosen))])
    return blend.item_ids_[chosen].tolist()


def queries(data: Interactions) -> list[Query]:
    out = list(sample_queries(data))
    items = [str(i) for i in data.items.ids]
    users = [str(u) for u in data.users.ids]
    out += [Query(user_id=u, exclude=frozenset(items[3:12])) for u in users[:6]]
    out += [Query(session_items=tuple(items[5:8]), exclude=frozenset(items[:20]))]
    return out


@pytest.fixture(scope="module")
def data() -> Interactions:
    return make_interactions(seed=4)


@pytest.mark.parametrize("fusion", ["rrf", "score"])
@pytest.mark.parametrize("demote_seen", [False, True])
def test_sparse_path_matches_dense_definition(data: Interactions, fusion: str, demote_seen: bool) -> None:
    blend = default_blend(seed=2)
    blend = BlendRetriever(blend.sources, BlendConfig(weights=blend.config.weights, session_weights=blend.config.session_weights, candidates_per_source=7))
    blend.fit(data)
    blend.fusion_ = fusion
    blend.demote_seen_ = demote_seen
    for query in queries(data):
        for n in (3, 10, 25, data.n_items + 5):
            got = blend.retrieve(query, n).items.tolist()
            assert got == dense_reference(blend, query, n), f"{query} n={n}"
            with_scores = blend.candidates(query, n)
            assert with_scores.scored.items.tolist() == got
            for name, values in with_scores.source_scores.items():
                dense = blend.active_sources[name].score_query(query)[blend.items_lookup(got)]
                np.testing.assert_array_equal(values, np.where(np.isfinite(dense), dense, np.nan).astype(np.float32))


def test_retrieve_skips_sources_that_neither_vote_nor_fill(data: Interactions) -> None:
    blend = default_blend(seed=2).fit(data)
    query = Query(user_id=str(data.users.ids[0]))
    full = blend.candidates(query, 10)
    lean = blend.candidates(query, 10, source_scores=False)
    assert lean.scored.items.tolist() == full.scored.items.tolist()
    assert lean.source_scores == {}
    assert set(full.source_scores) == set(blend.active_sources)


def test_top_of_matches_a_full_sort_with_ties_infinities_and_nan() -> None:
    from shelf.models.retrieval.scores import top_of

    rng = np.random.default_rng(3)
    for _ in range(200):
        size = int(rng.integers(1, 40))
        scores = rng.integers(0, 5, size=size).astype(np.float32)
        scores[rng.random(size) < 0.2] = -np.inf
        scores[rng.random(size) < 0.1] = np.nan
        finite = np.flatnonzero(np.isfinite(scores))
        expected = finite[np.lexsort((finite, -scores[finite]))]
        for n in (1, 3, size, size + 2):
            assert top_of(scores, n).tolist() == expected[:n].tolist()


def test_a_refit_forgets_the_previous_fits_id_lookups() -> None:
    first, second = make_interactions(seed=1), make_interactions(seed=2, users=False)
    blend = default_blend(seed=2).fit(first)
    blend.retrieve(Query(user_id=str(first.users.ids[0]), exclude=frozenset([str(first.items.ids[0])])), 5)
    blend.demote_seen_ = True
    blend._seen_items(str(first.users.ids[0]))  # builds the user lookup
    blend.fit(second)
    assert blend.items_lookup([str(i) for i in second.items.ids]).tolist() == list(range(second.n_items))
    blend.demote_seen_ = True
    for u in range(min(5, second.n_users)):
        seen = blend._seen_items(str(second.users.ids[u]))
        expected = np.unique(second.item[second.user == u])
        assert seen.tolist() == expected.tolist()


def test_sources_share_the_blends_item_lookup_and_a_sessions_lookup_is_done_once() -> None:
    from shelf.models.base import IdIndex

    data = make_interactions(seed=3)
    blend = default_blend().fit(data)
    cold = [blend.retrieve(q, 20).items.tolist() for q in sample_queries(data)]
    blend.warm()
    shared = blend.__dict__["_items_index"]
    assert all(s.__dict__.get("_items_index") is shared for s in blend.sources.values() if hasattr(s, "item_ids_"))
    assert [blend.retrieve(q, 20).items.tolist() for q in sample_queries(data)] == cold  # same answers

    index = IdIndex(["a", "b", "c"])
    session = ("c", "x", "a")
    first = index.lookup(session)
    assert index.lookup(session) is first and first.tolist() == [2, -1, 0]
    with pytest.raises(ValueError):
        first[0] = 5  # shared between the sources of a request: read-only
    assert index.lookup(("c", "x", "a")).tolist() == [2, -1, 0]  # an equal tuple, looked up again
    assert index.lookup(("b",)).tolist() == [1] and index.lookup(["a"]).flags.writeable


def test_skipping_own_items_sources_when_their_items_are_all_excluded_changes_no_answer() -> None:
    """A shopper without history whose session items are all excluded gets nothing from repeat
    (it proposes only their own items), so the blend does not ask it: the same answers."""
    from shelf.models.retrieval import RepeatRetriever

    data = make_interactions(seed=5)
    blend = default_blend().fit(data)
    blend.warm()
    items = [str(i) for i in data.items.ids]
    rng = np.random.default_rng(0)
    asked: list[Query] = []
    original = RepeatRetriever._query_scores

    def spy(self: RepeatRetriever, query: Query) -> object:
        asked.append(query)
        return original(self, query)

    queries = []
    for k in range(30):
        session = tuple(items[j] for j in rng.integers(len(items), size=int(rng.integers(1, 5))))
        exclude = frozenset(session) if k % 3 else frozenset(session[:-1])  # some keep one item in play
        queries.append(Query(session_items=session, exclude=exclude))
    RepeatRetriever.own_items_only = False
    try:
        RepeatRetriever._query_scores = spy  # type: ignore[method-assign]
        asking = [blend.retrieve(q, 15) for q in queries]
        asked_before = len(asked)
        RepeatRetriever.own_items_only = True
        skipping = [blend.retrieve(q, 15) for q in queries]
    finally:
        RepeatRetriever.own_items_only = True
        RepeatRetriever._query_scores = original  # type: ignore[method-assign]
    assert len(asked) - asked_before < asked_before  # it was skipped for some queries
    for a, b in zip(asking, skipping, strict=True):
        assert a.items.tolist() == b.items.tolist() and a.scores.tolist() == b.scores.tolist() and a.sources.tolist() == b.sources.tolist()


def test_banned_items_equal_the_lookup_of_the_exclusions() -> None:
    """``_banned`` (which reuses the session lookup when the exclusions are the session's own
    items) gives what looking the exclusions up gives: ascending unique known indices, and whether
    every known session item is among them; duplicates, unknown ids, supersets and partial
    exclusions included."""
    data = make_interactions(seed=5)
    blend = default_blend().fit(data)
    blend.warm()
    items = [str(i) for i in data.items.ids]
    users = [str(u) for u in data.users.ids]
    rng = np.random.default_rng(3)

    def reference(query: Query, stage: str) -> tuple[list[int], bool]:
        found = blend.items_lookup(sorted(query.exclude))
        unique = sorted({int(i) for i in found if i >= 0})
        own = [int(i) for i in blend.items_lookup(list(query.session_items)) if i >= 0]
        return unique, stage == "session" and all(i in unique for i in own)

    cases = []
    for k in range(60):
        session = tuple(items[j] for j in rng.integers(len(items), size=int(rng.integers(1, 6))))
        session += ("no-such-item",) * (k % 4 == 0) + session[:1] * (k % 5 == 0)  # unknown ids, repeats
        exclude = [frozenset(session), frozenset(session) | {items[k]}, frozenset(session[1:]), frozenset({"no-such-item"}), frozenset({items[k]})][k % 5]
        user = users[k % len(users)] if k % 7 == 0 else None
        cases.append(Query(user_id=user, session_items=session, exclude=exclude))
    cases.append(Query(exclude=frozenset(items[:3])))  # no session: context stage
    cases.append(Query(session_items=("no-such-item",), exclude=frozenset({"no-such-item"})))
    for query in cases:
        stage = blend.stage(query)
        banned, own = blend._banned(query, stage)
        assert banned.dtype == np.int64 and (banned.tolist(), own) == reference(query, stage)


def test_no_request_compiles_a_kernel_after_warm(tmp_path: Path) -> None:
    """Serving loads a bundle and warms its kernels; a request that then met a new argument type
    (a read-only array is a type of its own to numba) would compile for seconds mid-traffic.
    Checked in a fresh process, as serving runs: this one compiled whatever the fits asked for."""
    from shelf.models.retrieval import ContentConfig, ContentRetriever

    data = make_interactions(seed=7)
    default_blend().fit(data).save(tmp_path / "blend")
    # The content source with item clusters too (the path of catalogues past approximate_from).
    BlendRetriever(
        {"content": ContentRetriever(ContentConfig(approximate_from=1)), "popularity": PopularityRetriever()},
        BlendConfig(weights={"content": 1.0, "popularity": 0.3}),
    ).fit(data).save(tmp_path / "clustered")
    items = [str(i) for i in data.items.ids]
    rng = np.random.default_rng(0)
    sessions = [[items[j] for j in rng.integers(len(items), size=int(rng.integers(1, 6)))] for _ in range(20)]
    script = f"""
import json, sys
import numba
from shelf.models.base import Query
from shelf.models.retrieval import BlendRetriever, kernels
models = [BlendRetriever.load(sys.argv[1] + "/" + name) for name in ("blend", "clustered")]
for model in models:
    model.warm()
def signatures():
    return {{name: len(f.signatures) for name, f in vars(kernels).items() if isinstance(f, numba.core.registry.CPUDispatcher)}}
before = signatures()
users = {[str(u) for u in data.users.ids][:20]!r}
for user, session in zip(users, {sessions!r}):
    session = tuple(session)
    for query in (
        Query(user_id=user),
        Query(session_items=session, exclude=frozenset(session)),
        Query(session_items=session),
        Query(session_items=list(session)),
        Query(user_id=user, session_items=session, exclude=frozenset(session)),
        Query(user_id="nobody", session_items=session),
        Query(),
    ):
        for model in models:
            model.retrieve(query, 20)
            model.candidates(query, 20)
after = signatures()
print(json.dumps({{name: [before[name], after[name]] for name in after if after[name] != before[name]}}))
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}  # kernel: [signatures after warm, after the requests]
