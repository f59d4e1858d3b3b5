"""The backtest plot: what was replayed, what was flagged, what was labelled, and why.

One PNG with two panels sharing the time axis:

* the series: the features that drove the largest events (or the first few), standard
  scaled with the training data's mean and spread so they share one (symmetric-log) axis;
* the anomaly score on a log axis (floored at 0.001), the threshold at 1, flagged rows shaded red,
  labelled anomalies shaded blue, and the largest events annotated with their top features.

matplotlib runs headless (the Agg backend), and nothing is drawn at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lstmad.backtest import BacktestData, BacktestResult, Event

__all__ = ["plot_backtest", "runs"]

MAX_SERIES = 6
SCORE_FLOOR = 1e-3
ANNOTATED_EVENTS = 3


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) index ranges of the True runs of a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def _x_axis(data: BacktestData) -> tuple[np.ndarray, str, bool]:
    if data.timestamps is None:
        return np.arange(data.test.shape[0], dtype=float), "test row", False
    return data.timestamps.astype("datetime64[s]").astype(object), "time (UTC)", True


def _chosen_features(features: Sequence[str], events: Sequence[Event]) -> list[int]:
    chosen: list[int] = []
    for ev in events:
        for name, _ in ev.top_features:
            i = features.index(name)
            if i not in chosen:
                chosen.append(i)
        if len(chosen) >= MAX_SERIES:
            break
    for i in range(len(features)):
        if len(chosen) >= min(MAX_SERIES, len(features)):
            break
        if i not in chosen:
            chosen.append(i)
    return chosen[:MAX_SERIES]


def _shade(ax: Any, x: np.ndarray, mask: np.ndarray, color: str, label: str, alpha: float) -> None:
    first = True
    for s, e in runs(mask):
        hi = x[min(e + 1, len(x) - 1)] if e + 1 < len(x) else x[e]
        ax.axvspan(x[s], hi, color=color, alpha=alpha, lw=0, label=label if first else None)
        first = False


def plot_backtest(path: Path, data: BacktestData, result: BacktestResult, events: Sequence[Event]) -> Path:
    """Draw the backtest into ``path`` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x, xlabel, _ = _x_axis(data)
    scores = result.scores.score
    flags = result.scores.is_anomaly
    train = np.concatenate(data.train)
    mean = np.nanmean(np.where(np.isfinite(train), train, np.nan), axis=0)
    std = np.nanstd(np.where(np.isfinite(train), train, np.nan), axis=0)
    std = np.where(~np.isfinite(std) | (std < 1e-12), 1.0, std)
    mean = np.where(np.isfinite(mean), mean, 0.0)

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 7), sharex=True, height_ratios=[3, 2])
    for i in _chosen_features(data.features, events):
        ax1.plot(x, (data.test[:, i] - mean[i]) / std[i], lw=0.7, label=data.features[i])
    ax1.set_yscale("symlog", linthresh=3.0)
    ax1.set_ylabel("value (standard-scaled, symlog)")
    title = f"lstmad backtest: {result.detector_name}, {data.test.shape[0]} test rows"
    if result.retrains:
        title += f", {result.retrains} retrains"
    ax1.set_title(title)

    finite = np.isfinite(scores)
    floor = SCORE_FLOOR
    ax2.plot(np.asarray(x)[finite], np.maximum(scores[finite], floor), lw=0.7, color="black")
    ax2.axhline(1.0, color="red", lw=1.0, ls="--", label="threshold (score 1)")
    ax2.set_yscale("log")
    ax2.set_ylim(bottom=max(floor, float(np.nanmin(scores[finite])) / 2) if finite.any() else floor)
    ax2.set_ylabel("anomaly score")
    ax2.set_xlabel(xlabel)
    for ax in (ax1, ax2):
        _shade(ax, np.asarray(x), flags, "red", "flagged", 0.18)
        if data.labels is not None:
            _shade(ax, np.asarray(x), data.labels.astype(bool), "tab:blue", "labelled anomaly", 0.15)
    for k, ev in enumerate(list(events)[:ANNOTATED_EVENTS]):
        if not ev.top_features:
            continue
        text = ", ".join(f"{n} {s:.0%}" for n, s in ev.top_features)
        ax2.annotate(
            text,
            xy=(np.asarray(x)[ev.start], ev.peak_score),
            xytext=(-40 * k, -14 * (k + 1)),
            textcoords="offset points",
            fontsize=7,
            ha="left",
            arrowprops={"arrowstyle": "-", "lw": 0.5},
        )
    ax1.legend(loc="upper left", fontsize=7, ncol=2)
    ax2.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
