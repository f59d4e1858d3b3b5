"""Shared fixtures: a real VictoriaMetrics and node_exporter on free loopback ports.

The test session starts them itself and stops them by PID. Tests that need the
binaries skip with a clear reason where they are not installed (``make test``
installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lstmad.localstack import (
    ManagedProcess,
    free_port,
    start_node_exporter,
    start_victoriametrics,
    wait_http,
    write_scrape_config,
)

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = (REPO / ".." / "shared" / "data").resolve()
LSTMAD = [sys.executable, "-m", "lstmad.cli"]


def require_binary(name: str) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (make test installs it from Debian's packages)")


def require_data(*parts: str) -> Path:
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"labelled data not found at {path} (it lives in ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def node_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    require_binary("prometheus-node-exporter")
    log = tmp_path_factory.mktemp("node_exporter") / "node_exporter.log"
    proc = start_node_exporter(log_path=log)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def victoriametrics(
    tmp_path_factory: pytest.TempPathFactory, node_exporter: ManagedProcess
) -> Iterator[ManagedProcess]:
    """One VictoriaMetrics for the session, scraping the session's node_exporter every 2 s."""
    require_binary("victoria-metrics")
    root = tmp_path_factory.mktemp("vm")
    scrape = write_scrape_config(
        root / "scrape.yml", {"node": [node_exporter.url.removeprefix("http://")]}, interval="2s"
    )
    proc = start_victoriametrics(root / "data", scrape_config=scrape, log_path=root / "vm.log")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def fresh_victoriametrics(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A VictoriaMetrics of the test's own, for tests that kill or restart it."""
    require_binary("victoria-metrics")
    proc = start_victoriametrics(tmp_path / "vm-data", log_path=tmp_path / "vm.log")
    try:
        yield proc
    finally:
        proc.stop()


class ServeProcess:
    """A real ``lstmad serve`` process on a free port, stopped by PID."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, **(env or {})}
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [*LSTMAD, "serve", *args, "--listen", f"127.0.0.1:{self.port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        wait_http(self.url + "/healthz", timeout, self.proc)  # type: ignore[arg-type]

    def get(self, path: str, **kw: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10.0, **kw)  # type: ignore[arg-type]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[type[ServeProcess]]:
    started: list[ServeProcess] = []

    class Tracked(ServeProcess):
        def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
            super().__init__(args, tmp_path / f"serve-{len(started)}.log", env)
            started.append(self)

    try:
        yield Tracked
    finally:
        for p in started:
            p.stop()


def wait_for(predicate: object, timeout: float, interval: float = 0.5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def fleet_config(path: Path, vm_url: str, extra: str = "", step: float = 5.0) -> Path:
    """The node_exporter preset with a test-sized model and a short interval."""
    from lstmad.config import preset_text

    text = preset_text().replace("interval: 15s", f"interval: {step:g}s")
    text = text.replace("url: http://127.0.0.1:8428", f"url: {vm_url}\n  query_delay: 2s")
    text += (
        "model:\n  window: 20\n  hidden: 16\n  layers: 2\n"
        "training:\n  epochs: 4\n  max_windows: 4000\n  batch_size: 128\n"
        "serve:\n  entity_grace: 10m\n" + extra
    )
    path.write_text(text)
    return path


class SharedFleet:
    """A simulated fleet written into the session's VictoriaMetrics, with live samples."""

    def __init__(self, spec: object, config: Path, model: Path) -> None:
        self.spec = spec
        self.config = config
        self.model = model


@pytest.fixture(scope="session")
def shared_fleet(
    victoriametrics: ManagedProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedFleet]:
    """12 hosts, 6 h of history at 5 s, live samples, and one model trained on them via the CLI."""
    import threading

    from lstmad import simulate

    root = tmp_path_factory.mktemp("shared-fleet")
    now = time.time()
    spec = simulate.FleetSpec(hosts=12, step=5.0, seed=11, prefix=f"fleet-{int(now) % 100000}")
    simulate.import_to_vm(victoriametrics.url, simulate.generate_import_lines(spec, now - 6 * 3600, now))
    stop = threading.Event()
    live = threading.Thread(
        target=simulate.run_live, args=(spec, victoriametrics.url), kwargs={"stop": stop, "since": now}
    )
    live.start()
    try:
        config = fleet_config(root / "lstmad.yml", victoriametrics.url)
        model = root / "model"
        train = subprocess.run(
            [
                *LSTMAD,
                "train",
                "--config",
                str(config),
                "--start=-6h",
                "--model",
                str(model),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert train.returncode == 0, train.stderr
        yield SharedFleet(spec, config, model)
    finally:
        stop.set()
        live.join(10)
