"""Reliability of ``lstmad serve`` against a real VictoriaMetrics that fails.

Each test starts its own small world: a real VictoriaMetrics (killed and restarted
by the test where that is the point), a writer that feeds it a small fleet at a 1 s
step, a real ``lstmad serve`` subprocess on a tiny model trained once per session,
and, only to inject what VictoriaMetrics will not do on demand, the fault proxy of
:mod:`tests.faultproxy`. A watcher scrapes ``/metrics`` several times a second for
the whole test and remembers every entity ever flagged, so "never flagged" means
never, not "not at the end".

The fleet's signals are smooth and the model forecasts them well (scores around
0.1-0.4), so the tests are sensitive: a missing sample read as 0, or an LSTM state
carried across a gap instead of rebuilt from history, scores far above 1.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from lstmad.localstack import ManagedProcess, free_port, start_victoriametrics

from .conftest import LSTMAD, require_binary, wait_for
from .faultproxy import (
    Fault,
    FaultProxy,
    add_series,
    chain,
    drop_entity,
    duplicate_series,
    label_values,
    nan_values,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEP = 1.0
WINDOW = 8
FEATURES = ("a", "b")
TAU = 2.0 * math.pi


# --- the small fleet ---------------------------------------------------------------------


def fleet_values(phase: int, t: np.ndarray) -> np.ndarray:
    """Samples of both features at Unix times ``t``: two smooth waves and a little noise."""
    t = np.asarray(t, dtype=np.float64)

    def noise(k: int) -> np.ndarray:
        return np.modf(np.abs(np.sin(t * 12.9898 + phase * 78.233 + k * 37.719)) * 43758.5453)[0] - 0.5

    a = 50 + 10 * np.sin(TAU * t / 40 + phase) + 0.6 * noise(1)
    b = 20 + 5 * np.cos(TAU * t / 25 + 2 * phase) + 0.3 * noise(2)
    return np.stack([a, b], axis=1)


def small_model(base: Path) -> Path:
    """A model for features ``a`` and ``b`` at a 1 s step, trained once per session (~10 s)."""
    from lstmad.artifact import save_model
    from lstmad.config import ModelConfig, ThresholdConfig, TrainingConfig
    from lstmad.detector import LSTMDetector

    path = base / "small-model"
    if (path / "metadata.json").exists():
        return path
    start = 1_790_000_000
    series = [fleet_values(h, np.arange(start, start + 1200)) for h in range(4)]
    det = LSTMDetector(FEATURES, ModelConfig(window=WINDOW, hidden=16, layers=1), ThresholdConfig(margin=3.0))
    det.fit(series, TrainingConfig(epochs=8, max_windows=1500, batch_size=64, learning_rate=0.005, seed=1))
    save_model(path, det, entity_label="instance", interval=STEP)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_model(tmp_path_factory.getbasetemp())


@dataclass
class Fleet:
    """Writes the fleet's samples into VictoriaMetrics: history at once, then one sample a second.

    The live writer behaves like vmagent: what it cannot deliver (VictoriaMetrics
    down) it keeps and sends once VictoriaMetrics is back. Hosts, extra labels and
    omitted features can change while it runs.
    """

    vm_url: str
    prefix: str
    hosts: dict[str, int]
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    omit: set[tuple[str, str]] = field(default_factory=set)
    failures: int = 0
    http: httpx.Client | None = None  # for a VictoriaMetrics behind TLS or auth; closed by its owner

    def __post_init__(self) -> None:
        self._client = self.http or httpx.Client(timeout=5.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backlog: list[bytes] = []
        self._last = 0

    def lines(self, t0: int, t1: int) -> list[bytes]:
        """Import lines for every host and feature, Unix seconds ``t0..t1`` inclusive."""
        ts = np.arange(t0, t1 + 1)
        if ts.size == 0:
            return []
        out = []
        for host, phase in list(self.hosts.items()):
            vals = fleet_values(phase, ts)
            for f, name in enumerate(FEATURES):
                if (host, name) in self.omit:
                    continue
                metric = {"__name__": f"{self.prefix}_{name}", "instance": host, **self.labels.get(host, {})}
                doc = {"metric": metric, "values": vals[:, f].tolist(), "timestamps": (ts * 1000).tolist()}
                out.append(orjson.dumps(doc))
        return out

    def _post(self, lines: list[bytes]) -> None:
        resp = self._client.post(f"{self.vm_url}/api/v1/import", content=b"\n".join(lines))
        resp.raise_for_status()

    def history(self, seconds: int) -> None:
        now = int(time.time())
        self._post(self.lines(now - seconds, now))
        self._client.get(f"{self.vm_url}/internal/force_flush")
        self._last = now

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            now = int(time.time())
            if now > self._last:
                self._backlog.extend(self.lines(self._last + 1, now))
                self._last = now
            if not self._backlog:
                continue
            try:
                self._post(self._backlog)
                self._backlog = []
            except httpx.HTTPError:
                self.failures += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.http is None:
            self._client.close()


@contextlib.contextmanager
def running_fleet(
    vm_url: str, prefix: str, hosts: list[str], history: int = 120, http: httpx.Client | None = None
) -> Iterator[Fleet]:
    fleet = Fleet(vm_url, prefix, {h: i for i, h in enumerate(hosts)}, http=http)
    try:
        fleet.history(history)
        fleet.start()
        yield fleet
    finally:
        fleet.close()


def write_config(path: Path, vm_url: str, prefix: str, **sections: dict[str, Any]) -> Path:
    """A config for the small fleet: 1 s interval, short timeouts, one retry, backoff capped at 1 s."""
    cfg: dict[str, Any] = {
        "victoriametrics": {
            "url": vm_url,
            "timeout": "2s",
            "query_delay": "2s",
            "retries": 1,
            "backoff_max": "1s",
        },
        "entity_label": "instance",
        "interval": "1s",
        "features": [{"name": f, "query": f"max by (instance) ({prefix}_{f})"} for f in FEATURES],
        "serve": {"entity_grace": "10m"},
    }
    for key, values in sections.items():
        cfg[key] = {**cfg.get(key, {}), **values}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# --- reading /metrics ----------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(body: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), math.nan)


def per_entity(samples: Samples, name: str) -> dict[str, float]:
    return {
        dict(lab)["instance"]: v for (n, lab), v in samples.items() if n == name and "instance" in dict(lab)
    }


class Watch:
    """Scrapes ``/metrics`` every ``period`` seconds in a thread and remembers what matters.

    ``flagged`` collects every entity ever seen with ``lstmad_anomaly`` 1, a score
    above 1 or a non-zero ``lstmad_anomalies_total``; ``last`` is the latest scrape.
    """

    def __init__(self, url: str, period: float = 0.3, **client: Any) -> None:
        self.url = url
        self.period = period
        self.flagged: dict[str, str] = {}
        self.last: Samples = {}
        self.scrapes = 0
        self.failed_scrapes = 0
        self._client = httpx.Client(timeout=5.0, **client)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    def scrape(self) -> Samples:
        samples = parse_metrics(self._client.get(self.url + "/metrics").text)
        for entity, v in per_entity(samples, "lstmad_anomaly").items():
            if v != 0:
                self.flagged.setdefault(entity, f"lstmad_anomaly={v}")
        for entity, v in per_entity(samples, "lstmad_anomaly_score").items():
            if v > 1:
                self.flagged.setdefault(entity, f"lstmad_anomaly_score={v}")
        for entity, v in per_entity(samples, "lstmad_anomalies_total").items():
            if v != 0:
                self.flagged.setdefault(entity, f"lstmad_anomalies_total={v}")
        self.last = samples
        self.scrapes += 1
        return samples

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.scrape()
            except httpx.HTTPError:
                self.failed_scrapes += 1

    def until(self, predicate: Callable[[Samples], bool], timeout: float, what: str) -> Samples:
        """Scrape until ``predicate`` holds for a scrape; return that scrape."""
        deadline = time.monotonic() + timeout
        last: Samples = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                last = self.scrape()
                if predicate(last):
                    return last
            time.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; last scrape: {summary(last)}"
        )

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()


def summary(samples: Samples) -> str:
    keep = ("lstmad_source_up", "lstmad_entities", "lstmad_stale_entities", "lstmad_cycles_total")
    parts = [f"{n}{dict(lab) or ''}={v:g}" for (n, lab), v in samples.items() if n in keep]
    parts += [
        f"errors{dict(lab)}={v:g}"
        for (n, lab), v in samples.items()
        if n == "lstmad_source_errors_total" and v
    ]
    return ", ".join(parts) or "(none)"


def scored(hosts: list[str]) -> Callable[[Samples], bool]:
    """All ``hosts`` exported with a score, and nothing stale."""

    def check(s: Samples) -> bool:
        return set(hosts) <= set(per_entity(s, "lstmad_anomaly_score"))

    return check


def errors(samples: Samples, reason: str) -> float:
    return value(samples, "lstmad_source_errors_total", reason=reason)


def cycles(samples: Samples, outcome: str) -> float:
    return value(samples, "lstmad_cycles_total", outcome=outcome)


def unique_prefix(request: pytest.FixtureRequest) -> str:
    return "rel_" + "".join(c for c in request.node.name if c.isalnum())[-24:] + f"_{os.getpid() % 1000}"


# --- 1. VictoriaMetrics down at start ---------------------------------------------------


def test_serve_starts_without_victoriametrics_and_becomes_ready_when_it_comes_up(
    tmp_path: Path, model_dir: Path, serve_process: type, request: pytest.FixtureRequest
) -> None:
    require_binary("victoria-metrics")
    port = free_port()
    vm_url = f"http://127.0.0.1:{port}"
    prefix = unique_prefix(request)
    hosts = ["down-1:9100", "down-2:9100"]
    # The default backoff: doubling from the interval, capped at 8 intervals, jittered.
    cfg = write_config(tmp_path / "c.yml", vm_url, prefix, victoriametrics={"backoff_max": "30s"})
    serve = serve_process(["--config", str(cfg), "--model", str(model_dir)])
    serve.wait_healthy()
    vm: ManagedProcess | None = None
    try:
        with Watch(serve.url) as watch:
            # Nothing answers on the port: alive, not ready, source down, errors counted.
            first = watch.until(lambda s: errors(s, "connection") >= 1, 30, "a connection error")
            assert serve.get("/healthz").status_code == 200
            ready = serve.get("/readyz")
            assert ready.status_code == 503 and "no scoring cycle has succeeded" in ready.text
            assert value(first, "lstmad_source_up") == 0
            # After four failures the loop waits 4-8 s between cycles: at most two more
            # in the next 6 s, where a loop retrying every interval would run four or five.
            fourth = watch.until(lambda s: cycles(s, "failure") >= 4, 30, "four failed cycles")
            time.sleep(6)
            later = watch.scrape()
            assert cycles(later, "failure") - cycles(fourth, "failure") <= 2, summary(later)
            assert errors(later, "connection") >= 2 * cycles(later, "failure"), "one retry per cycle"
            assert cycles(later, "success") == 0
            assert serve.proc.poll() is None

            vm = start_victoriametrics(tmp_path / "vm", port=port, log_path=tmp_path / "vm.log")
            with running_fleet(vm.url, prefix, hosts):
                wait_for(lambda: serve.get("/readyz").status_code == 200, 30, what="/readyz 200")
                up = watch.until(scored(hosts), 30, "both hosts scored")
                assert value(up, "lstmad_source_up") == 1
                assert watch.flagged == {}
        assert serve.stop() == 0
    finally:
        if vm is not None:
            vm.stop()


# --- 2. VictoriaMetrics killed mid-run and restarted ----------------------------------------


def test_victoriametrics_killed_and_restarted(
    tmp_path: Path, model_dir: Path, serve_process: type, request: pytest.FixtureRequest
) -> None:
    """A crash longer than the history window: stale, never flagged, then resynced from history."""
    require_binary("victoria-metrics")
    port = free_port()
    data = tmp_path / "vm"
    vm = start_victoriametrics(data, port=port, log_path=tmp_path / "vm.log")
    prefix = unique_prefix(request)
    hosts = ["kill-1:9100", "kill-2:9100", "kill-3:9100"]
    cfg = write_config(tmp_path / "c.yml", vm.url, prefix)
    try:
        with running_fleet(vm.url, prefix, hosts) as fleet:
            serve = serve_process(["--config", str(cfg), "--model", str(model_dir)])
            serve.wait_healthy()
            with Watch(serve.url) as watch:
                watch.until(scored(hosts), 40, "every host scored")
                vm.kill()
                down = watch.until(
                    lambda s: value(s, "lstmad_source_up") == 0 and value(s, "lstmad_stale_entities") == 3,
                    20,
                    "source down and every host stale",
                )
                assert per_entity(down, "lstmad_anomaly_score") == {}, "stale hosts must not be exported"
                # Down for longer than the history the loop keeps (window + 10 steps).
                time.sleep(WINDOW + 10 + 4)
                assert serve.proc.poll() is None
                killed_at = time.time()
                vm = start_victoriametrics(data, port=port, log_path=tmp_path / "vm.log")
                back = watch.until(
                    lambda s: (
                        scored(hosts)(s)
                        and min(per_entity(s, "lstmad_last_scored_timestamp_seconds").values()) > killed_at
                    ),
                    40,
                    "every host scored again with data from after the restart",
                )
                assert value(back, "lstmad_source_up") == 1
                assert errors(back, "connection") >= 1
                assert cycles(back, "failure") >= 1
                time.sleep(2)
            assert watch.flagged == {}, f"flagged for lack of data: {watch.flagged}"
            assert fleet.failures > 0, "the writer should have seen VictoriaMetrics down too"
            log = serve.log()
            assert "rebuilding streaming state from history" in log and "gap of" in log, log[-3000:]
            assert serve.stop() == 0
    finally:
        vm.stop()


class LaggingSource:
    """The small fleet as a metrics source that shows samples only up to ``visible_until``.

    Stands in for VictoriaMetrics in the in-process tests of the loop's rules,
    where the exact step at which data goes missing matters.
    """

    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts
        self.visible_until = 0.0
        self.missing: dict[str, set[float]] = {}  # per host, timestamps without a sample
        self.base_url = "stub://fleet"

    def query_range(self, query: str, start: float, end: float, step: float) -> Any:
        from lstmad.source import SeriesBatch

        f = FEATURES.index(query.split("_")[-1].rstrip(")"))
        ts = np.arange(start, min(end, self.visible_until) + step / 2, step)
        labels, times, values = [], [], []
        for i, host in enumerate(self.hosts):
            keep = ~np.isin(ts, list(self.missing.get(host, ())))
            if keep.any():
                labels.append({"instance": host})
                times.append(ts[keep])
                values.append(fleet_values(i, ts[keep])[:, f])
        if not labels:
            return SeriesBatch([], np.zeros(1, np.int64), np.zeros(0), np.zeros(0))
        offsets = np.concatenate([[0], np.cumsum([t.size for t in times])]).astype(np.int64)
        return SeriesBatch(labels, offsets, np.concatenate(times), np.concatenate(values))


def in_process_loop(model_dir: Path, source: LaggingSource, clock: list[float], **source_cfg: Any) -> Any:
    from prometheus_client import CollectorRegistry

    from lstmad.artifact import load_model
    from lstmad.config import load_config
    from lstmad.service import Monitor, ScoringLoop

    overrides = {"victoriametrics.query_delay": 2.0, "interval": STEP} | {
        f"victoriametrics.{k}": v for k, v in source_cfg.items()
    }
    cfg = load_config(
        write_config(model_dir.parent / "loop.yml", "http://stub", "fleet"), overrides=overrides
    )
    return ScoringLoop(
        cfg,
        source,
        load_model(model_dir, list(FEATURES)),
        Monitor(CollectorRegistry()),
        clock=lambda: clock[0],
    )


def test_late_data_is_fetched_again_instead_of_resetting_every_entity(model_dir: Path) -> None:
    """The newest steps come back empty (VictoriaMetrics restarting, a backlog on its way), then arrive."""
    hosts = ["lag-1", "lag-2"]
    source = LaggingSource(hosts)
    clock = [1_800_000_000.5]
    loop = in_process_loop(model_dir, source, clock)

    def tick(visible: bool = True) -> Samples:
        clock[0] += STEP
        if visible:
            source.visible_until = math.floor(clock[0] - 2.0)
        assert loop.run_cycle()
        return parse_metrics(loop.snapshot.body.decode())

    for _ in range(3):
        tick()
    for _ in range(WINDOW):  # nothing new shows for longer than a window
        tick(visible=False)
    after = tick()
    end = math.floor(clock[0] - 2.0)
    assert per_entity(after, "lstmad_last_scored_timestamp_seconds") == dict.fromkeys(hosts, end), (
        "the late samples must be scored as they arrive, without waiting for a window to refill"
    )
    assert max(per_entity(after, "lstmad_anomaly_score").values()) < 1


@pytest.mark.parametrize("missed", [1, 2, 4])
def test_a_short_gap_does_not_flag_an_entity(model_dir: Path, missed: int) -> None:
    hosts = ["gap-0", "gap-1", "gap-2"]
    source = LaggingSource(hosts)
    clock = [1_800_000_000.5]
    loop = in_process_loop(model_dir, source, clock)
    flagged: set[str] = set()
    for i in range(40):
        clock[0] += STEP
        source.visible_until = math.floor(clock[0] - 2.0)
        if i == 10:  # every host misses `missed` samples in a row, as after missed scrapes
            gap = {source.visible_until + k for k in range(missed)}
            source.missing = dict.fromkeys(hosts, gap)
        assert loop.run_cycle()
        flagged |= set(loop.snapshot.anomalous)
    assert flagged == set(), f"flagged after {missed} missing samples: {sorted(flagged)}"


def test_entities_are_exported_when_query_delay_is_several_intervals(model_dir: Path) -> None:
    """With interval 1s and query_delay 6s, the newest scored sample is always 6-7 s old: still fresh."""
    hosts = ["delay-1", "delay-2"]
    source = LaggingSource(hosts)
    clock = [1_800_000_000.5]
    loop = in_process_loop(model_dir, source, clock, query_delay=6.0)
    for _ in range(3):
        clock[0] += STEP
        source.visible_until = math.floor(clock[0] - 6.0)
        assert loop.run_cycle()
    samples = parse_metrics(loop.snapshot.body.decode())
    assert set(per_entity(samples, "lstmad_anomaly_score")) == set(hosts)


# --- 3. Slow source ---------------------------------------------------------------------


def test_slow_source_ends_cycles_cleanly_without_overlap_and_keeps_the_interval(
    victoriametrics: ManagedProcess,
    tmp_path: Path,
    model_dir: Path,
    serve_process: type,
    request: pytest.FixtureRequest,
) -> None:
    prefix = unique_prefix(request)
    hosts = ["slow-1:9100", "slow-2:9100"]
    timeout = 1.0
    with running_fleet(victoriametrics.url, prefix, hosts), FaultProxy(victoriametrics.url) as proxy:
        cfg = write_config(tmp_path / "c.yml", proxy.url, prefix, victoriametrics={"timeout": "1s"})
        serve = serve_process(["--config", str(cfg), "--model", str(model_dir)])
        serve.wait_healthy()
        with Watch(serve.url) as watch:
            watch.until(scored(hosts), 40, "both hosts scored")

            def rate(seconds: float) -> tuple[float, float]:
                first = watch.scrape()
                time.sleep(seconds)
                last = watch.scrape()
                return (
                    cycles(last, "success") - cycles(first, "success"),
                    cycles(last, "failure") - cycles(first, "failure"),
                )

            ok, failed = rate(4)
            assert 2 <= ok <= 5 and failed == 0, f"steady state: {ok} successes, {failed} failures in 4 s"

            # Answers start 3 s late, beyond the 1 s timeout: each cycle ends with a timeout.
            proxy.set(Fault(delay=3.0))
            mark = len(proxy.requests)
            before = watch.scrape()
            watch.until(
                lambda s: cycles(s, "failure") >= cycles(before, "failure") + 2, 15, "two failed cycles"
            )
            slow = watch.scrape()
            assert errors(slow, "timeout") - errors(before, "timeout") >= 2
            arrivals = [r.at for r in proxy.requests[mark:]]
            gaps = np.diff(arrivals)
            assert gaps.size >= 2 and gaps.min() >= 0.9 * timeout, (
                f"requests must not overlap: a new one only after the last timed out, gaps {gaps}"
            )

            # A body dripped in small pieces, each within the read timeout: the whole
            # answer must still end within the timeout's bound, not when the drip ends.
            proxy.set(Fault(drip=0.3, drip_size=64, pad=40_000))
            before = watch.scrape()
            started = time.monotonic()
            watch.until(
                lambda s: errors(s, "timeout") >= errors(before, "timeout") + 1,
                15,
                "a timeout on the dripped body",
            )
            assert time.monotonic() - started < 8

            proxy.set(None)
            watch.until(
                lambda s: scored(hosts)(s) and cycles(s, "success") > cycles(before, "success"),
                30,
                "scoring again after the slow source recovered",
            )
            time.sleep(1.5)
            ok, failed = rate(4)
            assert 2 <= ok <= 5 and failed == 0, f"after recovery: {ok} successes, {failed} failures in 4 s"
        assert watch.flagged == {}, watch.flagged
        assert serve.proc.poll() is None
        assert serve.stop() == 0


# --- 4. Bad data ------------------------------------------------------------------------

HOSTILE = ['quote"host:9100', "back\\slash:9100", "new\nline:9100", "ünïcødé-主机:9100"]


def test_bad_answers_and_hostile_data_never_crash_the_loop_or_flag_anyone(
    victoriametrics: ManagedProcess,
    tmp_path: Path,
    model_dir: Path,
    serve_process: type,
    request: pytest.FixtureRequest,
) -> None:
    prefix = unique_prefix(request)
    hosts = ["plain:9100", *HOSTILE]
    limit = 64 * 1024
    with running_fleet(victoriametrics.url, prefix, hosts) as fleet, FaultProxy(victoriametrics.url) as proxy:
        cfg = write_config(
            tmp_path / "c.yml",
            proxy.url,
            prefix,
            victoriametrics={"retries": 0, "max_response_bytes": limit},
        )
        serve = serve_process(["--config", str(cfg), "--model", str(model_dir)])
        serve.wait_healthy()
        with Watch(serve.url) as watch:
            first = watch.until(scored(hosts), 40, "every host scored")
            # Label values with quotes, backslashes, newlines and non-ASCII text come back exactly.
            assert set(per_entity(first, "lstmad_anomaly_score")) >= set(hosts)
            body = serve.get("/metrics").text
            for escaped in (
                'instance="quote\\"host:9100"',
                'instance="back\\\\slash:9100"',
                'instance="new\\nline:9100"',
            ):
                assert escaped in body

            # Answers that are not usable: each ends one cycle with the right reason, then scoring resumes.
            status_error = b'{"status":"error","errorType":"execution","error":"boom"}'
            cases: list[tuple[str, Fault, str]] = [
                ("non-JSON", Fault(body=b"<html><body>502 Bad Gateway</body></html>"), "bad_response"),
                ("status error, HTTP 200", Fault(body=status_error), "status_error"),
                ("status error, HTTP 422", Fault(status=422, body=status_error), "status_error"),
                ("truncated body", Fault(truncate=0.5), "bad_response"),
                ("connection closed mid-body", Fault(cut=0.5), "connection"),
                ("oversized body", Fault(pad=limit + 1), "bad_response"),
                ("numeric label value", Fault(transform=label_values(5)), "bad_response"),
            ]
            for what, fault, reason in cases:
                before = watch.scrape()
                proxy.set(fault)
                watch.until(
                    lambda s, b=before, r=reason: errors(s, r) > errors(b, r), 15, f"{what}: {reason}"
                )
                proxy.set(None)
                watch.until(
                    lambda s, b=before: cycles(s, "success") > cycles(b, "success") + 1,
                    15,
                    f"{what}: successful cycles again",
                )
                assert serve.proc.poll() is None, f"serve died on {what}"
            assert "unexpected error" not in serve.log()

            # Bad data inside good answers, all at once for 7 s (longer than a bridged gap,
            # see test_a_short_gap_does_not_flag_an_entity): NaN/±Inf samples for one host,
            # one feature missing for another, every series duplicated, label sets that
            # appear from nowhere, and, in VictoriaMetrics itself, a host that joins mid-run.
            proxy.set(
                Fault(
                    transform=chain(
                        nan_values("plain:9100"),
                        drop_entity("back\\slash:9100", f"{prefix}_b"),
                        duplicate_series(),
                        add_series([{"instance": "sudden-1"}, {"instance": "sudden-2", "extra": "x"}]),
                    )
                )
            )
            fleet.hosts["late-joiner:9100"] = 5
            before = watch.scrape()
            time.sleep(7)
            during = watch.scrape()
            assert cycles(during, "success") - cycles(before, "success") >= 4
            assert cycles(during, "failure") == cycles(before, "failure")
            exported = set(per_entity(during, "lstmad_anomaly_score"))
            assert {'quote"host:9100', "new\nline:9100", "ünïcødé-主机:9100"} <= exported
            assert not exported & {"plain:9100", "back\\slash:9100"}, (
                "hosts without usable data must not be scored"
            )
            proxy.set(None)
            watch.until(
                scored([*hosts, "late-joiner:9100"]), 30, "every host scored again, and the late joiner too"
            )
            time.sleep(2)
        assert watch.flagged == {}, f"flagged on bad data: {watch.flagged}"
        assert serve.stop() == 0


# --- 5. Bad config and bad model files through the CLI ---------------------------------

INVALID = sorted((Path(__file__).parent / "fixtures" / "config" / "invalid").glob("*.yaml"))


def run_all(commands: list[list[str]], timeout: float = 120) -> list[subprocess.CompletedProcess[str]]:
    """Run CLI commands in parallel (each imports torch: seconds) and collect their results."""
    procs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
        )
        for cmd in commands
    ]
    out = []
    for cmd, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return out


def expected_key(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first.removeprefix("# expect: ")


def test_serve_exits_2_naming_the_key_for_every_invalid_config(tmp_path: Path) -> None:
    results = run_all(
        [[*LSTMAD, "serve", "--config", str(p), "--model", str(tmp_path / "none")] for p in INVALID]
    )
    for path, proc in zip(INVALID, results, strict=True):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, f"{path.name}: exit {proc.returncode}: {proc.stderr}"
        assert len(lines) == 1 and expected_key(path) in lines[0], f"{path.name}: {proc.stderr}"


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def test_serve_exits_2_on_bad_model_directories(tmp_path: Path, model_dir: Path) -> None:
    import pickle

    def copy(name: str) -> Path:
        return Path(shutil.copytree(model_dir.resolve(), tmp_path / name))

    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = copy("truncated")
    text = (truncated / "model.json").read_text()
    (truncated / "model.json").write_text(text[: len(text) // 2])
    pickled = copy("pickled")
    (pickled / "weights.safetensors").write_bytes(pickle.dumps(Payload()))
    cfg = write_config(tmp_path / "c.yml", "http://127.0.0.1:9", "bad")
    other_step = write_config(tmp_path / "step.yml", "http://127.0.0.1:9", "bad")
    other_step.write_text(other_step.read_text().replace("interval: 1s", "interval: 2s"))
    cases = [
        (cfg, tmp_path / "missing", "does not exist"),
        (cfg, empty, "model.json is missing"),
        (cfg, truncated, "not valid JSON"),
        (cfg, pickled, "not a valid safetensors"),
        (other_step, model_dir, "trained at a 1s step"),
    ]
    results = run_all([[*LSTMAD, "serve", "--config", str(c), "--model", str(m)] for c, m, _ in cases])
    for (_, model, message), proc in zip(cases, results, strict=True):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, f"{model.name}: exit {proc.returncode}: {proc.stderr}"
        assert len(lines) == 1 and message in lines[0], f"{model.name}: {proc.stderr}"
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists(), "the pickle payload ran"


# --- 9. Graceful shutdown ---------------------------------------------------------------


def test_sigterm_stops_serve_promptly_even_with_a_scraper_connected(
    victoriametrics: ManagedProcess,
    tmp_path: Path,
    model_dir: Path,
    serve_process: type,
    request: pytest.FixtureRequest,
) -> None:
    prefix = unique_prefix(request)
    with running_fleet(victoriametrics.url, prefix, ["term-1:9100"]):
        cfg = write_config(tmp_path / "c.yml", victoriametrics.url, prefix)
        serve = serve_process(["--config", str(cfg), "--model", str(model_dir)])
        serve.wait_healthy()
        wait_for(lambda: serve.get("/readyz").status_code == 200, 30, what="/readyz 200")
        with httpx.Client(timeout=5.0) as keepalive:  # an idle keep-alive connection, as Prometheus holds
            assert keepalive.get(serve.url + "/metrics").status_code == 200
            started = time.monotonic()
            serve.proc.send_signal(signal.SIGTERM)
            code = serve.proc.wait(15)
            took = time.monotonic() - started
    assert code == 0 and took < 5, f"exit {code} after {took:.1f}s"
    assert "stopped" in serve.log()


def test_sigterm_during_a_hung_cycle_exits_0_within_the_grace_and_leaves_no_partial_files(
    victoriametrics: ManagedProcess,
    tmp_path: Path,
    model_dir: Path,
    serve_process: type,
    request: pytest.FixtureRequest,
) -> None:
    from lstmad.server import SHUTDOWN_GRACE

    prefix = unique_prefix(request)
    model = Path(shutil.copytree(model_dir.resolve(), tmp_path / "models" / "m"))
    before = {p: p.read_bytes() for p in model.parent.rglob("*") if p.is_file()}
    with (
        running_fleet(victoriametrics.url, prefix, ["hang-1:9100"]),
        FaultProxy(victoriametrics.url) as proxy,
    ):
        cfg = write_config(tmp_path / "c.yml", proxy.url, prefix, victoriametrics={"timeout": "60s"})
        serve = serve_process(["--config", str(cfg), "--model", str(model)])
        serve.wait_healthy()
        wait_for(lambda: serve.get("/readyz").status_code == 200, 30, what="/readyz 200")
        proxy.set(Fault(delay=120))
        mark = len(proxy.requests)
        wait_for(lambda: len(proxy.requests) > mark, 10, 0.1, what="a cycle stuck in a request")
        started = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        code = serve.proc.wait(SHUTDOWN_GRACE + 10)
        took = time.monotonic() - started
    assert code == 0 and took < SHUTDOWN_GRACE + 3, f"exit {code} after {took:.1f}s"
    assert "abandoned" in serve.log()
    after = {p: p.read_bytes() for p in model.parent.rglob("*") if p.is_file()}
    assert after == before, "serve must not write, let alone leave partial files"
