"""Write-back of scores with the data's own timestamps, into a real VictoriaMetrics."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from lstmad.artifact import load_model
from lstmad.config import load_config
from lstmad.localstack import ManagedProcess
from lstmad.service import Monitor, ScoringLoop
from lstmad.source import PromClient
from lstmad.writeback import VMWriter, render_import_lines

from .conftest import SharedFleet, wait_for


def test_render_import_lines_uses_data_timestamps_and_skips_unscored() -> None:
    body = render_import_lines(
        "instance",
        ["a", 'we"ird'],
        np.array([100.0, 100.0]),
        np.array([2.0, np.nan]),
        np.array([0.5, np.nan]),
        0.25,
    ).decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    score = families["lstmad_anomaly_score"].samples
    assert len(score) == 1 and score[0].timestamp == 100.0 and score[0].value == 2.0
    assert score[0].labels == {"instance": "a", "job": "lstmad-writeback"}
    assert families["lstmad_anomaly"].samples[0].value == 1.0
    assert (
        render_import_lines("instance", ["a"], np.array([1.0]), np.array([np.nan]), np.array([1.0]), 1) == b""
    )


@pytest.mark.integration
def test_serve_writes_scores_back_with_their_timestamps(
    shared_fleet: SharedFleet, victoriametrics: ManagedProcess, tmp_path: Path
) -> None:
    cfg = load_config(
        shared_fleet.config, overrides={"serve.write_back": True, "model.path": str(shared_fleet.model)}
    )
    client = PromClient(cfg.victoriametrics)
    writer = VMWriter(cfg.victoriametrics.url, client=client.http)
    loop = ScoringLoop(cfg, client, load_model(cfg.model.path), Monitor(CollectorRegistry()), writer=writer)
    started = time.time()
    try:
        assert loop.run_cycle()
    finally:
        client.close()
    httpx.get(f"{victoriametrics.url}/internal/force_flush", timeout=30)
    host = f"{shared_fleet.spec.prefix}-1:9100"  # type: ignore[attr-defined]
    query = f'lstmad_anomaly_score{{job="lstmad-writeback",instance="{host}"}}'

    def written() -> list[list[object]]:
        resp = httpx.get(
            f"{victoriametrics.url}/api/v1/query_range",
            params={"query": query, "start": started - 600, "end": started + 60, "step": "5s"},
            timeout=10,
        )
        result = resp.json()["data"]["result"]
        return result[0]["values"] if result else []

    wait_for(lambda: len(written()) > 0, 30, what="written-back scores in VictoriaMetrics")
    timestamps = [float(t) for t, _ in written()]
    # Scores carry the data's timestamps: the startup replay covers minutes before the cycle ran.
    assert min(timestamps) < started - 30
