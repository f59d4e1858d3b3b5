"""`lstmad demo` (what `make run` runs): the whole embedded default, on real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from lstmad.localstack import free_port

from .conftest import LSTMAD, require_binary, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_trains_serves_and_is_scraped_by_victoriametrics(tmp_path: Path) -> None:
    require_binary("victoria-metrics")
    require_binary("prometheus-node-exporter")
    listen, vm_port, ne_port = free_port(), free_port(), free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*LSTMAD, "demo", "--dir", str(tmp_path / "demo"), "--history", "3h", "--hosts", "3",
             "--listen", f"127.0.0.1:{listen}", "--vm-port", str(vm_port),
             "--node-exporter-port", str(ne_port), "--duration", "10m"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        metrics = f"http://127.0.0.1:{listen}/metrics"

        def demo_hosts_scored() -> bool:
            try:
                body = httpx.get(metrics, timeout=5).text
            except httpx.HTTPError:
                return False
            return all(f'lstmad_anomaly_score{{instance="demo-host-{i}:9100"}}' in body for i in (1, 2, 3))

        wait_for(demo_hosts_scored, 300, interval=2, what="demo hosts on /metrics")
        vm = f"http://127.0.0.1:{vm_port}"

        def scraped_by_vm() -> bool:
            resp = httpx.get(f"{vm}/api/v1/query", params={"query": "lstmad_anomaly_score"}, timeout=5)
            found = {r["metric"].get("instance") for r in resp.json()["data"]["result"]}
            return {"demo-host-1:9100", "demo-host-2:9100", "demo-host-3:9100"} <= found

        wait_for(scraped_by_vm, 90, interval=3, what="lstmad series in VictoriaMetrics")
        assert "injected anomaly:    demo-host-3:9100" in log.read_text()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 0, log.read_text()[-2000:]
    for port in (vm_port, ne_port, listen):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after the demo stopped"
