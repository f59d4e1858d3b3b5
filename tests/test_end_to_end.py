"""The whole path on real processes: VictoriaMetrics, `lstmad train`, `lstmad serve`, /metrics."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lstmad import simulate
from lstmad.localstack import ManagedProcess

from .conftest import LSTMAD, fleet_config, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEP = 5.0
HOSTS = 4
ANOMALOUS = 2


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_instance(body: str, name: str, prefix: str) -> dict[str, float]:
    return {
        dict(labels)["instance"]: v
        for (n, labels), v in samples(body).items()
        if n == name and dict(labels).get("instance", "").startswith(prefix)
    }


@pytest.fixture
def fleet(victoriametrics: ManagedProcess, request: pytest.FixtureRequest) -> Iterator[simulate.FleetSpec]:
    """6 h of history for 4 hosts, host 2 with CPU saturation from 2 minutes ago, live samples after."""
    now = time.time()
    prefix = f"e2e-{request.node.name[-12:].strip('_[]')}-{int(now) % 100000}"
    anomaly = simulate.Anomaly(host=ANOMALOUS, start=now - 120, end=now + 3600, kind="cpu")
    spec = simulate.FleetSpec(hosts=HOSTS, step=STEP, seed=7, prefix=prefix, anomalies=(anomaly,))
    simulate.import_to_vm(victoriametrics.url, simulate.generate_import_lines(spec, now - 6 * 3600, now))
    stop = threading.Event()
    live = threading.Thread(
        target=simulate.run_live, args=(spec, victoriametrics.url), kwargs={"stop": stop, "since": now}
    )
    live.start()
    try:
        yield spec
    finally:
        stop.set()
        live.join(10)


def test_injected_anomaly_flags_only_its_host(
    fleet: simulate.FleetSpec, victoriametrics: ManagedProcess, tmp_path: Path, serve_process: type
) -> None:
    cfg = fleet_config(tmp_path / "lstmad.yml", victoriametrics.url)
    model = tmp_path / "model"
    train = subprocess.run(
        [*LSTMAD, "train", "--config", str(cfg), "--start=-6h", "--end=-5m",
         "--model", str(model), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert "model saved to" in train.stdout
    for name in ("weights.safetensors", "model.json", "scaler.json", "threshold.json", "metadata.json"):
        assert (model / name).is_file()

    serve = serve_process(["--config", str(cfg), "--model", str(model)])
    serve.wait_healthy()
    wait_for(lambda: serve.get("/readyz").status_code == 200, 60, what="/readyz 200")
    hosts = simulate.instance_names(fleet)
    bad = hosts[ANOMALOUS - 1]

    def flagged() -> bool:
        body = serve.get("/metrics").text
        return by_instance(body, "lstmad_anomaly", fleet.prefix).get(bad) == 1.0

    wait_for(flagged, 60, what=f"lstmad_anomaly{{instance={bad!r}}} == 1")
    body = serve.get("/metrics").text
    anomaly = by_instance(body, "lstmad_anomaly", fleet.prefix)
    scores = by_instance(body, "lstmad_anomaly_score", fleet.prefix)
    assert set(anomaly) == set(hosts), f"expected every simulated host scored, found {sorted(anomaly)}"
    assert anomaly[bad] == 1.0 and scores[bad] > 1.0
    for host in hosts:
        if host != bad:
            assert anomaly[host] == 0.0, f"{host} flagged with score {scores[host]}"
            assert scores[host] < 1.0
    events = by_instance(body, "lstmad_anomalies_total", fleet.prefix)
    assert events[bad] >= 1 and all(events[h] == 0 for h in hosts if h != bad)
    top = [
        dict(labels)
        for (n, labels), _ in samples(body).items()
        if n == "lstmad_feature_error" and dict(labels).get("instance") == bad
    ]
    assert 0 < len(top) <= 3
    all_samples = samples(body)
    assert all_samples[("lstmad_source_up", ())] == 1.0
    assert all_samples[("lstmad_threshold", ())] > 0
    assert all_samples[("lstmad_model_trained_timestamp_seconds", ())] > time.time() - 3600
    for stage in ("fetch", "score", "publish"):
        assert all_samples[("lstmad_cycle_duration_seconds_count", (("stage", stage),))] >= 1
    assert serve.stop() == 0


def test_serve_refuses_model_for_other_features(
    victoriametrics: ManagedProcess, tmp_path: Path, fleet: simulate.FleetSpec
) -> None:
    cfg = fleet_config(tmp_path / "a.yml", victoriametrics.url)
    model = tmp_path / "model"
    train = subprocess.run(
        [*LSTMAD, "train", "--config", str(cfg), "--start=-1h", "--model", str(model), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    other = tmp_path / "b.yml"
    other.write_text(cfg.read_text().replace("name: fs_used", "name: fs_used_fraction"))
    serve = subprocess.run(
        [*LSTMAD, "serve", "--config", str(other), "--model", str(model)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert serve.returncode == 2
    assert "trained on features" in serve.stderr and "fs_used_fraction" in serve.stderr


def test_local_node_exporter_is_fetched_through_the_preset(
    victoriametrics: ManagedProcess, node_exporter: ManagedProcess
) -> None:
    """The real node_exporter, scraped by VictoriaMetrics, yields every preset feature."""
    from lstmad.config import load_config
    from lstmad.source import PromClient, fetch_range

    cfg = load_config(None, overrides={"victoriametrics.url": victoriametrics.url})
    instance = node_exporter.url.removeprefix("http://")

    def has_all_features() -> bool:
        now = time.time()
        with PromClient(cfg.victoriametrics) as client:
            frame = fetch_range(client, cfg.features, "instance", now - 60, now, 5.0)
        if instance not in frame.entities:
            return False
        row = frame.values[frame.entities.index(instance)]
        return bool((~np.isnan(row[-3:])).all())

    wait_for(has_all_features, 120, interval=2, what=f"all 8 features for {instance}")
    resp = httpx.get(f"{victoriametrics.url}/api/v1/query", params={"query": "up"}, timeout=10)
    assert resp.json()["status"] == "success"
