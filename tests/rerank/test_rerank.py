"""Every business rule, their composition order, and the invariants of any pipeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelf.models.base import Context, Query, Scored
from shelf.rerank import (
    AttributeRule,
    Boost,
    Bury,
    CategoryCaps,
    Dedupe,
    Diversity,
    DropExcluded,
    DropOutOfStock,
    DropPurchased,
    ExposureFairness,
    Fairness,
    ItemMeta,
    MaximalMarginalRelevance,
    NewLaunches,
    Pin,
    Pipeline,
    RerankConfig,
    ReserveNewLaunches,
    build_pipeline,
    exposure_effect,
    gini,
)

NOW = datetime(2024, 6, 1, tzinfo=UTC)
Q = Query(context=Context(timestamp=NOW))


def scored(*items: str) -> Scored:
    n = len(items)
    return Scored(
        np.array(items, dtype=object),
        np.linspace(1.0, 0.1, n, dtype=np.float32) if n else np.array([], np.float32),
        np.array(["model"] * n, dtype=object),
    )


def ids(s: Scored) -> list[str]:
    return [str(i) for i in s.items]


CATALOGUE = {
    "a": ItemMeta(category="shoes/running", brand="acme", stock=5),
    "b": ItemMeta(category="shoes/trail", brand="acme", stock=0),
    "c": ItemMeta(category="shirts", brand="bolt", stock=3),
    "d": ItemMeta(category="shirts", brand="acme", stock=None),
    "e": ItemMeta(category="hats", brand="cap", stock=1, launched_at=NOW - timedelta(days=2)),
    "f": ItemMeta(category="hats", brand="cap", stock=1, launched_at=NOW - timedelta(days=90)),
}


def test_drop_out_of_stock_keeps_unknown_stock_and_uncatalogued_by_default() -> None:
    out = DropOutOfStock(CATALOGUE)(Q, scored("a", "b", "d", "zzz"), 10)
    assert ids(out) == ["a", "d", "zzz"]
    strict = DropOutOfStock(CATALOGUE, unknown="drop")(Q, scored("a", "b", "d", "zzz"), 10)
    assert ids(strict) == ["a", "d"]


def test_drop_purchased_only_for_known_users() -> None:
    rule = DropPurchased(lambda user: {"a"} if user == "u1" else set())
    assert ids(rule(Query(user_id="u1"), scored("a", "c"), 5)) == ["c"]
    assert ids(rule(Query(user_id=None), scored("a", "c"), 5)) == ["a", "c"]


def test_boost_reorders_by_scaled_score() -> None:
    out = Boost(CATALOGUE, "brand", "cap", 10.0)(Q, scored("a", "c", "e"), 3)
    assert ids(out) == ["e", "a", "c"]
    assert out.scores[0] == pytest.approx(10 * 0.1)
    with pytest.raises(ValueError, match="positive"):
        Boost(CATALOGUE, "brand", "cap", 0.0)


def test_bury_and_pin_by_category_prefix() -> None:
    assert ids(Bury(CATALOGUE, "category", "shoes")(Q, scored("a", "c", "b", "d"), 4)) == ["c", "d", "a", "b"]
    assert ids(Pin(CATALOGUE, "category", "hats")(Q, scored("a", "c", "e", "f"), 4)) == ["e", "f", "a", "c"]
    assert ids(Pin(CATALOGUE, "item_id", "f")(Q, scored("a", "f"), 2)) == ["f", "a"]


def test_new_launches_get_their_share_of_slots() -> None:
    rule = ReserveNewLaunches(CATALOGUE, share=0.34, max_age=timedelta(days=30))
    out = rule(Q, scored("a", "c", "d", "f", "e"), 3)
    assert ids(out)[:3] == ["a", "c", "e"]
    assert "d" in ids(out)[3:], "demoted items stay in the tail for later rules"
    # Already enough new items: nothing moves. Without a clock: no-op.
    assert ids(rule(Q, scored("e", "a", "c"), 3)) == ["e", "a", "c"]
    assert ids(rule(Query(), scored("a", "c", "d", "e"), 3)) == ["a", "c", "d", "e"]


def test_category_caps_are_soft() -> None:
    out = CategoryCaps(CATALOGUE, max_per_category=1, level=1)(Q, scored("a", "b", "c", "d", "e"), 3)
    assert ids(out)[:3] == ["a", "c", "e"]
    short = CategoryCaps(CATALOGUE, max_per_category=1)(Q, scored("a", "b"), 2)
    assert ids(short) == ["a", "b"], "with nothing else left, capped items fill the slots"


def test_mmr_trades_relevance_for_coverage() -> None:
    items = scored("a", "b", "c", "d", "e")
    assert ids(MaximalMarginalRelevance(CATALOGUE, lambda_=1.0)(Q, items, 3))[:3] == ["a", "b", "c"]
    diverse = ids(MaximalMarginalRelevance(CATALOGUE, lambda_=0.3)(Q, items, 3))[:3]
    assert diverse == ["a", "c", "e"]


def test_fairness_bounds_each_brand_share() -> None:
    catalogue = {f"x{i}": ItemMeta(brand="big") for i in range(8)} | {f"y{i}": ItemMeta(brand=f"small{i}") for i in range(3)}
    items = scored(*[f"x{i}" for i in range(8)], "y0", "y1", "y2")
    out = ExposureFairness(catalogue, "brand", min_share=0.0, max_share=0.5)(Q, items, 4)
    top = ids(out)[:4]
    assert sum(t.startswith("x") for t in top) == 2
    assert top == ["x0", "x1", "y0", "y1"]
    floor = ExposureFairness(catalogue, "brand", min_share=0.2, max_share=1.0)(Q, items, 5)
    assert set(ids(floor)[:5]) >= {"y0", "y1", "y2"}, "each small brand gets ceil(0.2*5)=1 slot"


def test_exposure_effect_measures_gini_before_and_after() -> None:
    catalogue = {f"x{i}": ItemMeta(brand="big") for i in range(8)} | {f"y{i}": ItemMeta(brand=f"small{i % 3}") for i in range(6)}
    lists = [scored(*[f"x{i}" for i in range(8)], *[f"y{(i + k) % 6}" for i in range(6)]) for k in range(5)]
    rule = ExposureFairness(catalogue, "brand", max_share=0.25)
    after = [rule(Q, s, 4) for s in lists]
    effect = exposure_effect(lists, after, catalogue, n=4, groups=["big", "small0", "small1", "small2"])
    assert effect.share_before["big"] == pytest.approx(1.0)
    assert effect.share_after["big"] < 0.5
    assert effect.gini_after < effect.gini_before
    assert gini([1, 1, 1]) == pytest.approx(0.0)
    assert gini([0, 0, 1]) == pytest.approx(2 / 3)


def test_default_order_pins_win_and_filters_cannot_be_undone() -> None:
    config = RerankConfig(
        rules=(AttributeRule("pin", "item_id", "b"), AttributeRule("bury", "brand", "cap"), AttributeRule("pin", "item_id", "f")),
    )
    out = build_pipeline(config, CATALOGUE)(Q, scored("a", "b", "c", "e", "f"), 4)
    # b is out of stock: the pin cannot bring it back. f is buried, then pinned: the pin wins.
    assert ids(out) == ["f", "a", "c", "e"]
    # Order matters: pinning before burying loses the pin.
    custom = Pipeline((Pin(CATALOGUE, "item_id", "f"), Bury(CATALOGUE, "brand", "cap")))
    assert ids(custom(Q, scored("a", "c", "e", "f"), 4)) == ["a", "c", "f", "e"]


def test_new_launch_quota_then_fairness_then_pins() -> None:
    catalogue = {
        "old1": ItemMeta(brand="big"),
        "old2": ItemMeta(brand="big"),
        "old3": ItemMeta(brand="big"),
        "new1": ItemMeta(brand="big", launched_at=NOW - timedelta(days=1)),
        "other": ItemMeta(brand="small"),
    }
    config = RerankConfig(new_launches=NewLaunches(share=0.34), fairness=Fairness(max_share=0.67))
    items = scored("old1", "old2", "old3", "new1", "other")
    # The quota places new1 third; the brand cap (2 of 3 for "big") then wins, as documented.
    assert ids(build_pipeline(config, catalogue)(Q, items, 3)) == ["old1", "old2", "other"]
    loose = RerankConfig(new_launches=NewLaunches(share=0.34), fairness=Fairness(max_share=1.0))
    assert ids(build_pipeline(loose, catalogue)(Q, items, 3)) == ["old1", "old2", "new1"]
    pinned = RerankConfig(new_launches=NewLaunches(share=0.34), fairness=Fairness(max_share=0.67), rules=(AttributeRule("pin", "item_id", "new1"),))
    assert ids(build_pipeline(pinned, catalogue)(Q, items, 3)) == ["new1", "old1", "old2"]


def test_purchased_filter_via_config() -> None:
    pipeline = build_pipeline(RerankConfig(drop_purchased=True), CATALOGUE, purchased=lambda u: {"a"})
    assert ids(pipeline(Query(user_id="u"), scored("a", "c"), 2)) == ["c"]


def test_dedupe_and_exclude() -> None:
    pipeline = build_pipeline(RerankConfig(), CATALOGUE)
    assert ids(pipeline(Query(exclude=frozenset({"c"})), scored("a", "a", "c", "d"), 5)) == ["a", "d"]
    assert ids(Dedupe()(Q, scored("a", "a"), 2)) == ["a"]


ITEM_IDS = [f"i{k}" for k in range(12)]
metas = st.builds(
    ItemMeta,
    category=st.sampled_from([None, "a", "a/x", "b", "c/y"]),
    brand=st.sampled_from([None, "p", "q", "r"]),
    stock=st.sampled_from([None, 0, 1, 5]),
    launched_at=st.sampled_from([None, NOW - timedelta(days=1), NOW - timedelta(days=100)]),
)
configs = st.builds(
    RerankConfig,
    drop_purchased=st.booleans(),
    unknown_stock=st.sampled_from(["keep", "drop"]),
    rules=st.lists(
        st.builds(
            AttributeRule,
            action=st.sampled_from(["boost", "pin", "bury"]),
            attribute=st.sampled_from(["item_id", "category", "brand"]),
            value=st.sampled_from(["i1", "a", "p", "q"]),
            factor=st.floats(0.1, 10),
        ),
        max_size=3,
    ).map(tuple),
    diversity=st.one_of(st.none(), st.builds(Diversity, method=st.sampled_from(["mmr", "caps"]), max_per_category=st.integers(1, 3))),
    new_launches=st.one_of(st.none(), st.builds(NewLaunches, share=st.floats(0, 1))),
    fairness=st.one_of(st.none(), st.floats(0, 1).flatmap(lambda hi: st.builds(Fairness, min_share=st.floats(0, hi), max_share=st.just(hi)))),
)


@settings(max_examples=150, deadline=None)
@given(
    catalogue=st.dictionaries(st.sampled_from(ITEM_IDS), metas),
    candidates=st.lists(st.sampled_from(ITEM_IDS), max_size=20),
    config=configs,
    n=st.integers(0, 8),
)
def test_any_pipeline_never_duplicates_or_shows_out_of_stock(
    catalogue: dict[str, ItemMeta], candidates: list[str], config: RerankConfig, n: int
) -> None:
    pipeline = build_pipeline(config, catalogue, purchased=lambda u: {"i3"})
    out = pipeline(Query(user_id="u", context=Context(timestamp=NOW)), scored(*candidates), n)
    got = ids(out)
    assert len(got) == len(set(got))
    assert len(got) == min(n, len(got)) and len(got) <= n
    assert set(got) <= set(candidates)
    assert all(catalogue[i].in_stock for i in got if i in catalogue)
    if config.unknown_stock == "drop":
        assert all(i in catalogue for i in got)
    if config.drop_purchased:
        assert "i3" not in got
    eligible = {c for c in candidates if (c in catalogue and catalogue[c].in_stock) or (c not in catalogue and config.unknown_stock == "keep")}
    if config.drop_purchased:
        eligible.discard("i3")
    assert len(got) == min(n, len(eligible)), "rules reorder; only filters shorten the list"


class _Lookups(dict):  # type: ignore[type-arg]
    """A catalogue that counts lookups and refuses to be walked (a walk would be O(catalogue))."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.lookups = 0

    def get(self, key: object, default: object = None) -> object:
        self.lookups += 1
        return super().get(key, default)

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a filter walked the catalogue")

    def keys(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a filter walked the catalogue")

    def values(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a filter walked the catalogue")

    def items(self):  # type: ignore[no-untyped-def]
        raise AssertionError("a filter walked the catalogue")


def test_filters_cost_one_lookup_per_candidate_not_the_catalogue() -> None:
    big = _Lookups({str(i): ItemMeta(stock=i % 3) for i in range(100_000)})
    candidates = scored(*[str(i) for i in range(40)])  # every third one (i % 3 == 0) is out of stock
    kept = DropOutOfStock(big)(Q, candidates, 10)
    assert big.lookups == len(candidates)
    assert ids(kept) == [i for i in ids(candidates) if int(i) % 3 != 0]
    bought = DropPurchased(lambda user: {"4", "5"})(Query(user_id="u"), kept, 10)
    assert "4" not in ids(bought) and "5" not in ids(bought) and len(bought) == len(kept) - 2
    pipeline = build_pipeline(RerankConfig(drop_purchased=True), big, purchased=lambda user: {"1"})
    big.lookups = 0
    assert ids(pipeline(Query(user_id="u", exclude=frozenset({"2"})), candidates, 10))[:3] == ["4", "5", "7"]  # 0, 3 and 6: no stock
    assert big.lookups <= len(candidates)  # excluded and purchased items need none


def test_filters_hand_back_their_input_when_nothing_is_dropped() -> None:
    candidates = scored("a", "c", "d")
    for rule in (Dedupe(), DropOutOfStock(CATALOGUE), DropPurchased(lambda user: {"zz"})):
        assert rule(Query(user_id="u"), candidates, 3) is candidates


_ID = st.sampled_from([*CATALOGUE, "unknown-1", "unknown-2", 7, 8])


@settings(max_examples=200, deadline=None)
@given(items=st.lists(_ID, max_size=12), exclude=st.frozensets(st.sampled_from(["a", "c", "7", "unknown-1"])),
       bought=st.sets(st.sampled_from(["a", "d", "8"])), unknown=st.sampled_from(["keep", "drop"]))
def test_filters_match_a_reference_one_entry_at_a_time(items: list[object], exclude: frozenset[str], bought: set[str], unknown: str) -> None:
    candidates = Scored(np.array(items, dtype=object), np.linspace(1.0, 0.1, len(items), dtype=np.float32), np.array([f"s{i}" for i in range(len(items))], dtype=object))
    query = Query(user_id="u", exclude=exclude)
    rows = [(str(i), float(s), str(src)) for i, s, src in zip(candidates.items, candidates.scores, candidates.sources, strict=True)]

    def as_rows(out: Scored) -> list[tuple[str, float, str]]:
        assert out.sources is not None
        return [(str(i), float(s), str(src)) for i, s, src in zip(out.items, out.scores, out.sources, strict=True)]

    first: dict[str, tuple[str, float, str]] = {}
    for row in rows:
        first.setdefault(row[0], row)
    assert as_rows(Dedupe()(query, candidates, 5)) == list(first.values())
    assert as_rows(DropExcluded()(query, candidates, 5)) == [r for r in rows if r[0] not in exclude]

    def in_stock(item: str) -> bool:
        meta = CATALOGUE.get(item)
        return unknown == "keep" if meta is None else meta.in_stock

    assert as_rows(DropOutOfStock(CATALOGUE, unknown=unknown)(query, candidates, 5)) == [r for r in rows if in_stock(r[0])]  # type: ignore[arg-type]
    assert as_rows(DropPurchased(lambda user: bought)(query, candidates, 5)) == [r for r in rows if r[0] not in bought]


@settings(max_examples=300, deadline=None)
@given(items=st.lists(_ID, max_size=14), exclude=st.frozensets(st.sampled_from(["a", "c", "7", "unknown-1"])),
       bought=st.sets(st.sampled_from(["a", "d", "8", "unknown-2"])), unknown=st.sampled_from(["keep", "drop"]),
       stock=st.booleans(), purchases=st.booleans(), anonymous=st.booleans())
def test_fused_filters_equal_the_filters_in_turn(
    items: list[object], exclude: frozenset[str], bought: set[str], unknown: str, stock: bool, purchases: bool, anonymous: bool
) -> None:
    from shelf.rerank import Filters

    candidates = Scored(np.array(items, dtype=object), np.linspace(1.0, 0.1, len(items), dtype=np.float32), np.array([f"s{i}" for i in range(len(items))], dtype=object))
    query = Query(user_id=None if anonymous else "u", exclude=exclude)
    steps: list[object] = [Dedupe(), DropExcluded()]
    if stock:
        steps.append(DropOutOfStock(CATALOGUE, unknown=unknown))  # type: ignore[arg-type]
    if purchases:
        steps.append(DropPurchased(lambda user: bought))
    expected = Pipeline(tuple(steps))(query, candidates, 100)  # type: ignore[arg-type]
    fused = Filters(CATALOGUE if stock else None, unknown=unknown, purchased=(lambda user: bought) if purchases else None)(query, candidates, 100)  # type: ignore[arg-type]
    assert ids(fused) == ids(expected)
    assert fused.scores.tolist() == expected.scores.tolist()
    assert fused.sources is not None and expected.sources is not None and fused.sources.tolist() == expected.sources.tolist()


@settings(max_examples=300, deadline=None)
@given(items=st.lists(_ID, max_size=14), exclude=st.frozensets(st.sampled_from(["a", "c", "7", "unknown-1"])),
       bought=st.sets(st.sampled_from(["a", "d", "8", "unknown-2"])), unknown=st.sampled_from(["keep", "drop"]),
       purchases=st.booleans(), anonymous=st.booleans(), n=st.integers(0, 16))
def test_filters_over_a_stocked_catalogue_and_their_head_answer_as_over_a_plain_one(
    items: list[object], exclude: frozenset[str], bought: set[str], unknown: str, purchases: bool, anonymous: bool, n: int
) -> None:
    from shelf.rerank import Filters, StockedCatalogue

    candidates = Scored(np.array(items, dtype=object), np.linspace(1.0, 0.1, len(items), dtype=np.float32), np.array([f"s{i}" for i in range(len(items))], dtype=object))
    query = Query(user_id=None if anonymous else "u", exclude=exclude)
    purchased = (lambda user: frozenset(bought)) if purchases else None
    plain = Filters(CATALOGUE, unknown=unknown, purchased=purchased)(query, candidates, 100)  # type: ignore[arg-type]
    stocked = Filters(StockedCatalogue(CATALOGUE), unknown=unknown, purchased=purchased)  # type: ignore[arg-type]
    for got in (stocked(query, candidates, 100), Pipeline((stocked,))(query, candidates, 100), stocked.head(query, candidates, n)):
        want = plain.head(len(got)) if len(got) < len(plain) else plain
        assert ids(got) == ids(want) and got.scores.tolist() == want.scores.tolist()
        assert got.sources is not None and want.sources is not None and got.sources.tolist() == want.sources.tolist()
    assert ids(stocked.head(query, candidates, n)) == ids(plain)[:n]


@settings(max_examples=300, deadline=None)
@given(items=st.lists(_ID, max_size=14), exclude=st.frozensets(st.sampled_from(["a", "c", "7", "unknown-1"])),
       bought=st.sets(st.sampled_from(["a", "d", "8", "unknown-2"])), unknown=st.sampled_from(["keep", "drop"]),
       stocked=st.booleans(), sources=st.booleans(), anonymous=st.booleans(), n=st.integers(0, 16))
def test_first_gives_the_head_as_plain_lists(
    items: list[object], exclude: frozenset[str], bought: set[str], unknown: str, stocked: bool, sources: bool, anonymous: bool, n: int
) -> None:
    """Filters.first and Pipeline.first (what serving writes a response from) answer as the
    reranked Scored converted to lists would: the fast path over a stocked catalogue, duplicates,
    non-string ids, no sources, n = 0 and n beyond the candidates included."""
    from shelf.rerank import Chosen, Filters, StockedCatalogue
    from shelf.rerank.catalogue import as_chosen

    names = np.array([f"s{i}" for i in range(len(items))], dtype=object) if sources else None
    candidates = Scored(np.array(items, dtype=object), np.linspace(1.0, 0.1, len(items), dtype=np.float32), names)
    query = Query(user_id=None if anonymous else "u", exclude=exclude)
    filters = Filters(StockedCatalogue(CATALOGUE) if stocked else CATALOGUE, unknown=unknown, purchased=lambda user: frozenset(bought))  # type: ignore[arg-type]
    head = filters.head(query, candidates, n)
    want = Chosen([str(i) for i in head.items.tolist()], head.scores.tolist(), [str(s) for s in head.sources.tolist()] if head.sources is not None else [""] * len(head))
    assert filters.first(query, candidates, n) == want == as_chosen(head)
    assert Pipeline((filters,)).first(query, candidates, n) == want
    boosted = Pipeline((filters, Boost(CATALOGUE, "brand", "acme", 2.0)))
    assert boosted.first(query, candidates, n) == as_chosen(boosted(query, candidates, n))
    assert all(type(x) is float for x in want.scores)
    with pytest.raises(ValueError):
        Pipeline((filters,)).first(query, candidates, -1)


def test_a_stocked_catalogue_keeps_its_out_of_stock_set_in_step() -> None:
    from shelf.rerank import StockedCatalogue

    catalogue = StockedCatalogue({"a": ItemMeta(stock=0), "b": ItemMeta(stock=3), "c": ItemMeta()})
    assert catalogue.out_of_stock == {"a"}
    catalogue["b"] = ItemMeta(stock=0)
    catalogue["a"] = ItemMeta(stock=1)
    assert catalogue.out_of_stock == {"b"}
    catalogue.update({"c": ItemMeta(stock=-1)}, d=ItemMeta(stock=0))
    assert catalogue.out_of_stock == {"b", "c", "d"}
    del catalogue["b"]
    catalogue.pop("c")
    catalogue.setdefault("e", ItemMeta(stock=0))
    assert catalogue.out_of_stock == {"d", "e"}
    catalogue |= {"d": ItemMeta(stock=2)}
    assert catalogue.out_of_stock == {"e"} == {k for k, m in catalogue.items() if not m.in_stock}
    copied, merged = catalogue.copy(), catalogue | {"f": ItemMeta(stock=0)}
    assert isinstance(copied, StockedCatalogue) and isinstance(merged, StockedCatalogue)
    assert copied.out_of_stock == {"e"} and merged.out_of_stock == {"e", "f"}
    copied["e"] = ItemMeta(stock=5)
    assert catalogue.out_of_stock == {"e"}, "a copy's changes stay in the copy"
    catalogue.clear()
    assert catalogue.out_of_stock == set()
