"""Batch recommendations to CSV for ``shelf recommend-batch`` (the CLI wires these functions).

Files carry the shop's *raw* ids: the caller passes ``pseudonymize`` (raw user id -> pseudonym,
the same keyed HMAC as ingest) so shelf can find each shopper in the model, while the output keeps
the raw id the shop knows.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from shelf.errors import InputError
from shelf.evaluation.metrics import top_k
from shelf.evaluation.runner import _check_block, ranked_from_scored
from shelf.models.base import Interactions, Query, Retriever


def recommend_users_csv(
    model: Retriever,
    data: Interactions,
    user_ids: Sequence[str],
    pseudonymize: Callable[[str], str],
    out: Path | str,
    *,
    n: int = 10,
    exclude_seen: bool = True,
    batch_size: int = 1024,
) -> int:
    """Write ``user,item,rank,score`` (rank from 1) for every raw user id; returns rows written.

    ``model`` is fitted on ``data``. Known shoppers are scored in batches (``score_users`` when
    the model has it); unknown ones get ``retrieve(Query(user_id=...))`` (the model's fallback).
    ``exclude_seen`` drops items the shopper already touched in ``data``.
    """
    if n < 1:
        raise InputError(f"n must be positive, got {n}")
    raw = list(user_ids)
    pseudo = [pseudonymize(u) for u in raw]
    idx = data.users.lookup(pseudo)
    score_users = getattr(model, "score_users", None)
    name = getattr(model, "name", type(model).__name__)
    k = min(n, data.n_items)
    written = 0
    seen = None
    if exclude_seen:
        known = data.user >= 0
        import scipy.sparse as sp

        seen = sp.csr_matrix((np.ones(int(known.sum()), dtype=np.float32), (data.user[known], data.item[known])), shape=(data.n_users, data.n_items))
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user", "item", "rank", "score"])
        positions = np.arange(len(raw))
        warm = positions[idx >= 0] if score_users is not None else np.array([], dtype=np.int64)
        for start in range(0, len(warm), batch_size):
            assert score_users is not None
            part = warm[start : start + batch_size]
            scores = _check_block(score_users(idx[part]), len(part), data.n_items, name).astype(np.float64)
            if seen is not None:
                s = seen[idx[part]]
                scores[np.repeat(np.arange(len(part)), np.diff(s.indptr)), s.indices] = -np.inf
            ranked = top_k(scores, k)
            for row, p in enumerate(part.tolist()):
                for r, item in enumerate(ranked[row].tolist()):
                    if item >= 0:
                        w.writerow([raw[p], data.items.ids[item], r + 1, f"{scores[row, item]:.6g}"])
                        written += 1
        for p in positions[~np.isin(positions, warm)].tolist():
            exclude: frozenset[str] = frozenset()
            if seen is not None and idx[p] >= 0:
                exclude = frozenset(data.items.ids[seen[idx[p]].indices].tolist())
            scored = model.retrieve(Query(user_id=pseudo[p], exclude=exclude), k)
            ranked_from_scored(scored, data.items, k, name)  # refuses unknown ids and duplicates
            for r, (item, score) in enumerate(zip(scored.items[:k].tolist(), scored.scores[:k].tolist(), strict=True)):
                w.writerow([raw[p], item, r + 1, f"{score:.6g}"])
                written += 1
    return written


def read_session_events(path: Path | str) -> dict[str, tuple[str, ...]]:
    """Sessions from a CSV with columns ``session,item,type,ts``: items in time order per session."""
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={"session": pa.string(), "item": pa.string(), "type": pa.string()}))
    missing = {"session", "item", "type", "ts"} - set(table.column_names)
    if missing:
        raise InputError(f"{path}: missing column(s) {sorted(missing)}; expected session,item,type,ts")
    ts = table["ts"]
    if not (pa.types.is_timestamp(ts.type) or pa.types.is_integer(ts.type) or pa.types.is_floating(ts.type)):
        raise InputError(f"{path}: column ts must be a timestamp or epoch number, got {ts.type}")
    order = pc.sort_indices(pa.table({"s": table["session"], "t": ts}), sort_keys=[("s", "ascending"), ("t", "ascending")])
    sessions = pc.take(table["session"], order).to_pylist()
    items = pc.take(table["item"], order).to_pylist()
    out: dict[str, list[str]] = {}
    for s, i in zip(sessions, items, strict=True):
        if s is None or i is None:
            continue
        out.setdefault(s, []).append(i)
    return {s: tuple(v) for s, v in out.items()}


def recommend_sessions_csv(model: Retriever, events_csv: Path | str, out: Path | str, *, n: int = 10, exclude_session_items: bool = False) -> int:
    """Write ``session,item,rank,score``: for each session, its events so far -> the next items."""
    if n < 1:
        raise InputError(f"n must be positive, got {n}")
    sessions = read_session_events(events_csv)
    written = 0
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["session", "item", "rank", "score"])
        for session, items in sessions.items():
            exclude = frozenset(items) if exclude_session_items else frozenset()
            scored = model.retrieve(Query(session_items=items, exclude=exclude), n)
            if len(set(np.asarray(scored.items).tolist())) != len(scored):
                from shelf.evaluation.errors import ModelOutputError

                raise ModelOutputError(f"model returned duplicated items for session {session!r}")
            for r, (item, score) in enumerate(zip(scored.items[:n].tolist(), scored.scores[:n].tolist(), strict=True)):
                w.writerow([session, item, r + 1, f"{score:.6g}"])
                written += 1
    return written
