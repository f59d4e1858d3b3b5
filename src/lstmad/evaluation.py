"""Scoring a detector against labelled data: point-wise, point-adjusted, event-wise and NAB.

The metrics live here, apart from any detector, so every number in the docs is produced by the
same code whatever produced the scores. Everything works on numpy arrays and is vectorised:
one sort per threshold sweep, never one pass per threshold.

Conventions shared by every function:

* ``labels`` and ``flags`` are 1-D arrays of 0/1 (bool, int or float holding only 0 and 1).
* ``scores`` are 1-D float arrays; a row is flagged at threshold ``t`` when ``score >= t``.
* A NaN score means "not scored" (warm-up rows, gaps). It ranks below every real score and is
  never flagged at any threshold, so a labelled row with a NaN score can only be a miss.
  Infinite scores are rejected, so that ``threshold = inf`` can mean "flag nothing".
* A ratio whose denominator is zero (precision with no flags, recall with no anomalies) is 0.

Point adjustment (Xu et al., 2018) credits a whole labelled segment as soon as one of its rows
is flagged. It inflates F1 so much that uniform random scores reach about 0.84 on SMD, which
is why :func:`random_point_adjusted_f1` exists: a point-adjusted figure means little without
that reference next to it.

The NAB part reproduces the Numenta Anomaly Benchmark v1.1 scorer (``nab/sweeper.py``): the
probationary period, the scaled sigmoid, one credit per window for its earliest detection,
false positives discounted by their distance after the last window, and the normalisation
between the null and the perfect detector. :func:`nab_optimize_threshold` sweeps every
distinct score of the corpus exactly, as NAB's optimiser does, so it finds NAB's optimum.

Example::

    >>> import numpy as np
    >>> labels = np.array([0, 1, 1, 0, 0])
    >>> scores = np.array([0.1, 0.9, 0.2, 0.3, np.nan])  # the NaN row is never flagged
    >>> best_f1(labels, scores).f1  # flag >= 0.2: tp 2, fp 1, fn 0
    0.8
    >>> best_point_adjusted_f1(labels, scores).f1  # flag >= 0.9: the 0.9 credits both rows
    1.0
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "NAB_PROFILES",
    "BestF1",
    "NabFile",
    "NabProfile",
    "NabResult",
    "PointMetrics",
    "auc_pr",
    "best_f1",
    "best_point_adjusted_f1",
    "event_recall",
    "label_segments",
    "load_nab_corpus",
    "load_nab_values",
    "nab_corpus_score",
    "nab_file_raw_score",
    "nab_optimize_threshold",
    "point_adjust",
    "point_metrics",
    "random_point_adjusted_f1",
]


@dataclass(frozen=True)
class PointMetrics:
    """Precision, recall and F1 of a set of 0/1 decisions, counted row by row."""

    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class BestF1:
    """The best F1 over all thresholds and where it was reached.

    ``threshold`` is the decision rule ``score >= threshold`` that reaches ``f1``; it is
    ``inf`` (flag nothing) when no threshold gives a positive F1.
    """

    f1: float
    precision: float
    recall: float
    threshold: float


# --------------------------------------------------------------------------- validation


def _as_binary(values: npt.ArrayLike, name: str, n: int | None = None) -> npt.NDArray[np.bool_]:
    """A 1-D 0/1 array as bool, or a ValueError naming the first offending row."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array; found shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must have the same length as labels ({n}); found {arr.shape[0]}")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must hold 0/1 numbers; found dtype {arr.dtype}")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        found = arr[row].item()
        raise ValueError(f"{name} must contain only 0 and 1; found {found!r} at row {row}")
    return arr == 1


def _as_scores(scores: npt.ArrayLike, n: int, name: str = "scores") -> npt.NDArray[np.float64]:
    """A 1-D float array of length ``n``; NaN allowed (not scored), infinities refused."""
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array; found shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have one value per row ({n}); found {arr.shape[0]}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric; found dtype {arr.dtype}")
    out = arr.astype(np.float64)
    inf = np.isinf(out)
    if inf.any():
        row = int(np.flatnonzero(inf)[0])
        raise ValueError(
            f"{name} must be finite or NaN (not scored); found {out[row]} at row {row}"
        )
    return out


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


# --------------------------------------------------------------------------- point-wise metrics


def label_segments(labels: npt.ArrayLike) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` row ranges of the runs of 1 in ``labels``.

    Segments are the unit of event-wise metrics and of point adjustment.

    >>> label_segments([0, 1, 1, 0, 1])
    [(1, 2), (4, 4)]
    """
    return _segments(_as_binary(labels, "labels"))


def _segments(positive: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate(([0], positive.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def point_metrics(labels: npt.ArrayLike, flags: npt.ArrayLike) -> PointMetrics:
    """Row-wise precision, recall and F1 of 0/1 ``flags`` against 0/1 ``labels``.

    A ratio with a zero denominator is 0, so a detector that flags nothing scores 0, not NaN.
    """
    positive = _as_binary(labels, "labels")
    flagged = _as_binary(flags, "flags", positive.shape[0])
    tp = int(np.count_nonzero(positive & flagged))
    precision = _ratio(tp, int(np.count_nonzero(flagged)))
    recall = _ratio(tp, int(np.count_nonzero(positive)))
    return PointMetrics(precision, recall, _ratio(2 * precision * recall, precision + recall))


def _sweep(
    positive: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Cumulative (threshold, tp, fp) at every distinct non-NaN score, highest first.

    One stable sort, then cumulative sums; rows that tie on a score enter together, which is
    what ``score >= threshold`` means.
    """
    scored = ~np.isnan(scores)
    s = scores[scored]
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(positive[scored][order], dtype=np.int64)
    fp = np.arange(1, s_sorted.size + 1, dtype=np.int64) - tp
    last = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], s.size > 0))
    return s_sorted[last], tp[last], fp[last]


def _best_f1(positive: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]) -> BestF1:
    n_pos = int(np.count_nonzero(positive))
    thresholds, tp, fp = _sweep(positive, scores)
    if n_pos == 0 or not np.any(tp):
        return BestF1(0.0, 0.0, 0.0, math.inf)
    f1 = 2.0 * tp / (tp + fp + n_pos)
    k = int(np.argmax(f1))
    return BestF1(
        f1=float(f1[k]),
        precision=_ratio(int(tp[k]), int(tp[k] + fp[k])),
        recall=_ratio(int(tp[k]), n_pos),
        threshold=float(thresholds[k]),
    )


def best_f1(labels: npt.ArrayLike, scores: npt.ArrayLike) -> BestF1:
    """The best row-wise F1 over every threshold, in O(n log n).

    This is the "best F1" of the SMD literature: an upper bound on what any threshold could
    reach, useful to compare scorers independently of how a threshold is fitted. Among equal
    F1 values the highest threshold wins. NaN scores are never flagged, so anomalies that were
    not scored count as misses.
    """
    positive = _as_binary(labels, "labels")
    return _best_f1(positive, _as_scores(scores, positive.shape[0]))


def _segment_ids(positive: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.int64], int]:
    """For each row the index of its labelled segment (meaningful only where positive)."""
    starts = positive & ~np.concatenate(([False], positive[:-1]))
    return np.cumsum(starts, dtype=np.int64) - 1, int(np.count_nonzero(starts))


def point_adjust(labels: npt.ArrayLike, flags: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Flags after the standard point adjustment, as a new 0/1 ``int8`` array.

    If any row of a labelled segment is flagged, every row of that segment becomes flagged;
    rows outside segments keep their flag. This is the protocol behind most published
    point-adjusted F1 figures (and the reason they are inflated).
    """
    positive = _as_binary(labels, "labels")
    flagged = _as_binary(flags, "flags", positive.shape[0])
    seg, n_seg = _segment_ids(positive)
    hit = np.zeros(n_seg, dtype=bool)
    hit[seg[positive & flagged]] = True
    out = flagged.copy()
    out[positive] = hit[seg[positive]]
    return out.astype(np.int8)


def _point_adjusted_scores(
    positive: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Scores where every row of a segment carries the segment's highest score.

    At any threshold, flagging these scores gives exactly the point-adjusted flags of the
    original ones, so the best point-adjusted F1 is a plain best F1 on them.
    """
    seg, n_seg = _segment_ids(positive)
    seg_max = np.full(n_seg, -np.inf)
    inside = positive & ~np.isnan(scores)
    np.maximum.at(seg_max, seg[inside], scores[inside])
    seg_max[np.isneginf(seg_max)] = np.nan  # a segment never scored is never detected
    out = scores.copy()
    out[positive] = seg_max[seg[positive]]
    return out


def best_point_adjusted_f1(labels: npt.ArrayLike, scores: npt.ArrayLike) -> BestF1:
    """The best F1 over every threshold after point adjustment, in O(n log n).

    A segment becomes fully detected once the threshold falls to its highest score, so each
    segment's rows are given that maximum and one threshold sweep does the rest. Report it
    next to :func:`random_point_adjusted_f1` on the same labels.
    """
    positive = _as_binary(labels, "labels")
    scores_arr = _as_scores(scores, positive.shape[0])
    return _best_f1(positive, _point_adjusted_scores(positive, scores_arr))


def random_point_adjusted_f1(labels: npt.ArrayLike, seed: int = 0) -> float:
    """Best point-adjusted F1 reached by uniform random scores on the same labels.

    The honest reference for any point-adjusted figure: on SMD's labels it is about 0.84, so
    a detector at 0.85 point-adjusted has shown nothing. Deterministic for a given ``seed``.
    """
    positive = _as_binary(labels, "labels")
    rng = np.random.default_rng(seed)
    random_scores = np.asarray(rng.random(positive.shape[0]), dtype=np.float64)
    return _best_f1(positive, _point_adjusted_scores(positive, random_scores)).f1


def auc_pr(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision: the step-wise area under the precision-recall curve.

    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct scores from the highest down, the same
    estimator as scikit-learn's ``average_precision_score`` (no interpolation). It needs no
    threshold, which makes it the fairest single number to compare scorers. NaN-scored
    anomalies are never reached, so the curve stops short of recall 1 and the area is
    smaller; with no anomalies the result is 0.
    """
    positive = _as_binary(labels, "labels")
    scores_arr = _as_scores(scores, positive.shape[0])
    n_pos = int(np.count_nonzero(positive))
    _, tp, fp = _sweep(positive, scores_arr)
    if n_pos == 0 or tp.size == 0:
        return 0.0
    recall = tp / n_pos
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def event_recall(labels: npt.ArrayLike, flags: npt.ArrayLike) -> float:
    """The share of labelled segments with at least one flagged row.

    What an operator feels: was the incident noticed at all. 0 when there are no segments.
    """
    positive = _as_binary(labels, "labels")
    flagged = _as_binary(flags, "flags", positive.shape[0])
    seg, n_seg = _segment_ids(positive)
    if n_seg == 0:
        return 0.0
    return float(np.unique(seg[positive & flagged]).size) / n_seg


# --------------------------------------------------------------------------- NAB


@dataclass(frozen=True)
class NabProfile:
    """The weights of one NAB application profile (``config/profiles.json``)."""

    tp_weight: float
    fn_weight: float
    fp_weight: float

    def __post_init__(self) -> None:
        for name in ("tp_weight", "fn_weight", "fp_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"NabProfile.{name} must be a positive number; found {value!r}")


NAB_PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile(tp_weight=1.0, fn_weight=1.0, fp_weight=0.11),
    "reward_low_FP_rate": NabProfile(tp_weight=1.0, fn_weight=1.0, fp_weight=0.22),
    "reward_low_FN_rate": NabProfile(tp_weight=1.0, fn_weight=2.0, fp_weight=0.11),
}


def _check_windows(windows: Sequence[tuple[int, int]], n_rows: int, where: str) -> None:
    """Windows must be inclusive row ranges inside the file, sorted and disjoint."""
    prev_end = -1
    for k, window in enumerate(windows):
        if len(window) != 2:
            raise ValueError(f"{where}: window {k} must be a (start, end) pair; found {window!r}")
        start, end = window
        if not (0 <= start <= end < n_rows):
            raise ValueError(
                f"{where}: window {k} must satisfy 0 <= start <= end < {n_rows}; "
                f"found ({start}, {end})"
            )
        if start <= prev_end:
            raise ValueError(
                f"{where}: windows must be sorted and disjoint; window {k} starts at {start}, "
                f"at or before the previous end {prev_end}"
            )
        prev_end = end


@dataclass(frozen=True, eq=False)
class NabFile:
    """One NAB data file and its labelled windows, as inclusive row ranges."""

    name: str
    timestamps: npt.NDArray[np.datetime64] | npt.NDArray[np.float64]
    windows: list[tuple[int, int]]
    n_rows: int

    def __post_init__(self) -> None:
        if len(self.timestamps) != self.n_rows:
            raise ValueError(
                f"NabFile {self.name!r}: expected {self.n_rows} timestamps (n_rows); "
                f"found {len(self.timestamps)}"
            )
        _check_windows(self.windows, self.n_rows, f"NabFile {self.name!r}")


@dataclass(frozen=True)
class NabResult:
    """A NAB score over a corpus at one threshold.

    ``raw`` is the sum of the per-file scores, ``normalized`` puts it on NAB's 0 (null
    detector) to 100 (perfect detector) scale; ``tp``/``fn`` count windows, ``fp`` counts
    detected rows outside every window (after the probationary period).
    """

    raw: float
    normalized: float
    tp: int
    fp: int
    fn: int
    threshold: float


def _probationary_rows(n_rows: int) -> int:
    """NAB leaves the first 15 % of a file (at most 750 rows) for the detector to learn."""
    return min(math.floor(0.15 * n_rows), 750)


def _scaled_sigmoid(y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """NAB's ``2 / (1 + exp(5 y)) - 1``, forced to -1 beyond ``y = 3``."""
    value = 2.0 / (1.0 + np.exp(5.0 * np.minimum(y, 4.0))) - 1.0
    return np.where(y > 3.0, -1.0, value)


_OUTSIDE = -1
_PROBATION = -2


def _nab_rows(
    n_rows: int, windows: Sequence[tuple[int, int]], profile: NabProfile
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """What a detection at each row is worth, and which window (or none) the row is in.

    Returns ``(weight, window)``: ``window`` is the window index, ``_OUTSIDE`` for a row in
    no window and ``_PROBATION`` for an unscored row. Inside a window the weight is the
    true-positive credit ``S(-(r - i + 1) / w) * tp / S(-1)``; outside it is the (negative)
    false-positive cost, which shrinks close after the previous window.
    """
    weight = np.full(n_rows, -profile.fp_weight)  # before any window: full cost
    window = np.full(n_rows, _OUTSIDE, dtype=np.int64)
    s_minus_one = float(_scaled_sigmoid(np.array(-1.0)))
    for k, (start, end) in enumerate(windows):
        width = end - start + 1
        rows = np.arange(start, end + 1)
        weight[start : end + 1] = (
            _scaled_sigmoid(-(end - rows + 1) / width) * profile.tp_weight / s_minus_one
        )
        window[start : end + 1] = k
        after_end = windows[k + 1][0] if k + 1 < len(windows) else n_rows
        after = np.arange(end + 1, after_end)
        if width > 1:
            weight[end + 1 : after_end] = (
                _scaled_sigmoid(np.abs(end - after) / (width - 1)) * profile.fp_weight
            )
        # NAB divides by (width - 1) and crashes on a one-row window; count the full cost.
    window[: _probationary_rows(n_rows)] = _PROBATION
    return weight, window


def _nab_file_score(
    scores: npt.NDArray[np.float64],
    windows: Sequence[tuple[int, int]],
    threshold: float,
    profile: NabProfile,
) -> tuple[float, int, int, int]:
    """(raw score, detected windows, false-positive rows, missed windows) of one file."""
    weight, window = _nab_rows(scores.shape[0], windows, profile)
    detected = ~np.isnan(scores) & (np.nan_to_num(scores, nan=-np.inf) >= threshold)
    detected &= window != _PROBATION
    false_pos = detected & (window == _OUTSIDE)
    best = np.full(len(windows), -profile.fn_weight)
    in_window = detected & (window >= 0)
    # Credits fall along a window, so the best credit is the earliest detection's.
    np.maximum.at(best, window[in_window], weight[in_window])
    n_tp = int(np.unique(window[in_window]).size)
    raw = float(weight[false_pos].sum() + best.sum())
    return raw, n_tp, int(np.count_nonzero(false_pos)), len(windows) - n_tp


def nab_file_raw_score(
    scores: npt.ArrayLike,
    windows: Sequence[tuple[int, int]],
    threshold: float,
    profile: NabProfile,
) -> float:
    """NAB's raw score of one file: a row is a detection when ``score >= threshold``.

    ``windows`` are inclusive row ranges; the first ``min(floor(0.15 n), 750)`` rows are the
    probationary period and never count. NaN scores are never detections.
    """
    arr = np.asarray(scores)
    scores_arr = _as_scores(arr, arr.shape[0] if arr.ndim else 0)
    _check_windows(windows, scores_arr.shape[0], "nab_file_raw_score")
    if math.isnan(threshold):
        raise ValueError("threshold must be a number; found NaN")
    return _nab_file_score(scores_arr, windows, threshold, profile)[0]


def _checked_corpus(
    files_scores: Sequence[tuple[NabFile, npt.ArrayLike]],
) -> list[tuple[NabFile, npt.NDArray[np.float64]]]:
    if not files_scores:
        raise ValueError("files_scores must hold at least one (NabFile, scores) pair; found none")
    checked = [(f, _as_scores(s, f.n_rows, f"scores of {f.name!r}")) for f, s in files_scores]
    if sum(len(f.windows) for f, _ in checked) == 0:
        raise ValueError(
            "the corpus must contain at least one labelled window; found none, "
            "so the normalised NAB score is undefined"
        )
    return checked


def _normalize(raw: float, n_windows: int, profile: NabProfile) -> float:
    """NAB's 0-100 scale: the null detector (all windows missed) scores 0, perfect 100."""
    perfect = profile.tp_weight * n_windows
    null = -profile.fn_weight * n_windows
    return 100.0 * (raw - null) / (perfect - null)


def nab_corpus_score(
    files_scores: Sequence[tuple[NabFile, npt.ArrayLike]],
    threshold: float,
    profile: NabProfile,
) -> NabResult:
    """NAB's score of a corpus at one threshold, raw and normalised over all its windows."""
    if math.isnan(threshold):
        raise ValueError("threshold must be a number; found NaN")
    checked = _checked_corpus(files_scores)
    raw, tp, fp, fn = 0.0, 0, 0, 0
    for nab_file, scores in checked:
        f_raw, f_tp, f_fp, f_fn = _nab_file_score(scores, nab_file.windows, threshold, profile)
        raw, tp, fp, fn = raw + f_raw, tp + f_tp, fp + f_fp, fn + f_fn
    return NabResult(raw, _normalize(raw, tp + fn, profile), tp, fp, fn, float(threshold))


def nab_optimize_threshold(
    files_scores: Sequence[tuple[NabFile, npt.ArrayLike]],
    profile: NabProfile,
) -> NabResult:
    """The corpus score at the one threshold that maximises NAB's raw score.

    Exhaustive, like NAB's own sweep: every distinct score is a candidate. Lowering the
    threshold adds false-positive costs row by row, and moves a window's credit only when a
    new running maximum appears inside it (an earlier row becomes the first detection), so
    the whole sweep is a sum of sorted events, O(n log n). Ties go to the highest threshold.
    ``threshold`` is ``inf`` when flagging nothing is best.
    """
    checked = _checked_corpus(files_scores)
    event_thresholds: list[npt.NDArray[np.float64]] = []
    event_deltas: list[npt.NDArray[np.float64]] = []
    n_windows = 0
    for nab_file, scores in checked:
        weight, window = _nab_rows(nab_file.n_rows, nab_file.windows, profile)
        scored = ~np.isnan(scores)
        outside = scored & (window == _OUTSIDE)
        event_thresholds.append(scores[outside])
        event_deltas.append(weight[outside])
        for k in range(len(nab_file.windows)):
            rows = np.flatnonzero(scored & (window == k))
            if rows.size == 0:
                continue
            s = scores[rows]
            running_max = np.maximum.accumulate(s)
            is_record = np.append(True, running_max[1:] > running_max[:-1])
            record_scores, record_credits = s[is_record], weight[rows][is_record]
            # At the highest record the window turns from a miss into a hit; each lower
            # record moves the first detection earlier, to a larger credit.
            deltas = np.append(record_credits[:-1] - record_credits[1:], 0.0)
            deltas[-1] = record_credits[-1] + profile.fn_weight
            event_thresholds.append(record_scores)
            event_deltas.append(deltas)
        n_windows += len(nab_file.windows)

    thresholds = np.concatenate(event_thresholds)
    deltas = np.concatenate(event_deltas)
    best_threshold = math.inf
    if thresholds.size:
        order = np.argsort(-thresholds, kind="stable")
        thr_sorted = thresholds[order]
        totals = np.cumsum(deltas[order])
        last = np.flatnonzero(np.append(thr_sorted[1:] != thr_sorted[:-1], True))
        k = int(np.argmax(totals[last]))
        if totals[last][k] > 0.0:
            best_threshold = float(thr_sorted[last][k])
    return nab_corpus_score(checked, best_threshold, profile)


# --------------------------------------------------------------------------- NAB loading


def _read_nab_csv(path: Path) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64]]:
    """Timestamps (``datetime64[s]``) and values of one NAB ``timestamp,value`` file."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected the header 'timestamp,value'; found {header!r}")
        rows = list(reader)
    try:
        timestamps = np.array([r[0].replace(" ", "T") for r in rows], dtype="datetime64[s]")
        values = np.array([float(r[1]) for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: expected rows of 'YYYY-MM-DD HH:MM:SS,float'; {err}") from err
    return timestamps, values


def _nab_file_path(data_dir: Path, name: str, category: str) -> Path:
    stem = name.removesuffix(".csv").removeprefix(f"{category}/")
    return Path(data_dir) / "nab" / "data" / category / f"{stem}.csv"


def _row_of(row_of: dict[int, int], stamp: str, key: str, path: Path) -> int:
    """The row of a window bound such as ``'2014-02-26 13:45:00.000000'``."""
    try:
        micros = int(np.datetime64(stamp.replace(" ", "T"), "us").astype(np.int64))
    except ValueError as err:
        raise ValueError(f"window bound {stamp!r} of {key!r} is not a timestamp: {err}") from err
    second, rest = divmod(micros, 1_000_000)
    if rest or second not in row_of:
        raise ValueError(
            f"window bound {stamp!r} of {key!r} must be a timestamp of {path}; found no such row"
        )
    return row_of[second]


def load_nab_values(
    data_dir: Path, name: str, category: str = "realAWSCloudwatch"
) -> tuple[npt.NDArray[np.datetime64], npt.NDArray[np.float64]]:
    """The timestamps and values of one NAB file, for a detector to score.

    ``name`` is a :attr:`NabFile.name` such as ``"ec2_cpu_utilization_24ae8d"`` (a ``.csv``
    suffix is accepted); ``data_dir`` is the folder that holds ``nab/``.
    """
    path = _nab_file_path(data_dir, name, category)
    if not path.is_file():
        raise FileNotFoundError(f"no NAB data file for {name!r}: expected {path}")
    return _read_nab_csv(path)


def load_nab_corpus(data_dir: Path, category: str = "realAWSCloudwatch") -> list[NabFile]:
    """Every file of one NAB category with its windows mapped to row indices, sorted by name.

    Windows come from ``nab/labels/combined_windows.json`` as timestamps that appear in the
    file; a timestamp that does not is an error rather than a silent shift of the window.
    """
    nab_dir = Path(data_dir) / "nab"
    labels_path = nab_dir / "labels" / "combined_windows.json"
    data_paths = sorted((nab_dir / "data" / category).glob("*.csv"))
    if not data_paths:
        raise FileNotFoundError(f"no NAB data files: expected {nab_dir / 'data' / category}/*.csv")
    try:
        all_windows = json.loads(labels_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{labels_path}: not valid JSON: {err}") from err
    corpus = []
    for path in data_paths:
        key = f"{category}/{path.name}"
        if key not in all_windows:
            raise ValueError(f"{labels_path}: expected windows for {key!r}; found no such key")
        timestamps, _ = _read_nab_csv(path)
        row_of: dict[int, int] = {}
        for row, second in enumerate(timestamps.astype(np.int64).tolist()):
            row_of.setdefault(second, row)  # NAB takes the first match (list.index)
        windows = [
            (_row_of(row_of, start, key, path), _row_of(row_of, end, key, path))
            for start, end in all_windows[key]
        ]
        corpus.append(NabFile(path.stem, timestamps, windows, len(timestamps)))
    return corpus
