"""Scheduled retraining: a real `lstmad train` child process, validation, atomic swap, fallback."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from lstmad.artifact import load_model, save_model
from lstmad.cli import _exclude_periods
from lstmad.config import Feature, load_config, to_dict
from lstmad.errors import ModelError
from lstmad.retrain import Retrainer, validate_candidate
from lstmad.service import Monitor, ScoringLoop
from lstmad.source import PromClient

from .conftest import SharedFleet


def test_effective_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, overrides={"interval": "30s", "serve.retrain_every": "1h"})
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_config(path) == cfg


def test_exclusions_blank_out_flagged_periods() -> None:
    values = np.ones((2, 6, 1))
    ts = np.arange(6) * 10.0
    _exclude_periods(values, ["a", "b"], ts, {"b": [[10, 30]], "zzz": [[0, 50]]})
    assert np.isnan(values[1, 1:4]).all() and not np.isnan(values[1, [0, 4, 5]]).any()
    assert not np.isnan(values[0]).any()


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Callable[..., ScoringLoop]]:
    made: list[ScoringLoop] = []

    def make(shared: SharedFleet, **overrides: object) -> ScoringLoop:
        cfg = load_config(shared.config, overrides={"model.path": str(tmp_path / "model"), **overrides})
        original = load_model(shared.model, cfg.feature_names)
        save_model(cfg.model.path, original.detector, entity_label="instance", interval=cfg.interval)
        monitor = Monitor(CollectorRegistry())
        made.append(ScoringLoop(cfg, PromClient(cfg.victoriametrics), load_model(cfg.model.path), monitor))
        return made[-1]

    yield make
    for loop in made:
        loop.client.close()


@pytest.mark.integration
@pytest.mark.slow
def test_retraining_swaps_in_a_validated_model(
    shared_fleet: SharedFleet, loops: Callable[..., ScoringLoop]
) -> None:
    loop = loops(shared_fleet, **{"serve.fit_window": "2h"})
    assert loop.run_cycle()
    before = loop.model
    outcome = Retrainer(loop.cfg, loop).retrain_once()
    assert outcome == "success"
    assert loop.model.model_id != before.model_id
    assert loop.model.trained_at > before.trained_at
    assert load_model(loop.cfg.model.path).model_id == loop.model.model_id
    registry = loop.monitor.registry
    assert registry.get_sample_value("lstmad_retrains_total", {"outcome": "success"}) == 1
    assert registry.get_sample_value("lstmad_model_trained_timestamp_seconds") == loop.model.trained_at
    assert loop.run_cycle()  # scoring goes on with the new model
    assert not list(Path(loop.cfg.model.path).parent.glob(".model.retrain"))


@pytest.mark.integration
def test_failed_retraining_keeps_serving_the_last_good_model(
    shared_fleet: SharedFleet, loops: Callable[..., ScoringLoop]
) -> None:
    loop = loops(shared_fleet)
    before = loop.model.model_id
    absent = Feature("cpu_busy", "absent_metric_xyz")
    broken = dataclasses.replace(loop.cfg, features=(absent, *loop.cfg.features[1:]))
    outcome = Retrainer(broken, loop).retrain_once()
    assert outcome == "failure"
    assert loop.model.model_id == before
    assert load_model(loop.cfg.model.path).model_id == before
    assert loop.monitor.registry.get_sample_value("lstmad_retrains_total", {"outcome": "failure"}) == 1


def test_candidate_with_absurd_threshold_is_rejected(tmp_path: Path) -> None:
    from .test_artifact import trained

    det = trained()
    save_model(tmp_path / "a", det, entity_label="instance", interval=15)
    current = load_model(tmp_path / "a")
    det.threshold.value = det.threshold.fitted_value * 1000
    save_model(tmp_path / "b", det, entity_label="instance", interval=15)
    with pytest.raises(ModelError, match="1000x"):
        validate_candidate(load_model(tmp_path / "b"), current)
    validate_candidate(current, current)
