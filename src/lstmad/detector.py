"""The LSTM detector: one fixed training pipeline and a score over numpy arrays.

Training (:meth:`LSTMDetector.fit`) is always the same pipeline:

1. bridge short gaps, split each entity's history chronologically into
   training and validation parts;
2. fit the standard scaler on the training parts only;
3. train the forecaster on windows of the training parts, with early stopping
   on the validation parts;
4. score the validation parts with the streaming engine that ``serve`` uses;
5. normalise each feature's error by its mean on the validation parts (at least
   :data:`ERROR_FLOOR`), so that every feature counts by how unusual its error
   is, not by how hard it is to forecast;
6. fit the threshold on the mean of those normalised, smoothed errors.

Step 5 matters on real hosts: a feature that is nearly constant in training
(a disk error counter, a rarely used interface) gets a tiny standard deviation,
and its standard-scaled squared error can be thousands of times that of the
other features even in normal operation, so the mean error, the threshold and
every alert are about that one feature. The normalisation is folded into the
saved model (see :meth:`LSTMDetector._normalise`): the scaler's scale and the
network's first input and last output weights are rescaled so that the
unchanged streaming engine computes normalised errors, and a model directory
keeps its format.

Scoring never touches HTTP or Flask: :meth:`new_engine` returns the streaming
engine, :meth:`score` replays whole arrays through it.

Example::

    det = LSTMDetector(["cpu", "mem"], ModelConfig(window=30), ThresholdConfig())
    det.fit([history_host1, history_host2], TrainingConfig(epochs=5))
    scores = det.score(test_values)       # (rows,) anomaly scores, NaN until a window is full
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lstmad.config import ModelConfig, ThresholdConfig, TrainingConfig
from lstmad.errors import DataError, NotFittedError
from lstmad.model import LSTMForecaster
from lstmad.preprocessing import StandardScaler, WindowSet, bridge_gaps, finite_segments
from lstmad.streaming import StreamingEngine
from lstmad.threshold import Threshold, threshold_from_config
from lstmad.training import ProgressFactory, TrainingResult, no_progress, train_forecaster

__all__ = ["ERROR_FLOOR", "LSTMDetector", "SeriesScores"]

log = logging.getLogger(__name__)

ERROR_FLOOR = 0.1
"""Least per-feature validation error (smoothed squared error, standard-scaled units) that a
feature's error is divided by: a feature forecast almost perfectly in validation (constant)
must not turn the smallest later deviation into a huge normalised error."""


@dataclass(frozen=True)
class SeriesScores:
    """Per-row output of a replay; NaN where a row was not scored."""

    error: np.ndarray
    feature_errors: np.ndarray
    score: np.ndarray
    raw_error: np.ndarray

    @property
    def is_anomaly(self) -> np.ndarray:
        return np.nan_to_num(self.score, nan=0.0) > 1.0


class LSTMDetector:
    """Forecasting LSTM, scaler and threshold for one set of features."""

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
        self.model: LSTMForecaster | None = None
        self.training: TrainingResult | None = None
        self.validation_errors: np.ndarray | None = None
        self.error_weights: np.ndarray | None = None

    @property
    def window(self) -> int:
        return self.model_cfg.window

    @property
    def is_fitted(self) -> bool:
        return self.model is not None and self.threshold.value is not None

    def build_model(self) -> LSTMForecaster:
        cfg = self.model_cfg
        return LSTMForecaster(len(self.features), cfg.hidden, cfg.layers, cfg.dropout)

    def _check_series(self, series: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, s in enumerate(series):
            arr = np.asarray(s, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[1] != len(self.features):
                raise DataError(f"series {i}: expected shape (rows, {len(self.features)}), found {arr.shape}")
            out.append(arr)
        if not out:
            raise DataError("expected at least one training series, found none")
        return out

    def fit(
        self,
        series: Sequence[np.ndarray],
        training: TrainingConfig | None = None,
        progress: ProgressFactory = no_progress,
    ) -> LSTMDetector:
        """Train on the history of one or more entities ((rows, features) arrays, raw units)."""
        cfg = training or TrainingConfig()
        data = [bridge_gaps(s, self.model_cfg.max_gap_steps) for s in self._check_series(series)]
        split = [round(s.shape[0] * (1.0 - cfg.validation_split)) for s in data]
        train_parts = [s[:k] for s, k in zip(data, split, strict=True)]
        self.scaler.fit(np.concatenate(train_parts), self.features)
        w = self.window
        scaled = [self.scaler.transform(s) for s in data]

        def windows(parts: list[np.ndarray]) -> WindowSet | None:
            segs = [p[a:b] for p in parts for a, b in finite_segments(p, w + 1)]
            return WindowSet(segs, w + 1) if segs else None

        train_set = windows([s[:k] for s, k in zip(scaled, split, strict=True)])
        if train_set is None:
            rows = sum(split)
            raise DataError(
                f"expected gap-free stretches of at least {w + 1} rows to train on, "
                f"found none in {rows} training rows (window={w})"
            )
        val_parts = [s[max(k - w, 0) :] for s, k in zip(scaled, split, strict=True)]
        val_set = windows(val_parts)
        torch.manual_seed(cfg.seed)
        model = self.build_model()
        log.info(
            "training on %d windows (%d validation), %d features, window %d",
            len(train_set),
            len(val_set) if val_set else 0,
            len(self.features),
            w,
        )
        self.training = train_forecaster(model, train_set, val_set, cfg, progress)
        self.model = model

        # Normalise the features' errors and fit the threshold on errors of data the
        # network did not train on, scored exactly as serve scores it; fall back to
        # training data if there is none.
        raw_val = [s[max(k - w, 0) :] for s, k in zip(data, split, strict=True)]
        feature_errors = self._replay_feature_errors(raw_val, skip=[min(w, k) for k in split])
        if feature_errors.shape[0] < 10:
            feature_errors = self._replay_feature_errors(data, skip=[0] * len(data))
        errors = self._normalise(feature_errors).mean(axis=1)
        self.validation_errors = errors
        self.threshold = threshold_from_config(self.threshold_cfg).fit(errors)
        log.info("threshold %s = %.5g", self.threshold.method, self.threshold.fitted_value)
        return self

    def _replay_feature_errors(self, series: list[np.ndarray], skip: list[int]) -> np.ndarray:
        """Smoothed per-feature errors, (scored rows, features), of series replayed through a fresh engine."""
        engine = self.new_engine(threshold=1.0)
        length = max(s.shape[0] for s in series)
        block = np.full((len(series), length, len(self.features)), np.nan)
        for i, s in enumerate(series):
            block[i, : s.shape[0]] = s
        names = [str(i) for i in range(len(series))]
        errors = np.stack([r.feature_errors for r in engine.run(names, block)], axis=1)
        for i, k in enumerate(skip):
            errors[i, :k] = np.nan
        errors = errors.reshape(-1, len(self.features))
        return errors[np.isfinite(errors).all(axis=1)]

    @torch.no_grad()
    def _normalise(self, feature_errors: np.ndarray) -> np.ndarray:
        """Divide each feature's error by its mean validation error, folded into the model.

        With ``w`` the weights and ``r = sqrt(w)``: the scaler's scale becomes ``scale * r``,
        so scaled inputs are ``x / r``; the first LSTM layer's input weights are multiplied
        by ``r`` (the network sees what it was trained on) and the head's last layer is
        divided by ``r`` (it forecasts ``x / r``). The streaming engine's squared error is
        then ``(forecast - x)**2 / w`` with no change to the engine or the model format.
        Returns ``feature_errors / w``.
        """
        model = self.model
        if model is None or self.scaler.scale is None:
            raise NotFittedError("LSTMDetector is not fitted: call fit() or load a model first")
        weights = np.maximum(feature_errors.mean(axis=0), ERROR_FLOOR)
        root = np.sqrt(weights)
        self.scaler.scale = self.scaler.scale * root
        r = torch.from_numpy(root.astype(np.float32))
        first = model.lstm.weight_ih_l0
        last = model.head[-1]
        assert isinstance(first, torch.Tensor) and isinstance(last, torch.nn.Linear)
        first.mul_(r[None, :])
        last.weight.div_(r[:, None])
        last.bias.div_(r)
        self.error_weights = weights
        return feature_errors / weights

    def _fitted(self) -> LSTMForecaster:
        if self.model is None or self.threshold.value is None:
            raise NotFittedError("LSTMDetector is not fitted: call fit() or load a model first")
        return self.model

    def new_engine(self, *, resync_every: int = 240, threshold: float | None = None) -> StreamingEngine:
        """A streaming engine with this detector's model, scaler and threshold."""
        if self.model is None:
            raise NotFittedError("LSTMDetector is not fitted: call fit() or load a model first")
        value = threshold if threshold is not None else self.threshold.fitted_value
        return StreamingEngine(
            self.model,
            self.scaler,
            value,
            window=self.window,
            smoothing=self.threshold_cfg.smoothing,
            max_gap=self.model_cfg.max_gap_steps,
            resync_every=resync_every,
        )

    def score(self, values: np.ndarray, *, resync_every: int = 240) -> SeriesScores:
        """Replay one entity's (rows, features) values row by row, exactly as ``serve`` would."""
        (arr,) = self._check_series([values])
        engine = self.new_engine(resync_every=resync_every)
        steps = engine.run(["entity"], arr[None])
        return SeriesScores(
            error=np.array([r.error[0] for r in steps]),
            feature_errors=np.stack([r.feature_errors[0] for r in steps])
            if steps
            else np.zeros((0, len(self.features))),
            score=np.array([r.score[0] for r in steps]),
            raw_error=np.array([r.raw_error[0] for r in steps]),
        )

    @torch.no_grad()
    def forecast_windows(self, windows: np.ndarray) -> np.ndarray:
        """Forecast the sample after each scaled (n, window, features) window, from a zero state."""
        model = self._fitted()
        pred, _ = model(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)))
        return pred[:, -1].numpy()

    def metadata(self) -> dict[str, Any]:
        result = self.training
        return {
            "trained_at": time.time(),
            "epochs_run": len(result.train_loss) if result else 0,
            "best_epoch": result.best_epoch + 1 if result else 0,
            "train_loss": result.train_loss if result else [],
            "val_loss": result.val_loss if result else [],
            "training_seconds": result.seconds if result else 0.0,
            "train_windows_per_second": result.windows_per_second if result else 0.0,
            "validation_errors": int(self.validation_errors.size)
            if self.validation_errors is not None
            else 0,
            "error_weights": dict(zip(self.features, self.error_weights.tolist(), strict=True))
            if self.error_weights is not None
            else {},
        }
