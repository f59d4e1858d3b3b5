"""Optimisation of the forecaster: seeding, threads, batches, early stopping.

The network and the data are given; this module owns the training loop only.

Threads: ``training.threads: 0`` (the default) trains on one thread. Each time
step of a small LSTM is a matrix product of a few hundred kFLOP, too small for
intra-op parallelism to pay for the synchronisation of the threads at every
step; ``lstmad bench`` measures this (``train_windows_per_second_by_threads``),
and on a machine where other processes compete for the cores, more threads
are several times slower, not faster. A positive value is used as given.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lstmad.config import TrainingConfig
from lstmad.model import LSTMForecaster
from lstmad.preprocessing import WindowSet

__all__ = ["TrainingResult", "seed_everything", "train_forecaster", "training_threads"]

log = logging.getLogger(__name__)
ProgressFactory = Callable[[int, str], "ProgressBar"]


class ProgressBar:
    """The few methods of ``tqdm`` that training uses; the default does nothing."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, text: str) -> None: ...

    def close(self) -> None: ...


def no_progress(total: int, desc: str) -> ProgressBar:
    return ProgressBar()


@dataclass
class TrainingResult:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    windows_seen: int = 0

    @property
    def windows_per_second(self) -> float:
        return self.windows_seen / self.seconds if self.seconds > 0 else 0.0


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def training_threads(cfg: TrainingConfig) -> int:
    """The intra-op threads training uses: ``cfg.threads``, or 1 when it is 0 (see the module doc)."""
    return cfg.threads if cfg.threads > 0 else 1


def _warmup(window: int) -> int:
    """Positions at the start of a window not counted in the loss (too little context)."""
    return min(10, max(1, window // 4))


def _loss_on(model: LSTMForecaster, batch: np.ndarray, loss_fn: nn.Module) -> torch.Tensor:
    x = torch.from_numpy(batch)
    pred, _ = model(x[:, :-1])
    w = _warmup(x.shape[1] - 1)
    return loss_fn(pred[:, w - 1 :], x[:, w:])


def evaluate(model: LSTMForecaster, windows: WindowSet, batch_size: int, limit: int) -> float:
    """Mean loss over (at most ``limit``, evenly spaced) windows."""
    model.eval()
    which = np.linspace(0, len(windows) - 1, num=min(limit, len(windows))).astype(np.int64)
    loss_fn = nn.MSELoss(reduction="sum")
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, which.size, batch_size):
            batch = windows.gather(which[lo : lo + batch_size])
            total += float(_loss_on(model, batch, loss_fn))
            w = _warmup(batch.shape[1] - 1)
            count += batch.shape[0] * (batch.shape[1] - w) * batch.shape[2]
    return total / max(count, 1)


def train_forecaster(
    model: LSTMForecaster,
    train: WindowSet,
    val: WindowSet | None,
    cfg: TrainingConfig,
    progress: ProgressFactory = no_progress,
) -> TrainingResult:
    """Fit ``model`` on windows of ``window + 1`` rows (inputs and the next-step targets).

    Each epoch samples at most ``cfg.max_windows`` training windows; training
    stops when the validation loss has not improved for
    ``cfg.early_stopping_patience`` epochs, and the best weights are kept.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(training_threads(cfg))
    try:
        return _train(model, train, val, cfg, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    model: LSTMForecaster,
    train: WindowSet,
    val: WindowSet | None,
    cfg: TrainingConfig,
    progress: ProgressFactory,
) -> TrainingResult:
    rng = seed_everything(cfg.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    loss_fn = nn.MSELoss()
    result = TrainingResult()
    best = math.inf
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stale = 0
    per_epoch = min(len(train), cfg.max_windows)
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.choice(len(train), size=per_epoch, replace=False)
        bar = progress(per_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
        total, batches = 0.0, 0
        for lo in range(0, per_epoch, cfg.batch_size):
            batch = train.gather(np.sort(order[lo : lo + cfg.batch_size]))
            optimiser.zero_grad(set_to_none=True)
            loss = _loss_on(model, batch, loss_fn)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            total += loss.item()
            batches += 1
            bar.update(batch.shape[0])
        result.windows_seen += per_epoch
        result.train_loss.append(total / max(batches, 1))
        score = result.train_loss[-1]
        if val is not None and len(val):
            score = evaluate(model, val, cfg.batch_size * 4, limit=max(cfg.max_windows // 4, 1000))
            result.val_loss.append(score)
        bar.set_postfix_str(f"train {result.train_loss[-1]:.4f} val {score:.4f}")
        bar.close()
        log.info("epoch %d: train loss %.5f, validation loss %.5f", epoch + 1, result.train_loss[-1], score)
        if score < best - 1e-6:
            best, stale, result.best_epoch = score, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.early_stopping_patience:
                log.info("early stopping after epoch %d (best %d)", epoch + 1, result.best_epoch + 1)
                break
    result.seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    model.eval()
    return result
