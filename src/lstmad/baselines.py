"""Baseline detectors with the LSTM detector's tiny API, for side-by-side backtests.

A detector that does not beat a simple baseline on the same data has shown nothing, so
every baseline here runs in the same harness as :class:`lstmad.detector.LSTMDetector`:

* ``fit(series, training, progress)`` takes the history of one or more entities as raw
  (rows, features) arrays, splits each chronologically like the LSTM does (the last
  ``training.validation_split`` is held out), fits a standard scaler and the model on the
  training part, and fits the threshold (:mod:`lstmad.threshold`, the same classes and
  configuration as the LSTM) on the smoothed errors of the held-out part;
* ``score(values)`` returns a :class:`~lstmad.detector.SeriesScores` for one entity, row by
  row and causally: per-feature errors smoothed by the same EWMA (span
  ``threshold.smoothing``), their mean as ``error``, and ``score = error / threshold``, so a
  score above 1 is anomalous exactly as for the LSTM.

Missing values follow the streaming engine: gaps of at most ``model.max_gap_steps`` rows
are bridged with the last value and not scored (nor are the k + 1 real rows after k bridged
ones), longer gaps restart the smoothing, and a missing row is never flagged.

The baselines:

* ``pca``: squared reconstruction error of each standard-scaled feature from the principal
  components that explain 95 % of the training variance (the strongest classic on SMD);
* ``isolation-forest``: scikit-learn's isolation forest on the scaled rows, error
  ``-score_samples`` (one value per row, so no per-feature errors);
* ``zscore``: each feature's squared z-score against the mean and standard deviation of
  its previous ``model.window`` rows (rolling and causal);
* ``random``: uniform random errors, the floor that any metric must be read against.

Example::

    det = make_detector("pca", ["cpu", "mem"]).fit([history])
    det.score(test).score          # (rows,), NaN where not scored, > 1 is anomalous
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from lstmad.config import ModelConfig, ThresholdConfig, TrainingConfig
from lstmad.detector import LSTMDetector, SeriesScores
from lstmad.errors import ConfigError, DataError, NotFittedError
from lstmad.preprocessing import StandardScaler, bridge_gaps
from lstmad.threshold import Threshold, threshold_from_config
from lstmad.training import ProgressFactory, no_progress

__all__ = [
    "DETECTORS",
    "BaselineDetector",
    "Detector",
    "IsolationForestDetector",
    "PCADetector",
    "RandomDetector",
    "ZScoreDetector",
    "make_detector",
]


@runtime_checkable
class Detector(Protocol):
    """What the backtest harness needs from a detector (the LSTM detector has it too)."""

    features: list[str]
    threshold: Threshold
    validation_errors: np.ndarray | None

    @property
    def window(self) -> int:
        """Rows of history needed before the first score."""
        ...

    @property
    def is_fitted(self) -> bool: ...

    def fit(
        self,
        series: Sequence[np.ndarray],
        training: TrainingConfig | None = None,
        progress: ProgressFactory = no_progress,
    ) -> Any: ...

    def score(self, values: np.ndarray) -> SeriesScores: ...


def _ewma_rows(errors: np.ndarray, alpha: float, scored: np.ndarray, reset: np.ndarray) -> np.ndarray:
    """Causal EWMA along rows, as the streaming engine smooths: NaN where ``scored`` is False.

    Unscored rows leave the average alone (a bridged gap); ``reset`` rows (a gap too long to
    bridge) forget it, so the next scored row starts afresh.
    """
    out = np.full(errors.shape, np.nan)
    acc = np.full(errors.shape[1], np.nan)
    for i in range(errors.shape[0]):
        if reset[i]:
            acc[:] = np.nan
        if scored[i]:
            x = errors[i]
            acc = np.where(np.isnan(acc), x, alpha * x + (1.0 - alpha) * acc)
            out[i] = acc
    return out


def _after_bridged_gaps(missing: np.ndarray, broken: np.ndarray) -> np.ndarray:
    """Rows the streaming engine leaves unscored after a bridge: k + 1 real rows after k bridged ones."""
    out = np.zeros(missing.shape[0], dtype=bool)
    gap = cool = 0
    for i in range(missing.shape[0]):
        if missing[i]:
            if broken[i]:
                gap = cool = 0  # a gap too long to bridge resets the entity
            else:
                gap += 1
            continue
        if gap:
            cool, gap = gap + 1, 0
        if cool:
            out[i] = True
            cool -= 1
    return out


class BaselineDetector:
    """Template: validation of inputs, gap handling, scaling, smoothing and threshold.

    Subclasses implement :meth:`_fit_core` on the scaled, gap-free training rows and
    :meth:`_raw_errors`, which maps scaled rows (bridged, ``NaN`` only in gaps too long to
    bridge) to per-row errors of shape (rows, features) or (rows, 1), ``NaN`` where a row
    cannot be scored yet.
    """

    name: ClassVar[str] = "baseline"
    smoothed: ClassVar[bool] = True

    def __init__(
        self,
        features: Sequence[str],
        model_cfg: ModelConfig | None = None,
        threshold_cfg: ThresholdConfig | None = None,
    ) -> None:
        if not features:
            raise DataError("expected at least one feature name, found none")
        self.features = list(features)
        self.model_cfg = model_cfg or ModelConfig()
        self.threshold_cfg = threshold_cfg or ThresholdConfig()
        self.scaler = StandardScaler()
        self.threshold: Threshold = threshold_from_config(self.threshold_cfg)
        self.validation_errors: np.ndarray | None = None
        self.seed = 0
        self._fitted = False

    @property
    def window(self) -> int:
        return 1

    @property
    def is_fitted(self) -> bool:
        return self._fitted and self.threshold.value is not None

    def _check_series(self, series: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, s in enumerate(series):
            arr = np.array(s, dtype=np.float64)  # a copy: the caller's array is never touched
            if arr.ndim != 2 or arr.shape[1] != len(self.features):
                raise DataError(f"series {i}: expected shape (rows, {len(self.features)}), found {arr.shape}")
            arr[~np.isfinite(arr)] = np.nan
            out.append(arr)
        if not out:
            raise DataError("expected at least one training series, found none")
        return out

    def fit(
        self,
        series: Sequence[np.ndarray],
        training: TrainingConfig | None = None,
        progress: ProgressFactory = no_progress,
    ) -> BaselineDetector:
        """Fit the scaler and model on the training parts, the threshold on the held-out parts."""
        cfg = training or TrainingConfig()
        self.seed = cfg.seed
        data = [bridge_gaps(s, self.model_cfg.max_gap_steps) for s in self._check_series(series)]
        split = [round(s.shape[0] * (1.0 - cfg.validation_split)) for s in data]
        train_parts = [s[:k] for s, k in zip(data, split, strict=True)]
        train_rows = np.concatenate(train_parts)
        self.scaler.fit(train_rows, self.features)
        clean = self.scaler.transform(train_rows).astype(np.float64)
        clean = clean[np.isfinite(clean).all(axis=1)]
        if clean.shape[0] < max(self.window + 1, 2):
            raise DataError(
                f"expected at least {max(self.window + 1, 2)} complete training rows, found {clean.shape[0]}"
            )
        bar = progress(1, f"fit {self.name}")
        self._fit_core(clean, [self.scaler.transform(p).astype(np.float64) for p in train_parts])
        bar.update(1)
        bar.close()
        self._fitted = True
        w = self.window
        errors = np.concatenate(
            [self._errors(s[max(k - w, 0) :])[min(w, k) :] for s, k in zip(data, split, strict=True)]
        )
        errors = errors[np.isfinite(errors)]
        if errors.size < 10:
            errors = np.concatenate([self._errors(s) for s in data])
            errors = errors[np.isfinite(errors)]
        self.validation_errors = errors
        self.threshold = threshold_from_config(self.threshold_cfg).fit(errors)
        return self

    def _fit_core(self, rows: np.ndarray, parts: list[np.ndarray]) -> None:
        """Fit on ``rows`` (scaled, complete) or on ``parts`` (scaled series, with gaps)."""
        raise NotImplementedError

    def _raw_errors(self, scaled: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _smoothed(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(smoothed per-feature errors, raw per-row errors) of raw values, as the engine scores."""
        missing = np.isnan(values).any(axis=1)
        bridged = bridge_gaps(values, self.model_cfg.max_gap_steps)
        broken = np.isnan(bridged).any(axis=1)
        raw = self._raw_errors(self.scaler.transform(bridged).astype(np.float64))
        scored = ~missing & ~_after_bridged_gaps(missing, broken) & np.isfinite(raw).all(axis=1)
        span = self.threshold_cfg.smoothing if self.smoothed else 1
        smooth = _ewma_rows(raw, 2.0 / (span + 1.0), scored, broken)
        raw_row = np.where(scored, raw.mean(axis=1), np.nan)
        return smooth, raw_row

    def _errors(self, values: np.ndarray) -> np.ndarray:
        return self._smoothed(values)[0].mean(axis=1)

    def score(self, values: np.ndarray) -> SeriesScores:
        """Score one entity's (rows, features) raw values; ``NaN`` where a row is not scored."""
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() first")
        (arr,) = self._check_series([values])
        smooth, raw_row = self._smoothed(arr)
        error = smooth.mean(axis=1)
        if smooth.shape[1] == len(self.features):
            feature_errors = smooth
        else:
            feature_errors = np.full((arr.shape[0], len(self.features)), np.nan)
        return SeriesScores(
            error=error,
            feature_errors=feature_errors,
            score=error / self.threshold.fitted_value,
            raw_error=raw_row,
        )


class PCADetector(BaselineDetector):
    """Squared reconstruction error of each scaled feature from the main principal components."""

    name = "pca"

    def __init__(
        self,
        features: Sequence[str],
        model_cfg: ModelConfig | None = None,
        threshold_cfg: ThresholdConfig | None = None,
        *,
        variance: float = 0.95,
    ) -> None:
        super().__init__(features, model_cfg, threshold_cfg)
        if not 0.0 < variance <= 1.0:
            raise ConfigError(f"expected a fraction of variance in (0, 1], found {variance}", "variance")
        self.variance = variance
        self.components: np.ndarray | None = None
        self.center: np.ndarray | None = None

    def _fit_core(self, rows: np.ndarray, parts: list[np.ndarray]) -> None:
        self.center = rows.mean(axis=0)
        _, sing, vt = np.linalg.svd(rows - self.center, full_matrices=False)
        var = sing**2
        total = var.sum()
        k = 0 if total <= 0 else int(np.searchsorted(np.cumsum(var) / total, self.variance - 1e-12) + 1)
        self.components = vt[: min(k, vt.shape[0])]

    def _raw_errors(self, scaled: np.ndarray) -> np.ndarray:
        assert self.components is not None and self.center is not None
        centred = scaled - self.center
        recon = (centred @ self.components.T) @ self.components
        return (centred - recon) ** 2


class IsolationForestDetector(BaselineDetector):
    """scikit-learn's isolation forest on the scaled rows; error is ``-score_samples``."""

    name = "isolation-forest"

    def __init__(
        self,
        features: Sequence[str],
        model_cfg: ModelConfig | None = None,
        threshold_cfg: ThresholdConfig | None = None,
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
    ) -> None:
        super().__init__(features, model_cfg, threshold_cfg)
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.forest: Any = None

    def _fit_core(self, rows: np.ndarray, parts: list[np.ndarray]) -> None:
        from sklearn.ensemble import IsolationForest

        self.forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=min(self.max_samples, rows.shape[0]),
            random_state=self.seed,
            n_jobs=1,
        ).fit(rows)

    def _raw_errors(self, scaled: np.ndarray) -> np.ndarray:
        out = np.full((scaled.shape[0], 1), np.nan)
        ok = np.isfinite(scaled).all(axis=1)
        if ok.any():
            out[ok, 0] = -self.forest.score_samples(scaled[ok])
        return out


class ZScoreDetector(BaselineDetector):
    """Each feature's squared z-score against its previous ``model.window`` rows.

    The rolling standard deviation is floored at ``min_std`` (in units of the training
    standard deviation), so that a feature flat for a window does not turn the smallest
    change into an infinite score.
    """

    name = "zscore"

    def __init__(
        self,
        features: Sequence[str],
        model_cfg: ModelConfig | None = None,
        threshold_cfg: ThresholdConfig | None = None,
        *,
        min_std: float = 0.1,
    ) -> None:
        super().__init__(features, model_cfg, threshold_cfg)
        self.min_std = min_std

    @property
    def window(self) -> int:
        return self.model_cfg.window

    def _fit_core(self, rows: np.ndarray, parts: list[np.ndarray]) -> None:
        """Nothing to learn beyond the scaler: the statistics are rolling."""

    def _raw_errors(self, scaled: np.ndarray) -> np.ndarray:
        w = self.window
        n = scaled.shape[0]
        ok = np.isfinite(scaled)
        x = np.where(ok, scaled, 0.0)
        zeros = np.zeros((1, x.shape[1]))
        s1 = np.concatenate([zeros, np.cumsum(x, axis=0)])
        s2 = np.concatenate([zeros, np.cumsum(x * x, axis=0)])
        cnt = np.concatenate([zeros, np.cumsum(ok, axis=0, dtype=np.float64)])
        out = np.full(scaled.shape, np.nan)
        if n <= w:
            return out
        hi = np.arange(w, n)  # row t uses rows t - w .. t - 1
        lo = hi - w
        count = cnt[hi] - cnt[lo]
        mean = (s1[hi] - s1[lo]) / w
        var = np.maximum((s2[hi] - s2[lo]) / w - mean**2, 0.0)
        std = np.maximum(np.sqrt(var), self.min_std)
        z2 = ((scaled[w:] - mean) / std) ** 2
        out[w:] = np.where(count == w, z2, np.nan)
        return out


class RandomDetector(BaselineDetector):
    """Uniform random errors: the reference that every metric must beat."""

    name = "random"
    smoothed = False

    def _fit_core(self, rows: np.ndarray, parts: list[np.ndarray]) -> None:
        """Nothing to learn."""

    def _raw_errors(self, scaled: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, scaled.shape[0]])
        return rng.random((scaled.shape[0], 1))


_BASELINES: dict[str, type[BaselineDetector]] = {
    cls.name: cls for cls in (PCADetector, IsolationForestDetector, ZScoreDetector, RandomDetector)
}
DETECTORS: tuple[str, ...] = ("lstm", *_BASELINES)
"""Every name that ``--detector`` accepts, the LSTM first."""


def make_detector(
    name: str,
    features: Sequence[str],
    model_cfg: ModelConfig | None = None,
    threshold_cfg: ThresholdConfig | None = None,
) -> Detector:
    """A new, unfitted detector by name (one of :data:`DETECTORS`)."""
    if name == "lstm":
        return LSTMDetector(features, model_cfg, threshold_cfg)
    try:
        cls = _BASELINES[name]
    except KeyError:
        raise ConfigError(f"expected one of {', '.join(DETECTORS)}, found {name!r}", "--detector") from None
    return cls(features, model_cfg, threshold_cfg)
