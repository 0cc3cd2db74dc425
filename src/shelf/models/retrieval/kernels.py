"""Compiled inner loops of a request's retrieval (numba), for the few steps whose numpy form is a
chain of a dozen small array operations per request.

Why: a known shopper's request asks every source of a blend for its best few hundred items and
fuses them; in numpy each step is 5-15 calls of 1-20 µs on arrays of a few thousand entries, and
the sum of those calls, not the arithmetic, was most of a request's cost (see BENCHMARKS.md
"serving"). Each kernel here does one step in one pass over its entries.

Every kernel computes exactly what the numpy code it replaced computed, in the same order, so
results are bit-identical (tested against those references in tests/models/test_kernels.py),
with two documented exceptions, whose own references are spelled out in the tests:
``cluster_top`` sums the clusters' closeness and each item's score left to right in float32,
where numpy summed them in BLAS's and reduceat's pairwise order (a last bit can differ, so
near-tied clusters or items can swap; that path was already an approximation of ``X @ p``, summed
in another order); ``history_profiles`` sums a history row's total left to right, where numpy's
``sum`` is pairwise past 8 entries (content's stored profiles and its per-request fallback both
use it, so they agree with each other).

numba compiles each kernel on its first call (seconds; the compiled code is cached on disk beside
this file, or in the user's cache directory where that is read-only), which is why serving warms
them when a bundle loads (``warm``). Callers import this module where they first need it, so
importing shelf does not import numba.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

SELECT_BINS = 1024  # top_pairs counts the packed entries into this many ranges to find the n-th
SELECT_CLUSTERS = 32  # cluster_top picks up to this many clusters by selection, then sorts
_WARMED: list[bool] = []  # non-empty once warm() ran in this process


def _jit(function: Any) -> Any:
    """Compiled, cached on disk where numba finds a writable place (beside this file, then the
    user's cache directory, or ``NUMBA_CACHE_DIR``); where it finds none (a read-only container)
    each process compiles for itself rather than failing to import."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True)(function)


@_jit
def top_by_key(values: Any, keys: Any, n: int) -> Any:
    """Positions of the ``n`` largest ``values`` (all finite), best first, ties to the lower key
    (``keys`` unique, so the order is exact)."""
    m = len(values)
    n = max(0, min(n, m))
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if n < m:
        kth = -np.partition(-values, n - 1)[n - 1]
        above = 0
        tied_count = 0
        for i in range(m):
            if values[i] > kth:
                above += 1
            elif values[i] == kth:
                tied_count += 1
        chosen = np.empty(n, dtype=np.int64)
        tied = np.empty(tied_count, dtype=np.int64)
        c = 0
        t = 0
        for i in range(m):
            if values[i] > kth:
                chosen[c] = i
                c += 1
            elif values[i] == kth:
                tied[t] = i
                t += 1
        if tied_count > n - above:
            tied = tied[np.argsort(keys[tied])[: n - above]]
        for i in tied:
            chosen[c] = i
            c += 1
    else:
        chosen = np.arange(m)
    # Best first; runs of equal values then ordered by key.
    chosen = chosen[np.argsort(-values[chosen])]
    start = 0
    while start < n:
        end = start + 1
        while end < n and values[chosen[end]] == values[chosen[start]]:
            end += 1
        if end - start > 1:
            run = chosen[start:end]
            chosen[start:end] = run[np.argsort(keys[run])]
        start = end
    return chosen


@_jit
def top_pairs(values: Any, keys: Any, n: int) -> Any:
    """``keys[top_by_key(values, keys, n)]`` and ``values[...]`` for float32 ``values`` (finite)
    and unique keys in [0, 2**32): the same order, best first, ties to the lower key.

    Each entry becomes one uint64, its value's bits made to order as the float does, then the
    complement of its key: the n largest of those are the answer, with no comparison of pairs.
    They are found by binning, not partitioning: the packed entries are counted into SELECT_BINS
    ranges between the smallest and the largest, the ranges taken from the top until they hold
    ``n``, only their entries kept and sorted. A partition is a branch per comparison,
    mispredicted about half the time on scores; counting and keeping are branch-free. On the
    bench model's requests, in-process: content's ~1,300 cluster candidates for a top 204, 31 ->
    18 µs; co-occurrence's ~600 summed neighbours, 22 -> 15 µs.
    """
    m = len(values)
    n = max(0, min(n, m))
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    sign = np.uint32(0x80000000)
    low = np.uint64(0xFFFFFFFF)
    bits = values.view(np.uint32)
    packed = np.empty(m, dtype=np.uint64)
    lo = ~np.uint64(0)
    hi = np.uint64(0)
    for i in range(m):
        b = bits[i]
        if b == sign:
            b = np.uint32(0)  # -0.0 ties with 0.0, as the floats compare
        b = ~b if b & sign else b | sign  # negatives: a larger magnitude ranks lower
        p = (np.uint64(b) << np.uint64(32)) | (low - np.uint64(keys[i]))
        packed[i] = p
        lo = min(lo, p)
        hi = max(hi, p)
    if n < m:
        shift = np.uint64(0)
        while ((hi - lo) >> shift) >= np.uint64(SELECT_BINS):
            shift += np.uint64(1)
        counts = np.zeros(SELECT_BINS, dtype=np.int64)
        for i in range(m):
            counts[(packed[i] - lo) >> shift] += 1
        top = np.int64((hi - lo) >> shift)
        held = counts[top]
        while held < n:
            top -= 1
            held += counts[top]
        floor = lo + (np.uint64(top) << shift)  # the lowest entry of the lowest bin kept
        k = 0
        for i in range(m):
            p = packed[i]
            packed[k] = p
            k += p >= floor  # branch-free: the entry is overwritten unless it is kept
        packed = packed[:k]
    packed = np.sort(packed)
    k = len(packed)
    out_keys = np.empty(n, dtype=np.int64)
    out_bits = np.empty(n, dtype=np.uint32)
    for j in range(n):
        p = packed[k - 1 - j]  # best first
        out_keys[j] = np.int64(low - (p & low))
        b = np.uint32(p >> np.uint64(32))
        out_bits[j] = b & ~sign if b & sign else ~b
    return out_keys, out_bits.view(np.float32)


@_jit
def cluster_top(features: Any, weights: Any, centroids_by_feature: Any, sizes: Any, starts: Any, row_starts: Any, data: Any, indices: Any, items: Any, budget: int, n: int) -> Any:
    """``ItemClusters.top``: the best ``n`` positive scores (ties to the lower item) among the
    items of the clusters closest to the profile ``p[features] = weights``, taken in closeness
    order until they hold ``budget`` items; each item's products summed left to right in
    float32. The closeness sums ``p``'s non-zero features in ascending order, as ``p.nonzero()``
    lists them; ``p`` is built here, so a request passes its sparse profile as it is."""
    n_features, n_clusters = centroids_by_feature.shape
    profile = np.zeros(n_features, dtype=np.float32)
    for k in range(len(features)):
        profile[features[k]] = weights[k]
    close = np.zeros(n_clusters, dtype=np.float32)
    for f in _ascending_unique(features):
        w = profile[f]
        if w == 0:
            continue  # not among p.nonzero()
        row = centroids_by_feature[f]
        for c in range(n_clusters):
            close[c] += w * row[c]
    # The closest clusters one at a time (a request needs a few of hundreds: cheaper than sorting
    # them all), ties to the lower cluster, as a stable sort orders them; past SELECT_CLUSTERS
    # (a budget near the catalogue size) the stable sort, whose first clusters are the same.
    taken = np.zeros(n_clusters, dtype=np.bool_)
    chosen = np.empty(n_clusters, dtype=np.int64)
    reach = 0
    total = 0
    while total < budget and reach < min(n_clusters, SELECT_CLUSTERS):
        best = -1
        for c in range(n_clusters):
            if not taken[c] and (best < 0 or close[c] > close[best]):
                best = c
        taken[best] = True
        chosen[reach] = best
        reach += 1
        total += sizes[best]
    if total < budget and reach < n_clusters:
        order = np.argsort(-close, kind="mergesort")
        while total < budget and reach < n_clusters:
            chosen[reach] = order[reach]
            total += sizes[order[reach]]
            reach += 1
    out_items = np.empty(total, dtype=np.int64)
    out_values = np.empty(total, dtype=np.float32)
    m = 0
    for r in range(reach):
        c = chosen[r]
        for row in range(starts[c], starts[c + 1]):
            s = np.float32(0.0)
            # Unsigned positions (and uint32 ``indices``): numba then reads without its check for
            # negative indices, ~40% of this loop (~10 µs of a 1,000-item scan, measured).
            for e in range(np.uint64(row_starts[row]), np.uint64(row_starts[row + 1])):
                s += data[e] * profile[indices[e]]
            if s > 0:
                out_items[m] = items[row]
                out_values[m] = s
                m += 1
    return top_pairs(out_values[:m], out_items[:m], n)


@_jit
def _slots(capacity: int) -> Any:
    """An empty open-addressing table: keys (-1: free) for ``capacity`` entries at most half full."""
    size = 16
    while size < 2 * capacity:
        size *= 2
    return np.full(size, -1, dtype=np.int64)


@_jit
def _slot(table: Any, key: int) -> int:
    """The slot holding ``key``, or the free slot where it goes (linear probing)."""
    mask = len(table) - 1
    h = (key * 0x9E3779B1) & mask  # multiplicative hashing: item indices are dense integers
    while table[h] != -1 and table[h] != key:
        h = (h + 1) & mask
    return h


@_jit
def fuse(items: Any, contributions: Any, sources: Any, seen: Any, n: int) -> Any:
    """``BlendRetriever._fuse`` over entries given source after source: per item the sum of its
    contributions in source order (float64, as summing a sources × items table down its source
    axis does: an absent source adds 0), the source that contributed most (the first on ties),
    items with a sum > 0 that are not ``seen``; the best ``n``, ties to the lower item.

    Entries are grouped in a small hash table in the order given, so each item's sum runs in
    source order; catalogue-sized accumulators touched at random, or a sort, cost more.
    """
    m = len(items)
    table = _slots(m)
    group = np.empty(len(table), dtype=np.int64)
    unique = np.empty(m, dtype=np.int64)
    fused = np.zeros(m, dtype=np.float64)
    tops = np.empty(m, dtype=np.float64)
    best = np.empty(m, dtype=np.int64)
    g = 0
    for e in range(m):
        item = items[e]
        h = _slot(table, item)
        c = contributions[e]
        if table[h] == -1:
            table[h] = item
            group[h] = g
            unique[g] = item
            tops[g] = c
            best[g] = sources[e]
            fused[g] = c
            g += 1
        else:
            k = group[h]
            fused[k] += c
            if c > tops[k]:
                tops[k] = c
                best[k] = sources[e]
    keep = np.ones(g, dtype=np.bool_)
    for i in seen:  # seen items never win here
        h = _slot(table, i)
        if table[h] == i:
            keep[group[h]] = False
    k = 0
    for j in range(g):
        if keep[j] and fused[j] > 0:
            unique[k] = unique[j]
            fused[k] = fused[j]
            best[k] = best[j]
            k += 1
    unique, fused, best = unique[:k], fused[:k], best[:k]
    pos = top_by_key(fused, unique, n)
    return unique[pos], fused[pos], best[pos]


@_jit
def source_contributions(values: Any, starts: Any, weights: Any, rrf: bool, rrf_k: float) -> Any:
    """``BlendRetriever._contributions`` of each voting source's top list, the lists given back to
    back (source ``s`` holds ``values[starts[s]:starts[s + 1]]``, best first) with weight
    ``weights[s]``: ``w / (rrf_k + rank)`` under ``rrf``, else ``w * (0.1 + 0.9 * (v - lo) / span)``
    over the list's own range; float64, each operation in the numpy form's order."""
    out = np.empty(len(values), dtype=np.float64)
    for s in range(len(weights)):
        a, b = starts[s], starts[s + 1]
        w = weights[s]
        if b <= a:
            continue
        if rrf:
            for e in range(a, b):
                out[e] = w * (1.0 / (rrf_k + np.float64(e - a + 1)))
        else:
            lo = values[a]
            hi = values[a]
            for e in range(a + 1, b):
                lo = min(lo, values[e])
                hi = max(hi, values[e])
            span = hi - lo if hi > lo else 1.0
            for e in range(a, b):
                out[e] = w * (0.1 + 0.9 * (values[e] - lo) / span)
    return out


@_jit
def fuse_sources(items: Any, values: Any, starts: Any, weights: Any, voters: Any, rrf: bool, rrf_k: float, seen: Any, n: int) -> Any:
    """``fuse`` over the voting sources' top lists given back to back (see
    ``source_contributions``), ``voters[s]`` naming list ``s``'s source: the contributions, the
    source of each entry and the fusion in one call, instead of a few numpy calls per source."""
    sources = np.empty(len(items), dtype=np.int64)
    for s in range(len(voters)):
        for e in range(starts[s], starts[s + 1]):
            sources[e] = voters[s]
    return fuse(items, source_contributions(values, starts, weights, rrf, rrf_k), sources, seen, n)


@_jit
def fuse_allowed(items: Any, values: Any, starts: Any, weights: Any, voters: Any, rrf: bool, rrf_k: float, seen: Any, n: int, banned: Any, keep: int) -> Any:
    """``fuse_sources`` over each list's first ``keep`` entries that are not ``banned``
    (ascending, unique): ``keep = ~np.isin(list, banned)`` then ``[keep][:keep]`` on every list,
    then the fusion, in one call (a session's request bans its items from every source's list;
    np.isin's setup per list cost more than the filtering: about −65 µs a session request with
    the blend's other glue changes, measured in-process)."""
    out_items = np.empty(len(items), dtype=items.dtype)
    out_values = np.empty(len(values), dtype=values.dtype)
    out_starts = np.empty(len(starts), dtype=np.int64)
    out_starts[0] = 0
    m = 0
    for s in range(len(starts) - 1):
        k = 0
        for e in range(starts[s], starts[s + 1]):
            if k >= keep:
                break
            pos = np.searchsorted(banned, items[e])
            if pos < len(banned) and banned[pos] == items[e]:
                continue
            out_items[m] = items[e]
            out_values[m] = values[e]
            m += 1
            k += 1
        out_starts[s + 1] = m
    return fuse_sources(out_items[:m], out_values[:m], out_starts, weights, voters, rrf, rrf_k, seen, n)


@_jit
def sum_by_item(items: Any, weights: Any) -> Any:
    """Unique ``items`` (ascending) and each one's ``weights`` summed in input order in float64:
    ``np.unique(items, return_inverse=True)`` then ``np.bincount(inverse, weights)``, without
    their setup (~30 µs of a session's repeat scores, for a handful of items, measured in-process)."""
    order = np.argsort(items, kind="mergesort")  # stable: equal items keep their input order
    out_items = np.empty(len(items), dtype=np.int64)
    sums = np.zeros(len(items), dtype=np.float64)
    g = -1
    for k in range(len(order)):
        i = order[k]
        if g < 0 or items[i] != out_items[g]:
            g += 1
            out_items[g] = items[i]
        sums[g] += np.float64(weights[i])
    return out_items[: g + 1], sums[: g + 1]


@_jit
def history_profiles(h_indptr: Any, h_indices: Any, h_data: Any, x_indptr: Any, x_indices: Any, x_data: Any, n_features: int) -> Any:
    """Every row of a users × items history matrix ``H`` turned into its content profile: the
    sum over the row's items of ``(h / total) * X[item]``, where ``total`` is the row's float64
    sum taken left to right (at least 1e-12) and each weight is rounded to float32; each product
    rounded to float32, each feature's products summed in float64 in the row's order (the
    arithmetic of ``group_columns``); features ascending. Returns the CSR parts (indptr,
    features, float64 sums). One pass per user instead of ~6 numpy calls per user (~7 µs a user
    instead of ~60 on 15k users; ~10 s less per content fit over 190k users, estimated)."""
    n_users = len(h_indptr) - 1
    mark = np.full(n_features, -1, dtype=np.int64)
    counts = np.zeros(n_users + 1, dtype=np.int64)
    for u in range(n_users):
        c = 0
        for p in range(h_indptr[u], h_indptr[u + 1]):
            item = h_indices[p]
            for q in range(x_indptr[item], x_indptr[item + 1]):
                f = x_indices[q]
                if mark[f] != u:
                    mark[f] = u
                    c += 1
        counts[u + 1] = counts[u] + c
    features = np.empty(counts[n_users], dtype=np.int64)
    sums = np.empty(counts[n_users], dtype=np.float64)
    acc = np.zeros(n_features, dtype=np.float64)
    mark[:] = -1
    for u in range(n_users):
        total = 0.0
        for p in range(h_indptr[u], h_indptr[u + 1]):
            total += np.float64(h_data[p])
        total = max(total, 1e-12)
        k = counts[u]
        for p in range(h_indptr[u], h_indptr[u + 1]):
            item = h_indices[p]
            w = np.float32(np.float64(h_data[p]) / total)  # content's item vectors are float32
            for q in range(x_indptr[item], x_indptr[item + 1]):
                f = x_indices[q]
                if mark[f] != u:
                    mark[f] = u
                    features[k] = f
                    k += 1
                acc[f] += np.float32(x_data[q] * w)  # the product rounded to float32, then widened
        row = features[counts[u] : k]
        row.sort()
        for j in range(counts[u], k):
            f = features[j]
            sums[j] = acc[f]
            acc[f] = 0.0
    return counts, features, sums


@_jit
def group_columns(indptr: Any, indices: Any, data: Any, rows: Any, weights: Any) -> Any:
    """``sum_k weights[k] * matrix[rows[k]]`` by column, columns in order of first appearance:
    each product rounded to the matrix's dtype, then every column's products summed in input
    order in float64 (what ``np.bincount`` does). ``scores.weighted_rows`` sorts the columns."""
    total = 0
    for r in rows:
        total += indptr[r + 1] - indptr[r]
    # One open-addressing table of (column << 32 | group) entries, -1 free, at most half full:
    # one read per probe instead of a key table and a group table (~3 µs of a known shopper's
    # ~1,100 co-occurrence entries, measured in-process; columns below 2**31).
    size = 16
    while size < 2 * total:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, dtype=np.int64)
    columns = np.empty(total, dtype=np.int64)
    sums = np.zeros(total, dtype=np.float64)
    g = 0
    for k in range(len(rows)):
        r = rows[k]
        w = weights[k]
        for p in range(indptr[r], indptr[r + 1]):
            col = np.int64(indices[p])
            h = (col * 0x9E3779B1) & mask
            while True:
                entry = table[h]
                if entry == -1:
                    table[h] = (col << 32) | g
                    columns[g] = col
                    sums[g] += data[p] * w  # the product in the matrix's dtype, then widened (onto 0.0, as bincount)
                    g += 1
                    break
                if entry >> 32 == col:
                    sums[entry & 0xFFFFFFFF] += data[p] * w
                    break
                h = (h + 1) & mask
    return columns[:g], sums[:g]


@_jit
def positive_columns(indptr: Any, indices: Any, data: Any, rows: Any, weights: Any) -> Any:
    """``group_columns`` keeping only the columns whose sum, rounded to float32, is positive and
    finite (``SparseScores.from_positive``'s rule), as float32, in order of first appearance."""
    columns, sums = group_columns(indptr, indices, data, rows, weights)
    values = np.empty(len(sums), dtype=np.float32)
    k = 0
    for g in range(len(sums)):
        v = np.float32(sums[g])
        if v > 0 and np.isfinite(v):
            columns[k] = columns[g]
            values[k] = v
            k += 1
    return columns[:k], values[:k]


@_jit
def _ascending_unique(features: Any) -> Any:
    """``features`` sorted without repeats: the array itself when it already ascends strictly
    (a stored profile row, ``session_profile``'s answer), checked in one pass."""
    for k in range(1, len(features)):
        if features[k] <= features[k - 1]:
            return np.unique(features)
    return features


@_jit
def _block_sum(values: Any, start: int, n: int) -> float:
    """numpy's pairwise summation of a block of at most 128 float64 entries: below 8 left to
    right, else 8 running sums (entry ``i`` into sum ``i % 8``) combined as a tree, then the
    entries past the last multiple of 8 left to right."""
    if n < 8:
        s = -0.0
        for i in range(start, start + n):
            s += values[i]
        return s
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    i = 8
    while i < n - n % 8:
        j = start + i
        r0 += values[j]
        r1 += values[j + 1]
        r2 += values[j + 2]
        r3 += values[j + 3]
        r4 += values[j + 4]
        r5 += values[j + 5]
        r6 += values[j + 6]
        r7 += values[j + 7]
        i += 8
    s = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        s += values[start + i]
        i += 1
    return s


@_jit
def pairwise_sum(values: Any) -> float:
    """``np.sum`` of a float64 vector in numpy's own order (pairwise: a block of more than 128
    entries is the sum of its halves, the first half's length rounded down to a multiple of 8;
    ``_block_sum`` below that), so totals are bit-identical to the numpy code they replace.
    The halving runs on an explicit stack: numba's disk cache cannot hold a recursive function
    (a caller loaded from the cache crashed)."""
    # Frames (start, length, halves pushed so far); finished sums wait on their own stack.
    starts = np.empty(64, dtype=np.int64)
    lengths = np.empty(64, dtype=np.int64)
    phase = np.zeros(64, dtype=np.int64)
    sums = np.empty(64, dtype=np.float64)
    depth = 1
    starts[0], lengths[0], phase[0] = 0, len(values), 0
    done = 0
    while depth:
        d = depth - 1
        n = lengths[d]
        if n <= 128:
            sums[done] = _block_sum(values, starts[d], n)
            done += 1
            depth -= 1
            continue
        half = n // 2
        half -= half % 8
        if phase[d] == 2:  # both halves summed: left + right
            sums[done - 2] = sums[done - 2] + sums[done - 1]
            done -= 1
            depth -= 1
            continue
        first = phase[d] == 0
        phase[d] += 1
        starts[depth] = starts[d] if first else starts[d] + half
        lengths[depth] = half if first else n - half
        phase[depth] = 0
        depth += 1
    return sums[0]


@_jit
def session_profile(x_indptr: Any, x_indices: Any, x_data: Any, history: Any, history_weights: Any, session: Any, session_weights: Any) -> Any:
    """Content's profile of a shopper with session items: the rows ``history`` then ``session``
    of the item matrix ``X``, weighted ``history_weights`` and ``session_weights`` times the
    history's total (at least 1), all divided by their total (at least 1e-12) and rounded to
    ``X``'s dtype; then ``group_columns``' sums, columns ascending, rounded to float32. Exactly
    ``ContentRetriever``'s numpy form (the totals summed in numpy's pairwise order, tested), in
    one call instead of ~8 numpy calls: with the positional weights cached, ~40 µs less of a
    session request's content profile (75 -> 33 µs, measured in-process on the bench model)."""
    n_history, n_session = len(history), len(session)
    rows = np.empty(n_history + n_session, dtype=np.int64)
    w = np.empty(n_history + n_session, dtype=np.float64)
    for k in range(n_history):
        rows[k] = history[k]
        w[k] = np.float64(history_weights[k])
    scale = max(pairwise_sum(w[:n_history]), 1.0)
    for k in range(n_session):
        rows[n_history + k] = session[k]
        w[n_history + k] = np.float64(session_weights[k]) * scale
    total = max(pairwise_sum(w), 1e-12)
    rounded = np.empty(len(w), dtype=x_data.dtype)
    for k in range(len(w)):
        rounded[k] = w[k] / total
    columns, sums = group_columns(x_indptr, x_indices, x_data, rows, rounded)
    order = np.argsort(columns)
    values = np.empty(len(order), dtype=np.float32)
    for j in range(len(order)):
        values[j] = sums[order[j]]
    return columns[order], values


@_jit
def posting_total(indptr: Any, features: Any) -> int:
    """``(indptr[features + 1] - indptr[features]).sum()``: how many entries the posting lists of
    a profile's features hold (``LinearScores.top``'s test for a profile that covers the
    catalogue), without the three numpy calls."""
    total = 0
    for f in features:
        total += indptr[f + 1] - indptr[f]
    return total


@_jit
def neighbour_scores(indptr: Any, indices: Any, data: Any, history: Any, session: Any, weights: Any) -> Any:
    """``positive_columns`` over the rows ``(history ++ session)[-len(weights):]`` (the query
    items, oldest first) with ``weights`` in the matrix's dtype: a co-occurrence request's
    neighbour scores straight from the user's recent items and the session's, without the
    concatenation, cast and slice before it (~10 µs of a request's glue, measured in-process)."""
    m = len(weights)
    skip = len(history) + len(session) - m  # the oldest items beyond the query's length
    rows = np.empty(m, dtype=np.int64)
    for k in range(m):
        j = skip + k
        rows[k] = history[j] if j < len(history) else session[j - len(history)]
    return positive_columns(indptr, indices, data, rows, weights)


@_jit
def neighbour_top(indptr: Any, indices: Any, data: Any, history: Any, session: Any, weights: Any, n: int) -> Any:
    """``top_pairs`` of ``neighbour_scores``: a co-occurrence request's best ``n`` in one
    compiled call, for a blend that asks a source for nothing else (one call fewer, and no scores
    object built in between: ~5 µs of a known shopper's request, measured in-process)."""
    columns, values = neighbour_scores(indptr, indices, data, history, session, weights)
    return top_pairs(values, columns, n)


def warm() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for the argument types serving
    passes, on tiny inputs: serving calls this when it loads a bundle, so no request pays for a
    compilation (seconds on a machine whose cache is cold); ``make`` runs it after installing.
    Once per process: every source of a bundle calls it from its own ``warm``."""
    if _WARMED:
        return
    i32, i64, f32, f64 = np.int32, np.int64, np.float32, np.float64
    one = np.ones(1, dtype=i64)
    for values in (np.ones(2, dtype=f32), np.ones(2, dtype=f64)):
        top_by_key(values, np.arange(2, dtype=i64), 1)
    top_pairs(np.ones(2, dtype=f32), np.arange(2, dtype=i64), 1)
    for values in (np.ones(2, dtype=f32), np.ones(2, dtype=f64)):
        sum_by_item(np.arange(2, dtype=i64), values)
    fuse(np.arange(2, dtype=i64), np.ones(2, dtype=f64), np.zeros(2, dtype=i64), np.empty(0, dtype=i64), 1)
    for rrf in (True, False):
        fuse_sources(np.arange(2, dtype=i64), np.ones(2, dtype=f64), np.array([0, 2], dtype=i64), np.ones(1, dtype=f64), np.zeros(1, dtype=i64), rrf, 10.0, np.empty(0, dtype=i64), 1)
        fuse_allowed(np.arange(2, dtype=i64), np.ones(2, dtype=f64), np.array([0, 2], dtype=i64), np.ones(1, dtype=f64), np.zeros(1, dtype=i64), rrf, 10.0, np.empty(0, dtype=i64), 1, np.ones(1, dtype=i64), 1)
    for ptr_type in (i32, i64):
        for data_type in (f32, f64):
            group_columns(np.array([0, 1], dtype=ptr_type), np.zeros(1, dtype=i32), np.ones(1, dtype=data_type), np.zeros(1, dtype=i64), np.ones(1, dtype=data_type))
            positive_columns(np.array([0, 1], dtype=ptr_type), np.zeros(1, dtype=i32), np.ones(1, dtype=data_type), np.zeros(1, dtype=i64), np.ones(1, dtype=data_type))
    shared = np.ones(1, dtype=f32)
    shared.flags.writeable = False  # positional_weights' answers are read-only: numba types them apart
    remembered = np.zeros(1, dtype=i64)
    remembered.flags.writeable = False  # so are item_indices' session answers (and an anonymous history, a slice of one)
    for history in (np.zeros(1, dtype=i32), np.zeros(1, dtype=i64), remembered):
        for session in (np.zeros(1, dtype=i64), remembered):
            neighbour_scores(np.array([0, 1], dtype=i32), np.zeros(1, dtype=i32), np.ones(1, dtype=f32), history, session, shared)
            neighbour_top(np.array([0, 1], dtype=i32), np.zeros(1, dtype=i32), np.ones(1, dtype=f32), history, session, shared, 1)
    history_profiles(np.array([0, 1], dtype=i32), np.zeros(1, dtype=i32), np.ones(1, dtype=f32), np.array([0, 1], dtype=i32), np.zeros(1, dtype=i32), np.ones(1, dtype=f32), 1)
    for feature_type in (i32, i64):  # a stored profile row's indices, a built profile's
        features = np.zeros(1, dtype=feature_type)
        cluster_top(
            features, np.ones(1, dtype=f32), np.ones((1, 1), dtype=f32), one, np.array([0, 1], dtype=i64),
            np.array([0, 1], dtype=i64), np.ones(1, dtype=f32), np.zeros(1, dtype=np.uint32), np.zeros(1, dtype=i64), 1, 1,
        )
        for ptr_type in (i32, i64):
            posting_total(np.array([0, 1], dtype=ptr_type), features)
    for session in (np.zeros(1, dtype=i64), remembered):  # a list's lookup, a tuple's remembered one
        for weights in (np.ones(1, dtype=f32), shared):  # positional_weights: computed, or cached (read-only)
            session_profile(np.array([0, 1], dtype=i32), np.zeros(1, dtype=i32), np.ones(1, dtype=f32), np.zeros(1, dtype=i32), np.ones(1, dtype=f32), session, weights)
    _WARMED.append(True)


if __name__ == "__main__":
    warm()
