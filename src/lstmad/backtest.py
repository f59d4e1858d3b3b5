"""``lstmad backtest``: replay history through the code path that ``serve`` uses, and measure it.

A backtest trains a detector on a training range, then replays a test range row by row:
for the LSTM through :class:`lstmad.streaming.StreamingEngine`, the very engine that
``serve`` steps every interval (same scaler, model, smoothing and threshold), so what the
backtest flags is what ``serve`` would have flagged. Baselines (:mod:`lstmad.baselines`) run
in the same harness, on the same rows.

Data comes from CSV files or from VictoriaMetrics/Prometheus::

    lstmad backtest --train train.csv --test test.csv --report out/
    lstmad backtest --config lstmad.yaml --vm-url http://vm:8428 \\
        --train-range now-14d,now-7d --test-range now-7d,now --labels incidents.csv

CSV files have a header; the first column is ``timestamp`` (Unix seconds or RFC 3339),
every other column is a feature, except an optional ``label`` column (0/1) in the test
file. When the test range starts one step after the training range ends, the end of the
training data fills the window, as ``serve`` fills it from history on start; otherwise the
first ``window`` test rows are not scored.

``--retrain-every N`` retrains on all rows seen so far every N test rows, with no
look-ahead: rows before the retraining point train the new model, which then scores the
next N rows after replaying ``window + 10`` rows of history (what ``serve`` does after
switching models).

With labels, the report holds every metric of :mod:`lstmad.evaluation`: point-wise
precision, recall and F1 at the detector's own threshold (fitted on training data only);
the best F1 over all thresholds (it peeks at the labels, and says so); point-adjusted F1
next to the point-adjusted F1 of random scores on the same labels; AUC-PR; event-wise
recall; and the NAB score of the three profiles, with train and test as one NAB file
(the training rows cover NAB's probationary period).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from lstmad._version import __version__
from lstmad.baselines import DETECTORS, Detector, make_detector
from lstmad.config import Config, ModelConfig, ThresholdConfig, TrainingConfig, load_config, parse_duration
from lstmad.detector import LSTMDetector, SeriesScores
from lstmad.errors import ConfigError, DataError
from lstmad.evaluation import (
    NAB_PROFILES,
    NabFile,
    auc_pr,
    best_f1,
    best_point_adjusted_f1,
    event_recall,
    label_segments,
    nab_corpus_score,
    nab_optimize_threshold,
    point_adjust,
    point_metrics,
    random_point_adjusted_f1,
)
from lstmad.training import ProgressFactory, no_progress

__all__ = [
    "OWN_THRESHOLD",
    "BacktestData",
    "BacktestResult",
    "CsvData",
    "Event",
    "add_arguments",
    "build_report",
    "csv_data",
    "detection_metrics",
    "find_events",
    "one_torch_thread",
    "parse_range",
    "read_csv",
    "read_labels",
    "run_backtest",
    "run_from_args",
    "summary",
    "vm_data",
    "write_report",
    "write_scores_csv",
]

log = logging.getLogger(__name__)

HISTORY_EXTRA_ROWS = 10
"""Rows beyond the window that ``serve`` replays after switching to a new model."""

OWN_THRESHOLD = float(np.nextafter(1.0, 2.0))
"""``score >= OWN_THRESHOLD`` is exactly ``score > 1``, the detector's own decision."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BacktestData:
    """What a backtest replays.

    ``train`` holds the training history of one or more entities, raw (rows, features);
    ``test`` is the one entity replayed. ``context`` is the index in ``train`` of the series
    that the test continues without a gap (its tail fills the window, and it grows with the
    test rows when retraining), or ``None``. ``timestamps`` (Unix seconds) and ``labels``
    (0/1) belong to the test rows.
    """

    features: list[str]
    train: list[np.ndarray]
    test: np.ndarray
    timestamps: np.ndarray | None = None
    labels: np.ndarray | None = None
    context: int | None = None
    step: float | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = len(self.features)
        if not self.train:
            raise DataError("expected training data, found none")
        for i, s in enumerate(self.train):
            if s.ndim != 2 or s.shape[1] != f:
                raise DataError(f"training series {i}: expected shape (rows, {f}), found {s.shape}")
        if self.test.ndim != 2 or self.test.shape[1] != f:
            raise DataError(f"test data: expected shape (rows, {f}), found {self.test.shape}")
        n = self.test.shape[0]
        if n == 0:
            raise DataError("expected at least one test row, found none")
        if self.timestamps is not None and len(self.timestamps) != n:
            raise DataError(f"expected {n} test timestamps, found {len(self.timestamps)}")
        if self.labels is not None and len(self.labels) != n:
            raise DataError(f"expected {n} test labels, found {len(self.labels)}")
        if self.context is not None and not 0 <= self.context < len(self.train):
            raise DataError(f"context must index a training series, found {self.context}")

    @property
    def train_rows(self) -> int:
        return int(sum(s.shape[0] for s in self.train))


def _parse_time(text: str, where: str) -> float:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise DataError(f"{where}: expected Unix seconds or an RFC 3339 time, found {text!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        return stamp.timestamp()
    if not math.isfinite(value):
        raise DataError(f"{where}: expected a finite timestamp, found {text!r}")
    return value


def _parse_value(text: str, where: str) -> float:
    text = text.strip()
    if text == "" or text.lower() in ("nan", "null", "none"):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: expected a number, found {text!r}") from None
    return value if math.isfinite(value) else math.nan


@dataclass(frozen=True)
class CsvData:
    """One parsed backtest CSV file."""

    timestamps: np.ndarray
    features: list[str]
    values: np.ndarray
    labels: np.ndarray | None


def read_csv(path: Path | str, *, allow_label: bool = True) -> CsvData:
    """Read ``timestamp,<feature>...[,label]``; empty, ``NaN`` or infinite values are missing."""
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}") from err
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if not header or header[0] != "timestamp":
            raise DataError(f"{path}: expected a header starting with 'timestamp', found {header[:3]!r}")
        names = header[1:]
        label_col = names.index("label") if "label" in names else None
        if label_col is not None and not allow_label:
            raise DataError(f"{path}: a 'label' column is allowed only in the test file")
        features = [n for i, n in enumerate(names) if i != label_col]
        if not features:
            raise DataError(f"{path}: expected at least one feature column after 'timestamp', found none")
        if len(set(features)) != len(features) or any(not n for n in features):
            raise DataError(f"{path}: expected distinct, non-empty feature names, found {features!r}")
        stamps: list[float] = []
        rows: list[list[float]] = []
        labels: list[float] = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}:{line_no}"
            if len(row) != len(header):
                raise DataError(f"{where}: expected {len(header)} columns, found {len(row)}")
            stamps.append(_parse_time(row[0], where))
            cells = row[1:]
            if label_col is not None:
                label = _parse_value(cells[label_col], where + " (label)")
                if label not in (0.0, 1.0):
                    raise DataError(f"{where}: expected a label of 0 or 1, found {cells[label_col]!r}")
                labels.append(label)
                cells = cells[:label_col] + cells[label_col + 1 :]
            rows.append([_parse_value(c, where) for c in cells])
    if not rows:
        raise DataError(f"{path}: expected at least one data row, found none")
    ts = np.asarray(stamps, dtype=np.float64)
    back = np.flatnonzero(np.diff(ts) <= 0)
    if back.size:
        raise DataError(
            f"{path}: expected strictly increasing timestamps, found {ts[back[0] + 1]:.0f} "
            f"after {ts[back[0]]:.0f} (data row {back[0] + 2})"
        )
    return CsvData(
        timestamps=ts,
        features=features,
        values=np.asarray(rows, dtype=np.float64),
        labels=np.asarray(labels, dtype=np.int8) if label_col is not None else None,
    )


def read_labels(path: Path | str, timestamps: np.ndarray, step: float) -> np.ndarray:
    """A 0/1 label per test row from a ``timestamp,label`` CSV, matched to the nearest row.

    A labelled timestamp more than half a step from every test row is ignored (logged).
    Rows without a labelled timestamp are 0.
    """
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as err:
        raise DataError(f"cannot read labels {path}: {err.strerror}") from err
    out = np.zeros(len(timestamps), dtype=np.int8)
    outside = 0
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["timestamp", "label"]:
            raise DataError(f"{path}: expected the header 'timestamp,label', found {header!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}:{line_no}"
            if len(row) < 2:
                raise DataError(f"{where}: expected timestamp,label, found {row!r}")
            ts = _parse_time(row[0], where)
            label = _parse_value(row[1], where)
            if label not in (0.0, 1.0):
                raise DataError(f"{where}: expected a label of 0 or 1, found {row[1]!r}")
            i = int(np.searchsorted(timestamps, ts))
            near = [j for j in (i - 1, i) if 0 <= j < len(timestamps)]
            j = min(near, key=lambda k: abs(timestamps[k] - ts)) if near else -1
            if j < 0 or abs(timestamps[j] - ts) > step / 2:
                outside += 1
                continue
            out[j] = int(label)
    if outside:
        log.warning("%d labelled timestamps of %s are outside the test range and were ignored", outside, path)
    return out


def _median_step(timestamps: np.ndarray) -> float | None:
    if timestamps.size < 2:
        return None
    return float(np.median(np.diff(timestamps)))


def _continues(train_ts: np.ndarray, test_ts: np.ndarray, step: float | None) -> bool:
    """Whether the test rows start one step after the training rows end."""
    if step is None or step <= 0 or train_ts.size == 0:
        return False
    gap = float(test_ts[0] - train_ts[-1])
    return 0 < gap <= 1.5 * step


def csv_data(train_path: Path, test_path: Path, features: Sequence[str] | None = None) -> BacktestData:
    """Load a backtest from two CSV files; ``features`` selects and orders columns."""
    train = read_csv(train_path, allow_label=True)
    test = read_csv(test_path)
    if train.labels is not None:
        log.info("ignoring the label column of the training file %s", train_path)
    wanted = list(features) if features is not None else train.features
    for name, data, path in (("training", train, train_path), ("test", test, test_path)):
        missing = [f for f in wanted if f not in data.features]
        if missing:
            raise DataError(
                f"{path}: the {name} file lacks the feature columns {missing} (found {data.features})"
            )
    extra = sorted(set(test.features) - set(wanted)) if features is None else []
    if extra:
        raise DataError(f"{test_path}: feature columns {extra} are not in the training file {train_path}")

    def pick(data: CsvData) -> np.ndarray:
        return data.values[:, [data.features.index(f) for f in wanted]]

    step = _median_step(np.concatenate([train.timestamps, test.timestamps]))
    return BacktestData(
        features=wanted,
        train=[pick(train)],
        test=pick(test),
        timestamps=test.timestamps,
        labels=test.labels,
        context=0 if _continues(train.timestamps, test.timestamps, step) else None,
        step=step,
        source={"train": str(train_path), "test": str(test_path)},
    )


# --------------------------------------------------------------------------- replay


@dataclass
class BacktestResult:
    """Per-row scores of the test rows, the (last) fitted detector and timings."""

    detector_name: str
    detector: Detector
    scores: SeriesScores
    fit_seconds: float
    score_seconds: float
    retrains: int = 0
    thresholds: list[float] = field(default_factory=list)
    chunks: list[tuple[int, int]] = field(default_factory=list)
    validation_errors: list[np.ndarray] = field(default_factory=list)
    """Per model: the test rows it scored, and the errors its threshold was fitted on."""

    @property
    def is_anomaly(self) -> np.ndarray:
        return self.scores.is_anomaly


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the previous setting.

    A streaming step is a batch of one entity: more threads only add synchronisation, and
    on a busy machine OpenMP's spinning threads make each step many times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _replay(
    det: Detector, values: np.ndarray, progress: ProgressFactory, resync_every: int, desc: str
) -> SeriesScores:
    """Score one entity's rows; the LSTM steps the streaming engine, with a progress bar."""
    if not isinstance(det, LSTMDetector):
        return det.score(values)
    with one_torch_thread():
        return _replay_engine(det, values, progress, resync_every, desc)


def _replay_engine(
    det: LSTMDetector, values: np.ndarray, progress: ProgressFactory, resync_every: int, desc: str
) -> SeriesScores:
    engine = det.new_engine(resync_every=resync_every)
    names = ["entity"]
    n = values.shape[0]
    err = np.full(n, np.nan)
    raw = np.full(n, np.nan)
    score = np.full(n, np.nan)
    fe = np.full((n, len(det.features)), np.nan)
    bar = progress(n, desc)
    block = np.asarray(values, dtype=np.float64)[None]
    chunk = 1024
    for lo in range(0, n, chunk):
        for t, res in enumerate(engine.run(names, block[:, lo : lo + chunk]), start=lo):
            err[t], raw[t], score[t] = res.error[0], res.raw_error[0], res.score[0]
            fe[t] = res.feature_errors[0]
        bar.update(min(chunk, n - lo))
    bar.close()
    return SeriesScores(error=err, feature_errors=fe, score=score, raw_error=raw)


def run_backtest(
    data: BacktestData,
    detector: str = "lstm",
    *,
    model_cfg: ModelConfig | None = None,
    training_cfg: TrainingConfig | None = None,
    threshold_cfg: ThresholdConfig | None = None,
    retrain_every: int = 0,
    resync_every: int = 240,
    progress: ProgressFactory = no_progress,
    factory: Callable[..., Detector] = make_detector,
) -> BacktestResult:
    """Train ``detector`` on ``data.train`` and score ``data.test`` row by row.

    With ``retrain_every > 0`` a new detector is trained every ``retrain_every`` test rows on
    all rows seen so far, and scores the next rows only.
    """
    if retrain_every < 0:
        raise ConfigError(
            f"expected 0 or a positive number of rows, found {retrain_every}", "--retrain-every"
        )
    model_cfg = model_cfg or ModelConfig()
    training_cfg = training_cfg or TrainingConfig()
    threshold_cfg = threshold_cfg or ThresholdConfig()
    n = data.test.shape[0]
    f = len(data.features)
    context = data.train[data.context] if data.context is not None else np.zeros((0, f))
    stream = np.concatenate([context, data.test])  # the entity's rows, test rows last
    offset = context.shape[0]
    bounds = list(range(0, n, retrain_every)) if retrain_every else [0]
    bounds.append(n)

    error = np.full(n, np.nan)
    raw = np.full(n, np.nan)
    score = np.full(n, np.nan)
    fe = np.full((n, f), np.nan)
    fit_s = score_s = 0.0
    thresholds: list[float] = []
    validation: list[np.ndarray] = []
    det: Detector | None = None
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if k == 0:
            series = list(data.train)
        else:
            seen = stream[: offset + lo]
            series = [s for i, s in enumerate(data.train) if i != data.context]
            series = [*series, seen] if data.context is not None else [*series, data.test[:lo]]
        started = time.perf_counter()
        det = factory(detector, data.features, model_cfg, threshold_cfg)
        what = "training" if k == 0 else f"retraining {k} at test row {lo}"
        log.info("%s %s on %d rows", what, detector, sum(s.shape[0] for s in series))
        with one_torch_thread():  # training sets its own threads; this covers the threshold replay
            det.fit(series, training_cfg, progress=progress)
        fit_s += time.perf_counter() - started
        thresholds.append(det.threshold.fitted_value)
        validation.append(np.asarray(det.validation_errors if det.validation_errors is not None else []))

        started = time.perf_counter()
        warm = min(offset + lo, det.window + HISTORY_EXTRA_ROWS) if (k > 0 or offset) else 0
        part = _replay(
            det, stream[offset + lo - warm : offset + hi], progress, resync_every, f"replay {detector}"
        )
        score_s += time.perf_counter() - started
        error[lo:hi] = part.error[warm:]
        raw[lo:hi] = part.raw_error[warm:]
        score[lo:hi] = part.score[warm:]
        fe[lo:hi] = part.feature_errors[warm:]
    assert det is not None
    return BacktestResult(
        detector_name=detector,
        detector=det,
        scores=SeriesScores(error=error, feature_errors=fe, score=score, raw_error=raw),
        fit_seconds=fit_s,
        score_seconds=score_s,
        retrains=len(bounds) - 2,
        thresholds=thresholds,
        chunks=list(itertools.pairwise(bounds)),
        validation_errors=validation,
    )


# --------------------------------------------------------------------------- metrics


def _round(x: float, digits: int = 6) -> float | None:
    return None if not math.isfinite(x) else round(float(x), digits)


def detection_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    nab_prefix_rows: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of the report for 0/1 ``labels`` and anomaly ``scores`` (> 1 is flagged).

    ``nab_prefix_rows`` is the number of rows before the test rows (the training data) in
    the NAB file that train and test form; ``None`` leaves the NAB score out.
    """
    labels = np.asarray(labels).astype(np.int8)
    scores = np.asarray(scores, dtype=np.float64)
    flags = (np.nan_to_num(scores, nan=0.0) > 1.0).astype(np.int8)
    own = point_metrics(labels, flags)
    best = best_f1(labels, scores)
    adjusted = point_metrics(labels, point_adjust(labels, flags))
    best_adjusted = best_point_adjusted_f1(labels, scores)
    segments = label_segments(labels)
    hit = round(event_recall(labels, flags) * len(segments))
    out: dict[str, Any] = {
        "precision": _round(own.precision),
        "recall": _round(own.recall),
        "f1": _round(own.f1),
        "best_f1": {
            "f1": _round(best.f1),
            "precision": _round(best.precision),
            "recall": _round(best.recall),
            "threshold": _round(best.threshold),
            "note": "peeks at the labels: the best F1 over all thresholds, an upper bound",
        },
        "point_adjusted_f1": _round(adjusted.f1),
        "best_point_adjusted_f1": _round(best_adjusted.f1),
        "random_point_adjusted_f1": _round(random_point_adjusted_f1(labels, seed=seed)),
        "auc_pr": _round(auc_pr(labels, scores)),
        "event_recall": _round(event_recall(labels, flags)),
        "events_detected": int(hit),
        "events_labelled": len(segments),
        "anomaly_rows": int(labels.sum()),
        "flagged_rows": int(flags.sum()),
        "rows": int(labels.size),
        "scored_rows": int(np.isfinite(scores).sum()),
    }
    if nab_prefix_rows is not None and segments:
        nab_scores = np.concatenate([np.full(nab_prefix_rows, np.nan), scores])
        windows = [(s + nab_prefix_rows, e + nab_prefix_rows) for s, e in segments]
        nab_file = NabFile("backtest", np.arange(nab_scores.size, dtype=np.float64), windows, nab_scores.size)
        nab: dict[str, Any] = {}
        for name, profile in NAB_PROFILES.items():
            at_own = nab_corpus_score([(nab_file, nab_scores)], OWN_THRESHOLD, profile)
            swept = nab_optimize_threshold([(nab_file, nab_scores)], profile)
            nab[name] = {
                "score": _round(at_own.normalized, 3),
                "best_score": _round(swept.normalized, 3),
                "best_threshold": _round(swept.threshold),
            }
        out["nab"] = nab
    return out


# --------------------------------------------------------------------------- events and report


@dataclass(frozen=True)
class Event:
    """A run of consecutive flagged rows, with the features that drove it."""

    start: int
    end: int
    peak_score: float
    area: float
    top_features: list[tuple[str, float]]

    def to_dict(self, timestamps: np.ndarray | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "start_row": self.start,
            "end_row": self.end,
            "rows": self.end - self.start + 1,
            "peak_score": _round(self.peak_score, 4),
            "top_features": [{"feature": n, "share": _round(s, 4)} for n, s in self.top_features],
        }
        if timestamps is not None:
            doc["start"] = float(timestamps[self.start])
            doc["end"] = float(timestamps[self.end])
        return doc


def find_events(scores: SeriesScores, features: Sequence[str], top_k: int = 3) -> list[Event]:
    """Flagged runs, largest (sum of scores) first; each with its ``top_k`` features.

    A feature's share is its part of the summed per-feature error over the run.
    """
    flags = scores.is_anomaly.astype(np.int8)
    edges = np.diff(np.concatenate([[0], flags, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    events = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        run = scores.score[s : e + 1]
        fe = np.nansum(scores.feature_errors[s : e + 1], axis=0)
        total = float(fe.sum())
        top: list[tuple[str, float]] = []
        if total > 0 and np.isfinite(total):
            order = np.argsort(-fe)[:top_k]
            top = [(features[i], float(fe[i] / total)) for i in order]
        events.append(Event(s, e, float(np.nanmax(run)), float(np.nansum(run)), top))
    events.sort(key=lambda ev: -ev.area)
    return events


def _settings(
    model_cfg: ModelConfig, training_cfg: TrainingConfig, threshold_cfg: ThresholdConfig
) -> dict[str, Any]:
    model = asdict(model_cfg)
    model.pop("path", None)
    return {"model": model, "training": asdict(training_cfg), "threshold": asdict(threshold_cfg)}


def _result_doc(data: BacktestData, result: BacktestResult) -> dict[str, Any]:
    det = result.detector
    doc: dict[str, Any] = {
        "detector": result.detector_name,
        "threshold": {
            "method": det.threshold.method,
            "value": _round(det.threshold.fitted_value, 9),
            "values": [_round(v, 9) for v in result.thresholds],
        },
        "timing": {
            "fit_seconds": round(result.fit_seconds, 3),
            "score_seconds": round(result.score_seconds, 3),
            "total_seconds": round(result.fit_seconds + result.score_seconds, 3),
            "retrains": result.retrains,
        },
        "flagged_rows": int(result.is_anomaly.sum()),
        "metrics": None,
    }
    if data.labels is not None:
        prefix = data.train[data.context].shape[0] if data.context is not None else data.train_rows
        doc["metrics"] = detection_metrics(data.labels, result.scores.score, nab_prefix_rows=prefix)
    return doc


def build_report(
    data: BacktestData,
    result: BacktestResult,
    *,
    settings: dict[str, Any],
    comparison: Sequence[BacktestResult] = (),
    top_events: int = 10,
) -> dict[str, Any]:
    """The report as plain JSON-ready data (what ``report.json`` and ``--json`` hold)."""
    events = find_events(result.scores, data.features)
    labels = data.labels
    report: dict[str, Any] = {
        "lstmad_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {
            **data.source,
            "features": data.features,
            "train_rows": data.train_rows,
            "train_series": len(data.train),
            "test_rows": int(data.test.shape[0]),
            "step_seconds": data.step,
            "test_start": float(data.timestamps[0]) if data.timestamps is not None else None,
            "test_end": float(data.timestamps[-1]) if data.timestamps is not None else None,
            "continues_training": data.context is not None,
            "labelled": labels is not None,
            "anomaly_rows": int(labels.sum()) if labels is not None else None,
            "anomaly_segments": len(label_segments(labels)) if labels is not None else None,
        },
        "settings": settings,
        **_result_doc(data, result),
        "events": [ev.to_dict(data.timestamps) for ev in events[:top_events]],
        "event_count": len(events),
    }
    if comparison:
        report["comparison"] = [_result_doc(data, r) for r in comparison]
    return report


def _fmt(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6g}"


def _fmt_time(t: float) -> str:
    """Unix seconds, with milliseconds only when there are any."""
    return f"{t:.3f}".rstrip("0").rstrip(".")


def write_scores_csv(path: Path, data: BacktestData, scores: SeriesScores) -> None:
    """``timestamp,score,is_anomaly[,label]``, one row per test row; empty score if not scored.

    Timestamps are Unix seconds whatever the input's format (row numbers if it had none).
    """
    stamps = data.timestamps if data.timestamps is not None else np.arange(data.test.shape[0], dtype=float)
    flags = scores.is_anomaly
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "score", "is_anomaly"] + (["label"] if data.labels is not None else []))
        for i in range(data.test.shape[0]):
            row = [_fmt_time(float(stamps[i])), _fmt(float(scores.score[i])), int(flags[i])]
            if data.labels is not None:
                row.append(int(data.labels[i]))
            writer.writerow(row)


def write_report(
    directory: Path, data: BacktestData, result: BacktestResult, report: dict[str, Any]
) -> list[Path]:
    """Write ``scores.csv``, ``report.json`` and ``plot.png`` into ``directory``."""
    from lstmad.report import plot_backtest

    directory.mkdir(parents=True, exist_ok=True)
    scores_path = directory / "scores.csv"
    write_scores_csv(scores_path, data, result.scores)
    report_path = directory / "report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    plot_path = directory / "plot.png"
    plot_backtest(plot_path, data, result, find_events(result.scores, data.features))
    return [scores_path, report_path, plot_path]


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lstmad backtest`` (the CLI adds ``--config`` and the logging flags)."""
    src = parser.add_argument_group("data from CSV files")
    src.add_argument("--train", type=Path, help="training CSV: timestamp,<feature>...")
    src.add_argument("--test", type=Path, help="test CSV: timestamp,<feature>...[,label]")
    vm = parser.add_argument_group("data from VictoriaMetrics or Prometheus")
    vm.add_argument("--vm-url", help="VictoriaMetrics or Prometheus URL (overrides the config)")
    vm.add_argument("--train-range", help="START,END of the training range (now, -7d, Unix or RFC 3339)")
    vm.add_argument("--test-range", help="START,END of the test range")
    vm.add_argument("--labels", type=Path, help="CSV timestamp,label (0/1) for the test range")
    vm.add_argument("--entity", help="the entity to replay when the source returns several")
    out = parser.add_argument_group("what to run and write")
    out.add_argument(
        "--detector", choices=DETECTORS, default="lstm", help="detector to backtest (default: lstm)"
    )
    out.add_argument("--compare", action="store_true", help="also run every other detector on the same data")
    out.add_argument(
        "--retrain-every",
        type=int,
        default=0,
        metavar="N",
        help="retrain on all rows seen so far every N test rows (default: never)",
    )
    out.add_argument("--seed", type=int, help="training seed (overrides training.seed)")
    out.add_argument(
        "--report", type=Path, metavar="DIR", help="write scores.csv, report.json and plot.png here"
    )
    out.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")


def _progress(enabled: bool) -> ProgressFactory:
    if not enabled:
        return no_progress
    from tqdm import tqdm

    def factory(total: int, desc: str) -> Any:
        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, mininterval=0.5)

    return factory


def _time_arg(text: str, now: float, where: str) -> float:
    text = text.strip()
    if text == "now":
        return now
    if text.startswith(("-", "now-")):
        return now - parse_duration(text.split("-", 1)[1], where)
    try:
        return _parse_time(text, where)
    except DataError as err:
        raise ConfigError(
            f"expected now, -7d, now-7d, Unix seconds or RFC 3339, found {text!r}", where
        ) from err


def parse_range(text: str | None, now: float, where: str) -> tuple[float, float]:
    """``START,END`` into Unix seconds; END must come after START."""
    if not text or text.count(",") != 1:
        raise ConfigError(f"expected START,END, found {text!r}", where)
    a, b = text.split(",")
    start, end = _time_arg(a, now, where), _time_arg(b, now, where)
    if end <= start:
        raise ConfigError(f"expected END after START, found {text!r}", where)
    return start, end


def _load_cfg(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    overrides: dict[str, Any] = {"victoriametrics.url": getattr(args, "vm_url", None)}
    if getattr(args, "seed", None) is not None:
        overrides["training.seed"] = args.seed
    return load_config(getattr(args, "config", None), env=env, overrides=overrides)


def vm_data(args: argparse.Namespace, cfg: Config, client: Any, now: float) -> BacktestData:
    """Fetch the training and test ranges with the configured features."""
    from lstmad.source import fetch_range

    step = cfg.interval
    tr0, tr1 = parse_range(args.train_range, now, "--train-range")
    te0, te1 = parse_range(args.test_range, now, "--test-range")
    tr0, tr1 = math.ceil(tr0 / step) * step, math.floor(tr1 / step) * step
    te0, te1 = math.ceil(te0 / step) * step, math.floor(te1 / step) * step
    if te0 < tr1:
        raise ConfigError("expected the test range to start after the training range ends", "--test-range")
    train = fetch_range(client, cfg.features, cfg.entity_label, tr0, tr1, step, require_data=True)
    test = fetch_range(client, cfg.features, cfg.entity_label, te0, te1, step, require_data=True)
    if not test.entities:
        raise DataError(f"no entity has data in the test range from {client.base_url}")
    entity = args.entity
    if entity is None:
        if len(test.entities) > 1:
            raise ConfigError(
                f"the test range holds {len(test.entities)} entities; choose one of "
                f"{', '.join(test.entities[:10])}{' ...' if len(test.entities) > 10 else ''}",
                "--entity",
            )
        entity = test.entities[0]
    if entity not in test.entities:
        raise DataError(f"entity {entity!r} has no data in the test range (found {test.entities[:10]})")
    series = [train.values[i] for i in range(len(train.entities))]
    context = None
    if entity in train.entities and abs(te0 - tr1 - step) < 1e-6 * step + 1e-9:
        context = train.entities.index(entity)
    labels = read_labels(args.labels, test.timestamps, step) if args.labels else None
    return BacktestData(
        features=cfg.feature_names,
        train=series,
        test=test.values[test.entities.index(entity)],
        timestamps=test.timestamps,
        labels=labels,
        context=context,
        step=step,
        source={
            "url": client.base_url,
            "entity_label": cfg.entity_label,
            "entity": entity,
            "train_range": [tr0, tr1],
            "test_range": [te0, te1],
            "train_entities": len(train.entities),
        },
    )


def run_from_args(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] | None = None,
    client_factory: Callable[[Config], Any] | None = None,
    stdout: IO[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """``lstmad backtest``: load the data, run the detector(s), write and print the report."""
    env = dict(os.environ) if env is None else env
    stdout = stdout or sys.stdout
    csv_mode = args.train is not None or args.test is not None
    vm_mode = args.train_range is not None or args.test_range is not None
    if csv_mode == vm_mode:
        raise ConfigError(
            "expected either --train and --test (CSV files) or --train-range and --test-range "
            "(VictoriaMetrics), found " + ("both" if csv_mode else "neither"),
            "--train",
        )
    cfg = _load_cfg(args, env)
    if csv_mode:
        if args.train is None or args.test is None:
            raise ConfigError(
                "expected both --train and --test", "--train" if args.train is None else "--test"
            )
        if args.labels is not None:
            raise ConfigError(
                "--labels is for VictoriaMetrics ranges; put a label column in the test CSV", "--labels"
            )
        features = cfg.feature_names if getattr(args, "config", None) is not None else None
        if features is not None:
            header = read_csv(args.train).features
            if not set(features) & set(header):
                features = None  # the config only brings settings; the columns are the features
        data = csv_data(args.train, args.test, features)
    else:
        if args.labels is not None and not Path(args.labels).is_file():
            raise DataError(f"labels file {args.labels} does not exist")
        from lstmad.source import PromClient

        make_client = client_factory or (lambda c: PromClient(c.victoriametrics))
        client = make_client(cfg)
        try:
            data = vm_data(args, cfg, client, clock())
        finally:
            client.close()
    progress = _progress(not args.no_progress)
    settings = _settings(cfg.model, cfg.training, cfg.threshold)
    settings["retrain_every"] = args.retrain_every
    settings["resync_every"] = cfg.serve.resync_every

    def run(name: str) -> BacktestResult:
        return run_backtest(
            data,
            name,
            model_cfg=cfg.model,
            training_cfg=cfg.training,
            threshold_cfg=cfg.threshold,
            retrain_every=args.retrain_every,
            resync_every=cfg.serve.resync_every,
            progress=progress,
        )

    result = run(args.detector)
    others = [run(name) for name in DETECTORS if name != args.detector] if args.compare else []
    report = build_report(data, result, settings=settings, comparison=others)
    if args.report is not None:
        for path in write_report(args.report, data, result, report):
            log.info("wrote %s", path)
    if args.json:
        stdout.write(json.dumps(report) + "\n")
    else:
        stdout.write(summary(report) + "\n")
    stdout.flush()
    return 0


def summary(report: dict[str, Any]) -> str:
    """A few human lines: the detector, its threshold, flags and headline metrics."""
    rows = [report, *report.get("comparison", [])]
    lines = [
        f"backtest of {report['data']['test_rows']} test rows, {len(report['data']['features'])} features, "
        f"{report['event_count']} flagged events"
    ]
    for r in rows:
        line = (
            f"{r['detector']:>16}: threshold {r['threshold']['method']}={r['threshold']['value']:.4g}, "
            f"{r['flagged_rows']} rows flagged, {r['timing']['total_seconds']:.1f}s"
        )
        m = r.get("metrics")
        if m:
            line += (
                f"; P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f}, best F1 (peeking) "
                f"{m['best_f1']['f1']:.3f}, AUC-PR {m['auc_pr']:.3f}, events {m['events_detected']}/"
                f"{m['events_labelled']}"
            )
        lines.append(line)
    return "\n".join(lines)
