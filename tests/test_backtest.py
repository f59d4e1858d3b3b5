"""``lstmad backtest``: CSV and VictoriaMetrics input, replay without look-ahead, the report."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from lstmad import backtest
from lstmad.backtest import (
    BacktestData,
    csv_data,
    detection_metrics,
    find_events,
    parse_range,
    read_csv,
    read_labels,
    run_backtest,
)
from lstmad.config import ModelConfig, ThresholdConfig, TrainingConfig, load_config
from lstmad.detector import SeriesScores
from lstmad.errors import ConfigError, DataError

from .conftest import require_data

TINY = ModelConfig(window=10, hidden=8, layers=1, max_gap_steps=2)
FAST = TrainingConfig(epochs=1, max_windows=300, batch_size=64, seed=1)
T0 = 1_700_000_100.0  # a multiple of 15, 60 and 300 s


def signal(rows: int, seed: int, start: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + rows)[:, None]
    a = np.sin(2 * np.pi * t / 40.0)
    return np.hstack(
        [a + 0.05 * rng.standard_normal((rows, 1)), 2 * a + 0.05 * rng.standard_normal((rows, 1))]
    )


def write_csv(
    path: Path,
    values: np.ndarray,
    start: float,
    labels: np.ndarray | None = None,
    rfc3339: bool = False,
    names: tuple[str, ...] = ("cpu", "mem"),
) -> Path:
    from datetime import datetime, timezone

    with path.open("w") as fh:
        fh.write(",".join(["timestamp", *names] + (["label"] if labels is not None else [])) + "\n")
        for i, row in enumerate(values):
            ts = start + 60.0 * i
            stamp = (
                datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
                if rfc3339
                else f"{ts:.0f}"
            )
            cells = [stamp] + ["" if np.isnan(v) else f"{v:.6f}" for v in row]
            if labels is not None:
                cells.append(str(int(labels[i])))
            fh.write(",".join(cells) + "\n")
    return path


@pytest.fixture
def csv_pair(tmp_path: Path) -> tuple[Path, Path]:
    train = signal(600, 0)
    test = signal(300, 1, start=600)
    test[150:160] += 4.0
    labels = np.zeros(300, dtype=int)
    labels[148:162] = 1
    return (
        write_csv(tmp_path / "train.csv", train, T0),
        write_csv(tmp_path / "test.csv", test, T0 + 600 * 60, labels, rfc3339=True),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstmad backtest")
    backtest.add_arguments(p)
    p.add_argument("--config", type=Path)  # what the CLI adds after add_arguments
    return p


def fast_config(tmp_path: Path, features: tuple[str, ...] = ("cpu", "mem"), extra: str = "") -> Path:
    feats = "".join(f"  - name: {f}\n    query: up\n" for f in features)
    path = tmp_path / "lstmad.yaml"
    path.write_text(
        f"features:\n{feats}model:\n  window: 10\n  hidden: 8\n  layers: 1\n"
        f"training:\n  epochs: 1\n  max_windows: 300\n  batch_size: 64\n{extra}"
    )
    return path


# --------------------------------------------------------------------------- CSV input


def test_read_csv_unix_and_rfc3339_timestamps_and_labels(tmp_path: Path) -> None:
    values = signal(5, 0)
    values[2, 1] = np.nan
    a = read_csv(write_csv(tmp_path / "a.csv", values, T0))
    b = read_csv(write_csv(tmp_path / "b.csv", values, T0, labels=np.array([0, 1, 1, 0, 0]), rfc3339=True))
    np.testing.assert_allclose(a.timestamps, T0 + 60.0 * np.arange(5))
    np.testing.assert_allclose(b.timestamps, a.timestamps)
    assert a.features == b.features == ["cpu", "mem"]
    assert a.labels is None and b.labels is not None and b.labels.tolist() == [0, 1, 1, 0, 0]
    assert np.isnan(a.values[2, 1]) and np.isfinite(a.values[2, 0])
    np.testing.assert_allclose(a.values, b.values, equal_nan=True)


def test_read_csv_univariate_label_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_text("timestamp,label,value\n2024-01-01T00:00:00+00:00,0,1.5\n2024-01-01T00:05:00Z,1,inf\n")
    data = read_csv(path)
    assert data.features == ["value"]
    assert data.labels is not None and data.labels.tolist() == [0, 1]
    assert data.values[0, 0] == 1.5 and np.isnan(data.values[1, 0])
    assert data.timestamps[1] - data.timestamps[0] == 300


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("time,cpu\n1,2\n", "header starting with 'timestamp'"),
        ("timestamp\n1\n", "at least one feature"),
        ("timestamp,cpu\n", "at least one data row"),
        ("timestamp,cpu\n1,2\n1,3\n", "strictly increasing"),
        ("timestamp,cpu\n1,2,3\n", "expected 2 columns"),
        ("timestamp,cpu\nyesterday,2\n", "Unix seconds or an RFC 3339"),
        ("timestamp,cpu\n1,abc\n", "expected a number"),
        ("timestamp,cpu,label\n1,2,0.5\n", "label of 0 or 1"),
        ("timestamp,cpu,cpu\n1,2,3\n", "distinct"),
    ],
)
def test_read_csv_rejects_bad_files_with_the_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_csv(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_csv(tmp_path / "nope.csv")


def test_csv_data_matches_columns_and_detects_continuation(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", signal(50, 0), T0)
    test = tmp_path / "test.csv"
    test.write_text("timestamp,mem,cpu\n" + "".join(f"{T0 + 60 * (50 + i):.0f},{i},{-i}\n" for i in range(5)))
    data = csv_data(train, test)
    assert data.features == ["cpu", "mem"]
    assert data.test[:, 0].tolist() == [0, -1, -2, -3, -4]  # reordered to the training columns
    assert data.context == 0 and data.step == 60.0
    later = tmp_path / "later.csv"
    later.write_text(
        "timestamp,mem,cpu\n" + "".join(f"{T0 + 60 * (500 + i):.0f},{i},{i}\n" for i in range(5))
    )
    assert csv_data(train, later).context is None
    other = tmp_path / "other.csv"
    other.write_text(f"timestamp,cpu,disk\n{T0 + 3000:.0f},1,2\n")
    with pytest.raises(DataError, match=r"lacks the feature columns \['mem'\]"):
        csv_data(train, other)


def test_read_labels_matches_nearest_rows(tmp_path: Path) -> None:
    stamps = T0 + 60.0 * np.arange(10)
    path = tmp_path / "labels.csv"
    path.write_text(
        f"timestamp,label\n{T0 + 121:.0f},1\n{T0 + 179:.0f},1\n{T0 + 10_000:.0f},1\n{T0 + 240:.0f},0\n"
    )
    labels = read_labels(path, stamps, 60.0)
    assert labels.tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    path.write_text("time,label\n")
    with pytest.raises(DataError, match="timestamp,label"):
        read_labels(path, stamps, 60.0)


def test_parse_range() -> None:
    assert parse_range("now-2d,now-1d", 1000.0 * 86400, "--train-range") == (998.0 * 86400, 999.0 * 86400)
    assert parse_range("100,2024-01-01T00:00:00Z", 0.0, "r") == (100.0, 1704067200.0)
    for bad in ("100", "200,100", "a,b", None):
        with pytest.raises(ConfigError):
            parse_range(bad, 0.0, "--test-range")


# --------------------------------------------------------------------------- replay


def data_with(test: np.ndarray, context: int | None = 0) -> BacktestData:
    return BacktestData(["cpu", "mem"], [signal(400, 0)], test, context=context, step=60.0)


def test_replay_continues_the_training_data_or_fills_its_window() -> None:
    test = signal(100, 1, start=400)
    cont = run_backtest(data_with(test), "zscore", model_cfg=TINY, training_cfg=FAST)
    fresh = run_backtest(data_with(test, context=None), "zscore", model_cfg=TINY, training_cfg=FAST)
    assert cont.scores.score.shape == (100,) and np.isfinite(cont.scores.score).all()
    assert np.isnan(fresh.scores.score[:10]).all() and np.isfinite(fresh.scores.score[10:]).all()
    assert cont.retrains == 0 and len(cont.thresholds) == 1


@pytest.mark.parametrize("detector", ["lstm", "pca", "zscore"])
def test_retraining_never_looks_ahead(detector: str) -> None:
    test = signal(120, 1, start=400)
    changed = test.copy()
    changed[80:] = 50.0
    a = run_backtest(data_with(test), detector, model_cfg=TINY, training_cfg=FAST, retrain_every=40)
    b = run_backtest(data_with(changed), detector, model_cfg=TINY, training_cfg=FAST, retrain_every=40)
    assert a.retrains == 2 and len(a.thresholds) == 3
    np.testing.assert_allclose(a.scores.score[:80], b.scores.score[:80], equal_nan=True)
    assert np.isfinite(a.scores.score).all()


def test_retraining_uses_the_rows_seen_so_far() -> None:
    seen: list[int] = []

    class Spy:
        def __init__(self, name: str, features: list[str], *args: object) -> None:
            from lstmad.baselines import make_detector

            self.inner = make_detector("zscore", features, TINY)

        def fit(self, series: list[np.ndarray], *args: object, **kw: object) -> Spy:
            seen.append(sum(s.shape[0] for s in series))
            self.inner.fit(series, FAST)
            return self

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    run_backtest(data_with(signal(100, 1)), "zscore", retrain_every=30, factory=Spy)
    assert seen == [400, 430, 460, 490]
    seen.clear()
    run_backtest(data_with(signal(100, 1), context=None), "zscore", retrain_every=50, factory=Spy)
    assert seen == [400, 450]


def test_negative_retrain_every_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--retrain-every"):
        run_backtest(data_with(signal(10, 1)), "zscore", retrain_every=-1)


# --------------------------------------------------------------------------- metrics and events


def test_detection_metrics_hand_computed() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0, 0, 1, 0, 0])
    scores = np.array([0.1, 2.0, 1.5, 0.5, 0.2, 0.1, np.nan, 0.9, 0.3, 0.1])
    m = detection_metrics(labels, scores, nab_prefix_rows=20)
    # Flagged (> 1): rows 1 and 2. tp 1, fp 1, fn 3.
    assert m["precision"] == 0.5 and m["recall"] == 0.25
    assert m["f1"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    # Point adjustment: row 2 credits rows 2..4 -> tp 3, fp 1, fn 1.
    assert m["point_adjusted_f1"] == pytest.approx(0.75)
    assert m["event_recall"] == 0.5 and m["events_detected"] == 1 and m["events_labelled"] == 2
    # Best F1: flagging >= 0.2 takes rows 1, 2, 3, 4, 7, 8: tp 4, fp 2, so F1 = 8 / 10.
    assert m["best_f1"]["f1"] == pytest.approx(0.8) and m["best_f1"]["threshold"] == 0.2
    assert "peeks" in m["best_f1"]["note"]
    assert 0 < m["auc_pr"] <= 1 and 0 < m["random_point_adjusted_f1"] <= 1
    assert m["scored_rows"] == 9 and m["flagged_rows"] == 2 and m["anomaly_rows"] == 4
    assert set(m["nab"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    for profile in m["nab"].values():
        assert profile["best_score"] >= profile["score"]
    assert "nab" not in detection_metrics(labels, scores)
    assert "nab" not in detection_metrics(np.zeros(10), scores, nab_prefix_rows=5)


def test_nab_score_of_a_perfect_early_detection_is_high() -> None:
    labels = np.zeros(200, dtype=int)
    labels[100:120] = 1
    scores = np.zeros(200)
    scores[100] = 5.0
    nab = detection_metrics(labels, scores, nab_prefix_rows=1000)["nab"]["standard"]
    assert nab["score"] == pytest.approx(nab["best_score"]) and nab["score"] > 95


def test_find_events_ranks_by_area_and_names_top_features() -> None:
    score = np.array([0, 2, 2, 0, 5, 0, 1.5, 1.5, 1.5, np.nan])
    fe = np.zeros((10, 3))
    fe[1:3] = [1.0, 3.0, 0.0]
    fe[4] = [0.0, 0.0, 2.0]
    fe[6:9] = [1.0, 1.0, 0.0]
    scores = SeriesScores(error=score, feature_errors=fe, score=score, raw_error=score)
    events = find_events(scores, ["a", "b", "c"], top_k=2)
    assert [(e.start, e.end) for e in events] == [(4, 4), (6, 8), (1, 2)]
    assert events[0].top_features[0] == ("c", 1.0)
    assert events[2].top_features == [("b", 0.75), ("a", 0.25)]
    doc = events[1].to_dict(T0 + np.arange(10.0))
    assert doc["rows"] == 3 and doc["start"] == T0 + 6 and doc["peak_score"] == 1.5


# --------------------------------------------------------------------------- command line (in process)


def test_csv_backtest_writes_scores_report_and_plot(
    tmp_path: Path, csv_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = csv_pair
    out = tmp_path / "report"
    args = parser().parse_args(
        [
            "--train",
            str(train),
            "--test",
            str(test),
            "--report",
            str(out),
            "--json",
            "--no-progress",
            "--config",
            str(fast_config(tmp_path)),
            "--seed",
            "3",
        ]
    )
    assert backtest.run_from_args(args, env={}) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "report.json").read_text())
    assert report["detector"] == "lstm" and report["settings"]["training"]["seed"] == 3
    assert report["data"]["test_rows"] == 300 and report["data"]["continues_training"] is True
    assert report["data"]["features"] == ["cpu", "mem"]
    m = report["metrics"]
    for key in (
        "precision",
        "recall",
        "f1",
        "best_f1",
        "point_adjusted_f1",
        "random_point_adjusted_f1",
        "auc_pr",
        "event_recall",
        "nab",
    ):
        assert key in m
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "timestamp,score,is_anomaly,label"
    assert len(lines) == 301
    first = lines[1].split(",")
    assert float(first[0]) == T0 + 600 * 60 and first[1] != ""  # the window came from the training data
    png = (out / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_csv_backtest_without_config_uses_columns_and_compare(
    tmp_path: Path, csv_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    train, test = csv_pair
    args = parser().parse_args(
        [
            "--train",
            str(train),
            "--test",
            str(test),
            "--detector",
            "pca",
            "--compare",
            "--json",
            "--no-progress",
        ]
    )
    env = {
        "LSTMAD_MODEL__WINDOW": "10",
        "LSTMAD_MODEL__HIDDEN": "8",
        "LSTMAD_TRAINING__EPOCHS": "1",
        "LSTMAD_TRAINING__MAX_WINDOWS": "300",
    }
    assert backtest.run_from_args(args, env=env) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["detector"] == "pca"
    assert [r["detector"] for r in report["comparison"]] == ["lstm", "isolation-forest", "zscore", "random"]
    assert report["settings"]["model"]["window"] == 10
    assert all(r["metrics"]["best_f1"]["f1"] is not None for r in report["comparison"])


def test_summary_is_printed_without_json(tmp_path: Path, csv_pair: tuple[Path, Path]) -> None:
    train, test = csv_pair
    args = parser().parse_args(
        [
            "--train",
            str(train),
            "--test",
            str(test),
            "--detector",
            "zscore",
            "--no-progress",
            "--retrain-every",
            "100",
        ]
    )
    buf = io.StringIO()
    assert backtest.run_from_args(args, env={}, stdout=buf) == 0
    text = buf.getvalue()
    assert "zscore" in text and "best F1 (peeking)" in text and "AUC-PR" in text


@pytest.mark.parametrize(
    ("argv", "error", "match"),
    [
        ([], ConfigError, "either --train and --test"),
        (["--train", "a.csv"], ConfigError, "both --train and --test"),
        (["--train", "a.csv", "--test", "b.csv", "--train-range", "1,2"], ConfigError, "found both"),
        (["--train", "a.csv", "--test", "b.csv"], DataError, "cannot read"),
        (["--train-range", "1,2", "--test-range", "3,4", "--labels", "nope.csv"], DataError, "labels file"),
    ],
)
def test_usage_errors(tmp_path: Path, argv: list[str], error: type[Exception], match: str) -> None:
    args = parser().parse_args([a if not a.endswith(".csv") else str(tmp_path / a) for a in argv])
    with pytest.raises(error, match=match):
        backtest.run_from_args(args, env={})


def test_config_features_must_exist_in_the_csv(tmp_path: Path, csv_pair: tuple[Path, Path]) -> None:
    train, test = csv_pair
    cfg = fast_config(tmp_path, features=("cpu", "disk"))
    args = parser().parse_args(["--train", str(train), "--test", str(test), "--config", str(cfg)])
    with pytest.raises(DataError, match=r"lacks the feature columns \['disk'\]"):
        backtest.run_from_args(args, env={})


# --------------------------------------------------------------------------- VictoriaMetrics input


def matrix(entity_values: dict[str, list[tuple[float, float]]]) -> bytes:
    result = [
        {"metric": {"instance": name}, "values": [[t, str(v)] for t, v in points]}
        for name, points in entity_values.items()
    ]
    return orjson.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})


def fake_vm(step: float) -> httpx.MockTransport:
    """Two hosts, one feature per query (``cpu`` or ``mem``), a spike on host-b."""

    def handler(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        start, end = float(form["start"]), float(form["end"])
        grid = np.arange(start, end + step / 2, step)
        which = 0 if "cpu" in form["query"] else 1
        out = {}
        for k, host in enumerate(("host-a", "host-b")):
            vals = signal(len(grid), k, start=int(start // step))[:, which]
            if host == "host-b":
                vals = vals + np.where((grid >= T0 + 450 * step) & (grid < T0 + 460 * step), 5.0, 0.0)
            out[host] = list(zip(grid.tolist(), vals.tolist(), strict=True))
        return httpx.Response(200, content=matrix(out))

    return httpx.MockTransport(handler)


def test_vm_backtest_fetches_both_ranges_and_reads_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lstmad.source import PromClient

    step = 15.0
    cfg_path = fast_config(tmp_path, extra="interval: 15s\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("timestamp,label\n" + "".join(f"{T0 + (448 + i) * step:.0f},1\n" for i in range(14)))
    argv = [
        "--config",
        str(cfg_path),
        "--vm-url",
        "http://vm.example:8428",
        "--train-range",
        f"{T0},{T0 + 399 * step}",
        "--test-range",
        f"{T0 + 400 * step},{T0 + 599 * step}",
        "--labels",
        str(labels),
        "--json",
        "--no-progress",
        "--detector",
        "zscore",
    ]
    transport = fake_vm(step)
    seen: list[str] = []

    def client_factory(cfg: object) -> PromClient:
        seen.append(cfg.victoriametrics.url)  # type: ignore[attr-defined]
        return PromClient(cfg.victoriametrics, transport=transport)  # type: ignore[attr-defined]

    with pytest.raises(ConfigError, match="--entity"):
        backtest.run_from_args(parser().parse_args(argv), env={}, client_factory=client_factory)
    args = parser().parse_args([*argv, "--entity", "host-b"])
    assert backtest.run_from_args(args, env={}, client_factory=client_factory) == 0
    assert seen[-1] == "http://vm.example:8428"
    report = json.loads(capsys.readouterr().out)
    assert report["data"]["entity"] == "host-b" and report["data"]["train_entities"] == 2
    assert report["data"]["continues_training"] is True and report["data"]["test_rows"] == 200
    assert report["data"]["anomaly_rows"] == 14
    assert report["metrics"]["event_recall"] == 1.0


# --------------------------------------------------------------------------- real process and real data


def _cli_has_backtest() -> bool:
    from lstmad.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "backtest" in sub.choices


@pytest.mark.skipif(not _cli_has_backtest(), reason="lstmad.cli does not register `backtest` yet")
def test_cli_backtest_subprocess(tmp_path: Path, csv_pair: tuple[Path, Path]) -> None:
    train, test = csv_pair
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lstmad.cli",
            "backtest",
            "--train",
            str(train),
            "--test",
            str(test),
            "--config",
            str(fast_config(tmp_path)),
            "--report",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["metrics"]["f1"] is not None
    assert {p.name for p in out.iterdir()} == {"scores.csv", "report.json", "plot.png"}
    bad = subprocess.run(
        [sys.executable, "-m", "lstmad.cli", "backtest", "--train", str(train)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "--test" in bad.stderr


@pytest.mark.data
def test_smd_slice_backtest_beats_random() -> None:
    smd = require_data("smd")
    with gzip.open(smd / "train" / "machine-1-4.txt.gz", "rt") as fh:
        train = np.loadtxt(fh, delimiter=",")[-3000:]
    with gzip.open(smd / "test" / "machine-1-4.txt.gz", "rt") as fh:
        test = np.loadtxt(fh, delimiter=",")[:2500]
    labels = np.loadtxt(smd / "test_label" / "machine-1-4.txt").astype(int)[:2500]
    assert labels.sum() > 0
    features = [f"f{i}" for i in range(train.shape[1])]
    data = BacktestData(features, [train], test, labels=labels, context=0, step=60.0)
    cfg = ModelConfig(window=20, hidden=16, layers=1)
    results = {
        name: run_backtest(
            data,
            name,
            model_cfg=cfg,
            training_cfg=TrainingConfig(epochs=2, max_windows=2000),
            threshold_cfg=ThresholdConfig(),
        )
        for name in ("lstm", "pca", "random")
    }
    auc = {n: detection_metrics(labels, r.scores.score)["auc_pr"] for n, r in results.items()}
    assert auc["lstm"] > 2 * auc["random"] and auc["pca"] > 2 * auc["random"]


def test_load_config_is_what_the_backtest_reads(tmp_path: Path) -> None:
    cfg = load_config(fast_config(tmp_path), env={"LSTMAD_TRAINING__SEED": "9"})
    assert cfg.training.seed == 9 and cfg.model.window == 10


def test_public_api_is_pinned() -> None:
    from lstmad import baselines, evalsuite

    assert backtest.__all__ == [
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
    assert set(baselines.__all__) >= {"DETECTORS", "Detector", "make_detector", "PCADetector"}
    assert "run_suite" in evalsuite.__all__ and "main" in evalsuite.__all__
    for module in (backtest, baselines, evalsuite):
        for name in module.__all__:
            assert hasattr(module, name)
