"""Start and stop a local VictoriaMetrics and node_exporter on loopback.

Used by ``make run`` (the demo), the integration tests and the benchmarks, so
they all bring up the same stack the same way. Every process is started in its
own process group and stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from lstmad.errors import LstmadError

__all__ = [
    "ManagedProcess",
    "free_port",
    "start_node_exporter",
    "start_victoriametrics",
    "wait_http",
]

VM_BINARY = "victoria-metrics"
NODE_EXPORTER_BINARY = "prometheus-node-exporter"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers 2xx; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LstmadError(f"process for {url} exited with code {proc.returncode} before it was ready")
        try:
            resp = httpx.get(url, timeout=2.0)
            if resp.status_code < 300:
                return
            last = f"HTTP {resp.status_code}"
        except httpx.HTTPError as err:
            last = str(err) or type(err).__name__
        time.sleep(0.2)
    raise LstmadError(f"{url} not ready within {timeout:.0f}s ({last})")


@dataclass
class ManagedProcess:
    """A background process we started; :meth:`stop` ends it by PID."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _spawn(
    name: str, argv: Sequence[str], url: str, health: str, log_path: Path | None, timeout: float
) -> ManagedProcess:
    binary = shutil.which(argv[0])
    if binary is None:
        raise LstmadError(
            f"{argv[0]} is not installed (Debian package: "
            f"{'victoria-metrics' if argv[0] == VM_BINARY else 'prometheus-node-exporter'})"
        )
    with log_path.open("ab") if log_path else open(os.devnull, "wb") as out:
        proc = subprocess.Popen(
            [binary, *argv[1:]],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    managed = ManagedProcess(name, proc, url, log_path)
    try:
        wait_http(url + health, timeout, proc)
    except BaseException:
        managed.stop()
        raise
    return managed


def start_victoriametrics(
    data_dir: Path,
    port: int | None = None,
    *,
    scrape_config: Path | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    timeout: float = 60.0,
) -> ManagedProcess:
    """Single-node VictoriaMetrics on 127.0.0.1 that shows fresh samples at once.

    ``-search.latencyOffset=1s`` makes the newest samples visible (default 30 s);
    ``-dedup.minScrapeInterval=1ms`` makes a re-import idempotent.
    """
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        VM_BINARY,
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={data_dir}",
        "-retentionPeriod=10y",
        "-search.latencyOffset=1s",
        "-dedup.minScrapeInterval=1ms",
        "-loggerLevel=WARN",
    ]
    if scrape_config is not None:
        argv.append(f"-promscrape.config={scrape_config}")
    argv.extend(extra_args)
    return _spawn("victoria-metrics", argv, f"http://127.0.0.1:{port}", "/health", log_path, timeout)


def start_node_exporter(
    port: int | None = None, *, log_path: Path | None = None, timeout: float = 30.0
) -> ManagedProcess:
    """node_exporter on 127.0.0.1 (the systemd collector is off: there is no systemd here)."""
    port = port or free_port()
    argv = [
        NODE_EXPORTER_BINARY,
        f"--web.listen-address=127.0.0.1:{port}",
        "--no-collector.systemd",
    ]
    return _spawn("node_exporter", argv, f"http://127.0.0.1:{port}", "/metrics", log_path, timeout)


def write_scrape_config(path: Path, targets: dict[str, list[str]], interval: str = "15s") -> Path:
    """A promscrape config scraping each job's ``host:port`` targets."""
    lines = ["global:", f"  scrape_interval: {interval}", "scrape_configs:"]
    for job, addrs in targets.items():
        lines += [f"  - job_name: {job}"]
        if job == "lstmad":
            # Keep the scored host's instance label rather than lstmad's own address.
            lines += ["    honor_labels: true"]
        lines += ["    static_configs:", "      - targets:"]
        lines += [f"          - {a}" for a in addrs]
    path.write_text("\n".join(lines) + "\n")
    return path


def force_flush(vm_url: str) -> None:
    """Make just-imported samples searchable now (VictoriaMetrics only)."""
    httpx.get(f"{vm_url}/internal/force_flush", timeout=30.0)


@contextlib.contextmanager
def running(*processes: ManagedProcess) -> Iterator[tuple[ManagedProcess, ...]]:
    try:
        yield processes
    finally:
        for p in reversed(processes):
            p.stop()
