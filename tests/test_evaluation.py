"""Tests of lstmad.evaluation: hand-computed cases, brute-force equivalence, and NAB on real data.

Each hand-computed case writes its arithmetic out, so a failure can be checked on paper.
Tests marked ``data`` read ../shared/data (relative to the repository root) and skip with a
reason when it is absent.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmad.evaluation import (
    NAB_PROFILES,
    BestF1,
    NabFile,
    NabProfile,
    auc_pr,
    best_f1,
    best_point_adjusted_f1,
    event_recall,
    label_segments,
    load_nab_corpus,
    load_nab_values,
    nab_corpus_score,
    nab_file_raw_score,
    nab_optimize_threshold,
    point_adjust,
    point_metrics,
    random_point_adjusted_f1,
)

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
NAB_RESULTS = DATA_DIR / "nab" / "results" / "numenta" / "realAWSCloudwatch"
STANDARD = NAB_PROFILES["standard"]


def _s(y: float) -> float:
    """NAB's scaled sigmoid written out, independent of the module's vectorised one."""
    return -1.0 if y > 3.0 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


# --------------------------------------------------------------------------- brute-force oracles


def _brute_best_f1(labels: np.ndarray, scores: np.ndarray, adjust: bool = False) -> float:
    """Best F1 by trying every distinct non-NaN score as a threshold, one at a time."""
    best = 0.0
    for t in np.unique(scores[~np.isnan(scores)]):
        flags = np.nan_to_num(scores, nan=-np.inf) >= t
        if adjust:
            flags = point_adjust(labels, flags).astype(bool)
        best = max(best, point_metrics(labels, flags).f1)
    return best


labels_and_scores = st.integers(min_value=1, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        # few distinct values so that ties are common; None stands for NaN
        st.lists(st.one_of(st.none(), st.integers(0, 6)), min_size=n, max_size=n),
    )
)


def _arrays(pair: tuple[list[int], list[int | None]]) -> tuple[np.ndarray, np.ndarray]:
    labels, raw = pair
    scores = np.array([np.nan if v is None else v / 6.0 for v in raw])
    return np.array(labels), scores


# --------------------------------------------------------------------------- segments and points


def test_label_segments_finds_runs_including_edges() -> None:
    assert label_segments(np.array([1, 1, 0, 0, 1, 0, 1, 1, 1])) == [(0, 1), (4, 4), (6, 8)]
    assert label_segments(np.array([0, 0, 0])) == []
    assert label_segments(np.array([True, True])) == [(0, 1)]
    assert label_segments(np.array([], dtype=int)) == []


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 2, 1]), "only 0 and 1; found 2 at row 1"),
        (np.array([0.0, np.nan]), "only 0 and 1; found nan at row 1"),
        (np.zeros((2, 2)), "1-D array; found shape (2, 2)"),
        (np.array(["a", "b"]), "0/1 numbers; found dtype <U1"),
    ],
)
def test_label_validation_says_what_was_found(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        label_segments(labels)


def test_point_metrics_by_hand() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    flags = np.array([1, 0, 1, 0, 1, 0])
    # tp = rows 0, 4 = 2; fp = row 2 = 1; fn = row 1 = 1
    # precision = 2 / 3, recall = 2 / 3, f1 = 2 * (4/9) / (4/3) = 2 / 3
    m = point_metrics(labels, flags)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)


def test_point_metrics_zero_over_zero_is_zero() -> None:
    # no flags: precision 0/0 -> 0; recall 0/2 = 0; f1 0/0 -> 0
    assert point_metrics(np.array([1, 1, 0]), np.zeros(3)).f1 == 0.0
    # no anomalies and no flags: everything 0/0 -> 0
    m = point_metrics(np.zeros(3), np.zeros(3))
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)


def test_point_metrics_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match=r"same length as labels \(3\); found 2"):
        point_metrics(np.array([1, 0, 1]), np.array([1, 0]))


# --------------------------------------------------------------------------- best F1


def test_best_f1_by_hand() -> None:
    labels = np.array([0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.9, 0.4, 0.5, 0.3])
    # f1 = 2 tp / (tp + fp + positives), positives = 3
    # t=0.9: tp 1 fp 0 -> 2/4 = 0.5      t=0.5: tp 1 fp 1 -> 2/5 = 0.4
    # t=0.4: tp 2 fp 1 -> 4/6 = 0.667    t=0.3: tp 3 fp 1 -> 6/7 = 0.857  <- best
    # t=0.1: tp 3 fp 2 -> 6/8 = 0.75
    result = best_f1(labels, scores)
    assert result.f1 == pytest.approx(6 / 7)
    assert result.precision == pytest.approx(3 / 4)
    assert result.recall == pytest.approx(1.0)
    assert result.threshold == 0.3


def test_best_f1_ties_enter_together() -> None:
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.8, 0.8, 0.2, 0.1])
    # t=0.8 flags rows 0 and 1 together: tp 1 fp 1 -> 2/(2+2) = 0.5 (never tp 1 fp 0)
    # t=0.2: tp 2 fp 1 -> 4/(3+2) = 0.8 <- best;  t=0.1: tp 2 fp 2 -> 4/6
    result = best_f1(labels, scores)
    assert result.f1 == pytest.approx(0.8)
    assert result.precision == pytest.approx(2 / 3)
    assert (result.recall, result.threshold) == (1.0, 0.2)


def test_best_f1_nan_is_never_flagged() -> None:
    # The NaN anomaly stays a miss at every threshold:
    # t=0.9: tp 1 fp 0 fn 1 -> 2/(1+0+2) = 2/3;  t=0.1: tp 1 fp 1 -> 2/4 = 0.5
    assert best_f1(np.array([1, 1, 0]), np.array([0.9, np.nan, 0.1])).f1 == pytest.approx(2 / 3)
    # The NaN normal row is never a false positive: t=0.2 gives tp 2 fp 0 -> f1 1.0
    result = best_f1(np.array([1, 0, 1]), np.array([0.5, np.nan, 0.2]))
    assert (result.f1, result.threshold) == (1.0, 0.2)


def test_best_f1_without_hits_flags_nothing() -> None:
    assert best_f1(np.array([0, 0]), np.array([0.3, 0.4])) == BestF1(0.0, 0.0, 0.0, math.inf)
    assert best_f1(np.array([1, 0]), np.array([np.nan, 0.4])) == BestF1(0.0, 0.0, 0.0, math.inf)


def test_scores_must_be_finite_or_nan() -> None:
    with pytest.raises(ValueError, match=r"finite or NaN .*found inf at row 1"):
        best_f1(np.array([1, 0]), np.array([0.5, np.inf]))
    with pytest.raises(ValueError, match=r"one value per row \(2\); found 3"):
        best_f1(np.array([1, 0]), np.zeros(3))


@settings(max_examples=200, deadline=None)
@given(labels_and_scores)
def test_best_f1_equals_brute_force(pair: tuple[list[int], list[int | None]]) -> None:
    labels, scores = _arrays(pair)
    result = best_f1(labels, scores)
    assert result.f1 == pytest.approx(_brute_best_f1(labels, scores))
    if result.f1 > 0:
        flags = np.nan_to_num(scores, nan=-np.inf) >= result.threshold
        assert point_metrics(labels, flags).f1 == pytest.approx(result.f1)


# --------------------------------------------------------------------------- point adjustment


def test_point_adjust_by_hand() -> None:
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0])
    flags = np.array([1, 0, 1, 0, 0, 0, 0, 0])
    # segment (1, 3) has a flag at row 2 -> all of it; segment (5, 6) has none; row 0 stays
    adjusted = point_adjust(labels, flags)
    assert adjusted.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert flags.tolist() == [1, 0, 1, 0, 0, 0, 0, 0]  # input untouched


def test_best_point_adjusted_f1_by_hand() -> None:
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    scores = np.array([0.2, 0.1, 0.8, 0.3, 0.5, 0.1, 0.4, 0.1, 0.6, 0.0])
    # segment (1, 3) is detected from t <= 0.8 (3 rows), segment (6, 7) from t <= 0.4 (2 rows)
    # f1 = 2 tp / (tp + fp + 5)
    # t=0.8: tp 3 fp 0 -> 6/8 = 0.75    t=0.6: tp 3 fp 1 -> 6/9    t=0.5: tp 3 fp 2 -> 6/10
    # t=0.4: tp 5 fp 2 -> 10/12 = 0.833 <- best                    t=0.2: tp 5 fp 3 -> 10/13
    result = best_point_adjusted_f1(labels, scores)
    assert result.f1 == pytest.approx(10 / 12)
    assert result.precision == pytest.approx(5 / 7)
    assert result.recall == 1.0
    assert result.threshold == 0.4


def test_point_adjusted_segment_never_scored_is_missed() -> None:
    labels = np.array([1, 1, 0, 1])
    scores = np.array([np.nan, np.nan, 0.1, 0.9])
    # the NaN segment can never be detected: t=0.9 gives tp 1 fp 0 fn 2 -> 2/(1+0+3) = 0.5
    assert best_point_adjusted_f1(labels, scores).f1 == pytest.approx(0.5)


@settings(max_examples=200, deadline=None)
@given(labels_and_scores)
def test_best_point_adjusted_f1_equals_brute_force(
    pair: tuple[list[int], list[int | None]],
) -> None:
    labels, scores = _arrays(pair)
    expected = _brute_best_f1(labels, scores, adjust=True)
    assert best_point_adjusted_f1(labels, scores).f1 == pytest.approx(expected)


def test_best_point_adjusted_f1_is_fast_on_long_series() -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros(200_000, dtype=int)
    for start in range(1_000, 200_000, 2_000):
        labels[start : start + 50] = 1  # 100 segments of 50 rows
    scores = rng.random(labels.size)
    start = time.perf_counter()
    result = best_point_adjusted_f1(labels, scores)
    assert time.perf_counter() - start < 2.0  # one sort; a per-threshold loop takes minutes
    assert 0.0 < result.f1 <= 1.0


def test_random_point_adjusted_f1_is_high_on_long_segments() -> None:
    labels = np.zeros(10_000, dtype=int)
    for start in range(500, 10_000, 1000):
        labels[start : start + 100] = 1  # 10 segments of 100 rows, 10 % anomalous
    value = random_point_adjusted_f1(labels, seed=0)
    # Each segment almost surely holds a score above 0.98, which flags about 2 % of the 9000
    # normal rows: tp 1000 fp ~180 -> f1 ~ 2000 / 2180 ~ 0.92, a fine-looking random detector.
    assert value > 0.8
    assert value == random_point_adjusted_f1(labels, seed=0)
    assert value != random_point_adjusted_f1(labels, seed=1)


# --------------------------------------------------------------------------- AUC-PR and events


def test_auc_pr_by_hand() -> None:
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    # (recall, precision) at t = 0.9, 0.8, 0.7, 0.1: (.5, 1), (.5, .5), (1, 2/3), (1, .5)
    # AP = .5 * 1 + 0 * .5 + .5 * 2/3 + 0 * .5 = 5/6
    assert auc_pr(labels, scores) == pytest.approx(5 / 6)


def test_auc_pr_nan_anomaly_caps_recall() -> None:
    # the NaN anomaly is never reached: (recall, precision) = (.5, 1) at 0.9, (.5, .5) at 0.1
    # AP = .5 * 1 + 0 * .5 = 0.5
    assert auc_pr(np.array([1, 0, 1]), np.array([0.9, 0.1, np.nan])) == pytest.approx(0.5)
    assert auc_pr(np.array([0, 0]), np.array([0.9, 0.1])) == 0.0


@settings(max_examples=100, deadline=None)
@given(labels_and_scores)
def test_auc_pr_matches_sklearn(pair: tuple[list[int], list[int | None]]) -> None:
    from sklearn.metrics import average_precision_score

    labels, scores = _arrays(pair)
    scores = np.nan_to_num(scores, nan=0.5)
    if labels.sum() == 0:
        return  # undefined for scikit-learn (it warns); we return 0
    assert auc_pr(labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_event_recall_by_hand() -> None:
    labels = np.array([1, 1, 0, 1, 0, 1, 1])
    flags = np.array([0, 1, 0, 0, 1, 0, 1])
    # segments (0, 1), (3, 3), (5, 6); flagged: first and third; the flag at row 4 is outside
    assert event_recall(labels, flags) == pytest.approx(2 / 3)
    assert event_recall(np.zeros(3), np.ones(3)) == 0.0


# --------------------------------------------------------------------------- NAB, synthetic


def test_nab_file_score_by_hand() -> None:
    # 20 rows: probation floor(0.15 * 20) = 3 rows; one window (10, 13) of width 4.
    scores = np.zeros(20)
    scores[[1, 5, 11, 12, 15]] = 1.0
    raw = nab_file_raw_score(scores, [(10, 13)], 0.5, STANDARD)
    # row 1: probationary, ignored
    # row 5: before any window -> -0.11
    # rows 11, 12: only the earliest counts: S(-(13 - 11 + 1) / 4) / S(-1) = S(-0.75) / S(-1)
    # row 15: after the window: S(|13 - 15| / (4 - 1)) * 0.11 = S(2/3) * 0.11
    expected = -0.11 + _s(-0.75) / _s(-1.0) + _s(2 / 3) * 0.11
    assert raw == pytest.approx(expected)
    # S(-0.75) = 2 / (1 + e^-3.75) - 1 = 0.954045; S(-1) = 2 / (1 + e^-5) - 1 = 0.986614
    assert _s(-0.75) / _s(-1.0) == pytest.approx(0.954045 / 0.986614, abs=1e-6)


def test_nab_window_start_earns_full_credit_and_miss_costs_fn_weight() -> None:
    scores = np.zeros(20)
    scores[10] = 1.0  # first row of the window: S(-4/4) / S(-1) = 1
    assert nab_file_raw_score(scores, [(10, 13)], 0.5, STANDARD) == pytest.approx(1.0)
    assert nab_file_raw_score(np.zeros(20), [(10, 13)], 0.5, STANDARD) == -1.0
    fn_heavy = NAB_PROFILES["reward_low_FN_rate"]
    assert nab_file_raw_score(np.zeros(20), [(10, 13)], 0.5, fn_heavy) == -2.0


def test_nab_false_positive_cost_is_relative_to_last_window() -> None:
    scores = np.full(40, np.nan)  # NaN rows are never detections
    scores[30] = 1.0
    # last window before row 30 is (14, 16), width 3: S(|16 - 30| / 2) = S(7) -> -1 (y > 3)
    raw = nab_file_raw_score(scores, [(4, 9), (14, 16)], 0.5, STANDARD)
    assert raw == pytest.approx(-1.0 - 1.0 - 0.11)
    scores[30], scores[17] = np.nan, 1.0
    # S(|16 - 17| / 2) = S(0.5) = 2 / (1 + e^2.5) - 1 = -0.848, times 0.11
    raw = nab_file_raw_score(scores, [(4, 9), (14, 16)], 0.5, STANDARD)
    assert raw == pytest.approx(-2.0 + 0.11 * (2 / (1 + math.exp(2.5)) - 1))


def test_nab_corpus_normalises_between_null_and_perfect() -> None:
    a = NabFile("a", np.arange(20.0), [(10, 13)], 20)
    b = NabFile("b", np.arange(20.0), [(6, 7), (15, 18)], 20)
    perfect_a, perfect_b = np.zeros(20), np.zeros(20)
    perfect_a[10] = perfect_b[[6, 15]] = 1.0
    perfect = nab_corpus_score([(a, perfect_a), (b, perfect_b)], 0.5, STANDARD)
    assert (perfect.raw, perfect.normalized, perfect.tp, perfect.fp, perfect.fn) == (
        pytest.approx(3.0),
        pytest.approx(100.0),
        3,
        0,
        0,
    )
    null = nab_corpus_score([(a, np.zeros(20)), (b, np.zeros(20))], 0.5, STANDARD)
    assert (null.raw, null.normalized, null.fn) == (-3.0, 0.0, 3)
    # one hit at a window start (+1), two misses (-2), one FP before any window (-0.11):
    # raw = -1.11; normalised = 100 * (-1.11 + 3) / (3 + 3) = 31.5
    half = np.zeros(20)
    half[[4, 10]] = 1.0
    result = nab_corpus_score([(a, half), (b, np.zeros(20))], 0.5, STANDARD)
    assert result.raw == pytest.approx(-1.11)
    assert result.normalized == pytest.approx(31.5)
    assert (result.tp, result.fp, result.fn, result.threshold) == (1, 1, 2, 0.5)


@pytest.mark.parametrize("seed", range(25))
def test_nab_optimize_threshold_equals_exhaustive_search(seed: int) -> None:
    rng = np.random.default_rng(seed)
    files_scores = []
    for k in range(3):
        n = int(rng.integers(20, 80))
        starts = np.sort(
            rng.choice(np.arange(n // 2, n, 6), size=int(rng.integers(0, 3)), replace=False)
        )
        windows = [(int(s), int(min(s + rng.integers(0, 5), n - 1))) for s in starts]
        scores = np.round(rng.random(n), 1)  # coarse values: many ties
        scores[rng.random(n) < 0.1] = np.nan
        files_scores.append((NabFile(f"f{k}", np.arange(float(n)), windows, n), scores))
    if sum(len(f.windows) for f, _ in files_scores) == 0:
        files_scores[0] = (NabFile("f0", np.arange(20.0), [(15, 17)], 20), np.zeros(20))
    profile = list(NAB_PROFILES.values())[seed % 3]
    candidates = np.unique(np.concatenate([s[~np.isnan(s)] for _, s in files_scores]))
    exhaustive = max(
        nab_corpus_score(files_scores, float(t), profile).raw
        for t in [*candidates.tolist(), math.inf]
    )
    best = nab_optimize_threshold(files_scores, profile)
    assert best.raw == pytest.approx(exhaustive)
    assert nab_corpus_score(files_scores, best.threshold, profile).raw == pytest.approx(best.raw)


def test_nab_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match=r"sorted and disjoint; window 1 starts at 3"):
        NabFile("x", np.arange(10.0), [(2, 4), (3, 6)], 10)
    with pytest.raises(ValueError, match=r"0 <= start <= end < 10; found \(8, 10\)"):
        nab_file_raw_score(np.zeros(10), [(8, 10)], 0.5, STANDARD)
    with pytest.raises(ValueError, match=r"expected 10 timestamps \(n_rows\); found 9"):
        NabFile("x", np.arange(9.0), [], 10)
    f = NabFile("x", np.arange(10.0), [(5, 6)], 10)
    with pytest.raises(ValueError, match=r"scores of 'x' must have one value per row \(10\)"):
        nab_corpus_score([(f, np.zeros(9))], 0.5, STANDARD)
    with pytest.raises(ValueError, match="at least one labelled window"):
        nab_corpus_score([(NabFile("y", np.arange(10.0), [], 10), np.zeros(10))], 0.5, STANDARD)
    with pytest.raises(ValueError, match="fp_weight must be a positive number; found -1"):
        NabProfile(1.0, 1.0, -1)


def _write_nab_tree(root: Path, rows: list[str], windows: list[list[str]]) -> None:
    data = root / "nab" / "data" / "realAWSCloudwatch"
    data.mkdir(parents=True)
    (data / "m.csv").write_text("\n".join(["timestamp,value", *rows]) + "\n")
    (root / "nab" / "labels").mkdir()
    labels = {"realAWSCloudwatch/m.csv": windows}
    (root / "nab" / "labels" / "combined_windows.json").write_text(json.dumps(labels))


def test_load_nab_corpus_maps_window_timestamps_to_rows(tmp_path: Path) -> None:
    rows = [f"2014-02-14 14:{m:02d}:00,{m}.5" for m in range(0, 30, 5)]
    _write_nab_tree(tmp_path, rows, [["2014-02-14 14:10:00.000000", "2014-02-14 14:20:00.000000"]])
    (corpus_file,) = load_nab_corpus(tmp_path)
    assert (corpus_file.name, corpus_file.windows, corpus_file.n_rows) == ("m", [(2, 4)], 6)
    timestamps, values = load_nab_values(tmp_path, "m.csv")
    assert timestamps[1] == np.datetime64("2014-02-14T14:05:00")
    assert values.tolist() == [0.5, 5.5, 10.5, 15.5, 20.5, 25.5]


def test_load_nab_corpus_refuses_a_window_bound_not_in_the_file(tmp_path: Path) -> None:
    rows = [f"2014-02-14 14:{m:02d}:00,1" for m in range(0, 30, 5)]
    _write_nab_tree(tmp_path, rows, [["2014-02-14 14:11:00.000000", "2014-02-14 14:20:00"]])
    with pytest.raises(ValueError, match=r"'2014-02-14 14:11:00\.000000' of 'realAWSCloudwatch/m"):
        load_nab_corpus(tmp_path)


def test_load_nab_corpus_refuses_a_bad_header(tmp_path: Path) -> None:
    _write_nab_tree(tmp_path, ["x,1"], [])
    (tmp_path / "nab" / "data" / "realAWSCloudwatch" / "m.csv").write_text("time,v\nx,1\n")
    with pytest.raises(ValueError, match="expected the header 'timestamp,value'"):
        load_nab_corpus(tmp_path)


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def htm_corpus() -> list[tuple[NabFile, np.ndarray, np.ndarray]]:
    """The 17 realAWSCloudwatch files with HTM's anomaly_score and its raw CSV rows."""
    if not (DATA_DIR / "nab").is_dir():
        pytest.skip(f"NAB data not found at {DATA_DIR.resolve() / 'nab'}")
    out = []
    for nab_file in load_nab_corpus(DATA_DIR):
        path = NAB_RESULTS / f"numenta_{nab_file.name}.csv"
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        scores = np.array([float(r["anomaly_score"]) for r in rows])
        assert scores.size == nab_file.n_rows, path
        out.append((nab_file, scores, np.array(rows, dtype=object)))
    return out


def _htm_threshold(profile: str) -> float:
    config = json.loads((DATA_DIR / "nab" / "config" / "thresholds.json").read_text())
    return float(config["numenta"][profile]["threshold"])


@pytest.mark.data
def test_nab_corpus_loads_17_files_and_30_windows(htm_corpus: list) -> None:
    assert len(htm_corpus) == 17
    assert sum(len(f.windows) for f, _, _ in htm_corpus) == 30
    timestamps, values = load_nab_values(DATA_DIR, "ec2_cpu_utilization_24ae8d")
    assert timestamps.size == values.size == 4032


@pytest.mark.data
def test_nab_profiles_match_config() -> None:
    path = DATA_DIR / "nab" / "config" / "profiles.json"
    if not path.is_file():
        pytest.skip(f"NAB config not found at {path.resolve()}")
    for name, entry in json.loads(path.read_text()).items():
        cost = entry["CostMatrix"]
        expected = NabProfile(cost["tpWeight"], cost["fnWeight"], cost["fpWeight"])
        assert NAB_PROFILES[name] == expected


@pytest.mark.data
@pytest.mark.parametrize(
    ("profile", "expected"),
    [("standard", 73.4), ("reward_low_FP_rate", 65.8), ("reward_low_FN_rate", 76.7)],
)
def test_nab_reproduces_published_htm_score(
    htm_corpus: list, profile: str, expected: float
) -> None:
    files_scores = [(f, scores) for f, scores, _ in htm_corpus]
    result = nab_corpus_score(files_scores, _htm_threshold(profile), NAB_PROFILES[profile])
    assert result.normalized == pytest.approx(expected, abs=0.05)
    assert result.tp + result.fn == 30


@pytest.mark.data
@pytest.mark.parametrize("profile", list(NAB_PROFILES))
def test_nab_per_file_score_matches_numenta_s_t_column(htm_corpus: list, profile: str) -> None:
    # NAB's result files carry each row's S(t) at HTM's threshold; per file they sum to the
    # file's raw score (NAB books a window's credit or miss on its first row, so only sums agree).
    threshold = _htm_threshold(profile)
    for nab_file, scores, rows in htm_corpus:
        published = sum(float(r[f"S(t)_{profile}"]) for r in rows)
        ours = nab_file_raw_score(scores, nab_file.windows, threshold, NAB_PROFILES[profile])
        assert ours == pytest.approx(published, abs=1e-9), nab_file.name


@pytest.mark.data
@pytest.mark.parametrize("profile", list(NAB_PROFILES))
def test_nab_optimiser_finds_at_least_nabs_threshold(htm_corpus: list, profile: str) -> None:
    files_scores = [(f, scores) for f, scores, _ in htm_corpus]
    at_nab = nab_corpus_score(files_scores, _htm_threshold(profile), NAB_PROFILES[profile])
    start = time.perf_counter()
    best = nab_optimize_threshold(files_scores, NAB_PROFILES[profile])
    assert time.perf_counter() - start < 5.0
    assert best.raw >= at_nab.raw - 1e-9
    all_scores = np.concatenate([s for _, s in files_scores])
    for t in np.quantile(all_scores, np.linspace(0, 1, 101)):
        at_t = nab_corpus_score(files_scores, float(t), NAB_PROFILES[profile])
        assert at_t.raw <= best.raw + 1e-9


@pytest.mark.data
def test_random_point_adjusted_f1_on_smd_labels_is_high() -> None:
    label_dir = DATA_DIR / "smd" / "test_label"
    if not label_dir.is_dir():
        pytest.skip(f"SMD labels not found at {label_dir.resolve()}")
    labels = np.concatenate([np.loadtxt(p, dtype=int) for p in sorted(label_dir.glob("*.txt"))])
    # README: about 0.84 on all of SMD; these three machines pooled come close
    assert 0.75 < random_point_adjusted_f1(labels) < 0.95


def test_public_api_is_pinned() -> None:
    from lstmad import evaluation

    assert sorted(evaluation.__all__) == sorted(
        [
            "NAB_PROFILES", "BestF1", "NabFile", "NabProfile", "NabResult", "PointMetrics",
            "auc_pr", "best_f1", "best_point_adjusted_f1", "event_recall", "label_segments",
            "load_nab_corpus", "load_nab_values", "nab_corpus_score", "nab_file_raw_score",
            "nab_optimize_threshold", "point_adjust", "point_metrics", "random_point_adjusted_f1",
        ]
    )  # fmt: skip
