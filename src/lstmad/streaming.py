"""Streaming inference: one batched LSTM step per new sample for every entity.

A naive exporter re-runs the LSTM over the whole window of every entity at
every cycle. This engine keeps, per entity, the LSTM state ``(h, c)``, a ring
buffer of the last ``window`` scaled samples and the pending forecast, and
advances all entities together by one step. The full window is recomputed only
when needed: when an entity's window first fills, after a gap too long to
bridge, and every ``resync_every`` steps to bound the drift between the carried
state and a state computed from the window alone.

Missing values: a sample with missing features is bridged by carrying the last
values forward for at most ``max_gap`` steps; bridged samples advance the state
but are never scored. A longer gap resets the entity, which is scored again
once its window has refilled. A missing value is never scored as an anomaly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lstmad.model import LSTMForecaster
from lstmad.preprocessing import StandardScaler

__all__ = ["StepResult", "StreamingEngine"]


@dataclass(frozen=True)
class StepResult:
    """What one step produced for the entities passed to :meth:`StreamingEngine.step`.

    ``scored[i]`` tells whether entity ``i`` got a score at this step; the other
    arrays hold ``NaN`` where it did not.
    """

    entities: list[str]
    scored: np.ndarray
    raw_error: np.ndarray
    error: np.ndarray
    feature_errors: np.ndarray
    score: np.ndarray


class StreamingEngine:
    """Per-entity streaming state for one trained model."""

    def __init__(
        self,
        model: LSTMForecaster,
        scaler: StandardScaler,
        threshold: float,
        *,
        window: int,
        smoothing: int,
        max_gap: int,
        resync_every: int = 240,
        capacity: int = 64,
    ) -> None:
        self.model = model
        self.scaler = scaler
        self.threshold = threshold
        self.window = window
        self.alpha = 2.0 / (smoothing + 1.0)
        self.max_gap = max_gap
        self.resync_every = resync_every
        self.n_features = model.n_features
        self.index: dict[str, int] = {}
        self._free: list[int] = []
        self.capacity = 0
        f, w = self.n_features, window
        self.ring = np.zeros((0, w, f), np.float32)
        self.last_x = np.zeros((0, f), np.float32)
        self.pred = np.zeros((0, f), np.float32)
        self.ewma = np.zeros((0, f), np.float64)
        self.pos = np.zeros(0, np.int64)
        self.count = np.zeros(0, np.int64)
        self.gap = np.zeros(0, np.int64)
        self.since_sync = np.zeros(0, np.int64)
        self.has_state = np.zeros(0, bool)
        self.has_pred = np.zeros(0, bool)
        self.h = torch.zeros(model.layers, 0, model.hidden)
        self.c = torch.zeros(model.layers, 0, model.hidden)
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        """Resize every per-slot array to ``capacity`` slots, keeping the existing ones."""
        old = self.capacity

        def grown(arr: np.ndarray, fill: float) -> np.ndarray:
            new = np.full((capacity, *arr.shape[1:]), fill, dtype=arr.dtype)
            new[:old] = arr
            return new

        self.ring = grown(self.ring, 0.0)
        self.last_x = grown(self.last_x, np.nan)
        self.pred = grown(self.pred, np.nan)
        self.ewma = grown(self.ewma, np.nan)
        self.pos = grown(self.pos, 0)
        self.count = grown(self.count, 0)
        self.gap = grown(self.gap, 0)
        self.since_sync = grown(self.since_sync, 0)
        self.has_state = grown(self.has_state, False)
        self.has_pred = grown(self.has_pred, False)
        h = torch.zeros(self.h.shape[0], capacity, self.h.shape[2])
        c = torch.zeros_like(h)
        h[:, :old] = self.h
        c[:, :old] = self.c
        self.h, self.c = h, c
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    @property
    def entities(self) -> list[str]:
        return list(self.index)

    def _slots(self, names: Sequence[str]) -> np.ndarray:
        index = self.index
        missing = [n for n in names if n not in index]
        if missing:
            needed = len(missing) - len(self._free)
            if needed > 0:
                self._grow(max(self.capacity * 2, self.capacity + needed))
            for name in missing:
                slot = self._free.pop()
                self._reset(np.array([slot]))
                index[name] = slot
        return np.fromiter((index[n] for n in names), dtype=np.int64, count=len(names))

    def _reset(self, slots: np.ndarray) -> None:
        self.count[slots] = 0
        self.gap[slots] = 0
        self.pos[slots] = 0
        self.since_sync[slots] = 0
        self.has_state[slots] = False
        self.has_pred[slots] = False
        self.ewma[slots] = np.nan
        self.last_x[slots] = np.nan

    def drop(self, names: Sequence[str]) -> None:
        """Forget entities (they vanished); their slots are reused."""
        for name in names:
            slot = self.index.pop(name, None)
            if slot is not None:
                self._reset(np.array([slot]))
                self._free.append(slot)

    def windows(self, slots: np.ndarray) -> np.ndarray:
        """The last ``window`` scaled samples of each slot, oldest first."""
        rows = (self.pos[slots][:, None] + np.arange(self.window)) % self.window
        return self.ring[slots[:, None], rows]

    @torch.no_grad()
    def _sync(self, slots: np.ndarray) -> None:
        pred, (h, c) = self.model(torch.from_numpy(self.windows(slots)))
        idx = torch.from_numpy(slots)
        self.h[:, idx] = h
        self.c[:, idx] = c
        self.pred[slots] = pred[:, -1].numpy()
        self.has_state[slots] = True
        self.since_sync[slots] = 0

    @torch.no_grad()
    def _advance(self, slots: np.ndarray, x: np.ndarray) -> None:
        idx = torch.from_numpy(slots)
        pred, (h, c) = self.model.step(torch.from_numpy(x), (self.h[:, idx], self.c[:, idx]))
        self.h[:, idx] = h
        self.c[:, idx] = c
        self.pred[slots] = pred.numpy()
        self.since_sync[slots] += 1

    def step(self, names: Sequence[str], values: np.ndarray) -> StepResult:
        """Feed one new sample (raw units, ``NaN`` where missing) per entity and score it.

        ``values`` is (len(names), features). Each name must appear once.
        """
        n = len(names)
        if values.shape != (n, self.n_features):
            raise ValueError(f"expected values of shape {(n, self.n_features)}, found {values.shape}")
        slots = self._slots(names)
        x = self.scaler.transform(values)
        missing = np.isnan(x)
        row_missing = missing.any(axis=1)
        can_fill = row_missing & (self.count[slots] > 0) & (self.gap[slots] < self.max_gap)
        if can_fill.any():
            x = np.where(missing & can_fill[:, None], self.last_x[slots], x)
        real = ~row_missing
        valid = real | can_fill
        self.gap[slots] = np.where(can_fill, self.gap[slots] + 1, 0)
        broken = slots[~valid]
        if broken.size:
            self._reset(broken)

        # Score the samples that the pending forecasts were made for.
        scored = real & self.has_pred[slots]
        feature_errors = np.full((n, self.n_features), np.nan)
        raw_error = np.full(n, np.nan)
        if scored.any():
            s = slots[scored]
            sq = (self.pred[s].astype(np.float64) - x[scored]) ** 2
            prev = self.ewma[s]
            smooth = np.where(np.isnan(prev), sq, self.alpha * sq + (1 - self.alpha) * prev)
            self.ewma[s] = smooth
            feature_errors[scored] = smooth
            raw_error[scored] = sq.mean(axis=1)
        error = feature_errors.mean(axis=1)
        score = error / self.threshold

        # Append to the ring buffers and advance the state.
        v = slots[valid]
        if v.size:
            xv = x[valid].astype(np.float32)
            self.ring[v, self.pos[v]] = xv
            self.pos[v] = (self.pos[v] + 1) % self.window
            self.count[v] += 1
            self.last_x[v] = xv
            full = self.count[v] >= self.window
            need_sync = full & (~self.has_state[v] | (self.since_sync[v] >= self.resync_every))
            stepping = full & ~need_sync
            if need_sync.any():
                self._sync(v[need_sync])
            if stepping.any():
                self._advance(v[stepping], xv[stepping])
            self.has_pred[v] = full
        return StepResult(list(names), scored, raw_error, error, feature_errors, score)

    def run(self, names: Sequence[str], values: np.ndarray) -> list[StepResult]:
        """Feed a whole (entities, time, features) block, one step per time index."""
        return [self.step(names, values[:, t]) for t in range(values.shape[1])]
