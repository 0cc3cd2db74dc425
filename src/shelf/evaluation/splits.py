"""Train/test splits that read data only through snapshots, and a leakage audit.

Every split reads the lake through :class:`SnapshotSource` (the real ``Lake`` satisfies it;
:class:`TableSource` is the in-memory twin for tests). The training side of a global temporal cut
*is* ``source.snapshot(T)``, so nothing at or after T can reach a model by construction; the
:func:`audit_split` check runs on every built split anyway, because a snapshot implementation can
have bugs and a leak silently inflates every metric.

Splits
------
- :class:`TemporalSplit`: train = snapshot(T); test = events in [T, T + window). Test users must
  have history before T; users without it are kept apart as the *cold* segment when asked.
- :class:`LastNDays`: the same, with T = end of data - N days.
- :class:`LeaveLastOut`: per user, the last event(s) by time are the test; the user's earlier
  events are the training. Other users' later events stay in training: this split leaks global
  time by design (it is the classic academic protocol); prefer a temporal cut when comparing.
- :class:`SessionNextItem` / :func:`session_split_from_tables`: anonymous sessions; every prefix
  of a test session is a query whose target is the next item (YooChoose/GRU4Rec style).

Each built split carries ``validation()``, a split of the *training side* only (the same protocol
one window earlier), for tuning; tuning on the test side is never offered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shelf.evaluation.errors import EmptySplitError, LeakageError, NoTestUsersError
from shelf.models.base import Interactions
from shelf.schema import TIMESTAMP_TYPE

# ---------------------------------------------------------------------------------------------
# Sources


@runtime_checkable
class SnapshotLike(Protocol):
    """The lake as of a time: nothing at or after ``as_of`` is visible."""

    @property
    def as_of(self) -> datetime | None: ...

    def events(self) -> pa.Table: ...

    def items(self) -> pa.Table: ...

    def users(self) -> pa.Table: ...


@runtime_checkable
class SnapshotSource(Protocol):
    """Anything that hands out snapshots (``shelf.lake.Lake``, :class:`TableSource`)."""

    def snapshot(self, as_of: datetime | None) -> SnapshotLike: ...


def _micros(t: datetime) -> int:
    if t.tzinfo is None:
        raise ValueError(f"cut {t!r} is naive; give a timezone-aware datetime (UTC)")
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def _ts(table: pa.Table, column: str = "timestamp") -> np.ndarray:
    col = table[column]
    if col.type != TIMESTAMP_TYPE:
        col = pc.cast(col, TIMESTAMP_TYPE)
    return pc.cast(col, pa.int64()).to_numpy(zero_copy_only=False)


def _before(table: pa.Table, column: str, as_of: datetime | None) -> pa.Table:
    if as_of is None or table.num_rows == 0:
        return table
    return table.filter(pc.less(table[column], pa.scalar(as_of, TIMESTAMP_TYPE)))


def _latest_versions(table: pa.Table, key: str, as_of: datetime | None) -> pa.Table:
    """Latest version of every record whose ``valid_from`` is before ``as_of``."""
    table = _before(table, "valid_from", as_of)
    if table.num_rows == 0:
        return table
    table = table.sort_by([(key, "ascending"), ("valid_from", "ascending")])
    keys = table[key].to_numpy(zero_copy_only=False)
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[:-1] != keys[1:]
    return table.filter(pa.array(last))


@dataclass(frozen=True)
class TableSnapshot:
    """A snapshot held in memory."""

    as_of: datetime | None
    _events: pa.Table
    _items: pa.Table | None
    _users: pa.Table | None

    def events(self) -> pa.Table:
        return self._events

    def items(self) -> pa.Table:
        return self._items if self._items is not None else _empty_items()

    def users(self) -> pa.Table:
        return self._users if self._users is not None else _empty_users()


def _empty_items() -> pa.Table:
    from shelf.schema import ITEM_SCHEMA

    return ITEM_SCHEMA.empty_table()


def _empty_users() -> pa.Table:
    from shelf.schema import USER_SCHEMA

    return USER_SCHEMA.empty_table()


class TableSource:
    """In-memory twin of the lake: snapshots of given tables (EVENT/ITEM/USER_SCHEMA)."""

    def __init__(self, events: pa.Table, items: pa.Table | None = None, users: pa.Table | None = None) -> None:
        self._events = events.sort_by([("timestamp", "ascending")])
        self._items = items
        self._users = users

    def snapshot(self, as_of: datetime | None) -> TableSnapshot:
        items = None if self._items is None else _latest_versions(self._items, "item_id", as_of)
        users = None if self._users is None else _latest_versions(self._users, "user_id", as_of)
        return TableSnapshot(as_of, _before(self._events, "timestamp", as_of), items, users)


class CappedSource:
    """A source that never shows anything at or after ``cap`` (the training side of a cut)."""

    def __init__(self, source: SnapshotSource, cap: datetime) -> None:
        self.source = source
        self.cap = cap

    def snapshot(self, as_of: datetime | None) -> SnapshotLike:
        return self.source.snapshot(self.cap if as_of is None or as_of > self.cap else as_of)


def _window(source: SnapshotSource, start: datetime, end: datetime) -> pa.Table:
    """Events in [start, end), read through the snapshot at ``end``."""
    events = source.snapshot(end).events()
    return events.filter(pc.greater_equal(events["timestamp"], pa.scalar(start, TIMESTAMP_TYPE)))


def end_of_data(source: SnapshotSource) -> datetime:
    """One microsecond after the last event visible in the newest snapshot."""
    events = source.snapshot(None).events()
    if events.num_rows == 0:
        raise EmptySplitError("the source holds no events at all; nothing to split")
    return _from_micros(int(_ts(events).max()) + 1)


# ---------------------------------------------------------------------------------------------
# Built splits


@dataclass(frozen=True)
class UserSplit:
    """Known users' history (``train``) and what they did next (``test_events``).

    ``test_users`` are indices into ``train.users`` of users with history and test events;
    ``cold_users`` are raw ids of test users without history (evaluated apart, only when asked).
    ``cut`` is the global cut (None for per-user cuts, which live in ``user_cuts``, micros).
    """

    name: str
    train: Interactions
    test_events: pa.Table
    test_users: np.ndarray
    cold_users: np.ndarray
    cut: datetime | None
    train_inputs: Mapping[str, pa.Table]
    user_cuts: Mapping[str, int] | None = None
    make_validation: Callable[[], UserSplit] | None = field(default=None, repr=False, compare=False)

    def validation(self) -> UserSplit:
        """The same protocol carved from the training side only (for tuning)."""
        if self.make_validation is None:
            raise EmptySplitError(f"split {self.name!r} offers no validation cut")
        return self.make_validation()

    @property
    def cold_events(self) -> pa.Table:
        return self.test_events.filter(
            pc.is_in(self.test_events["user_id"], value_set=pa.array(self.cold_users.tolist(), type=pa.string()))
        )


@dataclass(frozen=True)
class SessionSplit:
    """Next-item queries: ``prefixes[q]`` (item indices into ``train.items``, oldest first) → ``targets[q]``.

    ``prefix_raw[q]`` keeps every prefix item as a raw id, including items the training side
    never saw (a retriever may still know them from the catalogue). Targets outside the training
    item index cannot be recommended by anyone; they are dropped and counted in ``unknown_targets``.
    """

    name: str
    train: Interactions
    prefixes: list[np.ndarray]
    prefix_raw: list[tuple[str, ...]]
    targets: np.ndarray
    sessions: np.ndarray  # raw session id per query
    cut: datetime | None
    train_inputs: Mapping[str, pa.Table]
    unknown_targets: int = 0
    make_validation: Callable[[], SessionSplit] | None = field(default=None, repr=False, compare=False)

    def validation(self) -> SessionSplit:
        if self.make_validation is None:
            raise EmptySplitError(f"split {self.name!r} offers no validation cut")
        return self.make_validation()


# ---------------------------------------------------------------------------------------------
# Leakage audit


def audit_leakage(train_inputs: Mapping[str, pa.Table], cut: datetime, *, interactions: Interactions | None = None) -> None:
    """Raise :class:`LeakageError` if any training input carries a timestamp at or after ``cut``.

    Every timestamp column of every table is checked (event times, ``valid_from``,
    ``launched_at``, ``signed_up_at``), and the arrays of ``interactions`` if given.
    """
    limit = _micros(cut)
    for name, table in train_inputs.items():
        for f in table.schema:
            if not pa.types.is_timestamp(f.type) or table.num_rows == 0:
                continue
            values = _ts(table, f.name)
            values = values[~np.isnan(values.astype(np.float64))] if values.dtype.kind == "f" else values
            late = values >= limit
            if late.any():
                raise LeakageError(
                    f"training input {name!r} column {f.name!r} has {int(late.sum())} value(s) at or after "
                    f"the cut {cut.isoformat()} (latest {_from_micros(int(values.max())).isoformat()}); "
                    "the snapshot is not point-in-time, every metric from it would be inflated"
                )
    if interactions is not None and len(interactions) and int(interactions.timestamp.max()) >= limit:
        raise LeakageError(
            f"training interactions reach {_from_micros(int(interactions.timestamp.max())).isoformat()}, "
            f"at or after the cut {cut.isoformat()}"
        )


def audit_user_cuts(train_events: pa.Table, user_cuts: Mapping[str, int]) -> None:
    """Per-user cuts (leave-last-out): no user's training event may be at or after their cut."""
    if train_events.num_rows == 0 or not user_cuts:
        return
    users = np.asarray(train_events["user_id"].to_numpy(zero_copy_only=False), dtype=object)
    ts = _ts(train_events)
    cuts = np.array([user_cuts.get(u, np.iinfo(np.int64).max) if u is not None else np.iinfo(np.int64).max for u in users.tolist()], dtype=np.int64)
    late = ts >= cuts
    if late.any():
        first = int(np.flatnonzero(late)[0])
        raise LeakageError(
            f"{int(late.sum())} training event(s) are at or after their user's held-out time "
            f"(e.g. user {users[first]!r} at {_from_micros(int(ts[first])).isoformat()})"
        )


def audit_split(split: UserSplit | SessionSplit) -> None:
    """Run the leakage audit that fits the split (global cut or per-user cuts)."""
    if split.cut is not None:
        audit_leakage(split.train_inputs, split.cut, interactions=split.train)
    if isinstance(split, UserSplit) and split.user_cuts is not None:
        audit_user_cuts(split.train_inputs["events"], split.user_cuts)


# ---------------------------------------------------------------------------------------------
# Split specifications


def _train_side(snapshot: SnapshotLike) -> tuple[Interactions, dict[str, pa.Table]]:
    events, items, users = snapshot.events(), snapshot.items(), snapshot.users()
    if events.num_rows == 0:
        raise EmptySplitError(f"the training side (snapshot as of {snapshot.as_of}) holds no events")
    data = Interactions.from_events(
        events,
        as_of=snapshot.as_of,
        item_table=items if items.num_rows else None,
        user_table=users if users.num_rows else None,
    )
    return data, {"events": events, "items": items, "users": users}


def _user_split(
    name: str,
    train: Interactions,
    inputs: Mapping[str, pa.Table],
    test: pa.Table,
    *,
    include_cold: bool,
    cut: datetime | None,
    user_cuts: Mapping[str, int] | None = None,
    make_validation: Callable[[], UserSplit] | None = None,
) -> UserSplit:
    test = test.filter(pc.is_valid(test["user_id"]))
    if test.num_rows == 0:
        raise EmptySplitError(f"split {name!r}: no test events from known users")
    raw = pc.unique(test["user_id"]).to_numpy(zero_copy_only=False).astype(object)
    idx = train.users.lookup(raw)
    warm = np.sort(idx[idx >= 0])
    cold = np.sort(raw[idx < 0].astype(str)).astype(object)
    if len(warm) == 0:
        raise NoTestUsersError(
            f"split {name!r}: none of the {len(raw)} test user(s) has history before the cut; "
            "move the cut later or widen the training window"
        )
    if not include_cold:
        test = test.filter(pc.is_in(test["user_id"], value_set=pa.array(train.users.ids[warm].tolist(), type=pa.string())))
        cold = np.array([], dtype=object)
    split = UserSplit(name, train, test, warm, cold, cut, inputs, user_cuts, make_validation)
    audit_split(split)
    return split


@dataclass(frozen=True)
class TemporalSplit:
    """Global temporal cut: train = snapshot(cut); test = events in [cut, cut + test_window).

    ``validation_window`` (default: ``test_window``) sizes the validation cut
    ``[cut - validation_window, cut)`` carved from the training side.
    """

    cut: datetime
    test_window: timedelta
    include_cold: bool = False
    validation_window: timedelta | None = None

    @property
    def name(self) -> str:
        return f"temporal cut {self.cut.isoformat()} + {self.test_window}"

    def build(self, source: SnapshotSource) -> UserSplit:
        _micros(self.cut)
        if self.test_window <= timedelta(0):
            raise ValueError("test_window must be positive")
        train, inputs = _train_side(source.snapshot(self.cut))
        test = _window(source, self.cut, self.cut + self.test_window)
        if test.num_rows == 0:
            raise EmptySplitError(f"split {self.name!r}: no events in the test window")
        window = self.validation_window or self.test_window
        inner = TemporalSplit(self.cut - window, window, include_cold=False)
        capped = CappedSource(source, self.cut)
        return _user_split(
            self.name, train, inputs, test, include_cold=self.include_cold, cut=self.cut,
            make_validation=lambda: inner.build(capped),
        )


@dataclass(frozen=True)
class LastNDays:
    """Temporal cut at ``end of data - days``; the last ``days`` days are the test."""

    days: float
    include_cold: bool = False

    def build(self, source: SnapshotSource) -> UserSplit:
        if self.days <= 0:
            raise ValueError("days must be positive")
        window = timedelta(days=self.days)
        end = end_of_data(source)
        split = TemporalSplit(end - window, window, self.include_cold).build(source)
        return UserSplit(
            f"last {self.days:g} days (cut {split.cut.isoformat() if split.cut else ''})",
            split.train, split.test_events, split.test_users, split.cold_users, split.cut,
            split.train_inputs, None, split.make_validation,
        )


@dataclass(frozen=True)
class LeaveLastOut:
    """Per user, the last ``n_last`` events by time are the test (ties at the cut go to the test).

    Users whose every event falls at or after their cut have no history and are not tested.
    ``as_of`` limits the data read (None: everything).
    """

    n_last: int = 1
    as_of: datetime | None = None

    @property
    def name(self) -> str:
        return f"leave last {self.n_last} out per user"

    def build(self, source: SnapshotSource) -> UserSplit:
        if self.n_last < 1:
            raise ValueError("n_last must be at least 1")
        snap = source.snapshot(self.as_of)
        events = snap.events().sort_by([("timestamp", "ascending")])
        if events.num_rows == 0:
            raise EmptySplitError("leave-last-out: the snapshot holds no events")
        users = events["user_id"].to_numpy(zero_copy_only=False).astype(object)
        known = np.array([u is not None for u in users.tolist()], dtype=bool)
        ts = _ts(events)
        cut_of_event = np.full(len(users), np.iinfo(np.int64).max, dtype=np.int64)
        user_cuts: dict[str, int] = {}
        if known.any():
            codes, inverse = np.unique(users[known].astype(str), return_inverse=True)
            pos = np.flatnonzero(known)
            order = np.lexsort((ts[pos], inverse))
            sorted_codes = inverse[order]
            ends = np.flatnonzero(np.r_[sorted_codes[1:] != sorted_codes[:-1], True])
            starts = np.r_[0, ends[:-1] + 1]
            cut_pos = ends - self.n_last + 1
            has = cut_pos > starts
            cut_ts = ts[pos[order[np.maximum(cut_pos, starts)]]]
            # A cut whose earlier events all share its timestamp leaves no history.
            first_ts = ts[pos[order[starts]]]
            has &= first_ts < cut_ts
            per_code = np.where(has, cut_ts, np.iinfo(np.int64).max)
            cut_of_event[pos] = per_code[inverse]
            user_cuts = {str(codes[c]): int(per_code[c]) for c in np.flatnonzero(has)}
        is_test = ts >= cut_of_event
        train_events = events.filter(pa.array(~is_test))
        test_events = events.filter(pa.array(is_test))
        if not user_cuts:
            raise NoTestUsersError(f"leave-last-out: no user has more than {self.n_last} event(s) at distinct times")
        items, profiles = snap.items(), snap.users()
        train = Interactions.from_events(
            train_events, as_of=snap.as_of,
            item_table=items if items.num_rows else None, user_table=profiles if profiles.num_rows else None,
        )
        inputs = {"events": train_events, "items": items, "users": profiles}
        inner = LeaveLastOut(self.n_last)
        return _user_split(
            self.name, train, inputs, test_events, include_cold=False, cut=None, user_cuts=user_cuts,
            make_validation=lambda: inner.build(TableSource(train_events, items, profiles)),
        )


# ---------------------------------------------------------------------------------------------
# Sessions


def _session_queries(
    test: pa.Table, train: Interactions, *, min_length: int, max_prefix: int | None
) -> tuple[list[np.ndarray], list[tuple[str, ...]], np.ndarray, np.ndarray, int]:
    test = test.filter(pc.is_valid(test["session_id"])).sort_by([("session_id", "ascending"), ("timestamp", "ascending")])
    sessions = test["session_id"].to_numpy(zero_copy_only=False).astype(object)
    items = test["item_id"].to_numpy(zero_copy_only=False).astype(object)
    item_idx = train.items.lookup(items)
    prefixes: list[np.ndarray] = []
    raws: list[tuple[str, ...]] = []
    targets: list[int] = []
    owners: list[str] = []
    unknown = 0
    if len(sessions) == 0:
        return prefixes, raws, np.array([], dtype=np.int64), np.array([], dtype=object), 0
    bounds = np.flatnonzero(np.r_[True, sessions[1:] != sessions[:-1], True])
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if end - start < min_length:
            continue
        first = start + 1 if max_prefix is None else max(start + 1, end - max_prefix)
        for t in range(first, end):
            if item_idx[t] < 0:
                unknown += 1
                continue
            prefix = item_idx[start:t]
            prefixes.append(prefix[prefix >= 0])
            raws.append(tuple(items[start:t].tolist()))
            targets.append(int(item_idx[t]))
            owners.append(str(sessions[start]))
    return prefixes, raws, np.asarray(targets, dtype=np.int64), np.asarray(owners, dtype=object), unknown


def session_split_from_tables(
    train_events: pa.Table,
    test_events: pa.Table,
    *,
    items: pa.Table | None = None,
    min_length: int = 2,
    max_prefix: int | None = None,
    validation_window: timedelta | None = timedelta(days=1),
    name: str = "session next item (given train/test files)",
) -> SessionSplit:
    """Session next-item split from separate train and test tables (YooChoose ``train``/``test``).

    The cut is the first test event: training events at or after it are a leak and refused.
    Every prefix of length 1..L-1 of a test session of length L >= ``min_length`` predicts the
    next item (only the last ``max_prefix`` targets of a session when given).
    """
    if train_events.num_rows == 0 or test_events.num_rows == 0:
        raise EmptySplitError(f"{name}: train has {train_events.num_rows} and test {test_events.num_rows} events")
    cut = _from_micros(int(_ts(test_events).min()))
    train = Interactions.from_events(train_events, as_of=cut, item_table=items)
    prefixes, raws, targets, owners, unknown = _session_queries(test_events, train, min_length=min_length, max_prefix=max_prefix)
    if len(targets) == 0:
        raise EmptySplitError(f"{name}: no test session of length >= {min_length} with a target known to training")
    inputs = {"events": train_events} | ({"items": items} if items is not None else {})

    def validation() -> SessionSplit:
        if validation_window is None:
            raise EmptySplitError("no validation window given")
        end = end_of_data(TableSource(train_events))
        return SessionNextItem(end - validation_window, validation_window, min_length, max_prefix).build(TableSource(train_events, items))

    split = SessionSplit(name, train, prefixes, raws, targets, owners, cut, inputs, unknown, validation)
    audit_split(split)
    return split


@dataclass(frozen=True)
class SessionNextItem:
    """Sessions starting in [cut, cut + test_window) are the test; train = snapshot(cut).

    Sessions that started before the cut are not tested (their start is history already seen).
    """

    cut: datetime
    test_window: timedelta
    min_length: int = 2
    max_prefix: int | None = None

    @property
    def name(self) -> str:
        return f"session next item, sessions starting in [{self.cut.isoformat()}, +{self.test_window})"

    def build(self, source: SnapshotSource) -> SessionSplit:
        snap = source.snapshot(self.cut)
        train, inputs = _train_side(snap)
        window = _window(source, self.cut, self.cut + self.test_window)
        window = window.filter(pc.is_valid(window["session_id"]))
        # Keep only sessions that start inside the window.
        seen_before = pc.unique(pc.drop_null(snap.events()["session_id"]))
        window = window.filter(pc.invert(pc.is_in(window["session_id"], value_set=seen_before)))
        if window.num_rows == 0:
            raise EmptySplitError(f"{self.name}: no session starts in the test window")
        prefixes, raws, targets, owners, unknown = _session_queries(window, train, min_length=self.min_length, max_prefix=self.max_prefix)
        if len(targets) == 0:
            raise EmptySplitError(f"{self.name}: no test session of length >= {self.min_length} with a known target")
        inner = SessionNextItem(self.cut - self.test_window, self.test_window, self.min_length, self.max_prefix)
        capped = CappedSource(source, self.cut)
        split = SessionSplit(self.name, train, prefixes, raws, targets, owners, self.cut, inputs, unknown, lambda: inner.build(capped))
        audit_split(split)
        return split


SplitSpec = TemporalSplit | LastNDays | LeaveLastOut | SessionNextItem
