from __future__ import annotations

import numpy as np
import pytest

from lstmad.config import ThresholdConfig
from lstmad.errors import DataError, ModelError, NotFittedError
from lstmad.threshold import (
    DynamicThreshold,
    QuantileThreshold,
    StaticThreshold,
    ewma,
    threshold_from_config,
    threshold_from_dict,
)


def test_quantile_threshold_is_quantile_times_margin() -> None:
    errors = np.arange(1, 1001, dtype=float)
    th = QuantileThreshold(quantile=0.99, margin=1.5).fit(errors)
    assert th.value == pytest.approx(np.quantile(errors, 0.99) * 1.5)


def test_dynamic_threshold_separates_a_burst_from_the_bulk() -> None:
    rng = np.random.default_rng(0)
    errors = np.abs(rng.normal(0.1, 0.02, 2000))
    errors[1000:1010] = 1.0
    th = DynamicThreshold().fit(errors)
    assert errors[:1000].max() < th.fitted_value < 1.0


def test_thresholds_round_trip_and_validate() -> None:
    for th in (QuantileThreshold().fit(np.arange(100.0)), DynamicThreshold().fit(np.arange(100.0)),
               StaticThreshold(2.5)):  # fmt: skip
        again = threshold_from_dict(th.to_dict())
        assert type(again) is type(th) and again.value == th.value
    with pytest.raises(ModelError):
        threshold_from_dict({"method": "quantile", "value": -1})
    with pytest.raises(ModelError):
        threshold_from_dict({"method": "nope", "value": 1})
    with pytest.raises(NotFittedError):
        QuantileThreshold().to_dict()
    with pytest.raises(DataError):
        QuantileThreshold().fit(np.array([np.nan, 1.0]))


def test_from_config() -> None:
    assert isinstance(threshold_from_config(ThresholdConfig(method="dynamic")), DynamicThreshold)
    static = threshold_from_config(ThresholdConfig(method="static", value=3.0))
    assert static.fitted_value == 3.0


def test_ewma_restarts_after_nan() -> None:
    out = ewma(np.array([1.0, 3.0, np.nan, 5.0]), span=3)  # alpha = 0.5
    np.testing.assert_allclose(out, [1.0, 2.0, np.nan, 5.0])
