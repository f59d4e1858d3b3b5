"""Scaling, gap handling and windowing: pure numpy, no I/O.

Missing values stay ``NaN`` until a decision is made about them: a short gap is
bridged by carrying the last observation forward (causal, so streaming and
replay agree), a long gap splits the data. A missing value never becomes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstmad.errors import DataError, NotFittedError

__all__ = [
    "StandardScaler",
    "WindowSet",
    "bridge_gaps",
    "finite_segments",
]

MIN_SCALE = 1e-6


@dataclass
class StandardScaler:
    """Mean 0, standard deviation 1 per feature, fitted on training data only.

    A constant feature gets scale 1 instead of a division by zero; ``NaN`` values
    are ignored when fitting and stay ``NaN`` when transforming.
    """

    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def fit(self, values: np.ndarray, feature_names: Sequence[str] | None = None) -> StandardScaler:
        if values.ndim != 2 or values.shape[0] == 0:
            raise DataError(f"expected a non-empty (rows, features) array, found shape {values.shape}")
        finite = np.isfinite(values)
        empty = np.flatnonzero(finite.sum(axis=0) == 0)
        if empty.size:
            name = feature_names[empty[0]] if feature_names else f"#{empty[0]}"
            raise DataError(f"feature {name} has no finite value in the training data")
        clean = np.where(finite, values, np.nan)
        self.mean = np.nanmean(clean, axis=0)
        std = np.nanstd(clean, axis=0)
        self.scale = np.where(std < MIN_SCALE, 1.0, std)
        return self

    def _check(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mean is None or self.scale is None:
            raise NotFittedError("StandardScaler is not fitted: call fit() first")
        return self.mean, self.scale

    def transform(self, values: np.ndarray) -> np.ndarray:
        mean, scale = self._check()
        if values.shape[-1] != mean.shape[0]:
            raise DataError(f"expected {mean.shape[0]} features, found {values.shape[-1]}")
        out = (values - mean) / scale
        out[~np.isfinite(out)] = np.nan
        return out.astype(np.float32)

    def inverse_transform(self, values: np.ndarray) -> np.ndarray:
        mean, scale = self._check()
        return values * scale + mean

    def to_dict(self) -> dict[str, Any]:
        mean, scale = self._check()
        return {"mean": mean.tolist(), "scale": scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StandardScaler:
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"expected a scaler with mean and scale lists, found {data!r:.80}") from err
        if mean.shape != scale.shape or mean.ndim != 1 or not np.all(scale > 0):
            raise DataError("expected mean and scale of the same length with positive scales")
        return cls(mean, scale)


def bridge_gaps(values: np.ndarray, max_gap: int) -> np.ndarray:
    """Carry the last observation forward over gaps of at most ``max_gap`` rows.

    Works per feature on a (rows, features) array. Longer gaps, and leading
    ``NaN`` rows, stay ``NaN`` so that :func:`finite_segments` splits there.
    """
    if values.ndim != 2:
        raise DataError(f"expected a (rows, features) array, found shape {values.shape}")
    out = values.copy()
    if max_gap <= 0 or not np.isnan(out).any():
        return out
    n = out.shape[0]
    idx = np.arange(n)[:, None]
    valid = ~np.isnan(out)
    last_valid = np.where(valid, idx, -1)
    np.maximum.accumulate(last_valid, axis=0, out=last_valid)
    gap_len = idx - last_valid
    fill = ~valid & (last_valid >= 0) & (gap_len <= max_gap)
    # A gap is bridged only if it is short as a whole, not just its first rows.
    next_valid = np.where(valid, idx, n)
    next_valid = np.minimum.accumulate(next_valid[::-1], axis=0)[::-1]
    whole_gap = next_valid - last_valid - 1
    fill &= (whole_gap <= max_gap) & (next_valid < n)
    src = np.where(fill, last_valid, idx)
    cols = np.broadcast_to(np.arange(out.shape[1]), out.shape)
    out[fill] = values[src[fill], cols[fill]]
    return out


def finite_segments(values: np.ndarray, min_length: int) -> list[tuple[int, int]]:
    """Half-open [start, end) row ranges where every feature is finite, at least ``min_length`` long."""
    ok = np.isfinite(values).all(axis=1).astype(np.int8)
    edges = np.diff(np.concatenate([[0], ok, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True) if e - s >= min_length]


class WindowSet:
    """All windows of ``length`` rows inside finite segments of several series, gathered lazily.

    Holds the segments once and an index of window starts, so that sampling
    ``max_windows`` windows from days of data for a fleet does not copy them.
    """

    def __init__(self, segments: Sequence[np.ndarray], length: int) -> None:
        usable = [s.astype(np.float32) for s in segments if s.shape[0] >= length]
        if not usable:
            raise DataError(f"expected at least one gap-free stretch of {length} rows, found none")
        self.length = length
        self.data = np.concatenate(usable)
        starts = []
        offset = 0
        for seg in usable:
            starts.append(offset + np.arange(seg.shape[0] - length + 1))
            offset += seg.shape[0]
        self.starts = np.concatenate(starts)

    def __len__(self) -> int:
        return int(self.starts.size)

    def gather(self, which: np.ndarray) -> np.ndarray:
        """Windows number ``which`` as a (n, length, features) array."""
        rows = self.starts[which][:, None] + np.arange(self.length)
        return self.data[rows]
