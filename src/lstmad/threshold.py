"""Thresholds on the (smoothed) forecast error, fitted on errors of normal data.

The detector scores; a threshold decides. Each threshold is fitted on the
errors that the trained model makes on held-out training data and saved with
the model. The anomaly score is ``error / threshold``: above 1 is anomalous.

- :class:`QuantileThreshold`: a high quantile of the validation errors times a
  safety margin (the default).
- :class:`DynamicThreshold`: the nonparametric threshold of Hundman et al.
  (KDD 2018): among ``mean + z * std`` for z in 2..z_max, the one whose removal
  of the errors above it lowers mean and spread the most per flagged point and
  sequence.
- :class:`StaticThreshold`: a fixed value from the configuration.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmad.config import ThresholdConfig
from lstmad.errors import ConfigError, DataError, ModelError, NotFittedError

__all__ = [
    "DynamicThreshold",
    "QuantileThreshold",
    "StaticThreshold",
    "Threshold",
    "ewma",
    "threshold_from_config",
    "threshold_from_dict",
]


def ewma(errors: np.ndarray, span: int) -> np.ndarray:
    """Exponentially weighted moving average along axis 0 (NaN rows restart it)."""
    alpha = 2.0 / (span + 1.0)
    out = np.empty_like(errors, dtype=np.float64)
    acc: np.ndarray | float = np.nan
    for i in range(errors.shape[0]):
        x = errors[i]
        acc = np.where(np.isnan(acc), x, alpha * x + (1 - alpha) * acc)
        out[i] = acc
    return out


def _clean(errors: np.ndarray) -> np.ndarray:
    e = np.asarray(errors, dtype=np.float64).ravel()
    e = e[np.isfinite(e)]
    if e.size < 10:
        raise DataError(f"expected at least 10 finite errors to fit a threshold, found {e.size}")
    return e


class Threshold:
    """Base class: ``value`` is the error above which a sample is anomalous."""

    method = "base"

    def __init__(self) -> None:
        self.value: float | None = None

    @property
    def fitted_value(self) -> float:
        if self.value is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() first")
        return self.value

    def fit(self, errors: np.ndarray) -> Threshold:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "value": self.fitted_value, **self.params()}


class QuantileThreshold(Threshold):
    method = "quantile"

    def __init__(self, quantile: float = 0.995, margin: float = 1.2) -> None:
        super().__init__()
        self.quantile = quantile
        self.margin = margin

    def fit(self, errors: np.ndarray) -> QuantileThreshold:
        e = _clean(errors)
        self.value = max(float(np.quantile(e, self.quantile)) * self.margin, 1e-12)
        return self

    def params(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "margin": self.margin}


class DynamicThreshold(Threshold):
    method = "dynamic"

    def __init__(self, z_max: float = 12.0, margin: float = 1.0) -> None:
        super().__init__()
        self.z_max = z_max
        self.margin = margin

    @staticmethod
    def _runs(mask: np.ndarray) -> int:
        return int(np.count_nonzero(np.diff(np.concatenate([[0], mask.astype(np.int8)])) == 1))

    def fit(self, errors: np.ndarray) -> DynamicThreshold:
        e = _clean(errors)
        mean, std = float(e.mean()), float(e.std())
        best_eps, best_score = mean + self.z_max * std, -np.inf
        if std > 0:
            for z in np.arange(2.0, self.z_max + 1e-9, 0.5):
                eps = mean + z * std
                below = e[e < eps]
                above = e >= eps
                n_above = int(above.sum())
                if n_above == 0 or below.size == 0:
                    continue
                d_mean = (mean - below.mean()) / mean if mean > 0 else 0.0
                d_std = (std - below.std()) / std
                score = (d_mean + d_std) / (n_above + self._runs(above) ** 2)
                if score > best_score:
                    best_eps, best_score = eps, score
        self.value = max(best_eps * self.margin, 1e-12)
        return self

    def params(self) -> dict[str, Any]:
        return {"z_max": self.z_max, "margin": self.margin}


class StaticThreshold(Threshold):
    method = "static"

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def fit(self, errors: np.ndarray) -> StaticThreshold:
        return self


def threshold_from_config(cfg: ThresholdConfig) -> Threshold:
    if cfg.method == "static":
        if cfg.value is None or cfg.value <= 0:
            raise ConfigError(f"method static needs a positive value, found {cfg.value}", "threshold.value")
        return StaticThreshold(cfg.value)
    if cfg.method == "dynamic":
        return DynamicThreshold(z_max=cfg.z_max)
    return QuantileThreshold(quantile=cfg.quantile, margin=cfg.margin)


def threshold_from_dict(data: dict[str, Any]) -> Threshold:
    try:
        method, value = data["method"], float(data["value"])
        params = {k: v for k, v in data.items() if k not in ("method", "value")}
        th: Threshold
        if method == "quantile":
            th = QuantileThreshold(**params)
        elif method == "dynamic":
            th = DynamicThreshold(**params)
        elif method == "static":
            th = StaticThreshold(value)
        else:
            raise ModelError(f"expected threshold method quantile, dynamic or static, found {method!r}")
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"expected a threshold with method and value, found {data!r:.100}") from err
    if not np.isfinite(value) or value <= 0:
        raise ModelError(f"expected a positive finite threshold value, found {value}")
    th.value = value
    return th
