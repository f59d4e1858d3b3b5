"""``lstmad bench``: the performance figures of the issue, measured, never estimated.

Four benchmarks, each reusing the code ``serve`` and ``train`` run:

- **micro** (always): the streaming engine for ``--hosts`` entities: the median
  time of one streaming step (``score_seconds``) against the full-window
  recompute of the same entities (``window_seconds``), the ``/metrics`` render
  (per-entity exposition plus the self-monitoring registry), peak RSS and the
  training throughput of the default model. Prints one JSON object.
- **end to end** (``--e2e``): a real VictoriaMetrics on loopback holding a
  simulated node_exporter fleet, and the real scoring loop of ``serve`` (built
  by :func:`lstmad.server.build_service`, with a trained model loaded from its
  directory) in a child process, driven cycle by cycle with an injected clock:
  median and p99 of the whole cycle and the share of each stage, peak RSS.
  ``--scaling`` repeats it for several fleet sizes.
- **load** (``--load``): a real ``lstmad serve`` process on 1,000 live hosts,
  ``/metrics`` under 64 concurrent connections for 10 s with ``wrk``.
- **training** (``--training-run``): the real ``lstmad train`` on 7 days x 100
  hosts at 1-minute steps.

``--write PATH`` runs all four and writes the Markdown page (``make bench``
writes ``docs/benchmarks.md``); every figure on the page comes from that run.

Example::

    lstmad bench --hosts 2000 --json          # micro only, one line of JSON
    lstmad bench --write docs/benchmarks.md   # everything, minutes
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from lstmad.config import Config, ModelConfig, ServeConfig, ThresholdConfig, TrainingConfig, load_config
from lstmad.errors import LstmadError

__all__ = [
    "TARGETS",
    "add_arguments",
    "end_to_end",
    "load_test",
    "micro_bench",
    "render_page",
    "run_from_args",
    "training_run",
]

log = logging.getLogger(__name__)

# torch is imported where it is used, so that `lstmad --help` does not load it.

SCALING_HOSTS = (100, 1_000, 10_000, 50_000)
E2E_HOSTS = 10_000
MODEL_HOSTS = 50
LOAD_ENTITIES = 1_000
LOAD_INTERVAL = 2.0
TRAIN_HOSTS = 100
TRAIN_DAYS = 7
TRAIN_STEP = 60.0
GIB = 1024**3


@dataclass(frozen=True)
class Target:
    """One target of the issue: ``key`` in the results, at most or at least ``limit``."""

    key: str
    text: str
    limit: float
    at_most: bool
    unit: str

    def check(self, value: float | None) -> tuple[str, str]:
        """Whether ``value`` meets the target, and by how much it holds or misses."""
        if value is None or not math.isfinite(value):
            return "not measured", ""
        ok = value <= self.limit if self.at_most else value >= self.limit
        if ok:
            factor = self.limit / value if self.at_most else value / self.limit
            return "holds", f"{factor:.1f}x margin" if value else ""
        miss = value / self.limit - 1 if self.at_most else 1 - value / self.limit
        return "misses", f"by {100 * miss:.0f} %"


TARGETS = (
    Target("score_seconds", "streaming scoring step, 10,000 hosts x 8 features (median)", 0.050, True, "s"),
    Target("ratio", "full-window recompute / streaming step", 20.0, False, "x"),
    Target("e2e_cycle_median_seconds", "whole cycle against VictoriaMetrics, 10,000 hosts", 2.0, True, "s"),
    Target("render_seconds", "/metrics render, 10,000 hosts", 0.200, True, "s"),
    Target("serve_rss_bytes", "peak RSS of serve's loop and app, 10,000 hosts", float(GIB), True, "B"),
    Target("train_windows_per_second", "training throughput, default model", 5000.0, False, "windows/s"),
    Target("train_run_seconds", "`lstmad train`, 7 days x 100 hosts at 1-minute steps", 600.0, True, "s"),
    Target("load_p99_seconds", "/metrics p99 under 64 connections, 1,000 entities", 0.100, True, "s"),
)


# --- small helpers --------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def _p99(values: Sequence[float]) -> float:
    return float(np.quantile(np.asarray(values), 0.99)) if values else math.nan


def _peak_rss(pid: int | None = None) -> int:
    """Peak resident memory of a process (this one by default), in bytes.

    ``VmHWM`` belongs to the process's address space, which ``exec`` replaces;
    ``ru_maxrss`` does not start again at ``exec`` and so would charge a child
    with the memory of the parent that spawned it. ``ru_maxrss`` only where
    there is no ``/proc``.
    """
    try:
        status = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024 if pid is None else 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) * 1024 if match else 0


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _features(n: int) -> list[str]:
    return [f"f{i}" for i in range(n)]


def _random_detector(features: int, seed: int) -> Any:
    """The default model size with random weights, a fitted scaler and threshold (timing only)."""
    import torch

    from lstmad.detector import LSTMDetector
    from lstmad.threshold import threshold_from_config

    rng = np.random.default_rng(seed)
    det = LSTMDetector(_features(features), ModelConfig(), ThresholdConfig())
    torch.manual_seed(seed)
    det.model = det.build_model().eval()
    det.scaler.fit(rng.standard_normal((1000, features)))
    det.threshold = threshold_from_config(det.threshold_cfg).fit(rng.random(1000))
    return det


def _fleet_values(hosts: int, features: int, steps: int, seed: int) -> np.ndarray:
    """(steps, hosts, features) of smooth daily-looking signals with noise."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (1, hosts, features))
    t = np.arange(steps, dtype=np.float64)[:, None, None]
    noise = 0.1 * rng.standard_normal((steps, hosts, features))
    return np.sin(2 * np.pi * t / 240.0 + phase) + noise


def train_throughput(
    features: int, windows: int, threads: int | None = None, seed: int = 0, repeat: int = 1
) -> float:
    """Training windows per second of the default model and batch size (one epoch, no validation).

    A short untimed run first, so the optimiser's one-time imports are not counted;
    the median of ``repeat`` epochs of ``windows`` windows.
    """
    from lstmad.model import LSTMForecaster
    from lstmad.preprocessing import WindowSet
    from lstmad.training import train_forecaster

    mcfg = ModelConfig()
    rng = np.random.default_rng(seed)
    segments = [rng.standard_normal((2000, features)).astype(np.float32) for _ in range(4)]
    data = WindowSet(segments, mcfg.window + 1)
    base = TrainingConfig(epochs=1, threads=threads or 0, seed=seed)
    model = LSTMForecaster(features, mcfg.hidden, mcfg.layers, mcfg.dropout)
    warm = TrainingConfig(epochs=1, max_windows=base.batch_size, threads=base.threads, seed=seed)
    train_forecaster(model, data, None, warm)
    cfg = TrainingConfig(epochs=1, max_windows=windows, threads=base.threads, seed=seed)
    return _median([train_forecaster(model, data, None, cfg).windows_per_second for _ in range(repeat)])


# --- micro ------------------------------------------------------------------------------------


def micro_bench(
    hosts: int,
    features: int = 8,
    *,
    threads: int = 1,
    steps: int = 20,
    window_repeat: int = 5,
    render_repeat: int = 10,
    train_windows: int = 4096,
    seed: int = 0,
) -> dict[str, Any]:
    """The engine, render and training figures for ``hosts`` entities (see the module doc)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from lstmad.exposition import EntityMetrics, render_entities
    from lstmad.service import Monitor
    from lstmad.training import training_threads

    serve = ServeConfig()
    det = _random_detector(features, seed)
    names = [f"bench-host-{i}:9100" for i in range(hosts)]
    window = det.window
    data = _fleet_values(hosts, features, window + steps, seed)
    with _torch_threads(threads):
        engine = det.new_engine(resync_every=serve.resync_every)
        t0 = time.perf_counter()
        for t in range(window):
            result = engine.step(names, data[t])
        fill_seconds = time.perf_counter() - t0
        step_times = []
        for t in range(window, window + steps):
            t0 = time.perf_counter()
            result = engine.step(names, data[t])
            step_times.append(time.perf_counter() - t0)
        window_times = _timed(lambda: engine.resync(names), window_repeat)
        slots = np.fromiter((engine.index[n] for n in names), dtype=np.int64, count=hosts)
        naive_times = _timed(lambda: det.forecast_windows(engine.windows(slots)), max(window_repeat // 2, 1))

    score = np.nan_to_num(result.score, nan=0.0)
    metrics = EntityMetrics(
        entities=names,
        score=score,
        anomaly=(score > 1.0).astype(np.float64),
        error=result.error,
        last_scored=np.full(hosts, time.time()),
        anomalies_total=np.zeros(hosts),
        feature_errors=result.feature_errors,
        feature_names=det.features,
        exported=result.scored,
    )
    registry = CollectorRegistry(auto_describe=True)
    Monitor(registry)
    body = b""

    def render() -> None:
        nonlocal body
        body = generate_latest(registry) + render_entities(metrics, "instance", serve.feature_errors_top_k)

    render_times = _timed(render, render_repeat)
    default_threads = training_threads(TrainingConfig())
    # The default thread count: the median of three epochs; the others: one epoch of half
    # the windows, to bound the run when a contended machine makes them very slow.
    by_threads = {
        str(n): round(
            train_throughput(features, train_windows, n, seed, repeat=3)
            if n == default_threads
            else train_throughput(features, max(train_windows // 2, 1), n, seed),
            1,
        )
        for n in sorted({1, 2, default_threads})
    }
    score_seconds = _median(step_times)
    window_seconds = _median(window_times)
    return {
        "hosts": hosts,
        "features": features,
        "threads": threads,
        "score_seconds": score_seconds,
        "score_p99_seconds": _p99(step_times),
        "score_steps": len(step_times),
        "window_seconds": window_seconds,
        "window_repeats": len(window_times),
        "window_naive_seconds": _median(naive_times),
        "ratio": window_seconds / score_seconds,
        "fill_seconds": fill_seconds,
        "render_seconds": _median(render_times),
        "render_bytes": len(body),
        "render_series": body.count(b"\n") - body.count(b"\n#"),
        "rss_bytes": _peak_rss(),
        "train_windows_per_second": by_threads[str(default_threads)],
        "train_threads": default_threads,
        "train_windows_per_second_by_threads": by_threads,
        "train_batch_size": TrainingConfig().batch_size,
        "train_windows": train_windows,
        "model": {"window": window, "layers": det.model_cfg.layers, "hidden": det.model_cfg.hidden},
    }


# --- processes --------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """End a child we started: SIGTERM, then SIGKILL, by PID."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _run_child(
    argv: Sequence[str], *, stdin: bytes | None, timeout: float, log_path: Path
) -> tuple[int, bytes, float]:
    """Run a child to completion (killed after ``timeout``): exit code, stdout, wall seconds."""
    with log_path.open("ab") as err:
        t0 = time.perf_counter()
        try:
            run = subprocess.run(
                list(argv),
                input=stdin,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                timeout=timeout,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise LstmadError(f"{argv[0]} {' '.join(argv[1:3])} ran longer than {timeout:.0f}s") from exc
        return run.returncode, run.stdout, time.perf_counter() - t0


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _last_json(stdout: bytes) -> dict[str, Any]:
    for line in reversed(stdout.decode(errors="replace").splitlines()):
        if line.startswith("{"):
            doc = json.loads(line)
            if isinstance(doc, dict):
                return doc
    raise LstmadError(f"expected a JSON line from the child process, found {stdout[-300:]!r}")


# --- the stack: VictoriaMetrics and a simulated fleet -----------------------------------------


def _start_vm(workdir: Path, name: str) -> Any:
    from lstmad.localstack import start_victoriametrics

    data = workdir / f"vm-{name}"
    shutil.rmtree(data, ignore_errors=True)
    # The start of a 50,000-host fleet reads 70 steps of every series at once: more
    # than VictoriaMetrics' default 30 s per query and 300,000 series allow.
    limits = ["-search.maxQueryDuration=10m", "-search.maxUniqueTimeseries=5000000"]
    return start_victoriametrics(data, extra_args=limits, log_path=workdir / f"vm-{name}.log")


def _discard_vm(vm: Any, workdir: Path, name: str) -> None:
    vm.stop()
    shutil.rmtree(workdir / f"vm-{name}", ignore_errors=True)


def _wait_merges(vm_url: str, timeout: float = 180.0) -> float:
    """Wait until VictoriaMetrics has no merge running (an import starts many); return the wait.

    A long-running VictoriaMetrics merged its parts long ago; measuring queries
    while it merges a fresh import would charge the merges to the queries.
    """
    t0 = time.perf_counter()
    quiet = 0
    while time.perf_counter() - t0 < timeout:
        text = httpx.get(f"{vm_url}/metrics", timeout=10.0).text
        active = sum(float(v) for v in re.findall(r"^vm_active_merges\{[^}]*\} (\S+)$", text, re.M))
        quiet = quiet + 1 if active == 0 else 0
        if quiet >= 3:
            break
        time.sleep(1.0)
    return time.perf_counter() - t0


def _import_fleet(vm_url: str, hosts: int, step: float, start: float, end: float) -> tuple[int, float]:
    from lstmad.simulate import FleetSpec, generate_import_lines, import_to_vm

    t0 = time.perf_counter()
    samples = import_to_vm(
        vm_url, generate_import_lines(FleetSpec(hosts=hosts, step=step), start, end), timeout=600
    )
    return samples, time.perf_counter() - t0


def _config(vm_url: str, **overrides: Any) -> Config:
    flat = {"victoriametrics.url": vm_url, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return load_config(None, overrides=flat)


def _write_config(path: Path, cfg: Config) -> Path:
    """A YAML config file for a child ``lstmad`` process (the preset's features, our settings)."""
    doc = {
        "victoriametrics": {
            "url": cfg.victoriametrics.url,
            "timeout": f"{cfg.victoriametrics.timeout:g}s",
            "query_delay": f"{cfg.victoriametrics.query_delay:g}s",
        },
        "entity_label": cfg.entity_label,
        "interval": f"{cfg.interval:g}s",
        "features": [{"name": f.name, "query": f.query} for f in cfg.features],
        "model": {"path": cfg.model.path},
        "serve": {"listen": cfg.serve.listen},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def prepare_model(workdir: Path, *, hosts: int = MODEL_HOSTS, hours: float = 6.0, seed: int = 42) -> Path:
    """Train a real model of the default size on a small simulated fleet; return its directory.

    A few epochs on ``hosts`` hosts x ``hours`` of 15-second data: enough for real
    scaler and threshold values, in seconds. The same network is saved once more
    with a 2-second step for the load test (which needs fast cycles, not accuracy).
    """
    from lstmad.artifact import save_model
    from lstmad.detector import LSTMDetector
    from lstmad.source import PromClient, fetch_range

    vm = _start_vm(workdir, "model")
    try:
        step = 15.0
        end = math.floor(time.time() / step) * step
        _import_fleet(vm.url, hosts, step, end - hours * 3600 - 300, end)
        cfg = _config(vm.url)
        with PromClient(cfg.victoriametrics) as client:
            frame = fetch_range(client, cfg.features, cfg.entity_label, end - hours * 3600, end, step)
    finally:
        _discard_vm(vm, workdir, "model")
    det = LSTMDetector(cfg.feature_names, cfg.model, cfg.threshold)
    det.fit(list(frame.values), TrainingConfig(epochs=3, max_windows=4000, seed=seed))
    path = workdir / "model-15s"
    save_model(path, det, entity_label=cfg.entity_label, interval=step, extra_metadata={"source": "bench"})
    save_model(
        workdir / "model-2s", det, entity_label=cfg.entity_label, interval=LOAD_INTERVAL,
        extra_metadata={"source": "bench"},
    )  # fmt: skip
    return path


# --- end to end: the real scoring loop against VictoriaMetrics -----------------------------------


class _Clock:
    """The injected clock of the scoring loop: time passes only when the benchmark says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cycle_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Drive ``serve``'s scoring loop through ``spec["cycles"]`` cycles (runs in a child process).

    The loop is built by :func:`lstmad.server.build_service`, exactly as ``serve``
    builds it, then given an injected clock. Cycle 0 is the start (every host's
    window fetched from history and recomputed); cycles 1.. each advance one step.
    """
    import torch

    from lstmad.artifact import load_model
    from lstmad.server import build_service

    cfg = _config(spec["vm_url"], victoriametrics__timeout=spec["timeout"])
    torch.set_num_threads(cfg.serve.threads or 1)
    model = load_model(spec["model"], cfg.feature_names)
    loop, registry, _app = build_service(cfg, model)
    clock = _Clock(0.0)
    loop.clock = clock  # the constructor's clock argument, set after build_service wired the rest
    http_seconds = [0.0]
    get_once = getattr(loop.client, "_get_once", None)
    if get_once is not None:

        def timed_get(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return get_once(*args, **kwargs)
            finally:
                http_seconds[0] += time.perf_counter() - t0

        setattr(loop.client, "_get_once", timed_get)  # noqa: B010 - instrumentation only

    def stage(name: str) -> float:
        return float(registry.get_sample_value("lstmad_cycle_duration_seconds_sum", {"stage": name}) or 0.0)

    step = cfg.interval
    end = float(spec["end"])
    cycles = int(spec["cycles"])
    budget = float(spec["budget"])
    records = []
    started = time.perf_counter()
    for k in range(cycles + 1):
        clock.now = end - (cycles - k) * step + cfg.victoriametrics.query_delay + 1.0
        before = {s: stage(s) for s in ("fetch", "score", "publish")}
        http_before = http_seconds[0]
        t0 = time.perf_counter()
        ok = loop.run_cycle()
        total = time.perf_counter() - t0
        record = {s: stage(s) - before[s] for s in before}
        record["http"] = http_seconds[0] - http_before if get_once is not None else math.nan
        record["total"] = total
        record["ok"] = ok
        record["entities"] = float(registry.get_sample_value("lstmad_entities") or 0.0)
        record["rss_bytes"] = _peak_rss()
        records.append(record)
        if not ok:
            break
        if k >= 2 and time.perf_counter() - started > budget:
            break
    return {
        "records": records,
        "body_bytes": len(loop.snapshot.body),
        "rss_bytes": _peak_rss(),
        "threads": torch.get_num_threads(),
    }


def _cycle_worker_main() -> int:
    """Entry point of the child process: a JSON spec on stdin, a JSON result on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(sys.stdin.read())
    print(json.dumps(cycle_worker(spec)), flush=True)
    return 0


def _summarise_cycles(hosts: int, result: dict[str, Any]) -> dict[str, Any]:
    records = result["records"]
    if not records:
        raise LstmadError(f"the scoring loop ran no cycle for {hosts} hosts")
    start, steady = records[0], records[1:]
    failed = [i for i, r in enumerate(records) if not r["ok"]]
    totals = [r["total"] for r in steady]
    out: dict[str, Any] = {
        "hosts": hosts,
        "cycles": len(steady),
        "failed_cycles": len(failed),
        "startup_seconds": start["total"],
        "startup_fetch_seconds": start["fetch"],
        "startup_stage_seconds": {
            "http": start["http"],
            "parse": start["fetch"] - start["http"],
            "score": start["score"],
            "publish": start["publish"],
        },
        "cycle_median_seconds": _median(totals),
        "cycle_p99_seconds": _p99(totals),
        "cycle_max_seconds": max(totals) if totals else math.nan,
        "entities_scored": steady[-1]["entities"] if steady else start["entities"],
        "body_bytes": result["body_bytes"],
        "rss_bytes": result["rss_bytes"],
        "threads": result["threads"],
    }
    if steady:
        stages = {
            "http": [r["http"] for r in steady],
            "parse": [r["fetch"] - r["http"] for r in steady],
            "score": [r["score"] for r in steady],
            "publish": [r["publish"] for r in steady],
        }
        whole = sum(totals)
        out["stage_median_seconds"] = {k: _median(v) for k, v in stages.items()}
        out["stage_share"] = {k: (sum(v) / whole if whole else math.nan) for k, v in stages.items()}
    return out


def end_to_end(
    hosts: int,
    model_dir: Path,
    workdir: Path,
    *,
    cycles: int = 20,
    budget: float = 600.0,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Import ``hosts`` simulated hosts into a fresh VictoriaMetrics and time the scoring loop on them.

    History is imported only as far back as the start needs (the window, the
    loop's margin and the queries' 1-minute look-behind) plus one step per cycle.
    """
    from lstmad.localstack import force_flush

    step = 15.0
    cfg = _config("http://127.0.0.1:1")
    history = ModelConfig().window + 10 + 8
    end = math.floor(time.time() / step) * step
    first = end - (cycles + history) * step
    name = f"e2e-{hosts}"
    vm = _start_vm(workdir, name)
    try:
        samples, import_seconds = _import_fleet(vm.url, hosts, step, first, end)
        force_flush(vm.url)
        merge_wait = _wait_merges(vm.url)
        spec = {
            "vm_url": vm.url,
            "model": str(model_dir),
            "end": end,
            "cycles": cycles,
            "budget": budget,
            "timeout": f"{timeout:g}s",
        }
        code = "import sys; from lstmad.bench import _cycle_worker_main; sys.exit(_cycle_worker_main())"
        rc, stdout, wall = _run_child(
            _python(code),
            stdin=json.dumps(spec).encode(),
            timeout=budget + 1800,
            log_path=workdir / f"{name}.log",
        )
        if rc != 0:
            raise LstmadError(
                f"the cycle worker for {hosts} hosts exited with {rc}; see {workdir / name}.log"
            )
        out = _summarise_cycles(hosts, _last_json(stdout))
    finally:
        _discard_vm(vm, workdir, name)
    out.update(
        {
            "samples_imported": samples,
            "import_seconds": import_seconds,
            "merge_wait_seconds": merge_wait,
            "worker_seconds": wall,
            "query_timeout_seconds": timeout,
            "interval_seconds": cfg.interval,
            "features": len(cfg.features),
        }
    )
    return out


# --- load: wrk against a real `lstmad serve` -----------------------------------------------------

_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk_seconds(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise LstmadError(f"expected a wrk latency like 12.3ms, found {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures of ``wrk --latency`` output: requests, errors, latency percentiles."""
    out: dict[str, Any] = {"percentiles": {}}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M):
        out["percentiles"][pct] = _wrk_seconds(value)
    match = re.search(r"(\d+) requests in ([0-9.]+)(\w+), ([0-9.]+)(\w+) read", output)
    if match is None:
        raise LstmadError(f"expected wrk's summary line, found {output[-400:]!r}")
    out["requests"] = int(match.group(1))
    out["duration_seconds"] = _wrk_seconds(match.group(2) + match.group(3))
    out["read"] = match.group(4) + match.group(5)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    out["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    out["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    out["requests_per_second"] = float(rps.group(1)) if rps else math.nan
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", output)
    if latency:
        out["mean_seconds"] = _wrk_seconds(latency.group(1))
        out["max_seconds"] = _wrk_seconds(latency.group(3))
    return out


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else math.nan


def load_test(
    workdir: Path,
    model_dir: Path,
    *,
    entities: int = LOAD_ENTITIES,
    connections: int = 64,
    duration: float = 10.0,
    interval: float = LOAD_INTERVAL,
) -> dict[str, Any]:
    """``/metrics`` of a real ``lstmad serve`` under ``wrk`` while its loop scores live data."""
    from lstmad.localstack import free_port, wait_http
    from lstmad.simulate import FleetSpec, run_live

    wrk = shutil.which("wrk")
    if wrk is None:
        return {"skipped": "wrk is not installed (Debian package wrk; `make bench` installs it)"}
    vm = _start_vm(workdir, "load")
    stop = threading.Event()
    serve: subprocess.Popen[bytes] | None = None
    writer: threading.Thread | None = None
    try:
        end = math.floor(time.time() / interval) * interval
        _import_fleet(vm.url, entities, interval, end - (ModelConfig().window + 40) * interval - 90, end)
        spec = FleetSpec(hosts=entities, step=interval)
        writer = threading.Thread(
            target=run_live, args=(spec, vm.url), kwargs={"stop": stop, "since": end}, daemon=True
        )
        writer.start()
        port = free_port()
        cfg = _config(
            vm.url,
            interval=f"{interval:g}s",
            victoriametrics__query_delay="4s",
            model__path=str(model_dir),
            serve__listen=f"127.0.0.1:{port}",
        )
        cfg_path = _write_config(workdir / "load.yaml", cfg)
        with (workdir / "load-serve.log").open("ab") as serve_log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "lstmad.cli", "serve", "--config", str(cfg_path)],
                stdout=serve_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", timeout=120.0, proc=serve)
        time.sleep(2 * interval)
        before = httpx.get(base + "/metrics", timeout=10.0).text
        t0 = time.time()
        run = subprocess.run(
            [
                wrk,
                "-t2",
                f"-c{connections}",
                f"-d{duration:g}s",
                "--latency",
                "--timeout",
                "5s",
                base + "/metrics",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
        elapsed = time.time() - t0
        after = httpx.get(base + "/metrics", timeout=10.0).text
        if run.returncode != 0:
            raise LstmadError(f"wrk exited with {run.returncode}: {run.stderr[-300:]}")
        result = parse_wrk(run.stdout)
        cycles = _sample(after, "lstmad_cycles_total", '{outcome="success"}') - _sample(
            before, "lstmad_cycles_total", '{outcome="success"}'
        )
        failures = _sample(after, "lstmad_cycles_total", '{outcome="failure"}') - _sample(
            before, "lstmad_cycles_total", '{outcome="failure"}'
        )
        stage_sum = sum(
            _sample(after, "lstmad_cycle_duration_seconds_sum", f'{{stage="{s}"}}')
            - _sample(before, "lstmad_cycle_duration_seconds_sum", f'{{stage="{s}"}}')
            for s in ("fetch", "score", "publish")
        )
        result.update(
            {
                "entities": entities,
                "connections": connections,
                "wrk_seconds": duration,
                "wrk_output": run.stdout,
                "interval_seconds": interval,
                "elapsed_seconds": elapsed,
                "cycles_during": cycles,
                "cycles_expected": math.floor(elapsed / interval),
                "cycle_failures_during": failures,
                "cycle_mean_seconds_during": stage_sum / cycles if cycles else math.nan,
                "entities_scored": _sample(after, "lstmad_entities"),
                "metrics_bytes": len(after.encode()),
                "serve_rss_bytes": _peak_rss(serve.pid),
                "all_answered": result["non_2xx"] == 0 and not any(result["socket_errors"].values()),
            }
        )
        result["p99_seconds"] = result["percentiles"].get("99", math.nan)
        result["keeps_interval"] = cycles >= result["cycles_expected"] - 1 and failures == 0
        return result
    finally:
        stop.set()
        if serve is not None:
            _stop(serve)
        if writer is not None:
            writer.join(30)
        _discard_vm(vm, workdir, "load")


# --- training: the real `lstmad train` -----------------------------------------------------------


# ``lstmad train`` exactly as the console script runs it (``lstmad.cli.main``), then the
# process's own peak RSS, read before it exits.
_TRAIN_WRAPPER = """\
import re, sys
from lstmad.cli import main
rc = main(sys.argv[1:])
hwm = re.search(r"^VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read(), re.M)
print('{"rss_bytes": %d}' % (int(hwm.group(1)) * 1024 if hwm else 0), flush=True)
sys.exit(rc)
"""


def training_run(
    workdir: Path, *, hosts: int = TRAIN_HOSTS, days: float = TRAIN_DAYS, step: float = TRAIN_STEP
) -> dict[str, Any]:
    """``lstmad train`` (default model and training settings) on ``days`` x ``hosts`` at ``step``."""
    end = math.floor(time.time() / step) * step
    start = end - days * 86400
    vm = _start_vm(workdir, "train")
    try:
        samples, import_seconds = _import_fleet(vm.url, hosts, step, start - 600, end)
        model_dir = workdir / "model-train"
        shutil.rmtree(model_dir, ignore_errors=True)
        cfg = _config(vm.url, interval=f"{step:g}s", model__path=str(model_dir))
        cfg_path = _write_config(workdir / "train.yaml", cfg)
        argv = [
            *_python(_TRAIN_WRAPPER), "train", "--config", str(cfg_path),
            "--start", f"{start:.0f}", "--end", f"{end:.0f}", "--no-progress",
        ]  # fmt: skip
        rc, out, wall = _run_child(argv, stdin=None, timeout=1800, log_path=workdir / "train.log")
        if rc != 0:
            raise LstmadError(f"lstmad train exited with {rc}; see {workdir / 'train.log'}")
        rss = int(_last_json(out)["rss_bytes"])
        metadata = json.loads((model_dir / "metadata.json").read_text())
    finally:
        _discard_vm(vm, workdir, "train")
    return {
        "hosts": hosts,
        "days": days,
        "step_seconds": step,
        "samples_imported": samples,
        "import_seconds": import_seconds,
        "train_run_seconds": wall,
        "training_seconds": metadata.get("training_seconds"),
        "epochs_run": metadata.get("epochs_run"),
        "windows_per_second": metadata.get("train_windows_per_second"),
        "rss_bytes": rss,
        "training_config": {
            k: getattr(TrainingConfig(), k) for k in ("epochs", "batch_size", "max_windows", "threads")
        },
    }


# --- the page -------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import torch

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    versions = {}
    if shutil.which("dpkg-query"):
        for pkg in ("victoria-metrics", "wrk"):
            run = subprocess.run(
                ["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True, check=False
            )
            versions[pkg] = run.stdout.strip() if run.returncode == 0 else "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "packages": versions,
    }


def _fmt_seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1.0:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _fmt_bytes(value: float | None) -> str:
    if value is None or not value:
        return "n/a"
    return f"{value / 2**20:.0f} MiB"


def _fmt(target: Target, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if target.unit == "s":
        return _fmt_seconds(value)
    if target.unit == "B":
        return _fmt_bytes(value)
    if target.unit == "x":
        return f"{value:.1f}x"
    return f"{value:,.0f} {target.unit}"


def _target_values(results: dict[str, Any]) -> dict[str, float | None]:
    micro = results.get("micro", {})
    e2e = results.get("e2e", {})
    load = results.get("load", {})
    train = results.get("training", {})
    return {
        "score_seconds": micro.get("score_seconds"),
        "ratio": micro.get("ratio"),
        "render_seconds": micro.get("render_seconds"),
        "train_windows_per_second": micro.get("train_windows_per_second"),
        "e2e_cycle_median_seconds": e2e.get("cycle_median_seconds"),
        "serve_rss_bytes": e2e.get("rss_bytes"),
        "train_run_seconds": train.get("train_run_seconds"),
        "load_p99_seconds": load.get("p99_seconds"),
    }


def _superlinear(scaling: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(stage, sentence) for each stage whose cost per host grows between two fleet sizes.

    A stage is named when its time grows more than 1.5 times faster than the
    number of hosts; stages under 5 ms at the smaller size are left out (noise).
    """
    notes = []
    ok = [s for s in scaling if s.get("stage_median_seconds") and s.get("cycles")]
    for small, big in itertools.pairwise(ok):
        grow = big["hosts"] / small["hosts"]
        for phase, key in (("", "stage_median_seconds"), ("start: ", "startup_stage_seconds")):
            for stage in ("http", "parse", "score", "publish"):
                a = small.get(key, {}).get(stage, 0.0)
                b = big.get(key, {}).get(stage, 0.0)
                if a > 0.005 and b / a > 1.5 * grow:
                    notes.append(
                        (
                            phase + stage,
                            f"{phase}`{stage}` grows {b / a:.0f}x from {small['hosts']:,} to "
                            f"{big['hosts']:,} hosts ({grow:.0f}x the hosts)",
                        )
                    )
    return notes


WHY = {
    "score": (
        "`score` is the streaming step and the loop's bookkeeping around it. The step, the ring buffers "
        "and the table updates are linear in the hosts, so growth beyond that comes from the loop's "
        "per-cycle bookkeeping: look for a comprehension over all entities that does work per entity "
        "proportional to the fleet (an earlier `ScoringLoop._cycle` rebuilt `set(names)` once for "
        "every tracked host, which made this stage quadratic)."
    ),
    "http": (
        "`http` is VictoriaMetrics evaluating the eight queries (each selects every series of its metric "
        "names and aggregates them by instance), compressing and sending the answers; this benchmark "
        "does not break that time down further."
    ),
    "parse": (
        "`parse` makes one label mapping per series and one pass over the samples, so it should be "
        "linear in the series."
    ),
    "publish": "`publish` renders every host's series once; it should be linear in the hosts.",
    "start: http": (
        "`start: http` is VictoriaMetrics evaluating 71 steps of every series of the fleet at once "
        "(the windows); this benchmark does not break that time down further."
    ),
    "start: parse": (
        "`start: parse` handles answers of 71 samples per series, hundreds of megabytes of JSON for the "
        "largest fleet, held in memory together with the aligned grid."
    ),
    "start: score": (
        "`start: score` steps the engine through the 71 steps of history and recomputes every window "
        "once; by construction that is linear in the hosts, and this benchmark does not break it down "
        "further."
    ),
    "start: publish": "`start: publish` renders every host's series once.",
}


def render_page(results: dict[str, Any], command: str) -> str:
    """The Markdown page of one run; every figure comes from ``results``."""
    machine = results["machine"]
    micro = results.get("micro", {})
    e2e = results.get("e2e", {})
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {results['date']}. Every figure on this page comes from that run; "
        "rerun the command to refresh it (`make bench` does).",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores; memory {machine['memory_bytes'] / GIB:.1f} GiB; "
        f"Linux {machine['kernel']}",
        f"- Python {machine['python']}, torch {machine['torch']}, numpy {machine['numpy']}; "
        + ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items()),
        f"- Load average (1 min) at the start and the end of the run: {results['load_average'][0]:.2f} and "
        f"{results['load_average'][1]:.2f}. The machine is shared: a load above 0 means other processes "
        "competed for the cores, and the timings are then pessimistic.",
        f"- torch intra-op threads for scoring: {micro.get('threads', 'n/a')} (see *Threads* below).",
        "",
        "## Targets (from the issue)",
        "",
        "| target | limit | measured | verdict |",
        "|---|---|---|---|",
    ]
    values = _target_values(results)
    for target in TARGETS:
        value = values.get(target.key)
        verdict, how = target.check(value)
        limit = ("at most " if target.at_most else "at least ") + _fmt(target, target.limit)
        lines.append(
            f"| {target.text} | {limit} | {_fmt(target, value)} | {verdict}{', ' + how if how else ''} |"
        )
    if micro:
        lines += [
            "",
            f"## Engine, render and training throughput ({micro['hosts']:,} hosts x "
            f"{micro['features']} features)",
            "",
            "The default model (2 LSTM layers of 32 units, window 60) with random weights; timing does not "
            "depend on the weights.",
            "",
            "| figure | value |",
            "|---|---|",
            f"| streaming step, all hosts (median of {micro['score_steps']}) | "
            f"{_fmt_seconds(micro['score_seconds'])} |",
            f"| streaming step, p99 | {_fmt_seconds(micro['score_p99_seconds'])} |",
            f"| full-window recompute of all hosts, as the engine does it (median of "
            f"{micro['window_repeats']}) | {_fmt_seconds(micro['window_seconds'])} |",
            f"| ratio (`window_seconds / score_seconds`) | {micro['ratio']:.1f}x |",
            "| full-window recompute the naive way (the network's forecast at every position of "
            f"every window, the last one kept) | {_fmt_seconds(micro['window_naive_seconds'])} |",
            f"| `/metrics` render: per-entity exposition + self-monitoring registry (median) | "
            f"{_fmt_seconds(micro['render_seconds'])} ({micro['render_bytes'] / 2**20:.1f} MiB, "
            f"{micro['render_series']:,} series) |",
            f"| peak RSS of the benchmark process | {_fmt_bytes(micro['rss_bytes'])} |",
            f"| training, windows/s at batch {micro['train_batch_size']}, 1 thread (median of 3 epochs "
            f"of {micro['train_windows']:,} windows) | "
            f"{micro['train_windows_per_second_by_threads']['1']:,.0f} |",
            f"| training, windows/s at batch {micro['train_batch_size']}, 2 threads (one epoch of "
            f"{micro['train_windows'] // 2:,} windows) | "
            f"{micro['train_windows_per_second_by_threads']['2']:,.0f} |",
        ]
    if e2e:
        lines += _e2e_section(e2e)
    scaling = results.get("scaling", [])
    if scaling:
        lines += _scaling_section(scaling)
    load = results.get("load")
    if load:
        lines += _load_section(load)
    train = results.get("training")
    if train:
        lines += [
            "",
            f"## Training: `lstmad train`, {train['days']:g} days x {train['hosts']} hosts at "
            f"{train['step_seconds']:g}-second steps",
            "",
            f"The simulated fleet ({train['samples_imported']:,} samples) in a fresh VictoriaMetrics; "
            "the real `lstmad train` with the preset queries and the default model and training settings "
            f"({', '.join(f'{k} {v}' for k, v in train['training_config'].items())}; `threads: 0` trains on "
            "one thread).",
            "",
            "| figure | value |",
            "|---|---|",
            "| whole command (fetch, training, threshold, save) | "
            f"{_fmt_seconds(train['train_run_seconds'])} |",
            f"| training loop | {_fmt_seconds(train['training_seconds'])} |",
            f"| epochs run (early stopping) | {train['epochs_run']} |",
            f"| windows/s over the training loop, validation included | {train['windows_per_second']:,.0f} |",
            f"| peak RSS of `lstmad train` | {_fmt_bytes(train['rss_bytes'])} |",
        ]
    lines += [
        "",
        "## Threads",
        "",
        "A step of this small LSTM is a matrix product of a few hundred kFLOP per time step; with two "
        "intra-op threads torch synchronises them at every step, and when anything else runs on the "
        "machine (the scraper, VictoriaMetrics, another job) a spinning thread waits for a core that is "
        "busy. The two training rows above measure the effect on this machine. `lstmad train` therefore "
        "trains on one thread unless `training.threads` says otherwise, and the scoring figures here "
        "(engine and end to end) are measured with one intra-op thread (`--threads`; `serve.threads`, "
        "0 meaning 1, in the cycle worker).",
        "",
        "## How it is measured",
        "",
        "- Medians over the stated number of repetitions; p99 interpolated (with 20 cycles it is close "
        "to the maximum). Peak RSS is the kernel's high-water mark of the process's memory (`VmHWM`, "
        "which starts again when a process `exec`s, unlike `ru_maxrss`).",
        "- End to end: the cycle worker is a child process that builds the service with "
        "`lstmad.server.build_service` (the same wiring as `serve`), loads the model directory with "
        "`load_model` and replaces the loop's clock, so each cycle sees exactly one new grid point. "
        "`http` is the time inside the HTTP requests (VictoriaMetrics evaluating the query, gzip, "
        "transfer), `parse` the rest of the fetch stage (`parse_response` and `align`); `score` and "
        "`publish` are the loop's own `lstmad_cycle_duration_seconds` stages.",
        "- The end-to-end model is a real one of the default size, trained for a few epochs on "
        f"{MODEL_HOSTS} simulated hosts, with real scaler and threshold.",
        "- Each fleet size gets a fresh VictoriaMetrics holding only the history the start needs (the "
        "window, the loop's margin and the queries' 1-minute look-behind) plus one step per cycle; the "
        "benchmark waits for VictoriaMetrics to finish merging the import before the first cycle. "
        "VictoriaMetrics runs with `-search.maxQueryDuration=10m -search.maxUniqueTimeseries=5000000` "
        "and the loop with a 120 s query timeout, so the start of the largest fleet is not cut short.",
        "",
        "## Raw results",
        "",
        "```json",
        json.dumps(results, indent=1, sort_keys=True, default=_json_default),
        "```",
        "",
    ]
    return "\n".join(lines)


def _e2e_section(e2e: dict[str, Any]) -> list[str]:
    share = e2e.get("stage_share", {})
    med = e2e.get("stage_median_seconds", {})
    lines = [
        "",
        f"## End to end: {e2e['hosts']:,} hosts x {e2e['features']} features against VictoriaMetrics",
        "",
        f"A simulated node_exporter fleet ({e2e['samples_imported']:,} samples) in a fresh "
        "VictoriaMetrics on loopback; the scoring loop of `serve` with the preset queries, "
        f"{e2e['cycles']} cycles after the start ({e2e['failed_cycles']} failed), "
        f"{e2e['entities_scored']:,.0f} entities scored per cycle.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| whole cycle, median | {_fmt_seconds(e2e['cycle_median_seconds'])} |",
        f"| whole cycle, p99 | {_fmt_seconds(e2e['cycle_p99_seconds'])} |",
        f"| start (every window fetched and recomputed) | {_fmt_seconds(e2e['startup_seconds'])} |",
        f"| peak RSS of the cycle worker (serve's loop and app) | {_fmt_bytes(e2e['rss_bytes'])} |",
        f"| `/metrics` body | {e2e['body_bytes'] / 2**20:.1f} MiB |",
        "",
        "| stage | median | share of the cycle |",
        "|---|---|---|",
    ]
    for stage, what in (
        ("http", "fetch: VictoriaMetrics answering 8 range queries"),
        ("parse", "fetch: parse and align"),
        ("score", "score (streaming step and bookkeeping)"),
        ("publish", "publish (render the snapshot)"),
    ):
        if stage in med:
            lines.append(f"| {what} | {_fmt_seconds(med[stage])} | {100 * share[stage]:.0f} % |")
    return lines


def _scaling_section(scaling: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Scaling",
        "",
        "| hosts | cycles | cycle median | cycle p99 | http | parse | score | publish | start | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scaling:
        if "error" in s:
            lines.append(f"| {s['hosts']:,} | failed: {s['error']} | | | | | | | | |")
            continue
        med = s.get("stage_median_seconds", {})
        lines.append(
            f"| {s['hosts']:,} | {s['cycles']} | {_fmt_seconds(s['cycle_median_seconds'])} | "
            f"{_fmt_seconds(s['cycle_p99_seconds'])} | "
            + " | ".join(_fmt_seconds(med.get(k)) for k in ("http", "parse", "score", "publish"))
            + f" | {_fmt_seconds(s['startup_seconds'])} | {_fmt_bytes(s['rss_bytes'])} |"
        )
    for s in scaling:
        if s.get("cycles") is not None and s["cycles"] < 20:
            lines += [
                "",
                f"{s['hosts']:,} hosts ran {s['cycles']} cycles after the start, not 20 (fewer cycles "
                "are asked for above 10,000 hosts, and a run stops after 2 cycles once it has used "
                "its time budget).",
            ]
    notes = _superlinear(scaling)
    lines += [
        "",
        "Where the cost grows faster than the number of hosts (a stage named when its time grows more "
        "than 1.5 times faster than the hosts; `start:` is the first cycle, which fetches and recomputes "
        "every window):",
        "",
    ]
    if notes:
        lines += [f"- {text}." for _, text in notes]
        stages = {stage for stage, _ in notes}
        lines += [""] + [why for stage, why in WHY.items() if stage in stages]
    else:
        lines.append("- no stage: each grows at most 1.5 times faster than the number of hosts.")
    return lines


def _load_section(load: dict[str, Any]) -> list[str]:
    if "skipped" in load:
        return ["", "## Load", "", f"Not run: {load['skipped']}."]
    pct = load["percentiles"]
    errors = ", ".join(f"{k} {v}" for k, v in load["socket_errors"].items())
    return [
        "",
        f"## Load: `/metrics` of `lstmad serve` with {load['entities']:,} entities, "
        f"{load['connections']} connections, {load['wrk_seconds']:g} s",
        "",
        f"A real `lstmad serve` process (cheroot) scoring {load['entities']:,} live simulated hosts every "
        f"{load['interval_seconds']:g} s (a short interval, so that several cycles fall within the load; "
        "the model of the end-to-end runs, saved with that step), and "
        f"`wrk -t2 -c{load['connections']} -d{load['wrk_seconds']:g}s --latency --timeout 5s` on the "
        "same machine.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests | {load['requests']:,} in {load['duration_seconds']:.2f} s "
        f"({load['requests_per_second']:,.0f}/s) |",
        f"| every request answered | {'yes' if load['all_answered'] else 'no'}: socket errors {errors}; "
        f"non-2xx responses {load['non_2xx']} |",
        "| latency p50 / p90 / p99 / max | "
        + " / ".join(_fmt_seconds(v) for v in (pct.get("50"), pct.get("90"), pct.get("99")))
        + f" / {_fmt_seconds(load.get('max_seconds'))} |",
        f"| `/metrics` body | {load['metrics_bytes'] / 2**10:.0f} KiB |",
        f"| scoring cycles during the load (at least {load['cycles_expected'] - 1} expected) | "
        f"{load['cycles_during']:.0f}, {load['cycle_failures_during']:.0f} failed, mean "
        f"{_fmt_seconds(load['cycle_mean_seconds_during'])} |",
        f"| the loop keeps its interval | {'yes' if load['keeps_interval'] else 'no'} |",
        f"| peak RSS of `lstmad serve` | {_fmt_bytes(load['serve_rss_bytes'])} |",
        "",
        "```",
        load["wrk_output"].rstrip(),
        "```",
    ]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean_json(value: Any) -> Any:
    """NaN and infinities as null, so the output is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    return value


# --- command line -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return value


def _host_list(text: str) -> list[int]:
    return [_positive_int(part) for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lstmad bench``."""
    parser.add_argument(
        "--hosts", type=_positive_int, default=E2E_HOSTS, help="entities for the micro and end-to-end runs"
    )
    parser.add_argument("--features", type=_positive_int, default=8, help="features per entity (default 8)")
    parser.add_argument("--json", action="store_true", help="print the JSON object on one line")
    parser.add_argument(
        "--threads", type=_positive_int, default=1, help="torch threads for scoring (default 1)"
    )
    parser.add_argument("--steps", type=_positive_int, default=20, help="streaming steps timed (default 20)")
    parser.add_argument(
        "--train-windows", type=_positive_int, default=4096, help="windows timed for training throughput"
    )
    parser.add_argument("--e2e", action="store_true", help="also the end-to-end run against VictoriaMetrics")
    parser.add_argument(
        "--scaling",
        type=_host_list,
        metavar="N,N,...",
        help=f"also the end-to-end run for each fleet size (--write: {','.join(map(str, SCALING_HOSTS))})",
    )
    parser.add_argument("--cycles", type=_positive_int, default=20, help="cycles per end-to-end run (20)")
    parser.add_argument(
        "--large-cycles", type=_positive_int, default=5, help="cycles for fleets above 10,000 hosts (5)"
    )
    parser.add_argument("--load", action="store_true", help="also the wrk load test of `lstmad serve`")
    parser.add_argument(
        "--training-run", action="store_true", help="also `lstmad train` on 7 days x 100 hosts (minutes)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(".bench"), help="scratch directory (default .bench)"
    )
    parser.add_argument(
        "--write", type=Path, metavar="PATH", help="run everything and write the Markdown page"
    )


def _command(args: argparse.Namespace) -> str:
    parts = ["lstmad bench"]
    if args.hosts != E2E_HOSTS:
        parts.append(f"--hosts {args.hosts}")
    if args.features != 8:
        parts.append(f"--features {args.features}")
    if args.write is not None:
        parts.append(f"--write {args.write}")
    return " ".join(parts)


def run_from_args(args: argparse.Namespace) -> int:
    """``lstmad bench``: run what the flags select, print one JSON object, maybe write the page."""
    everything = args.write is not None
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    log.info("micro benchmark: %d hosts x %d features", args.hosts, args.features)
    results["micro"] = micro_bench(
        args.hosts, args.features, threads=args.threads, steps=args.steps, train_windows=args.train_windows
    )
    want_e2e = everything or args.e2e
    scaling_sizes = args.scaling or (list(SCALING_HOSTS) if everything else [])
    workdir: Path = args.workdir
    if want_e2e or scaling_sizes or args.load or everything or args.training_run:
        workdir.mkdir(parents=True, exist_ok=True)
    model_dir = None
    if want_e2e or scaling_sizes or args.load or everything:
        log.info("training the end-to-end model on %d simulated hosts", MODEL_HOSTS)
        model_dir = prepare_model(workdir)
    if want_e2e or scaling_sizes:
        assert model_dir is not None
        sizes = sorted(set(scaling_sizes) | ({args.hosts} if want_e2e else set()))
        scaling = []
        for hosts in sizes:
            large = hosts > E2E_HOSTS
            cycles = args.large_cycles if large else args.cycles
            log.info("end to end: %d hosts, %d cycles", hosts, cycles)
            try:
                scaling.append(
                    end_to_end(hosts, model_dir, workdir, cycles=cycles, budget=300.0 if large else 900.0)
                )
            except LstmadError as err:
                log.error("end to end with %d hosts failed: %s", hosts, err)
                scaling.append({"hosts": hosts, "error": str(err)})
        if want_e2e:
            results["e2e"] = next((s for s in scaling if s["hosts"] == args.hosts and "error" not in s), {})
        if scaling_sizes:
            results["scaling"] = [s for s in scaling if s["hosts"] in scaling_sizes]
    if everything or args.load:
        assert model_dir is not None
        log.info("load test: wrk against lstmad serve with %d entities", LOAD_ENTITIES)
        results["load"] = load_test(workdir, model_dir.parent / "model-2s")
    if everything or args.training_run:
        log.info("training run: lstmad train on %d days x %d hosts", TRAIN_DAYS, TRAIN_HOSTS)
        results["training"] = training_run(workdir)
    results["load_average"] = [load_before, os.getloadavg()[0]]
    results["machine"] = machine_info()
    flat = dict(results["micro"])
    flat.update({k: v for k, v in results.items() if k != "micro"})
    flat = _clean_json(flat)
    print(json.dumps(flat, default=_json_default, indent=None if args.json else 2, sort_keys=not args.json))
    if args.write is not None:
        page = render_page(_clean_json(results), _command(args))
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(page)
        log.info("wrote %s", args.write)
    return 0
