"""The evaluation suite behind ``docs/results.md`` (``make eval``).

Runs every detector of :mod:`lstmad.baselines` through :func:`lstmad.backtest.run_backtest`
(for the LSTM: the streaming engine that ``serve`` uses) on the labelled development data
in ``../shared/data``, with the default settings of :mod:`lstmad.config` only, and writes
the results page. Every number on the page comes from one run of this command::

    python -m lstmad.evalsuite --data ../shared/data --write docs/results.md [--seeds 0,1,2] [--quick]

Protocols:

* SMD (3 machines) and ASD (3 servers): one model per machine, trained on its training
  half and replayed over its test half (which continues the training half, so the window
  is filled from training data); counts pooled over machines for the point-wise metrics,
  so each machine's scores are judged against its own threshold (score 1).
* NAB realAWSCloudwatch (17 files): streaming. Each file trains a model on its first
  ``min(floor(0.15 n), 750)`` rows (NAB's probationary period), is then scored row by row,
  and retrains every :data:`NAB_RETRAIN_EVERY` rows on everything seen so far. NAB's sweep
  picks one threshold for the whole corpus (as NAB does for every detector); the score at
  the detector's own threshold (score > 1) is reported too. Numenta HTM's published
  per-row scores are scored by the same code for reference.

The LSTM runs with every seed of ``--seeds`` (the first is the one in the main tables);
baselines run with the first seed. ``--quick`` cuts the data and the training for a smoke
run (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lstmad._version import __version__
from lstmad.backtest import OWN_THRESHOLD, BacktestData, BacktestResult, detection_metrics, run_backtest
from lstmad.baselines import DETECTORS
from lstmad.config import ModelConfig, ThresholdConfig, TrainingConfig
from lstmad.errors import DataError, LstmadError
from lstmad.evaluation import (
    NAB_PROFILES,
    NabFile,
    best_f1,
    load_nab_corpus,
    load_nab_values,
    nab_corpus_score,
    nab_optimize_threshold,
)
from lstmad.threshold import threshold_from_config

__all__ = [
    "NAB_RETRAIN_EVERY",
    "Entity",
    "RunResult",
    "Settings",
    "load_asd",
    "load_nab",
    "load_smd",
    "main",
    "render_markdown",
    "run_suite",
]

log = logging.getLogger("lstmad.evalsuite")

SMD_MACHINES = ("machine-1-4", "machine-2-4", "machine-3-2")
ASD_SERVERS = ("omi-1", "omi-2", "omi-3")
NAB_CATEGORY = "realAWSCloudwatch"
NAB_RETRAIN_EVERY = 0
"""Test rows between retrainings in the NAB protocol (0: the model trained on the
probationary period scores the whole file)."""
NAB_RETRAIN_TRIED = 1000
"""An extra NAB run of the LSTM (first seed) that retrains every this many rows, shown apart
from the protocol's runs; 0 leaves it out."""
HTM_NAB_STANDARD = "numenta"
ONSET_HISTORY = 1000
"""Rows of error history in the onset experiment (:func:`onset_scores`)."""
TORCH_THREADS = 1
"""Every run trains and scores on one torch thread: on a shared machine more threads spin and
make run times many times slower and erratic; one thread is also what ``serve``'s retraining uses."""
COMMAND = "python -m lstmad.evalsuite --data ../shared/data --write docs/results.md"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Entity:
    """One machine or file: what a backtest replays, and for NAB the file's windows."""

    name: str
    data: BacktestData
    nab_file: NabFile | None = None
    nab_prefix: int = 0


def _entity(name: str, train: np.ndarray, test: np.ndarray, labels: np.ndarray | None, step: float) -> Entity:
    features = [f"f{i}" for i in range(train.shape[1])]
    n_train = train.shape[0]
    stamps = step * np.arange(n_train, n_train + test.shape[0], dtype=np.float64)
    data = BacktestData(features, [train], test, timestamps=stamps, labels=labels, context=0, step=step)
    return Entity(name, data)


def _cut(
    train: np.ndarray, test: np.ndarray, labels: np.ndarray, rows: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if rows is None:
        return train, test, labels
    return train[-rows:], test[:rows], labels[:rows]


def load_smd(data_dir: Path, rows: int | None = None) -> list[Entity]:
    """SMD machines: 38 metrics per minute, train and test halves, 0/1 test labels."""
    root = Path(data_dir) / "smd"
    out = []
    for m in SMD_MACHINES:
        try:
            with gzip.open(root / "train" / f"{m}.txt.gz", "rt") as fh:
                train = np.loadtxt(fh, delimiter=",", ndmin=2)
            with gzip.open(root / "test" / f"{m}.txt.gz", "rt") as fh:
                test = np.loadtxt(fh, delimiter=",", ndmin=2)
            labels = np.loadtxt(root / "test_label" / f"{m}.txt").astype(np.int8)
        except OSError as err:
            raise DataError(f"cannot read SMD machine {m} under {root}: {err}") from err
        out.append(_entity(m, *_cut(train, test, labels, rows), step=60.0))
    return out


def load_asd(data_dir: Path, rows: int | None = None) -> list[Entity]:
    """ASD servers: 19 metrics per 5 minutes, train and test arrays, 0/1 test labels."""
    root = Path(data_dir) / "asd"
    out = []
    for s in ASD_SERVERS:
        try:
            train, test, labels = (
                np.load(root / f"{s}_{part}.npy", allow_pickle=False)
                for part in ("train", "test", "test_label")
            )
        except OSError as err:
            raise DataError(f"cannot read ASD server {s} under {root}: {err}") from err
        cut = _cut(train.astype(np.float64), test.astype(np.float64), labels.astype(np.int8), rows)
        out.append(_entity(s, *cut, step=300.0))
    return out


def nab_probation(n_rows: int) -> int:
    """NAB's probationary period: the first 15 % of a file, at most 750 rows."""
    return min(math.floor(0.15 * n_rows), 750)


def load_nab(data_dir: Path, limit: int | None = None) -> list[Entity]:
    """NAB files: train on the probationary period, test on the rest of the file."""
    try:
        corpus = load_nab_corpus(Path(data_dir), NAB_CATEGORY)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the NAB corpus under {data_dir}: {err}") from err
    out = []
    for nab_file in corpus[:limit]:
        stamps, values = load_nab_values(Path(data_dir), nab_file.name, NAB_CATEGORY)
        p = nab_probation(nab_file.n_rows)
        seconds = stamps.astype("datetime64[s]").astype(np.int64).astype(np.float64)
        data = BacktestData(
            ["value"],
            [values[:p, None]],
            values[p:, None],
            timestamps=seconds[p:],
            context=0,
            step=float(np.median(np.diff(seconds))),
        )
        out.append(Entity(nab_file.name, data, nab_file, p))
    return out


def htm_nab_scores(data_dir: Path, files: Sequence[Entity]) -> list[tuple[NabFile, np.ndarray]]:
    """Numenta HTM's published per-row anomaly scores for the same files."""
    root = Path(data_dir) / "nab" / "results" / HTM_NAB_STANDARD / NAB_CATEGORY
    out = []
    for e in files:
        assert e.nab_file is not None
        path = root / f"{HTM_NAB_STANDARD}_{e.name}.csv"
        with path.open() as fh:
            header = fh.readline().strip().split(",")
            col = header.index("anomaly_score")
            scores = np.array([float(line.split(",")[col]) for line in fh if line.strip()])
        out.append((e.nab_file, scores))
    return out


def htm_thresholds(data_dir: Path) -> dict[str, float]:
    doc = json.loads((Path(data_dir) / "nab" / "config" / "thresholds.json").read_text())
    return {p: float(doc[HTM_NAB_STANDARD][p]["threshold"]) for p in NAB_PROFILES}


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Settings:
    """The settings every detector runs with: the library defaults unless ``--quick``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(threads=TORCH_THREADS))
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    nab_retrain_every: int = NAB_RETRAIN_EVERY

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            model=ModelConfig(window=20, hidden=16),
            training=TrainingConfig(epochs=2, max_windows=2000, threads=TORCH_THREADS),
        )


@dataclass
class RunResult:
    """One detector with one seed over every entity of a data set."""

    dataset: str
    detector: str
    seed: int
    results: list[BacktestResult]
    entities: list[Entity]
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    threshold_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    onset_metrics: dict[str, Any] | None = None
    variant: str | None = None
    """Set on an extra run that departs from the protocol (it is shown apart)."""


def _rescored(result: BacktestResult, cfg: ThresholdConfig) -> np.ndarray:
    """Scores the run would have had with another threshold fitted on the same validation errors."""
    out = np.full(result.scores.error.shape, np.nan)
    for (lo, hi), errors in zip(result.chunks, result.validation_errors, strict=True):
        value = threshold_from_config(cfg).fit(errors).fitted_value
        out[lo:hi] = result.scores.error[lo:hi] / value
    return out


def _pooled_metrics(entities: Sequence[Entity], scores: Sequence[np.ndarray], seed: int) -> dict[str, Any]:
    labels = np.concatenate([e.data.labels for e in entities if e.data.labels is not None])
    pooled = detection_metrics(labels, np.concatenate(scores), seed=seed)
    pooled["per_entity_best_f1"] = {
        e.name: round(best_f1(e.data.labels, s).f1, 4)
        for e, s in zip(entities, scores, strict=True)
        if e.data.labels is not None
    }
    return pooled


def _nab_metrics(entities: Sequence[Entity], scores: Sequence[np.ndarray]) -> dict[str, Any]:
    files = []
    for e, s in zip(entities, scores, strict=True):
        assert e.nab_file is not None
        files.append((e.nab_file, np.concatenate([np.full(e.nab_prefix, np.nan), s])))
    out: dict[str, Any] = {}
    for name, profile in NAB_PROFILES.items():
        swept = nab_optimize_threshold(files, profile)
        own = nab_corpus_score(files, OWN_THRESHOLD, profile)
        out[name] = {
            "score": round(swept.normalized, 2),
            "threshold": swept.threshold,
            "tp": swept.tp,
            "fp": swept.fp,
            "fn": swept.fn,
            "own_score": round(own.normalized, 2),
            "own_tp": own.tp,
            "own_fp": own.fp,
            "own_fn": own.fn,
        }
    return out


def _metrics(
    dataset: str, entities: Sequence[Entity], scores: Sequence[np.ndarray], seed: int
) -> dict[str, Any]:
    if dataset == "nab":
        return _nab_metrics(entities, scores)
    return _pooled_metrics(entities, scores, seed)


def run_detector(
    dataset: str,
    entities: Sequence[Entity],
    detector: str,
    seed: int,
    settings: Settings,
    alternatives: dict[str, ThresholdConfig] | None = None,
    *,
    retrain_every: int | None = None,
) -> RunResult:
    """Backtest ``detector`` on every entity; metrics pooled (SMD, ASD) or NAB-scored.

    ``retrain_every`` overrides the NAB protocol's retraining interval (other data sets never
    retrain).
    """
    training = replace(settings.training, seed=seed)
    retrain = 0
    if dataset == "nab":
        retrain = settings.nab_retrain_every if retrain_every is None else retrain_every
    started = time.perf_counter()
    results = []
    for e in entities:
        r = run_backtest(
            e.data,
            detector,
            model_cfg=settings.model,
            training_cfg=training,
            threshold_cfg=settings.threshold,
            retrain_every=retrain,
        )
        log.info(
            "%s %s seed %d %s: fit %.1fs, replay %.1fs",
            dataset,
            detector,
            seed,
            e.name,
            r.fit_seconds,
            r.score_seconds,
        )
        results.append(r)
    seconds = time.perf_counter() - started
    run = RunResult(dataset, detector, seed, results, list(entities), seconds)
    if retrain:
        run.variant = f"retraining every {retrain} rows"
    run.metrics = _metrics(dataset, entities, [r.scores.score for r in results], seed)
    for name, cfg in (alternatives or {}).items():
        run.threshold_metrics[name] = _metrics(dataset, entities, [_rescored(r, cfg) for r in results], seed)
    if alternatives is not None:
        run.onset_metrics = _metrics(dataset, entities, [onset_scores(r) for r in results], seed)
    return run


def onset_scores(result: BacktestResult, history: int = ONSET_HISTORY) -> np.ndarray:
    """Each error divided by the largest error of the previous ``history`` scored rows.

    An experiment, not what ``serve`` does: a score above 1 means "the largest error in
    ``history`` rows", which flags the onset of an anomaly and then stops, however long the
    anomaly lasts. The validation errors of the model that scored a row seed its history.
    """
    out = np.full(result.scores.error.shape, np.nan)
    for (lo, hi), seed_errors in zip(result.chunks, result.validation_errors, strict=True):
        past: collections.deque[tuple[int, float]] = collections.deque()
        series = np.concatenate([np.asarray(seed_errors, dtype=np.float64), result.scores.error[lo:hi]])
        start = len(seed_errors)
        for i, e in enumerate(series.tolist()):
            if not math.isfinite(e):
                continue
            while past and past[0][0] < i - history:
                past.popleft()
            if i >= start and past:
                out[lo + i - start] = e / max(past[0][1], 1e-12)
            while past and past[-1][1] <= e:
                past.pop()
            past.append((i, e))
    return out


def threshold_alternatives(settings: Settings) -> dict[str, ThresholdConfig]:
    """The threshold rules compared on the LSTM's validation errors (same models, no retraining)."""
    base = settings.threshold
    return {
        "quantile 0.995 × 1.2": replace(base, method="quantile", quantile=0.995, margin=1.2),
        "quantile 0.99 × 1.0": replace(base, method="quantile", quantile=0.99, margin=1.0),
        "quantile 0.98 × 1.0": replace(base, method="quantile", quantile=0.98, margin=1.0),
        "dynamic (Hundman)": replace(base, method="dynamic"),
        "default": base,
    }


def run_suite(
    data_dir: Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    datasets: Sequence[str] = ("smd", "asd", "nab"),
    detectors: Sequence[str] = DETECTORS,
    settings: Settings | None = None,
    quick: bool = False,
    on_run: Callable[[RunResult], None] | None = None,
) -> dict[str, Any]:
    """Run everything and return the results as plain data (what the page is rendered from)."""
    settings = settings or (Settings.quick() if quick else Settings())
    if settings.training.threads > 0:
        import torch

        torch.set_num_threads(settings.training.threads)
    started = time.perf_counter()
    loaders: dict[str, Callable[[], list[Entity]]] = {
        "smd": lambda: load_smd(data_dir, rows=3000 if quick else None),
        "asd": lambda: load_asd(data_dir, rows=2000 if quick else None),
        "nab": lambda: load_nab(data_dir, limit=4 if quick else None),
    }
    alternatives = threshold_alternatives(settings)
    out: dict[str, Any] = {"datasets": {}}
    for ds in datasets:
        entities = loaders[ds]()
        runs: list[RunResult] = []
        for det in detectors:
            for seed in seeds if det == "lstm" else seeds[:1]:
                log.info("running %s on %s with seed %d", det, ds, seed)
                run = run_detector(ds, entities, det, seed, settings, alternatives if det == "lstm" else None)
                runs.append(run)
                if on_run is not None:
                    on_run(run)
        if ds == "nab" and "lstm" in detectors and NAB_RETRAIN_TRIED and not settings.nab_retrain_every:
            log.info(
                "running lstm on nab with seed %d, retraining every %d rows", seeds[0], NAB_RETRAIN_TRIED
            )
            run = run_detector(ds, entities, "lstm", seeds[0], settings, retrain_every=NAB_RETRAIN_TRIED)
            runs.append(run)
            if on_run is not None:
                on_run(run)
        doc: dict[str, Any] = {
            "entities": [e.name for e in entities],
            "train_rows": sum(e.data.train_rows for e in entities),
            "test_rows": sum(int(e.data.test.shape[0]) for e in entities),
            "features": len(entities[0].data.features),
            "runs": [
                {
                    "detector": r.detector,
                    "variant": r.variant,
                    "seed": r.seed,
                    "seconds": round(r.seconds, 1),
                    "metrics": r.metrics,
                    "threshold_metrics": r.threshold_metrics,
                    "onset_metrics": r.onset_metrics,
                    "per_entity_seconds": {
                        e.name: round(x.fit_seconds + x.score_seconds, 1)
                        for e, x in zip(r.entities, r.results, strict=True)
                    },
                }
                for r in runs
            ],
        }
        if ds == "nab":
            htm = htm_nab_scores(data_dir, entities)
            thresholds = htm_thresholds(data_dir)
            doc["htm"] = {
                p: {
                    "published_threshold": round(nab_corpus_score(htm, thresholds[p], prof).normalized, 2),
                    "swept": round(nab_optimize_threshold(htm, prof).normalized, 2),
                }
                for p, prof in NAB_PROFILES.items()
            }
            doc["windows"] = sum(len(e.nab_file.windows) for e in entities if e.nab_file is not None)
        out["datasets"][ds] = doc
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["seeds"] = list(seeds)
    out["quick"] = quick
    out["settings"] = {
        "model": asdict(settings.model),
        "training": asdict(settings.training),
        "threshold": asdict(settings.threshold),
        "nab_retrain_every": settings.nab_retrain_every,
    }
    out["machine"] = machine_info()
    out["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out["lstmad_version"] = __version__
    return out


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = None
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        commit = proc.stdout.strip() or None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if commit and dirty.stdout.strip():
            commit += " with uncommitted changes"
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "commit": commit,
    }


# --------------------------------------------------------------------------- the page


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _runs(doc: dict[str, Any], detector: str) -> list[dict[str, Any]]:
    """The protocol's runs of ``detector`` (extra variants left out), first seed first."""
    return [r for r in doc["runs"] if r["detector"] == detector and not r.get("variant")]


def _main_runs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for r in doc["runs"]:
        if r.get("variant"):
            continue
        if r["detector"] not in seen:
            seen.add(r["detector"])
            out.append(r)
    return out


POINT_COLUMNS = (
    "| detector | precision | recall | F1 (own threshold) | best F1 (peeking) | PA F1 (own) "
    "| best PA F1 (peeking) | random best PA F1 | AUC-PR | event recall | run time |"
)


def _point_row(name: str, m: dict[str, Any], seconds: float) -> str:
    return (
        f"| {name} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} | {_f(m['best_f1']['f1'])} "
        f"| {_f(m['point_adjusted_f1'])} | {_f(m['best_point_adjusted_f1'])} "
        f"| {_f(m['random_point_adjusted_f1'])} | {_f(m['auc_pr'])} "
        f"| {_f(m['event_recall'], 2)} ({m['events_detected']}/{m['events_labelled']}) | {seconds:.0f} s |"
    )


def _mean_std(values: Sequence[float], digits: int = 3) -> str:
    arr = np.array([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return "–"
    if arr.size == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std(ddof=1):.{digits}f}"


def _seed_note(held: Sequence[bool], seeds: Sequence[int]) -> str:
    """``"3 of 3 seeds"`` or ``"2 of 3 seeds (not seed 2)"``."""
    misses = [str(s) for s, ok in zip(seeds, held, strict=False) if not ok]
    note = f"{sum(held)} of {len(held)} seeds"
    return note + (f" (not seed {', '.join(misses)})" if misses else "")


def _targets(results: dict[str, Any]) -> list[str]:
    """One row per target: the first seed's figure, and how many seeds meet it."""
    lines = [
        f"Measured on seed {results['seeds'][0]}; the last column counts the LSTM seeds that meet "
        "the target.",
        "",
        "| target | measured | holds | seeds |",
        "|---|---|---|---|",
    ]
    ds = results["datasets"]
    seeds = results["seeds"]

    def get(m: dict[str, Any], key: str) -> float:
        return float(m[key]["f1"] if key == "best_f1" else m[key])

    for name in ("smd", "asd"):
        if name not in ds or not _runs(ds[name], "lstm") or not _runs(ds[name], "pca"):
            continue
        runs = [r["metrics"] for r in _runs(ds[name], "lstm")]
        pca = _runs(ds[name], "pca")[0]["metrics"]
        for key, label in (("best_f1", "best F1"), ("auc_pr", "AUC-PR")):
            a, b = get(runs[0], key), get(pca, key)
            gap = "" if a > b else f" (misses by {b - a:.3f})"
            held = [get(m, key) > b for m in runs]
            lines.append(
                f"| {name.upper()}: lstm {label} above pca | {_f(a)} vs {_f(b)}{gap} "
                f"| {'yes' if a > b else 'no'} | {_seed_note(held, seeds)} |"
            )
        own, best = runs[0]["f1"], runs[0]["best_f1"]["f1"]
        ratio = own / best if best else 0.0
        gap = "" if ratio >= 0.8 else f" (misses by {0.8 * best - own:.3f} F1)"
        held = [bool(m["best_f1"]["f1"]) and m["f1"] >= 0.8 * m["best_f1"]["f1"] for m in runs]
        lines.append(
            f"| {name.upper()}: lstm F1 at own threshold ≥ 0.8 × best F1 | {_f(own)} = {ratio:.2f} × "
            f"{_f(best)}{gap} | {'yes' if ratio >= 0.8 else 'no'} | {_seed_note(held, seeds)} |"
        )
    if "nab" in ds and _runs(ds["nab"], "lstm"):
        htm = ds["nab"]["htm"]["standard"]["published_threshold"]
        runs = [r["metrics"]["standard"] for r in _runs(ds["nab"], "lstm")]
        score = runs[0]["score"]
        gap = "" if score > htm else f" (misses by {htm - score:.1f})"
        held = [m["score"] > htm for m in runs]
        lines.append(
            f"| NAB realAWSCloudwatch: lstm standard score above Numenta HTM | {score:.1f} vs {htm:.1f}{gap} "
            f"| {'yes' if score > htm else 'no'} | {_seed_note(held, seeds)} |"
        )
    if "smd" in ds and _runs(ds["smd"], "lstm"):
        per_run = [list(r["per_entity_seconds"].values()) for r in _runs(ds["smd"], "lstm")]
        times = [t for run in per_run for t in run]
        worst, median = max(times), float(np.median(times))
        held = [max(run) < 180 for run in per_run]
        lines.append(
            f"| one SMD machine's backtest (lstm, training and replay) under 180 s | median {median:.0f} s, "
            f"slowest {worst:.0f} s of {len(times)} | {'yes' if worst < 180 else 'no'} "
            f"| {_seed_note(held, seeds)} |"
        )
    return lines


def render_markdown(results: dict[str, Any], notes: str = "") -> str:
    """The results page, from :func:`run_suite`'s output."""
    m = results["machine"]
    s = results["settings"]
    out = [
        "# Detection quality: lstmad against baselines on labelled data",
        "",
        "<!-- Generated file: do not edit. Regenerate with `make eval`. -->",
        "",
        f"Generated by `{COMMAND}` (`make eval`) on {results['created']}, in {results['seconds'] / 60:.1f} "
        f"minutes, on {m['cpu']} ({m['cores']} cores, torch on {m['torch_threads']} "
        f"thread{'s' if m['torch_threads'] != 1 else ''}), "
        f"Python {m['python']}, "
        f"torch {m['torch']}, numpy {m['numpy']}, lstmad {results['lstmad_version']}"
        + (f", commit {m['commit']}" if m.get("commit") else "")
        + ". Run times are wall-clock seconds on that machine, training and replay together, "
        "while other work may have shared its cores.",
        "",
    ]
    if results.get("quick"):
        out += ["**Quick run (`--quick`): cut data and training; these figures mean nothing.**", ""]
    out += [
        "Every detector ran with the library's default settings (no per-data-set tuning):",
        "",
        f"- model: window {s['model']['window']}, {s['model']['layers']} LSTM layers of "
        f"{s['model']['hidden']} "
        f"units, gaps bridged up to {s['model']['max_gap_steps']} steps;",
        f"- training: at most {s['training']['epochs']} epochs of at most "
        f"{s['training']['max_windows']} windows, "
        f"batch {s['training']['batch_size']}, learning rate {s['training']['learning_rate']}, last "
        f"{s['training']['validation_split']:.0%} of the training data held out, early stopping after "
        f"{s['training']['early_stopping_patience']} epochs without improvement;",
        f"- threshold: {s['threshold']['method']}"
        + (
            f" {s['threshold']['quantile']} × {s['threshold']['margin']}"
            if s["threshold"]["method"] == "quantile"
            else ""
        )
        + f" of the validation errors, EWMA span {s['threshold']['smoothing']}.",
        "",
        "Metrics: precision, recall and F1 count rows at the detector's own threshold (score > 1, learned "
        "without labels). *Best F1* sweeps every threshold and so peeks at the labels: it is an upper "
        "bound, the number the SMD literature reports. *PA* is point-adjusted (a whole labelled segment "
        "counts as found once one row is flagged); it is always next to the best PA F1 of uniform random "
        "scores on the same labels, which shows how little it means. AUC-PR is average precision. Event "
        "recall is the share of labelled segments with at least one flagged row.",
        "",
        "## Targets",
        "",
        *_targets(results),
        "",
    ]
    ds = results["datasets"]
    for name, title in (("smd", "SMD (Server Machine Dataset)"), ("asd", "ASD (Application Server Dataset)")):
        if name not in ds:
            continue
        doc = ds[name]
        out += [
            f"## {title}",
            "",
            f"{', '.join(doc['entities'])}: one model each, {doc['features']} features, {doc['train_rows']} "
            f"training and {doc['test_rows']} test rows in all; counts pooled over machines. LSTM: seed "
            f"{results['seeds'][0]}.",
            "",
            POINT_COLUMNS,
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in _main_runs(doc):
            out.append(_point_row(r["detector"], r["metrics"], r["seconds"]))
        out += [
            "",
            "Best F1 (peeking) per machine:",
            "",
            "| detector | " + " | ".join(doc["entities"]) + " |",
        ]
        out.append("|---|" + "---|" * len(doc["entities"]))
        for r in _main_runs(doc):
            per = r["metrics"]["per_entity_best_f1"]
            out.append(f"| {r['detector']} | " + " | ".join(_f(per[e]) for e in doc["entities"]) + " |")
        out.append("")
    if "nab" in ds:
        doc = ds["nab"]
        htm = doc["htm"]
        out += [
            "## NAB realAWSCloudwatch",
            "",
            f"{len(doc['entities'])} files, {doc['windows']} labelled windows. Each detector trains on a "
            "file's "
            "probationary period (first 15 %, at most 750 rows) and then scores it row by row"
            + (
                f", retraining every {s['nab_retrain_every']} rows on all rows so far"
                if s["nab_retrain_every"]
                else ""
            )
            + ". *Sweep*: the one corpus threshold that NAB's optimiser picks per profile (as NAB does for "
            "every detector); *own*: the detector's own threshold (score > 1).",
            "",
            "| detector | standard (sweep) | low FP (sweep) | low FN (sweep) | standard (own) | low FP (own) "
            "| low FN (own) | windows found / false-positive rows (standard sweep) | run time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        out.append(
            f"| Numenta HTM, NAB's published thresholds | {htm['standard']['published_threshold']:.1f} "
            f"| {htm['reward_low_FP_rate']['published_threshold']:.1f} "
            f"| {htm['reward_low_FN_rate']['published_threshold']:.1f} | | | | | |"
        )
        out.append(
            f"| Numenta HTM, swept on these files | {htm['standard']['swept']:.1f} "
            f"| {htm['reward_low_FP_rate']['swept']:.1f} | {htm['reward_low_FN_rate']['swept']:.1f} "
            "| | | | | |"
        )
        for r in _main_runs(doc):
            mm = r["metrics"]
            st = mm["standard"]
            out.append(
                f"| {r['detector']} | {st['score']:.1f} | {mm['reward_low_FP_rate']['score']:.1f} "
                f"| {mm['reward_low_FN_rate']['score']:.1f} | {st['own_score']:.1f} "
                f"| {mm['reward_low_FP_rate']['own_score']:.1f} "
                f"| {mm['reward_low_FN_rate']['own_score']:.1f} "
                f"| {st['tp']}/{st['tp'] + st['fn']} / {st['fp']} | {r['seconds']:.0f} s |"
            )
        for r in doc["runs"]:
            if not r.get("variant"):
                continue
            mm = r["metrics"]
            st = mm["standard"]
            out.append(
                f"| {r['detector']}, {r['variant']} (seed {r['seed']}) | {st['score']:.1f} "
                f"| {mm['reward_low_FP_rate']['score']:.1f} | {mm['reward_low_FN_rate']['score']:.1f} "
                f"| {st['own_score']:.1f} | {mm['reward_low_FP_rate']['own_score']:.1f} "
                f"| {mm['reward_low_FN_rate']['own_score']:.1f} "
                f"| {st['tp']}/{st['tp'] + st['fn']} / {st['fp']} | {r['seconds']:.0f} s |"
            )
        out.append("")
    out += _seed_section(results)
    out += _threshold_section(results)
    out += _onset_section(results)
    if notes:
        out += [notes.rstrip(), ""]
    return "\n".join(out).rstrip() + "\n"


def _seed_section(results: dict[str, Any]) -> list[str]:
    ds = results["datasets"]
    seeds = results["seeds"]
    out = [
        f"## LSTM across seeds {', '.join(map(str, seeds))} (mean ± standard deviation)",
        "",
        "| data set | F1 (own) | best F1 (peeking) | AUC-PR | event recall | NAB standard (sweep) "
        "| NAB standard (own) | run time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("smd", "asd", "nab"):
        if name not in ds:
            continue
        runs = _runs(ds[name], "lstm")
        if not runs:
            continue
        secs = _mean_std([r["seconds"] for r in runs], 0)
        if name == "nab":
            out.append(
                f"| NAB | | | | | {_mean_std([r['metrics']['standard']['score'] for r in runs], 1)} "
                f"| {_mean_std([r['metrics']['standard']['own_score'] for r in runs], 1)} | {secs} s |"
            )
        else:
            mm = [r["metrics"] for r in runs]
            out.append(
                f"| {name.upper()} | {_mean_std([m['f1'] for m in mm])} "
                f"| {_mean_std([m['best_f1']['f1'] for m in mm])} | {_mean_std([m['auc_pr'] for m in mm])} "
                f"| {_mean_std([m['event_recall'] for m in mm], 2)} | | | {secs} s |"
            )
    return [*out, ""]


def _onset_section(results: dict[str, Any]) -> list[str]:
    ds = results["datasets"]
    rows = []
    for name in ("smd", "asd", "nab"):
        runs = _runs(ds[name], "lstm") if name in ds else []
        if not runs or not runs[0].get("onset_metrics"):
            continue
        shipped, onset = runs[0]["metrics"], runs[0]["onset_metrics"]
        if name == "nab":
            for key, label in (("score", "standard (sweep)"), ("own_score", "standard (own threshold)")):
                rows.append(
                    f"| NAB | {label} | {shipped['standard'][key]:.1f} | {onset['standard'][key]:.1f} |"
                )
        else:
            for label, get in (
                ("best F1 (peeking)", lambda m: m["best_f1"]["f1"]),
                ("AUC-PR", lambda m: m["auc_pr"]),
                ("F1 (own threshold)", lambda m: m["f1"]),
            ):
                rows.append(f"| {name.upper()} | {label} | {_f(get(shipped))} | {_f(get(onset))} |")
    if not rows:
        return []
    return [
        "## Tried: scoring onsets instead of states",
        "",
        "NAB credits only the first detection in a window and charges every flagged row outside one, "
        "so it rewards a detector that fires once at the onset of an anomaly; SMD and ASD label every "
        "row of an anomaly, and `serve` is built to keep a sustained anomaly flagged for as long as it "
        f"lasts. This experiment divides the same LSTM's errors (seed {results['seeds'][0]}) by the "
        f"largest error of the previous {ONSET_HISTORY} rows (seeded with the validation errors), so a "
        'score above 1 means "a new record". It is not what `serve` does.',
        "",
        "| data set | metric | as shipped | onset scores |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _threshold_section(results: dict[str, Any]) -> list[str]:
    ds = results["datasets"]
    s = results["settings"]["threshold"]
    out = [
        "## Thresholds: quantile against dynamic",
        "",
        "The same LSTM models (all seeds), only the threshold rule changes: each rule is fitted on the "
        "same validation errors and decides on the same test errors. F1 is at the rule's threshold; "
        "the ratio is to the best F1 of the same scores. The default is "
        f"`method: {s['method']}`"
        + (f" ({s['quantile']} × {s['margin']})" if s["method"] == "quantile" else "")
        + ".",
        "",
        "| rule | SMD F1 | SMD P / R | SMD F1 / best | ASD F1 | ASD P / R | ASD F1 / best "
        "| NAB standard (own) | NAB low FP (own) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rules: list[str] = []
    for doc in ds.values():
        for r in _runs(doc, "lstm"):
            for rule in r["threshold_metrics"]:
                if rule not in rules:
                    rules.append(rule)
    for rule in rules:
        cells = []
        for name in ("smd", "asd"):
            runs = [r for r in _runs(ds.get(name, {"runs": []}), "lstm") if rule in r["threshold_metrics"]]
            if not runs:
                cells += ["–", "–", "–"]
                continue
            mm = [r["threshold_metrics"][rule] for r in runs]
            cells += [
                _mean_std([m["f1"] for m in mm]),
                f"{_mean_std([m['precision'] for m in mm], 2)} / {_mean_std([m['recall'] for m in mm], 2)}",
                _mean_std(
                    [m["f1"] / m["best_f1"]["f1"] if m["best_f1"]["f1"] else 0.0 for m in mm],
                    2,
                ),
            ]
        runs = [r for r in _runs(ds.get("nab", {"runs": []}), "lstm") if rule in r["threshold_metrics"]]
        if runs:
            mm = [r["threshold_metrics"][rule] for r in runs]
            cells += [
                _mean_std([m["standard"]["own_score"] for m in mm], 1),
                _mean_std([m["reward_low_FP_rate"]["own_score"] for m in mm], 1),
            ]
        else:
            cells += ["–", "–"]
        out.append(f"| {rule} | " + " | ".join(cells) + " |")
    return [*out, ""]


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lstmad.evalsuite",
        description="Backtest lstmad and its baselines on the labelled data and write the results page.",
    )
    p.add_argument(
        "--data", type=Path, required=True, help="folder with smd/, asd/ and nab/ (../shared/data)"
    )
    p.add_argument("--write", type=Path, help="write the Markdown page here (default: print it)")
    p.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    p.add_argument("--seeds", default="0,1,2", help="LSTM seeds, comma-separated (default 0,1,2)")
    p.add_argument("--datasets", default="smd,asd,nab", help="comma-separated subset of smd,asd,nab")
    p.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated detectors")
    p.add_argument("--quick", action="store_true", help="cut data and training: a smoke run")
    p.add_argument("--notes", type=Path, help="Markdown appended to the page (what was tried)")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="render the page from the raw results (--json) of an earlier run instead of running",
    )
    return p


def _list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"{flag}: expected a comma-separated subset of {','.join(allowed)}, found {text!r}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"--seeds: expected integers like 0,1,2, found {args.seeds!r}", file=sys.stderr)
        return 2
    datasets = _list(args.datasets, ("smd", "asd", "nab"), "--datasets")
    detectors = _list(args.detectors, DETECTORS, "--detectors")
    try:
        if args.from_json is not None:
            try:
                results = json.loads(args.from_json.read_text())
            except (OSError, ValueError) as err:
                raise DataError(f"cannot read results from {args.from_json}: {err}") from err
        else:
            results = run_suite(
                args.data, seeds=seeds, datasets=datasets, detectors=detectors, quick=args.quick
            )
    except LstmadError as err:
        print(f"evalsuite: error: {err}", file=sys.stderr)
        return 2
    notes = args.notes.read_text() if args.notes else DEFAULT_NOTES
    page = render_markdown(results, notes)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(page)
        log.info("wrote %s", args.write)
    else:
        sys.stdout.write(page)
    return 0


DEFAULT_NOTES = """## How the defaults were chosen, and what was tried

- **Per-feature error normalisation** (in the detector, so in `serve` too): each feature's
  smoothed squared error is divided by its mean on the validation part of the training data
  (at least 0.1). Without it, SMD's nearly constant features (tiny standard deviations after
  the data set's own min-max scaling) have standard-scaled errors thousands of times larger
  than the others even in normal operation, so the mean error, the threshold and the alerts
  were about one or two features. ASD's best F1 and AUC-PR gained most from it; on SMD it
  mostly helped the threshold (the F1 at the model's own threshold).
- **Threshold**: the table above is the measurement. A fixed quantile of the validation
  errors keeps the F1 at the model's own threshold closest to the best F1 on both SMD and ASD;
  the old default (0.995 × 1.2) was too conservative for ASD, 0.98 too loose for SMD, and
  the dynamic threshold (Hundman et al.'s selection applied to the validation errors) chose
  thresholds close to the old default. Hence `quantile: 0.99`, `margin: 1.0`. It is a
  trade-off: on normal data about 1 % of samples exceed it (in runs, because the error is
  smoothed); raise `threshold.margin` where alerts must be rarer.
- **Smoothing**: an EWMA span of 15 samples ranked anomalies slightly better than 5 on both
  SMD and ASD (their anomalies are segments of tens to hundreds of rows); it delays an alert
  by a few samples.
- **Training budget**: at most 10 epochs of 10,000 windows, set by the 3-minute budget for one
  SMD machine on two shared cores (each window trains on every one of its positions after a
  short warm-up, so 10,000 windows cover a 28k-row history many times over). Training and
  replay run on one torch thread.
- **Tried, not kept**: capping each feature's error (better ranking on SMD, slightly worse on
  ASD, and it needs a change to the streaming engine);
  thresholds that follow the recent errors (a quantile or the maximum of the last 500–4000
  errors instead of a threshold learned once) and refitting the threshold on the most recent
  errors: they turn the detector into an onset detector, which NAB rewards and SMD, ASD and
  `serve`'s alerts do not (see the onset experiment above).
- **NAB**: a model trained on a file's first 15 % (at most 750 rows, 5-minute steps) has seen
  too little to set a threshold that holds for the other 85 % of an AWS metric: the scale of
  its errors changes by orders of magnitude between files and within a file, so no single
  corpus threshold separates the labelled windows from the rest. The onset experiment shows
  how much of the gap to Numenta HTM (whose anomaly likelihood is exactly such a running
  normalisation) comes from that. Retraining on everything seen so far (`--retrain-every`,
  allowed by the protocol; the extra row in the NAB table) updates the scaler, the model and
  the threshold but not the nature of the score, and multiplies the run time by the number of
  retrainings.
"""


if __name__ == "__main__":
    raise SystemExit(main())
