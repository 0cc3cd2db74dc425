"""The engagement ranker: a small MLP over dense features and categorical embeddings (PyTorch, CPU).

Binary cross-entropy, weighted by the inverse negative-sampling rate; Adam; early stopping on the
weighted log-loss of the temporal validation cut (the best epoch's weights are kept); then
calibration on the same cut. Scoring is one batched forward pass per request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shelf.features import FeatureFrame
from shelf.models.io import ModelError, ModelFitError, ModelFormatError
from shelf.models.ranking._base import RankerBase
from shelf.models.ranking.data import RankingSet
from shelf.models.ranking.encoding import EncoderConfig


@dataclass(frozen=True)
class NeuralRankerConfig:
    hidden: tuple[int, ...] = (64, 32)
    embedding_dim: int = 8  # upper bound; small vocabularies get fewer dimensions
    dropout: float = 0.1
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    batch_size: int = 512
    max_epochs: int = 40
    patience: int = 4
    validation_fraction: float = 0.2
    calibration: str = "isotonic"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    seed: int = 0


def _embedding_dims(cardinalities: list[int], cap: int) -> list[int]:
    return [max(2, min(cap, int(round(1.6 * c**0.56)))) for c in cardinalities]


def _build_net(n_dense: int, cardinalities: list[int], dims: list[int], hidden: tuple[int, ...], dropout: float):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(cardinalities, dims, strict=True))
            layers: list[nn.Module] = []
            width = n_dense + sum(dims)
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
                width = h
            layers.append(nn.Linear(width, 1))
            self.mlp = nn.Sequential(*layers)

        def forward(self, dense: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
            parts = [dense] + [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
            return self.mlp(torch.cat(parts, dim=1)).squeeze(1)

    return Net()


class NeuralRanker(RankerBase):
    """MLP engagement ranker; see the module docstring."""

    name = "neural-ranker"
    config_class = NeuralRankerConfig
    model_file = "model.safetensors"

    def __init__(self, config: NeuralRankerConfig | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, **kwargs)
        c = self.config
        if c.batch_size <= 0 or c.max_epochs <= 0 or c.patience <= 0 or c.embedding_dim <= 0:
            raise ModelError("batch_size, max_epochs, patience and embedding_dim must be positive")
        if not (c.learning_rate > 0 and 0 <= c.dropout < 1):
            raise ModelError("learning_rate must be > 0 and dropout in [0, 1)")

    def _net(self):  # type: ignore[no-untyped-def]
        cards = self.encoder_.embedding_cardinalities
        return _build_net(self.encoder_.dense_width, cards, _embedding_dims(cards, self.config.embedding_dim),
                          self.config.hidden, self.config.dropout)

    def _train(self, train: RankingSet, valid: RankingSet) -> None:
        import torch

        c = self.config
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        net = self._net()
        dense, codes = (torch.from_numpy(a) for a in self.encoder_.transform(train.features))
        y = torch.from_numpy(train.labels.astype(np.float32))
        w = torch.from_numpy(train.weights.astype(np.float32))
        v_dense, v_codes = (torch.from_numpy(a) for a in self.encoder_.transform(valid.features))
        v_y = torch.from_numpy(valid.labels.astype(np.float32))
        v_w = torch.from_numpy(valid.weights.astype(np.float32))
        opt = torch.optim.Adam(net.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
        best, best_state, bad_epochs = np.inf, None, 0
        self.history_: list[dict[str, float]] = []
        started = time.perf_counter()
        seen = 0
        for epoch in range(c.max_epochs):
            net.train()
            order = torch.from_numpy(rng.permutation(len(y)))
            total = 0.0
            for start in range(0, len(y), c.batch_size):
                idx = order[start : start + c.batch_size]
                loss = (loss_fn(net(dense[idx], codes[idx]), y[idx]) * w[idx]).sum() / w[idx].sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
            net.eval()
            with torch.no_grad():
                v_loss = float((loss_fn(net(v_dense, v_codes), v_y) * v_w).sum() / v_w.sum())
            if not np.isfinite(v_loss):
                raise ModelFitError("neural-ranker: validation loss became NaN; lower the learning rate")
            self.history_.append({"epoch": epoch, "train_loss": total / len(y), "valid_loss": v_loss})
            if v_loss < best - 1e-5:
                best, bad_epochs = v_loss, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= c.patience:
                    break
        assert best_state is not None
        net.load_state_dict(best_state)
        net.eval()
        self.net_ = net
        self.best_valid_loss_ = best
        self.train_examples_per_s_ = seen / max(time.perf_counter() - started, 1e-9)

    def _logits(self, frame: FeatureFrame) -> np.ndarray:
        import torch

        dense, codes = self.encoder_.transform(frame)
        with torch.inference_mode():
            return self.net_(torch.from_numpy(dense), torch.from_numpy(codes)).numpy().astype(np.float64)

    def _save_model(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.net_.state_dict().items()}, str(folder / self.model_file))

    def _load_model(self, folder: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(folder / self.model_file))
        except (OSError, SafetensorError) as e:
            raise ModelFormatError(f"{folder / self.model_file}: unreadable weights ({e})") from e
        net = self._net()
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise ModelFormatError(f"{folder}: weights do not match the saved architecture ({e})") from e
        net.eval()
        self.net_ = net
