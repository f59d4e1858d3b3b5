"""Contract tests: the same checks over every detector that ``--detector`` accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstmad.baselines import (
    DETECTORS,
    Detector,
    IsolationForestDetector,
    PCADetector,
    RandomDetector,
    ZScoreDetector,
    make_detector,
)
from lstmad.config import ModelConfig, ThresholdConfig, TrainingConfig
from lstmad.detector import LSTMDetector, SeriesScores
from lstmad.errors import ConfigError, DataError, NotFittedError

FEATURES = ["a", "b", "c"]
MODEL = ModelConfig(window=12, hidden=8, layers=1, max_gap_steps=2)
TRAINING = TrainingConfig(epochs=2, max_windows=400, batch_size=64, seed=5)


def series(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    a, b = np.sin(2 * np.pi * t / 30.0), np.sin(2 * np.pi * t / 45.0)
    base = np.hstack([a, b, a + b])  # correlated, so that PCA has something to learn
    return base + 0.1 * rng.standard_normal((rows, 3)) + np.array([0.0, 5.0, -2.0])


def with_spike(rows: int, seed: int) -> np.ndarray:
    values = series(rows, seed)
    values[rows // 2 : rows // 2 + 10] += np.array([8.0, -6.0, 7.0])
    return values


@pytest.fixture(scope="module", params=DETECTORS)
def fitted(request: pytest.FixtureRequest) -> Detector:
    det = make_detector(request.param, FEATURES, MODEL, ThresholdConfig())
    det.fit([series(500, 0), series(400, 1)], TRAINING)
    return det


def test_every_name_makes_a_detector_of_the_protocol() -> None:
    assert DETECTORS[0] == "lstm"
    classes = {
        "lstm": LSTMDetector,
        "pca": PCADetector,
        "isolation-forest": IsolationForestDetector,
        "zscore": ZScoreDetector,
        "random": RandomDetector,
    }
    assert set(DETECTORS) == set(classes)
    for name, cls in classes.items():
        det = make_detector(name, FEATURES)
        assert type(det) is cls
        assert isinstance(det, Detector)
        assert not det.is_fitted
    with pytest.raises(ConfigError, match="--detector"):
        make_detector("nope", FEATURES)


@pytest.mark.parametrize("name", DETECTORS)
def test_score_before_fit_raises(name: str) -> None:
    det = make_detector(name, FEATURES, MODEL)
    with pytest.raises(NotFittedError):
        det.score(series(50, 0))


@pytest.mark.parametrize("name", DETECTORS)
def test_wrong_shapes_are_data_errors(name: str) -> None:
    det = make_detector(name, FEATURES, MODEL)
    with pytest.raises(DataError, match=r"expected shape \(rows, 3\)"):
        det.fit([np.zeros((100, 2))], TRAINING)
    with pytest.raises(DataError):
        det.fit([], TRAINING)


def test_output_has_one_row_per_input_row_and_score_is_error_over_threshold(fitted: Detector) -> None:
    values = with_spike(300, 9)
    out = fitted.score(values)
    assert isinstance(out, SeriesScores)
    for arr in (out.error, out.score, out.raw_error):
        assert arr.shape == (300,)
    assert out.feature_errors.shape == (300, 3)
    ok = np.isfinite(out.score)
    assert ok.sum() >= 300 - fitted.window - 1
    np.testing.assert_allclose(out.score[ok], out.error[ok] / fitted.threshold.fitted_value)
    assert fitted.threshold.fitted_value > 0
    assert fitted.validation_errors is not None and fitted.validation_errors.size >= 10


def test_input_is_not_mutated(fitted: Detector) -> None:
    values = with_spike(200, 3)
    values[50, 1] = np.nan
    copy = values.copy()
    fitted.score(values)
    np.testing.assert_array_equal(values, copy)


def test_fit_does_not_mutate_training_data() -> None:
    for name in DETECTORS:
        data = [series(300, 0)]
        data[0][10, 0] = np.nan
        copy = data[0].copy()
        make_detector(name, FEATURES, MODEL).fit(data, TRAINING)
        np.testing.assert_array_equal(data[0], copy)


@pytest.mark.parametrize("name", DETECTORS)
def test_same_seed_gives_same_scores(name: str) -> None:
    data = [series(400, 0)]
    a = make_detector(name, FEATURES, MODEL).fit(data, TRAINING)
    b = make_detector(name, FEATURES, MODEL).fit(data, TRAINING)
    test = with_spike(200, 4)
    np.testing.assert_allclose(a.score(test).score, b.score(test).score, equal_nan=True, rtol=1e-6)
    np.testing.assert_allclose(a.score(test).score, a.score(test).score, equal_nan=True)


def test_missing_rows_are_never_flagged(fitted: Detector) -> None:
    values = with_spike(300, 2)
    values[150:153] = np.nan  # inside the spike: a short gap, bridged but not scored
    values[200:230, 0] = np.nan  # a long gap
    values[250] = np.inf
    out = fitted.score(values)
    for rows in (slice(150, 153), slice(200, 230), slice(250, 251)):
        assert np.isnan(out.score[rows]).all()
        assert not out.is_anomaly[rows].any()


def test_an_obvious_spike_scores_higher_than_normal_rows(fitted: Detector) -> None:
    if isinstance(fitted, RandomDetector):
        pytest.skip("random scores know nothing")
    values = with_spike(400, 6)
    out = fitted.score(values)
    spike = np.nanmax(out.score[200:212])
    assert spike > 1.2 * np.nanmax(out.score[100:190])
    assert out.is_anomaly[200:212].any()


def test_pca_keeps_the_components_for_the_variance() -> None:
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((2000, 2))
    values = latent @ rng.standard_normal((2, 5)) + 0.01 * rng.standard_normal((2000, 5))
    det = PCADetector([f"f{i}" for i in range(5)], MODEL, variance=0.95).fit([values], TRAINING)
    assert det.components is not None and det.components.shape[0] == 2
    broken = values[:300].copy()
    broken[100, 0] += 5.0  # breaks the correlation between features
    out = det.score(broken)
    assert np.nanargmax(out.raw_error) == 100
    top = np.nanargmax(out.feature_errors[100])
    assert top in range(5)
    with pytest.raises(ConfigError):
        PCADetector(FEATURES, variance=1.5)


def test_zscore_is_causal_and_rolling() -> None:
    det = ZScoreDetector(FEATURES, ModelConfig(window=10), ThresholdConfig(smoothing=1))
    det.fit([series(300, 0)], TRAINING)
    values = series(100, 1)
    a = det.score(values).score
    changed = values.copy()
    changed[60:] += 100.0  # the future must not change the past
    b = det.score(changed).score
    np.testing.assert_allclose(a[:60], b[:60], equal_nan=True)
    assert np.isnan(a[:10]).all() and np.isfinite(a[10:]).all()
    # Row 10's z-scores use rows 0..9 exactly.
    x = det.scaler.transform(values).astype(np.float64)
    window = x[:10]
    z2 = ((x[10] - window.mean(axis=0)) / np.maximum(window.std(axis=0), det.min_std)) ** 2
    assert det.score(values).raw_error[10] == pytest.approx(z2.mean())


def test_isolation_forest_has_no_feature_attribution() -> None:
    det = IsolationForestDetector(FEATURES, MODEL).fit([series(300, 0)], TRAINING)
    out = det.score(series(50, 1))
    assert np.isnan(out.feature_errors).all()
    assert np.isfinite(out.score).all()


def test_random_detector_ignores_values() -> None:
    det = RandomDetector(FEATURES, MODEL).fit([series(300, 0)], TRAINING)
    a = det.score(series(100, 1)).raw_error
    b = det.score(series(100, 2) * 50).raw_error
    np.testing.assert_array_equal(a, b)
    assert ((a >= 0) & (a < 1)).all()


def test_lstm_normalises_each_feature_error_by_its_validation_error(tmp_path: Path) -> None:
    from lstmad.artifact import load_model, save_model
    from lstmad.detector import ERROR_FLOOR

    rng = np.random.default_rng(1)
    rows = 1200
    t = np.arange(rows)[:, None]
    values = np.hstack(
        [
            np.sin(2 * np.pi * t / 30.0),
            3e-5 * rng.standard_normal((rows, 1)),  # nearly constant: a huge standard-scaled error
            np.full((rows, 1), 7.0),  # constant: forecast almost exactly, below the floor
        ]
    )
    det = LSTMDetector(FEATURES, MODEL, ThresholdConfig()).fit([values], TRAINING)
    weights = det.error_weights
    assert weights is not None and weights.shape == (3,) and (weights >= ERROR_FLOOR).all()
    assert weights[2] == ERROR_FLOOR
    assert set(det.metadata()["error_weights"]) == set(FEATURES)
    # Replaying the validation part with the folded model gives each feature a mean error of 1
    # (or less, for a feature whose error is below the floor).
    w = det.window
    split = round(rows * (1 - TRAINING.validation_split))
    replay = det.score(values[split - w :]).feature_errors[w:]
    mean = np.nanmean(replay, axis=0)
    above = weights > ERROR_FLOOR
    np.testing.assert_allclose(mean[above], 1.0, rtol=0.02)
    assert (mean[~above] <= 1.0 + 1e-6).all()
    assert det.validation_errors is not None
    assert np.nanmean(replay.mean(axis=1)) == pytest.approx(det.validation_errors.mean(), rel=0.02)
    # The normalisation lives in the saved scaler and weights: a loaded model scores the same.
    save_model(tmp_path / "model", det, entity_label="instance", interval=15.0)
    loaded = load_model(tmp_path / "model", FEATURES).detector
    test = values[:300].copy()
    test[200:210, 1] += 1e-3
    np.testing.assert_allclose(loaded.score(test).score, det.score(test).score, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("name", ["lstm", "pca", "zscore"])
def test_rows_after_a_bridged_gap_are_not_scored_like_the_engine(name: str) -> None:
    det = make_detector(name, FEATURES, MODEL).fit([series(400, 0)], TRAINING)
    values = series(120, 3)
    values[60:62] = np.nan  # two bridged rows: they and the next three real rows are not scored
    out = det.score(values)
    assert np.isnan(out.score[60:65]).all() and np.isfinite(out.score[65:]).all()
    assert np.isfinite(out.score[59])
