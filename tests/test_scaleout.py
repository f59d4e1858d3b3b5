"""Sharded serving: replicas on loopback against one VictoriaMetrics cover every host exactly once."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lstmad import simulate

from .conftest import SharedFleet, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def scored_hosts(body: str, prefix: str) -> list[str]:
    return [
        s.labels["instance"]
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
        if s.name == "lstmad_anomaly_score" and s.labels.get("instance", "").startswith(prefix)
    ]


@pytest.mark.parametrize("replicas", [2, 3])
def test_replicas_cover_every_host_exactly_once(
    shared_fleet: SharedFleet, serve_process: type, replicas: int
) -> None:
    spec = shared_fleet.spec
    assert isinstance(spec, simulate.FleetSpec)
    hosts = set(simulate.instance_names(spec))
    procs = [
        serve_process(
            ["--config", str(shared_fleet.config), "--model", str(shared_fleet.model)],
            env={"LSTMAD_SHARD_INDEX": str(i), "LSTMAD_SHARD_COUNT": str(replicas)},
        )
        for i in range(replicas)
    ]
    for p in procs:
        p.wait_healthy()
    shares: list[list[str]] = []

    def all_scored() -> bool:
        shares[:] = [scored_hosts(p.get("/metrics").text, spec.prefix) for p in procs]
        return sum(len(s) for s in shares) >= len(hosts)

    wait_for(all_scored, 90, what=f"{len(hosts)} hosts scored across {replicas} replicas")
    flat = [h for share in shares for h in share]
    assert sorted(flat) == sorted(hosts), "every host exactly once"
    assert all(share for share in shares), "every replica got a share"
