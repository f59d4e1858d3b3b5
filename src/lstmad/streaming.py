"""Streaming inference: one batched LSTM step per new sample for every entity.

A naive exporter re-runs the LSTM over the whole window of every entity at
every cycle. This engine keeps, per entity, the LSTM state ``(h, c)``, a ring
buffer of the last ``window`` scaled samples and the pending forecast, and
advances all entities together by one step. The full window is recomputed only
when needed: when an entity's window first fills, after a gap too long to
bridge, and every ``resync_every`` steps to bound the drift between the carried
state and a state computed from the window alone. The periodic re-syncs are
staggered by slot, so a fleet whose windows filled together re-syncs about
``1 / resync_every`` of its entities per step instead of all of them at once.

Cost: a step is one batched LSTM step for all entities plus a few vectorised
numpy operations; when the caller passes the same names in the same order as
in the previous step (the serving loop does), the name-to-slot lookup is reused,
and when those slots are contiguous the per-slot state is read and written
through slices rather than gathered and scattered.

Missing values: a sample with missing features is bridged by carrying the last
values forward for at most ``max_gap`` steps; bridged samples advance the state
but are never scored, nor are the first k + 1 real samples after k bridged ones.
A longer gap resets the entity, which is scored again once its window has
refilled. A missing value is never scored as an anomaly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lstmad.model import LSTMForecaster
from lstmad.preprocessing import StandardScaler

__all__ = ["StepResult", "StreamingEngine"]

Selector = slice | np.ndarray
SYNC_CHUNK = 2048


def _selector(slots: np.ndarray) -> Selector:
    """``slots`` as a slice when they are consecutive and increasing, else the array itself."""
    n = slots.size
    if n and int(slots[-1]) - int(slots[0]) == n - 1 and (n == 1 or bool((np.diff(slots) == 1).all())):
        return slice(int(slots[0]), int(slots[-1]) + 1)
    return slots


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
        self.cooldown = np.zeros(0, np.int64)
        self.since_sync = np.zeros(0, np.int64)
        self.has_state = np.zeros(0, bool)
        self.has_pred = np.zeros(0, bool)
        self.h = torch.zeros(model.layers, 0, model.hidden)
        self.c = torch.zeros(model.layers, 0, model.hidden)
        self._last_names: list[str] | None = None
        self._last_slots = np.zeros(0, np.int64)
        self._last_selector: Selector = self._last_slots
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
        self.cooldown = grown(self.cooldown, 0)
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

    def _slots(self, names: Sequence[str]) -> tuple[np.ndarray, Selector]:
        """Slot of each name (allocating new ones), and the same as a slice where possible."""
        key = names if isinstance(names, list) else list(names)
        if self._last_names is not None and key == self._last_names:
            return self._last_slots, self._last_selector
        index = self.index
        missing = [n for n in key if n not in index]
        if missing:
            needed = len(missing) - len(self._free)
            if needed > 0:
                self._grow(max(self.capacity * 2, self.capacity + needed))
            new = np.empty(len(missing), np.int64)
            for i, name in enumerate(missing):
                slot = self._free.pop()
                index[name] = slot
                new[i] = slot
            self._reset(new)
        slots = np.fromiter((index[n] for n in key), dtype=np.int64, count=len(key))
        self._last_names = list(key)
        self._last_slots = slots
        self._last_selector = _selector(slots)
        return slots, self._last_selector

    def _reset(self, slots: np.ndarray) -> None:
        self.count[slots] = 0
        self.gap[slots] = 0
        self.cooldown[slots] = 0
        self.pos[slots] = 0
        self.since_sync[slots] = 0
        self.has_state[slots] = False
        self.has_pred[slots] = False
        self.ewma[slots] = np.nan
        self.last_x[slots] = np.nan

    def drop(self, names: Sequence[str]) -> None:
        """Forget entities (they vanished); their slots are reused."""
        self._last_names = None
        for name in names:
            slot = self.index.pop(name, None)
            if slot is not None:
                self._reset(np.array([slot]))
                self._free.append(slot)

    def windows(self, slots: np.ndarray) -> np.ndarray:
        """The last ``window`` scaled samples of each slot, oldest first."""
        rows = (self.pos[slots][:, None] + np.arange(self.window)) % self.window
        return self.ring[slots[:, None], rows]

    def resync(self, names: Sequence[str]) -> None:
        """Recompute the state of ``names`` from their windows now (those with a full window).

        This is what happens on its own when a window first fills, after a long
        gap and every ``resync_every`` steps; it is public for benchmarks and tests.
        """
        slots = np.fromiter((self.index[n] for n in names if n in self.index), dtype=np.int64)
        full = slots[self.count[slots] >= self.window]
        if full.size:
            self._sync(full)

    @torch.no_grad()
    def _sync(self, slots: np.ndarray) -> None:
        # In chunks, so that a fleet's start does not hold every window's activations at once.
        for lo in range(0, slots.size, SYNC_CHUNK):
            part = slots[lo : lo + SYNC_CHUNK]
            pred, (h, c) = self.model.forecast_last(torch.from_numpy(self.windows(part)))
            idx = torch.from_numpy(part)
            self.h[:, idx] = h
            self.c[:, idx] = c
            self.pred[part] = pred.numpy()
        # A first sync starts the entity's re-sync clock at a phase given by its slot.
        first = ~self.has_state[slots]
        self.since_sync[slots] = np.where(first, slots % self.resync_every, 0)
        self.has_state[slots] = True

    @torch.no_grad()
    def _advance(self, sel: Selector, x: np.ndarray) -> None:
        at: slice | torch.Tensor = sel if isinstance(sel, slice) else torch.from_numpy(sel)
        pred, (h, c) = self.model.step(torch.from_numpy(x), (self.h[:, at], self.c[:, at]))
        self.h[:, at] = h
        self.c[:, at] = c
        self.pred[sel] = pred.numpy()
        self.since_sync[sel] += 1

    def step(self, names: Sequence[str], values: np.ndarray) -> StepResult:
        """Feed one new sample (raw units, ``NaN`` where missing) per entity and score it.

        ``values`` is (len(names), features). Each name must appear once.
        """
        n = len(names)
        if values.shape != (n, self.n_features):
            raise ValueError(f"expected values of shape {(n, self.n_features)}, found {values.shape}")
        slots, sel = self._slots(names)
        x = self.scaler.transform(values)
        missing = np.isnan(x)
        row_missing = missing.any(axis=1)
        prev_gap = self.gap[sel].copy()
        if row_missing.any():
            can_fill = row_missing & (self.count[sel] > 0) & (self.gap[sel] < self.max_gap)
            if can_fill.any():
                x = np.where(missing & can_fill[:, None], self.last_x[sel], x)
            real = ~row_missing
            valid = real | can_fill
            self.gap[sel] = np.where(can_fill, self.gap[sel] + 1, 0)
            broken = slots[~valid]
            if broken.size:
                self._reset(broken)
            all_valid = bool(valid.all())
        else:
            real = valid = np.ones(n, bool)
            self.gap[sel] = 0
            all_valid = True

        # After k bridged samples the state has seen made-up values: the next k + 1 real
        # samples advance it but are not scored, so a missed scrape never flags a host.
        returning = real & (prev_gap > 0)
        if returning.any():
            self.cooldown[slots[returning]] = prev_gap[returning] + 1
        cooldown = self.cooldown[sel].copy()
        # Score the samples that the pending forecasts were made for.
        scored = real & self.has_pred[sel] & (cooldown == 0)
        if cooldown.any():
            self.cooldown[sel] = np.where(real & (cooldown > 0), cooldown - 1, cooldown)
        n_scored = int(np.count_nonzero(scored))
        feature_errors = np.full((n, self.n_features), np.nan)
        raw_error = np.full(n, np.nan)
        if n_scored:
            s, xs = (sel, x) if n_scored == n else (slots[scored], x[scored])
            sq = (self.pred[s].astype(np.float64) - xs) ** 2
            prev = self.ewma[s]
            smooth = np.where(np.isnan(prev), sq, self.alpha * sq + (1 - self.alpha) * prev)
            self.ewma[s] = smooth
            feature_errors[scored] = smooth
            raw_error[scored] = sq.mean(axis=1)
        error = feature_errors.mean(axis=1)
        score = error / self.threshold

        # Append to the ring buffers and advance the state.
        if all_valid:
            v: Selector = sel
            v_slots, xv = slots, x.astype(np.float32, copy=False)
        else:
            v_slots = slots[valid]
            v, xv = v_slots, x[valid].astype(np.float32, copy=False)
        if v_slots.size:
            pos = self.pos[v]
            self.ring[v_slots, pos] = xv
            self.pos[v] = (pos + 1) % self.window
            self.count[v] += 1
            self.last_x[v] = xv
            full = self.count[v] >= self.window
            need_sync = full & (~self.has_state[v] | (self.since_sync[v] >= self.resync_every))
            stepping = full & ~need_sync
            if need_sync.any():
                self._sync(v_slots[need_sync])
            n_stepping = int(np.count_nonzero(stepping))
            if n_stepping == v_slots.size:
                self._advance(v, xv)
            elif n_stepping:
                self._advance(v_slots[stepping], xv[stepping])
            self.has_pred[v] = full
        return StepResult(list(names), scored, raw_error, error, feature_errors, score)

    def run(self, names: Sequence[str], values: np.ndarray) -> list[StepResult]:
        """Feed a whole (entities, time, features) block, one step per time index."""
        return [self.step(names, values[:, t]) for t in range(values.shape[1])]
