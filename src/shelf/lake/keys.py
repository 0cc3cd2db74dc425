"""The event-id dedupe index: 128-bit keys in sorted numpy runs.

An event's key is DuckDB's ``md5_number(event_id)`` split into two uint64 halves. Two distinct
event ids share a key only by an md5 collision: for n events the chance of any accidental collision
is about n² / 2^129 (3e-26 at 10M events, 3e-21 at 1B), which we accept. (md5 collisions can be
*crafted* with arbitrary bytes; event ids are short validated text, and a crafted pair would at
worst make the lake drop the second of the two events.)

Memory: 16 bytes per event held (two uint64). Runs are merged log-structured (a run is merged into
the one before it when that one is at most twice its size), so merging costs O(n log n) copies over
an ingest and at most ~40 bytes per event of the two runs being merged, transiently.

Keys are recomputed from the ``event_id`` column of the committed parts when a writer session first
appends events (about 0.3 s per million events), so nothing besides the events is stored and a
change of hash function across versions is harmless.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa


def event_keys(con: duckdb.DuckDBPyConnection, relation_sql: str) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint64 arrays of the event ids that ``relation_sql`` yields, in its order."""
    # md5_number is computed once per row (common subexpression), then split.
    sql = (
        "SELECT (m >> 64)::UBIGINT AS hi, (m & 18446744073709551615::UHUGEINT)::UBIGINT AS lo "
        f"FROM (SELECT md5_number(event_id) AS m FROM ({relation_sql}))"
    )
    result = con.sql(sql).fetchnumpy()
    hi = np.ascontiguousarray(result["hi"], dtype=np.uint64)
    lo = np.ascontiguousarray(result["lo"], dtype=np.uint64)
    return hi, lo


def table_keys(con: duckdb.DuckDBPyConnection, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    con.register("__keys_input", table.select(["event_id"]))
    try:
        return event_keys(con, "SELECT event_id FROM __keys_input")
    finally:
        con.unregister("__keys_input")


def first_occurrences(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows hold the first occurrence of their key, and all rows ordered by ``hi``.

    Returns ``(keep, order)``: ``keep[i]`` is False when an earlier row has the same 128-bit key;
    ``order`` sorts the rows by ``hi``.
    """
    n = len(hi)
    keep = np.ones(n, dtype=bool)
    order = np.argsort(hi)
    if n < 2:
        return keep, order
    sorted_hi = hi[order]
    equal_next = sorted_hi[1:] == sorted_hi[:-1]
    if not equal_next.any():
        return keep, order
    # Only rows sharing their high half with another row need the full comparison.
    grouped = np.zeros(n, dtype=bool)
    grouped[1:] |= equal_next
    grouped[:-1] |= equal_next
    rows = order[grouped]
    by_key = rows[np.lexsort((rows, lo[rows], hi[rows]))]
    same_as_previous = np.zeros(len(by_key), dtype=bool)
    same_as_previous[1:] = (hi[by_key][1:] == hi[by_key][:-1]) & (lo[by_key][1:] == lo[by_key][:-1])
    keep[by_key[same_as_previous]] = False
    return keep, order


class KeyIndex:
    """A set of 128-bit keys: runs of (hi, lo) arrays, each sorted by hi."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(hi) for hi, _ in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(hi.nbytes + lo.nbytes for hi, lo in self._runs)

    @classmethod
    def from_unsorted(cls, hi: np.ndarray, lo: np.ndarray) -> KeyIndex:
        index = cls()
        if len(hi):
            order = np.argsort(hi)
            index._runs.append((hi[order], lo[order]))
        return index

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Membership of each (hi, lo); ``hi`` should be sorted ascending for speed."""
        found = np.zeros(len(hi), dtype=bool)
        for run_hi, run_lo in self._runs:
            if not len(hi):
                break
            pos = np.searchsorted(run_hi, hi)
            clipped = np.minimum(pos, len(run_hi) - 1)
            hit = (pos < len(run_hi)) & (run_hi[clipped] == hi)
            if not hit.any():
                continue
            same = hit & (run_lo[clipped] == lo)
            # A high half shared by distinct keys (chance ~n²/2^65): scan that short stretch.
            for i in np.flatnonzero(hit & ~same):
                j = int(pos[i])
                while j < len(run_hi) and run_hi[j] == hi[i]:
                    if run_lo[j] == lo[i]:
                        same[i] = True
                        break
                    j += 1
            found |= same
        return found

    def add_sorted(self, hi: np.ndarray, lo: np.ndarray) -> None:
        """Add keys that are not yet present; ``hi`` sorted ascending."""
        if not len(hi):
            return
        self._runs.append((hi, lo))
        while len(self._runs) >= 2 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (a_hi, a_lo), (b_hi, b_lo) = self._runs[-2], self._runs[-1]
            pos = np.searchsorted(a_hi, b_hi, side="right")
            self._runs[-2:] = [(np.insert(a_hi, pos, b_hi), np.insert(a_lo, pos, b_lo))]
