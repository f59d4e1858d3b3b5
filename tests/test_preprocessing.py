from __future__ import annotations

import numpy as np
import pytest

from lstmad.errors import DataError, NotFittedError
from lstmad.preprocessing import StandardScaler, WindowSet, bridge_gaps, finite_segments

nan = np.nan


def test_scaler_fits_mean_zero_std_one_and_ignores_nan() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [nan, 5.0], [5.0, 5.0]])
    sc = StandardScaler().fit(x)
    np.testing.assert_allclose(sc.mean, [3.0, 5.0])
    np.testing.assert_allclose(sc.scale, [np.sqrt(8 / 3), 1.0])  # constant feature: scale 1, no /0
    out = sc.transform(x)
    assert np.isnan(out[2, 0]) and out[2, 1] == 0.0  # missing stays missing
    np.testing.assert_allclose(np.nanmean(out[:, 0]), 0.0, atol=1e-6)
    again = StandardScaler.from_dict(sc.to_dict())
    np.testing.assert_allclose(again.transform(x), out)


def test_scaler_rejects_all_missing_feature_and_unfitted_use() -> None:
    with pytest.raises(DataError, match="mem"):
        StandardScaler().fit(np.array([[1.0, nan], [2.0, nan]]), ["cpu", "mem"])
    with pytest.raises(NotFittedError):
        StandardScaler().transform(np.zeros((1, 2)))


def test_bridge_gaps_carries_forward_short_gaps_only() -> None:
    x = np.array([[1.0], [nan], [nan], [4.0], [nan], [nan], [nan], [8.0], [nan]])
    out = bridge_gaps(x, max_gap=2)
    # gap of 2 bridged with the last value (causal), gap of 3 left open, trailing gap left open
    np.testing.assert_array_equal(out[:, 0], [1, 1, 1, 4, nan, nan, nan, 8, nan])
    assert not np.any(out == 0.0)


def test_finite_segments_split_at_missing_rows() -> None:
    x = np.array([[1.0, 1], [2, 2], [nan, 3], [4, 4], [5, 5], [6, 6]])
    assert finite_segments(x, 2) == [(0, 2), (3, 6)]
    assert finite_segments(x, 3) == [(3, 6)]


def test_window_set_gathers_windows_inside_segments() -> None:
    a = np.arange(10, dtype=float).reshape(5, 2)
    b = 100 + np.arange(6, dtype=float).reshape(3, 2)
    ws = WindowSet([a, b], length=3)
    assert len(ws) == 3 + 1
    w = ws.gather(np.arange(len(ws)))
    assert w.shape == (4, 3, 2)
    np.testing.assert_array_equal(w[3, :, 0], [100, 102, 104])  # never straddles two segments
    with pytest.raises(DataError):
        WindowSet([a[:2]], length=3)
