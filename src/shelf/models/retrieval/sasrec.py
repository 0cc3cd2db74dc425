"""SASRec trained with gSASRec's generalised binary cross-entropy (gBCE), on CPU.

The model reads a shopper's recent items (oldest first) and scores every catalogue item as the
next one. Architecture: item + learned position embeddings, ``layers`` pre-norm transformer
blocks with causal self-attention, output scores as dot products with the (tied) item
embeddings, as in Kang & McAuley (2018) and Petrov & Macdonald (2023).

Training objective (gSASRec, RecSys 2023): for every position with a next item, the positive
and ``negatives`` uniformly sampled items are scored, and

    loss = -beta * log sigma(s_pos) - sum_neg log(1 - sigma(s_neg))

with ``alpha = negatives / (n_items - 1)`` (the negative sampling rate) and
``beta = alpha * (t * (1 - 1/alpha) + 1/alpha)``. ``t = 0`` is plain BCE (beta = 1); ``t = 1``
makes the predicted probabilities calibrated as if trained against the full catalogue. The
paper's recommended ``t`` is 0.75. Negatives are sampled once per batch and shared by all its
positions (one matrix product instead of a gather per position); a sampled negative equal to a
position's positive is ignored for that position.

Why it is fast on CPU: the training windows are built once as padded integer matrices, batches
are bucketed by length and trimmed to their longest window (real shop sequences are short), the
negatives are shared per batch, and attention is torch's fused ``scaled_dot_product_attention``.
There is no Python work per sample in the loop.

Sequences: one per known user (their events in time order) and, when ``include_sessions``, one
per anonymous session. Consecutive repeats of the same item collapse into one. A sequence
longer than ``max_len + 1`` is cut into windows of ``max_len`` next-item targets, from the end.

Files (``save``/``load``): ``manifest.json`` (written and checked by ``shelf.models.io``: format
version, kind, config, item and user ids, and the SHA-256 of the weights file) and
``sasrec.safetensors`` (weights and the users' recent histories). No pickle anywhere.

Errors follow ``shelf.models.io``: a bad parameter raises ``ModelError``, data that cannot
train (or a run that ends in NaN) ``ModelFitError``, use before ``fit`` ``NotFittedError``, and
a missing, corrupted or newer saved model ``ModelFormatError``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from shelf.models.base import IdIndex, Interactions, Query, Scored
from shelf.models.io import (
    FORMAT_VERSION,
    MANIFEST,
    ModelError,
    ModelFitError,
    ModelFormatError,
    NotFittedError,
    read_manifest,
    write_manifest,
)

__all__ = ["FORMAT_VERSION", "SASRec", "SASRecConfig"]

_MANIFEST = MANIFEST
_WEIGHTS_FILE = "sasrec.safetensors"
_PAD = 0  # internal item index 0 is padding; catalogue item i is internal index i + 1


@dataclass(frozen=True)
class SASRecConfig:
    """Hyper-parameters of :class:`SASRec`. Validated on construction.

    Attributes:
        hidden: embedding and model width.
        max_len: how many recent items the model reads (and the training window length).
        layers: transformer blocks.
        heads: attention heads; must divide ``hidden``.
        dropout: dropout on embeddings and on each block's residual branches, in [0, 1).
        negatives: uniformly sampled negatives per batch, shared by its positions.
        gbce_t: gBCE calibration parameter in [0, 1]; 0 is plain BCE.
        epochs: maximum passes over the training windows.
        batch_size: windows per optimiser step.
        lr: Adam learning rate.
        weight_decay: AdamW decoupled weight decay.
        seed: seeds initialisation, dropout, negatives and batch order (same seed, same model).
        event_types: event types that make up sequences; ``None`` means all.
        include_sessions: also learn from anonymous sessions (events with no user).
        exclude_seen: never return an item that is in the sequence the model was given.
        validation_sequences: hold out the last item of this many sequences and stop early
            when hit-rate@10 on them stops improving; 0 trains all ``epochs``.
        patience: epochs without improvement before stopping early.
        num_threads: torch intra-op threads during ``fit``; ``None`` keeps torch's setting.
    """

    hidden: int = 64
    max_len: int = 50
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    negatives: int = 128
    gbce_t: float = 0.75
    epochs: int = 20
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    event_types: tuple[str, ...] | None = None
    include_sessions: bool = True
    exclude_seen: bool = False
    validation_sequences: int = 0
    patience: int = 2
    num_threads: int | None = None

    def __post_init__(self) -> None:
        positive = ("hidden", "max_len", "layers", "heads", "negatives", "epochs", "batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"SASRecConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ModelError(f"SASRecConfig.hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ModelError(f"SASRecConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise ModelError(f"SASRecConfig.gbce_t must be in [0, 1], got {self.gbce_t!r}")
        if not (self.lr > 0.0 and math.isfinite(self.lr)):
            raise ModelError(f"SASRecConfig.lr must be a positive finite number, got {self.lr!r}")
        if self.weight_decay < 0.0:
            raise ModelError(f"SASRecConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.validation_sequences < 0 or self.patience < 1:
            raise ModelError("SASRecConfig.validation_sequences must be >= 0 and patience >= 1")
        if self.num_threads is not None and self.num_threads < 1:
            raise ModelError(f"SASRecConfig.num_threads must be >= 1 or None, got {self.num_threads!r}")
        if self.event_types is not None and (isinstance(self.event_types, str) or not self.event_types):
            raise ModelError("SASRecConfig.event_types must be a non-empty tuple of event type names or None")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["event_types"] = None if self.event_types is None else list(self.event_types)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SASRecConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ModelFormatError(f"unknown SASRec config fields {sorted(unknown)}")
        raw = dict(raw)
        if raw.get("event_types") is not None:
            raw["event_types"] = tuple(raw["event_types"])
        return cls(**raw)


# ---------------------------------------------------------------------------------------------
# Network


def _dropout(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Inverted dropout whose keep mask comes from random bytes, eight per 64-bit draw.

    ``F.dropout`` on CPU draws one Bernoulli sample per element, which cost ~20 ms per
    ``(512, 50, 64)`` activation (a fifth of a training step); eight one-byte uniforms per 64-bit
    draw cost ~2 ms. The price is that ``rate`` is rounded to a multiple of 1/256 (0.2 becomes
    51/256 = 0.199); the kept values are scaled by the exact inverse of the rounded keep rate.
    Draws come from torch's default generator, so ``torch.manual_seed`` fixes them.
    """
    dropped = min(255, round(rate * 256))
    if not training or dropped == 0:
        return x
    n = x.numel()
    # The full signed range makes all eight bytes uniform; random_() alone leaves the top bit 0.
    draws = torch.empty(-(-n // 8), dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = draws.view(torch.uint8)[:n].view(x.shape) >= dropped
    return x * keep.to(x.dtype).mul_(256.0 / (256 - dropped))


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention then a position-wise feed-forward."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn_in = nn.Linear(hidden, hidden)
        self.ffn_out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        # (b, L, 3d) -> 3 × (b, heads, L, d/heads) as views; one head needs no copy at all.
        qkv = self.qkv(self.attn_norm(x)).view(b, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attended = attended.transpose(1, 2).reshape(b, length, d)
        x = x + _dropout(self.attn_out(attended), self.dropout, self.training)
        ffn = self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))
        return x + _dropout(ffn, self.dropout, self.training)


class _SASRecNet(nn.Module):
    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.max_len = config.max_len
        self.dropout = config.dropout
        self.item_embedding = nn.Embedding(n_items + 1, config.hidden, padding_idx=_PAD)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.blocks = nn.ModuleList(
            _Block(config.hidden, config.heads, config.dropout) for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(config.hidden)
        # Item embeddings are both input and output; too small an init (e.g. 0.05) leaves the
        # initial scores flat and training crawls, torch's N(0, 1) is too large. 0.25 learned
        # fastest on a planted-sequence check.
        nn.init.normal_(self.item_embedding.weight, std=0.25)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[_PAD].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(b, L, hidden)`` of left-padded item sequences ``seq`` ``(b, L)``.

        Positions are counted from the right so that a window trimmed to its longest sequence
        sees the same position embeddings as the full ``max_len`` window.
        """
        length = seq.shape[1]
        valid = seq != _PAD
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        # A real position attends to earlier real positions; a padding position attends to
        # itself only, so no attention row is empty (an empty row would give NaN).
        mask = ((causal & valid[:, None, :]) | eye)[:, None]
        x = self.item_embedding(seq) + self.position_embedding.weight[self.max_len - length :]
        x = _dropout(x, self.dropout, self.training)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    def item_weights(self) -> torch.Tensor:
        """Output embeddings of the catalogue items, ``(n_items, hidden)``, padding left out."""
        return self.item_embedding.weight[1:]


def _gbce_beta(negatives: int, n_items: int, t: float) -> float:
    """gSASRec's beta for ``negatives`` uniform samples out of ``n_items - 1`` candidates."""
    alpha = min(1.0, negatives / max(1, n_items - 1))
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def _gbce_loss(
    net: _SASRecNet, seq: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor, beta: float
) -> torch.Tensor:
    """Mean gBCE over the positions of ``seq`` ``(b, L)`` that have a next item in ``target``.

    ``negatives`` ``(K,)`` are shared by all positions: their scores are one ``(P, d) × (d, K)``
    product. A negative equal to a position's positive has that position's positive score, so
    instead of masking the ``(P, K)`` matrix its softplus is subtracted once per such negative.
    """
    hidden = net(seq)
    has_target = target != _PAD
    if bool(has_target.all()):  # full windows: a view, not a gathered copy
        hidden, positives = hidden.reshape(-1, hidden.shape[-1]), target.reshape(-1)
    else:
        hidden, positives = hidden[has_target], target[has_target]  # (P, d), (P,)
    # One gather (and one gradient scatter) for the positives and the negatives.
    rows = net.item_embedding.weight.index_select(0, torch.cat([positives, negatives]))
    pos_rows, neg_rows = rows[: len(positives)], rows[len(positives) :]
    pos_scores = (hidden * pos_rows).sum(-1).float()
    neg_scores = (hidden @ neg_rows.T).float()  # (P, K)
    accidental = torch.bincount(negatives, minlength=net.item_embedding.num_embeddings)[positives]
    pos_loss = beta * F.softplus(-pos_scores) - accidental * F.softplus(pos_scores)
    return pos_loss.mean() + F.softplus(neg_scores).sum() / len(positives)


# ---------------------------------------------------------------------------------------------
# Sequences


@dataclass(frozen=True)
class _Sequences:
    items: np.ndarray  # int64, internal indices (catalogue index + 1), grouped, time-ordered
    starts: np.ndarray  # int64, first event of each sequence in ``items``
    lengths: np.ndarray  # int64
    user: np.ndarray  # int64, user index of each sequence, -1 for an anonymous session


def _build_sequences(data: Interactions, config: SASRecConfig) -> _Sequences:
    keep = np.ones(len(data), dtype=bool)
    if config.event_types is not None:
        unknown = sorted(set(config.event_types) - set(data.event_types))
        if len(unknown) == len(config.event_types):
            raise ModelFitError(
                f"none of SASRecConfig.event_types {list(config.event_types)} occur in the data "
                f"(it has {list(data.event_types)})"
            )
        wanted = [data.event_types.index(t) for t in config.event_types if t in data.event_types]
        keep &= np.isin(data.kind, wanted)
    user = data.user.astype(np.int64)
    session = data.session.astype(np.int64)
    anonymous = (user < 0) & (session >= 0)
    keep &= (user >= 0) | (anonymous & config.include_sessions)
    # One key per sequence: users first, then anonymous sessions.
    key = np.where(user >= 0, user, data.n_users + session)[keep]
    order = np.lexsort((data.timestamp[keep], key))
    key = key[order]
    items = data.item.astype(np.int64)[keep][order] + 1
    if len(key) == 0:
        return _Sequences(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
    new_key = np.r_[True, key[1:] != key[:-1]]
    repeat = ~new_key & np.r_[False, items[1:] == items[:-1]]
    key, items, new_key = key[~repeat], items[~repeat], new_key[~repeat]
    starts = np.flatnonzero(new_key)
    lengths = np.diff(np.r_[starts, len(items)])
    first_key = key[starts]
    seq_user = np.where(first_key < data.n_users, first_key, -1)
    return _Sequences(items, starts.astype(np.int64), lengths.astype(np.int64), seq_user)


def _windows(seqs: _Sequences, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded training windows: inputs ``(W, max_len)``, next items, and window lengths.

    Transition ``j`` of a sequence (item ``j`` -> item ``j + 1``) is counted from the end
    (``q = m - 1 - j`` for ``m`` transitions); window ``q // max_len`` holds it in column
    ``max_len - 1 - q % max_len``, so the newest window is the fullest.
    """
    m = np.maximum(seqs.lengths - 1, 0)
    n_windows = -(-m // max_len)
    total = int(m.sum())
    seq_of = np.repeat(np.arange(len(m)), m)
    j = np.arange(total) - np.repeat(np.cumsum(m) - m, m)
    q = m[seq_of] - 1 - j
    window = np.repeat(np.cumsum(n_windows) - n_windows, m) + q // max_len
    column = max_len - 1 - q % max_len
    src = seqs.starts[seq_of] + j
    inputs = np.zeros((int(n_windows.sum()), max_len), dtype=np.int64)
    targets = np.zeros_like(inputs)
    inputs[window, column] = seqs.items[src]
    targets[window, column] = seqs.items[src + 1]
    window_lengths = np.bincount(window, minlength=len(inputs))
    return inputs, targets, window_lengths


def _recent(seqs: _Sequences, which: np.ndarray, max_len: int, drop_last: bool = False) -> np.ndarray:
    """Left-padded last ``max_len`` items of sequences ``which`` (optionally without the last)."""
    out = np.zeros((len(which), max_len), dtype=np.int64)
    ends = seqs.starts[which] + seqs.lengths[which] - int(drop_last)
    for col in range(max_len):  # vectorised over sequences; max_len steps
        pos = ends - max_len + col
        ok = pos >= seqs.starts[which]
        out[ok, col] = seqs.items[pos[ok]]
    return out


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled batches of similar length: sort within pools of 50 batches, shuffle the batches."""
    order = rng.permutation(len(lengths))
    pool = batch_size * 50
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    for b in rng.permutation(len(batches)):
        yield batches[b]


# ---------------------------------------------------------------------------------------------
# Retriever


class SASRec:
    """Sequential next-item retriever (SASRec architecture, gBCE loss).

    Fitted state: ``net_`` (the torch module), ``items_`` and ``users_`` (id maps), and
    ``history_``, the left-padded last ``max_len`` items of every known user, ``(n_users,
    max_len)`` int64 with 0 for padding and catalogue index + 1 otherwise.

    ``retrieve`` reads ``query.session_items`` when given, else the user's training history.
    A query with neither (an unknown user, a user without events of the configured types, a
    session of unknown items only) gets an empty ``Scored``: the caller falls back to another
    retriever such as popularity.
    """

    name = "sasrec"

    def __init__(self, config: SASRecConfig | None = None) -> None:
        config = SASRecConfig() if config is None else config
        if not isinstance(config, SASRecConfig):
            raise ModelError(f"SASRec takes a SASRecConfig, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"SASRec({self.config!r})"

    # -- fit ------------------------------------------------------------------------------------

    def fit(self, data: Interactions) -> Self:
        cfg = self.config
        if data.n_items < 2:
            raise ModelFitError(f"SASRec needs at least 2 catalogue items, got {data.n_items}")
        seqs = _build_sequences(data, cfg)
        trainable = seqs.lengths >= 2
        if not trainable.any():
            raise ModelFitError(
                "SASRec found no user or session with two or more items (of the configured "
                "event types) to learn from"
            )
        rng = np.random.default_rng(cfg.seed)
        held_out = np.zeros(0, dtype=np.int64)
        if cfg.validation_sequences:
            candidates = np.flatnonzero(seqs.lengths >= 3)
            count = min(cfg.validation_sequences, len(candidates))
            held_out = np.sort(rng.choice(candidates, size=count, replace=False))
        train_lengths = seqs.lengths.copy()
        train_lengths[held_out] -= 1
        train_seqs = _Sequences(seqs.items, seqs.starts, train_lengths, seqs.user)
        inputs, targets, window_lengths = _windows(train_seqs, cfg.max_len)

        previous_threads = torch.get_num_threads()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                self.net_ = _SASRecNet(data.n_items, cfg)
                valid_in = _recent(seqs, held_out, cfg.max_len, drop_last=True)
                valid_target = seqs.items[seqs.starts[held_out] + seqs.lengths[held_out] - 1] - 1
                self.epochs_trained_, self.validation_history_ = self._train(
                    inputs, targets, window_lengths, rng, valid_in, valid_target
                )
        finally:
            torch.set_num_threads(previous_threads)
        self.net_.eval()
        self._check_finite()

        self.items_ = data.items
        self.users_ = data.users
        self.history_ = np.zeros((data.n_users, cfg.max_len), dtype=np.int64)
        known = np.flatnonzero(seqs.user >= 0)
        self.history_[seqs.user[known]] = _recent(seqs, known, cfg.max_len)
        return self

    def _train(
        self,
        inputs: np.ndarray,
        targets: np.ndarray,
        window_lengths: np.ndarray,
        rng: np.random.Generator,
        valid_in: np.ndarray,
        valid_target: np.ndarray,
    ) -> tuple[int, list[float]]:
        cfg = self.config
        net = self.net_
        n_items = net.item_weights().shape[0]
        beta = _gbce_beta(cfg.negatives, n_items, cfg.gbce_t)
        inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
        # fused: one kernel per parameter instead of ~10 elementwise passes.
        optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        generator = torch.Generator().manual_seed(cfg.seed)
        best_metric, best_state, stale = -1.0, None, 0
        history: list[float] = []
        epoch = 0
        for epoch in range(1, cfg.epochs + 1):  # noqa: B007 (epoch is reported)
            net.train()
            loss_sum = torch.zeros(())
            for batch in _batches(window_lengths, cfg.batch_size, rng):
                longest = int(window_lengths[batch].max())
                index = torch.from_numpy(batch)
                seq = inputs_t.index_select(0, index)[:, cfg.max_len - longest :]
                target = targets_t.index_select(0, index)[:, cfg.max_len - longest :]
                negatives = torch.randint(1, n_items + 1, (cfg.negatives,), generator=generator)
                loss = _gbce_loss(net, seq, target, negatives, beta)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                loss_sum += loss.detach()
            if not torch.isfinite(loss_sum):
                raise ModelFitError(
                    f"SASRec loss became {loss_sum.item()} in epoch {epoch}; lower lr "
                    f"(now {cfg.lr}) or check the input data"
                )
            if len(valid_target):
                metric = self._hit_rate(valid_in, valid_target, k=10)
                history.append(metric)
                if metric > best_metric:
                    best_metric, best_state, stale = metric, copy.deepcopy(net.state_dict()), 0
                else:
                    stale += 1
                    if stale >= cfg.patience:
                        break
        if best_state is not None:
            net.load_state_dict(best_state)
        return epoch, history

    def _hit_rate(self, sequences: np.ndarray, target: np.ndarray, k: int) -> float:
        scores = self._score_sequences(sequences)
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        return float((top == target[:, None]).any(axis=1).mean())

    def _check_finite(self) -> None:
        for name, tensor in self.net_.state_dict().items():
            if not torch.isfinite(tensor).all():
                raise ModelFitError(
                    f"SASRec parameter {name!r} has NaN or infinite values after training; "
                    f"lower lr (now {self.config.lr}) or check the input data"
                )

    # -- scoring --------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "history_")

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError("SASRec is not fitted; call fit(data) or SASRec.load(path) first")

    @torch.inference_mode()
    def _score_sequences(self, sequences: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Scores ``(b, n_items)`` float32 of left-padded internal sequences ``(b, max_len)``."""
        self.net_.eval()
        weights = self.net_.item_weights()
        out = np.empty((len(sequences), weights.shape[0]), dtype=np.float32)
        lengths = (sequences != _PAD).sum(axis=1)
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            longest = max(1, int(lengths[start : start + batch_size].max(initial=1)))
            hidden = self.net_(torch.from_numpy(chunk[:, -longest:]))[:, -1]
            out[start : start + batch_size] = (hidden @ weights.T).numpy()
        if self.config.exclude_seen:
            rows, cols = np.nonzero(sequences)
            out[rows, sequences[rows, cols] - 1] = -np.inf
        return out

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Scores ``(len(users), n_items)`` float32 for user indices of the fitted data.

        Users outside the index or without a history get a row of ``-inf``.
        """
        self._require_fitted()
        users = np.asarray(users, dtype=np.int64)
        known = (users >= 0) & (users < len(self.users_))
        histories = np.zeros((len(users), self.config.max_len), dtype=np.int64)
        histories[known] = self.history_[users[known]]
        has_history = histories[:, -1] != _PAD
        out = np.full((len(users), len(self.items_)), -np.inf, dtype=np.float32)
        if has_history.any():
            out[has_history] = self._score_sequences(histories[has_history])
        return out

    def _query_sequence(self, query: Query) -> np.ndarray | None:
        if query.session_items:
            found = self.items_.lookup(list(query.session_items))
            found = found[found >= 0] + 1
            if len(found) == 0:
                return None
            found = found[np.r_[True, found[1:] != found[:-1]]][-self.config.max_len :]
            row = np.zeros(self.config.max_len, dtype=np.int64)
            row[self.config.max_len - len(found) :] = found
            return row
        if query.user_id is None:
            return None
        user = self.users_.get(query.user_id)
        if user < 0 or self.history_[user, -1] == _PAD:
            return None
        return self.history_[user]

    def retrieve(self, query: Query, n: int) -> Scored:
        """The ``n`` best next items for the query's session (or user history), best first."""
        self._require_fitted()
        if n < 0:
            raise ModelError(f"n must be >= 0, got {n}")
        sequence = self._query_sequence(query)
        if sequence is None or n == 0:
            return Scored.empty()
        scores = self._score_sequences(sequence[None])[0]
        if query.exclude:
            excluded = self.items_.lookup(list(query.exclude))
            scores[excluded[excluded >= 0]] = -np.inf
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[np.isfinite(scores[top])]
        return Scored(
            self.items_.ids[top],
            scores[top].astype(np.float32),
            np.full(len(top), self.name, dtype=object),
        )

    # -- persistence ----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``sasrec.safetensors`` then ``manifest.json`` into the folder ``path``; return it.

        The manifest is written last, so a half-written folder has none and is refused.
        """
        self._require_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net_.state_dict().items()}
        tensors["history"] = torch.from_numpy(self.history_)
        manifest_path = folder / _MANIFEST
        if manifest_path.exists():
            manifest_path.unlink()  # the folder is invalid until the new manifest lands
        save_file(tensors, str(folder / _WEIGHTS_FILE))
        meta = {
            "epochs_trained": self.epochs_trained_,
            "item_ids": [str(i) for i in self.items_.ids.tolist()],
            "user_ids": [str(u) for u in self.users_.ids.tolist()],
        }
        return write_manifest(folder, kind=self.name, config=self.config.to_json(), meta=meta, data_file=_WEIGHTS_FILE)

    @classmethod
    def load(cls, path: str | Path) -> SASRec:
        """Read a model written by :meth:`save`; raise ``ModelFormatError`` if it cannot."""
        folder = Path(path)
        manifest, weights_path = read_manifest(folder, kind=cls.name)
        try:
            config = SASRecConfig.from_json(manifest["config"])
            meta = manifest["meta"]
            tensors = load_file(str(weights_path))
            model = cls(config)
            model.items_ = IdIndex(np.asarray(meta["item_ids"], dtype=object))
            model.users_ = IdIndex(np.asarray(meta["user_ids"], dtype=object))
            model.net_ = _SASRecNet(len(model.items_), config)
            state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
            model.net_.load_state_dict(state, strict=True)
            model.epochs_trained_ = int(meta.get("epochs_trained", 0))
            model.validation_history_ = []
            model.history_ = tensors["history"].numpy().astype(np.int64, copy=True)
        except (KeyError, TypeError, ValueError, RuntimeError, ModelError, SafetensorError) as exc:
            raise ModelFormatError(f"{folder}: saved SASRec model is inconsistent ({exc})") from exc
        model.net_.eval()
        return model

