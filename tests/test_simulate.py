"""The demo fleet: determinism, counter and gauge invariants, anomalies, the CLI, and a
real VictoriaMetrics running the detector's default feature queries on the output."""

from __future__ import annotations

import argparse
import math
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmad.errors import ConfigError, SourceConnectionError, SourceError, SourceHTTPError
from lstmad.simulate import (
    ANOMALY_KINDS,
    Anomaly,
    FleetSpec,
    add_arguments,
    generate_import_lines,
    import_to_vm,
    instance_names,
    parse_duration,
    run_from_args,
    run_live,
)

T0 = 1_764_000_000.0  # a multiple of 15 s, 60 s and 1 h
HOUR = 3600.0

Key = tuple[str, tuple[tuple[str, str], ...]]


def collect(bodies: Iterable[bytes]) -> dict[Key, tuple[np.ndarray, np.ndarray]]:
    """Import bodies back into (timestamps in ms, values) per series, in time order."""
    parts: dict[Key, list[tuple[list[int], list[float]]]] = {}
    for body in bodies:
        for line in body.splitlines():
            doc = orjson.loads(line)
            metric = dict(doc["metric"])
            name = metric.pop("__name__")
            key = (name, tuple(sorted(metric.items())))
            parts.setdefault(key, []).append((doc["timestamps"], doc["values"]))
    out = {}
    for key, chunks in parts.items():
        ts = np.concatenate([np.asarray(c[0], dtype=np.int64) for c in chunks])
        vs = np.concatenate([np.asarray(c[1], dtype=np.float64) for c in chunks])
        order = np.argsort(ts, kind="stable")
        out[key] = (ts[order], vs[order])
    return out


def series(data: dict[Key, tuple[np.ndarray, np.ndarray]], name: str, **labels: str) -> list[np.ndarray]:
    """Values of every series named ``name`` whose labels include ``labels``, sorted by key."""
    found = [
        values
        for (n, lab), (_, values) in sorted(data.items())
        if n == name and labels.items() <= dict(lab).items()
    ]
    assert found, f"no series {name}{labels}"
    return found


def rate(values: np.ndarray, window: int, step: float) -> np.ndarray:
    """``rate(x[window * step])`` on a regular grid: NaN where the window is incomplete."""
    out = np.full(values.shape, np.nan)
    out[window:] = (values[window:] - values[:-window]) / (window * step)
    return out


def features(data: dict[Key, tuple[np.ndarray, np.ndarray]], spec: FleetSpec) -> dict[str, np.ndarray]:
    """The detector's eight default features, computed in numpy: (hosts, timestamps)."""
    window = max(1, round(60 / spec.step))
    out: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    for instance in instance_names(spec):

        def one(name: str, inst: str = instance, **labels: str) -> np.ndarray:
            (values,) = series(data, name, instance=inst, job=spec.job, **labels)
            return values

        def rates(name: str, inst: str = instance, **labels: str) -> np.ndarray:
            return np.array(
                [
                    rate(v, window, spec.step)
                    for v in series(data, name, instance=inst, job=spec.job, **labels)
                ]
            )

        idle = rates("node_cpu_seconds_total", mode="idle")
        out["cpu_busy"].append(1 - idle.mean(axis=0))
        out["cpu_iowait"].append(rates("node_cpu_seconds_total", mode="iowait").mean(axis=0))
        out["memory_used"].append(
            1 - one("node_memory_MemAvailable_bytes") / one("node_memory_MemTotal_bytes")
        )
        out["load1_per_core"].append(one("node_load1") / len(idle))
        out["disk_io_busy"].append(rates("node_disk_io_time_seconds_total").max(axis=0))
        rx = rates("node_network_receive_bytes_total", device="eth0").sum(axis=0)
        tx = rates("node_network_transmit_bytes_total", device="eth0").sum(axis=0)
        out["net_receive"].append(np.log1p(rx))
        out["net_transmit"].append(np.log1p(tx))
        out["fs_used"].append(
            1
            - one("node_filesystem_avail_bytes", fstype="ext4")
            / one("node_filesystem_size_bytes", fstype="ext4")
        )
    return {name: np.array(rows) for name, rows in out.items()}


FEATURES = {
    "cpu_busy": '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[1m]))',
    "cpu_iowait": 'avg by (instance) (rate(node_cpu_seconds_total{mode="iowait"}[1m]))',
    "memory_used": "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
    "load1_per_core": (
        'node_load1 / on (instance) count by (instance) (node_cpu_seconds_total{mode="idle"})'
    ),
    "disk_io_busy": "max by (instance) (rate(node_disk_io_time_seconds_total[1m]))",
    "net_receive": ('ln(1 + sum by (instance) (rate(node_network_receive_bytes_total{device!="lo"}[1m])))'),
    "net_transmit": ('ln(1 + sum by (instance) (rate(node_network_transmit_bytes_total{device!="lo"}[1m])))'),
    "fs_used": (
        'max by (instance) (1 - node_filesystem_avail_bytes{fstype!~"tmpfs|overlay"}'
        ' / node_filesystem_size_bytes{fstype!~"tmpfs|overlay"})'
    ),
}


def test_instance_names_follow_prefix_and_port() -> None:
    spec = FleetSpec(hosts=3, prefix="web")
    assert instance_names(spec) == ["web-1:9100", "web-2:9100", "web-3:9100"]


def test_every_series_has_node_exporter_names_and_labels() -> None:
    spec = FleetSpec(hosts=2, cpus=3)
    data = collect(generate_import_lines(spec, T0, T0 + 60))
    per_host = 4 * 3 + 12
    assert len(data) == 2 * per_host
    for name, labels in data:
        lab = dict(labels)
        assert lab["job"] == "node"
        assert lab["instance"] in instance_names(spec)
        assert name.startswith("node_")
    cpu_modes = {
        (dict(lab)["cpu"], dict(lab)["mode"]) for name, lab in data if name == "node_cpu_seconds_total"
    }
    assert cpu_modes == {(str(c), m) for c in range(3) for m in ("idle", "iowait", "system", "user")}


def test_same_seed_gives_same_bytes_and_another_seed_does_not() -> None:
    a = b"".join(generate_import_lines(FleetSpec(hosts=3, seed=7), T0, T0 + HOUR))
    b = b"".join(generate_import_lines(FleetSpec(hosts=3, seed=7), T0, T0 + HOUR))
    c = b"".join(generate_import_lines(FleetSpec(hosts=3, seed=8), T0, T0 + HOUR))
    assert a == b
    assert a != c


def test_a_host_does_not_depend_on_fleet_size_or_chunking() -> None:
    small = collect(generate_import_lines(FleetSpec(hosts=2), T0, T0 + HOUR))
    large = collect(
        generate_import_lines(FleetSpec(hosts=5), T0, T0 + HOUR, hosts_per_chunk=2, steps_per_chunk=7)
    )
    for key, (ts, values) in small.items():
        np.testing.assert_array_equal(large[key][0], ts)
        np.testing.assert_array_equal(large[key][1], values)


def test_live_chunks_continue_history_without_seam() -> None:
    spec = FleetSpec(hosts=3, anomalies=(Anomaly(2, T0 + 1000, T0 + 2000, "cpu"),))
    whole = collect(generate_import_lines(spec, T0, T0 + HOUR))
    history = generate_import_lines(spec, T0, T0 + 1500)
    live = [generate_import_lines(spec, T0 + 1500 + 1, T0 + 1500 + k * 15) for k in (1, 5, 7)]
    pieces = [*history, *live[0]]
    pieces += generate_import_lines(spec, T0 + 1515 + 0.5, T0 + 1590)  # unaligned start
    pieces += generate_import_lines(spec, T0 + 1605, T0 + HOUR)
    joined = collect(pieces)
    assert joined.keys() == whole.keys()
    for key, (ts, values) in whole.items():
        np.testing.assert_array_equal(joined[key][0], ts)
        np.testing.assert_array_equal(joined[key][1], values)


def test_timestamps_are_the_aligned_step_grid_with_both_ends() -> None:
    spec = FleetSpec(hosts=1, step=15)
    data = collect(generate_import_lines(spec, T0 + 1, T0 + 61))
    for ts, _ in data.values():
        assert ts.tolist() == [int((T0 + 15 * k) * 1000) for k in range(1, 5)]
    data = collect(generate_import_lines(spec, T0, T0 + 60))
    for ts, _ in data.values():
        assert ts.tolist() == [int((T0 + 15 * k) * 1000) for k in range(5)]
    assert list(generate_import_lines(spec, T0 + 1, T0 + 14)) == []


@pytest.mark.parametrize(
    ("start", "end", "kwargs"),
    [
        (-60.0, T0, {}),
        (T0, math.nan, {}),
        (T0, T0 + 60, {"hosts_per_chunk": 0}),
        (T0, T0 + 60, {"steps_per_chunk": 0}),
    ],
)
def test_invalid_ranges_and_chunks_are_rejected_at_once(
    start: float, end: float, kwargs: dict[str, int]
) -> None:
    with pytest.raises(ConfigError):
        generate_import_lines(FleetSpec(), start, end, **kwargs)


def test_bodies_are_bounded_by_the_chunk_sizes() -> None:
    spec = FleetSpec(hosts=7)
    bodies = list(generate_import_lines(spec, T0, T0 + 99 * 15, hosts_per_chunk=3, steps_per_chunk=40))
    assert len(bodies) == 3 * 3  # host chunks 3+3+1, time slices 40+40+20
    for body in bodies:
        for line in body.splitlines():
            assert len(orjson.loads(line)["values"]) <= 40


anomaly_lists = st.lists(
    st.tuples(
        st.integers(1, 3),
        st.sampled_from(ANOMALY_KINDS),
        st.floats(-HOUR, 3 * HOUR),
        st.floats(1, HOUR),
    ),
    max_size=3,
    unique_by=lambda a: a[0],
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(-(2**63), 2**63 - 1),
    offset=st.integers(0, 10**8).map(lambda k: k * 15.0),
    cpus=st.integers(1, 4),
    raw_anomalies=anomaly_lists,
)
def test_counters_are_monotone_and_cpu_modes_add_up(
    seed: int, offset: float, cpus: int, raw_anomalies: list[tuple[int, str, float, float]]
) -> None:
    start = T0 - offset
    anomalies = tuple(
        Anomaly(h, start + at, start + at + length, kind) for h, kind, at, length in raw_anomalies
    )
    spec = FleetSpec(hosts=3, seed=seed, cpus=cpus, anomalies=anomalies)
    data = collect(generate_import_lines(spec, start, start + 2 * HOUR))
    for (name, labels), (_, values) in data.items():
        assert np.all(np.isfinite(values)), (name, labels)
        assert np.all(values >= 0), (name, labels)
        if name.endswith("_total"):
            assert np.all(np.diff(values) >= 0), (name, labels)
    for instance in instance_names(spec):
        for cpu in range(cpus):
            modes = series(data, "node_cpu_seconds_total", instance=instance, cpu=str(cpu))
            total = np.sum(modes, axis=0)
            # Every cpu spends one second per second in some mode.
            per_second = (total[40:] - total[:-40]) / (40 * spec.step)
            np.testing.assert_allclose(per_second, 1.0, atol=0.01)
            per_minute = (total[4:] - total[:-4]) / 60
            np.testing.assert_allclose(per_minute, 1.0, atol=0.06)


def test_gauges_and_features_stay_in_plausible_ranges_for_a_fleet() -> None:
    spec = FleetSpec(hosts=40, step=60, seed=3)
    data = collect(generate_import_lines(spec, T0, T0 + 2 * 86400))
    totals = np.array(series(data, "node_memory_MemTotal_bytes"))
    avail = np.array(series(data, "node_memory_MemAvailable_bytes"))
    assert np.all(totals >= 1.9 * 2**30) and np.all(totals <= 64 * 2**30)
    assert np.all(np.diff(totals, axis=1) == 0)
    assert np.all(avail > 0) and np.all(avail < totals)
    assert np.all(avail % 1024 == 0)
    sizes = np.array(series(data, "node_filesystem_size_bytes", fstype="ext4"))
    free = np.array(series(data, "node_filesystem_avail_bytes", fstype="ext4"))
    assert np.all(sizes >= 20e9 - 4096) and np.all(free > 0) and np.all(free < sizes)
    assert np.all(np.array(series(data, "node_load1")) >= 0)
    lo_rx = np.array(series(data, "node_network_receive_bytes_total", device="lo"))
    lo_tx = np.array(series(data, "node_network_transmit_bytes_total", device="lo"))
    np.testing.assert_array_equal(lo_rx, lo_tx)

    f = {name: values[:, 1:] for name, values in features(data, spec).items()}
    assert f["cpu_busy"].max() < 0.8 and f["cpu_busy"].min() > 0.0
    assert f["cpu_iowait"].max() < 0.05
    assert f["memory_used"].min() > 0.1 and f["memory_used"].max() < 0.8
    assert f["load1_per_core"].max() < 1.5
    assert f["disk_io_busy"].min() > 0 and f["disk_io_busy"].max() < 0.6
    assert f["net_receive"].min() > 6 and f["net_receive"].max() < 16
    assert f["net_transmit"].min() > 6 and f["net_transmit"].max() < 16
    assert f["fs_used"].min() > 0.1 and f["fs_used"].max() < 0.7
    # Baselines differ between hosts: some busy, some idle.
    mean_busy = f["cpu_busy"].mean(axis=1)
    assert mean_busy.max() > 3 * mean_busy.min()
    # A daily pattern: the busiest hour of a host is well above its quietest.
    hourly = f["cpu_busy"][:, : 24 * 60].reshape(spec.hosts, 24, 60).mean(axis=2)
    assert np.all(hourly.max(axis=1) > 1.3 * hourly.min(axis=1))


def test_filesystem_fills_slowly() -> None:
    spec = FleetSpec(hosts=20, step=600)
    data = collect(generate_import_lines(spec, T0, T0 + 7 * 86400 - spec.step))
    size = np.array(series(data, "node_filesystem_size_bytes", fstype="ext4"))
    used = 1 - np.array(series(data, "node_filesystem_avail_bytes", fstype="ext4")) / size
    six_hourly = used.reshape(spec.hosts, -1, 36).mean(axis=2)  # 28 means a week
    rises = np.diff(six_hourly, axis=1) > 0
    # A slow climb most of the time; the weekly cleanup is the only way down.
    assert rises.mean() > 0.9
    assert np.all(np.abs(np.diff(used, axis=1)) < 0.05)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_anomaly_is_visible_on_its_host_inside_its_window_only(kind: str) -> None:
    start, end = T0 + 3 * HOUR, T0 + 4 * HOUR
    anomaly = Anomaly(3, start, end, kind)
    base = FleetSpec(hosts=5, seed=11)
    spec = FleetSpec(hosts=5, seed=11, anomalies=(anomaly,))
    normal_data = collect(generate_import_lines(base, T0, T0 + 6 * HOUR))
    data = collect(generate_import_lines(spec, T0, T0 + 6 * HOUR))

    # Other hosts are untouched, sample for sample.
    for key, (_, values) in data.items():
        if dict(key[1])["instance"] != "demo-host-3:9100":
            np.testing.assert_array_equal(values, normal_data[key][1])

    ts = next(iter(data.values()))[0][4:] / 1000  # from the first full rate window on
    f = {name: values[:, 4:] for name, values in features(data, spec).items()}
    normal = {name: values[:, 4:] for name, values in features(normal_data, base).items()}
    settled = (ts >= start + 180) & (ts < end)  # rates and load1 have caught up
    late = ts >= end + 180
    before = ts < start - spec.step  # the sample just before may carry less jitter
    others = [0, 1, 3, 4]
    host = 2
    for name in FEATURES:
        # Before the window nothing differs; well after it only load1 may still decay.
        np.testing.assert_array_equal(f[name][:, before], normal[name][:, before])
        if name != "load1_per_core":
            # (up to the rounding of the shifted counters to 0.01 s)
            np.testing.assert_allclose(f[name][:, late], normal[name][:, late], atol=1e-3)

    if kind == "cpu":
        assert f["cpu_busy"][host, settled].min() > 0.95
        assert f["load1_per_core"][host, settled].min() > 3
        assert f["cpu_iowait"][host, settled].min() > normal["cpu_iowait"][host].max()
        assert f["cpu_busy"][others].max() < 0.8
        assert f["load1_per_core"][others].max() < 1.5
    elif kind == "memory":
        last_minutes = (ts >= end - 180) & (ts < end)
        assert f["memory_used"][host, last_minutes].min() > 0.9
        inside = f["memory_used"][host, (ts >= start) & (ts < end)]
        assert np.all(np.diff(inside[::20]) > 0)  # falls steadily
        assert f["memory_used"][others].max() < 0.8
        assert f["memory_used"][host, late].max() < 0.8  # the leak is gone after the window
    elif kind == "network":
        jump = f["net_receive"][host, settled] - normal["net_receive"][host, settled]
        assert jump.min() > math.log(20) - 0.1
        jump = f["net_transmit"][host, settled] - normal["net_transmit"][host, settled]
        assert jump.min() > math.log(20) - 0.1
    else:
        assert f["disk_io_busy"][host, settled].min() > 0.95
        assert f["cpu_iowait"][host, settled].min() > 0.1
        assert f["disk_io_busy"][others].max() < 0.6
        assert f["cpu_iowait"][others].max() < 0.05
    changed = [
        name
        for name in FEATURES
        if not np.allclose(f[name][host, settled], normal[name][host, settled], atol=1e-9)
    ]
    expected = {
        "cpu": {"cpu_busy", "cpu_iowait", "load1_per_core"},
        "memory": {"memory_used"},
        "network": {"net_receive", "net_transmit"},
        "disk": {"cpu_busy", "cpu_iowait", "load1_per_core", "disk_io_busy"},
    }
    assert set(changed) == expected[kind]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"hosts": 0}, "hosts"),
        ({"cpus": 0}, "cpus"),
        ({"step": 0}, "step"),
        ({"step": 0.0001}, "step"),
        ({"step": float("nan")}, "step"),
        ({"prefix": ""}, "prefix"),
        ({"anomalies": (Anomaly(5, 0, 1, "cpu"),)}, "anomaly.host"),
        ({"anomalies": (Anomaly(1, 0, 10, "cpu"), Anomaly(1, 5, 20, "memory"))}, "anomalies"),
    ],
)
def test_invalid_spec_is_rejected(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        FleetSpec(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_adjacent_anomalies_on_one_host_are_allowed() -> None:
    spec = FleetSpec(anomalies=(Anomaly(1, 0, 10, "cpu"), Anomaly(1, 10, 20, "disk")))
    assert len(spec.anomalies) == 2


@pytest.mark.parametrize(
    ("host", "start", "end", "kind"),
    [(0, 0, 1, "cpu"), (1, 1, 1, "cpu"), (1, 0, 1, "gpu"), (1, 0, math.inf, "cpu")],
)
def test_invalid_anomaly_is_rejected(host: int, start: float, end: float, kind: str) -> None:
    with pytest.raises(ConfigError):
        Anomaly(host, start, end, kind)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("90m", 5400),
        ("6h", 21600),
        ("2d", 172800),
        ("1w", 604800),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("-10m", -600),
        ("+5m", 300),
        ("15", 15),
        ("1.5h", 5400),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "m", "10x", "1h 30m", "--5m", "inf", "nan", "1e3s"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(text, "--history")
    assert info.value.key == "--history"


@given(n=st.integers(0, 10**6), unit=st.sampled_from([("s", 1), ("m", 60), ("h", 3600)]))
def test_parse_duration_round_trips_integers(n: int, unit: tuple[str, int]) -> None:
    assert parse_duration(f"{n}{unit[0]}") == n * unit[1]
    assert parse_duration(f"-{n}{unit[0]}") == -n * unit[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstmad simulate")
    add_arguments(p)
    return p


def test_arguments_have_documented_defaults() -> None:
    args = parser().parse_args([])
    assert args.vm_url == "http://127.0.0.1:8428"
    assert (args.hosts, args.history, args.step, args.seed) == (4, 172800, 15, 0)
    assert args.prefix == "demo-host"
    assert args.anomaly == [] and not args.live and not args.dry_run


def test_anomaly_flag_parses_and_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parser().parse_args(["--anomaly", "3:cpu:-10m:30m", "--anomaly", "1:disk:5m:1h"])
    assert [tuple(a) for a in args.anomaly] == [(3, "cpu", -600, 1800), (1, "disk", 300, 3600)]
    for bad in ["3:cpu:-10m", "x:cpu:0s:1m", "1:gpu:0s:1m", "1:cpu:0s:-1m", "1:cpu:0s:0s"]:
        with pytest.raises(SystemExit):
            parser().parse_args(["--anomaly", bad])
    with pytest.raises(SystemExit):
        parser().parse_args(["--history", "two days"])
    assert "--anomaly" in capsys.readouterr().err


def test_dry_run_prints_import_lines(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    now = T0 + 7.5
    args = parser().parse_args(
        ["--hosts", "2", "--history", "10m", "--anomaly", "2:cpu:-5m:10m", "--dry-run"]
    )
    assert run_from_args(args, clock=lambda: now) == 0
    out = capsysbinary.readouterr().out
    data = collect([out])
    spec = FleetSpec(hosts=2, anomalies=(Anomaly(2, now - 300, now + 300, "cpu"),))
    want = collect(generate_import_lines(spec, T0 - 600, T0))
    assert data.keys() == want.keys()
    for key, (ts, values) in want.items():
        np.testing.assert_array_equal(data[key][0], ts)
        np.testing.assert_array_equal(data[key][1], values)
    busy = features(data, spec)["cpu_busy"]
    assert busy[1, -1] > 0.95 and busy[0, -1] < 0.8


def test_dry_run_and_live_together_are_rejected() -> None:
    args = parser().parse_args(["--dry-run", "--live"])
    with pytest.raises(ConfigError):
        run_from_args(args)


class RecordingVM:
    """An in-memory stand-in for VictoriaMetrics' import and flush endpoints."""

    def __init__(self, fail_with: int | None = None) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.fail_with = fail_with

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if self.fail_with is not None:
            return httpx.Response(self.fail_with, text="cannot parse")
        if request.url.path == "/api/v1/import":
            self.bodies.append(request.content)
        return httpx.Response(204)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))


def test_import_to_vm_posts_every_body_counts_samples_and_flushes() -> None:
    vm = RecordingVM()
    spec = FleetSpec(hosts=3)
    bodies = list(generate_import_lines(spec, T0, T0 + 299 * 15, hosts_per_chunk=2))
    written = import_to_vm("http://vm:8428/", bodies, client=vm.client())
    assert written == 3 * 20 * 300
    assert vm.bodies == bodies
    assert vm.paths == ["/api/v1/import"] * len(bodies) + ["/internal/force_flush"]


def test_import_to_vm_reports_url_and_status_on_http_error() -> None:
    vm = RecordingVM(fail_with=400)
    with pytest.raises(SourceHTTPError) as info:
        import_to_vm("http://vm:8428", [b"{}\n"], client=vm.client())
    assert info.value.status == 400
    assert "http://vm:8428/api/v1/import" in str(info.value) and "400" in str(info.value)
    assert isinstance(info.value, SourceError)


def test_import_to_vm_reports_connection_errors() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))
    with pytest.raises(SourceConnectionError, match="http://vm:8428/api/v1/import"):
        import_to_vm("http://vm:8428", [b"{}\n"], client=client)


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self, now: float, stop: threading.Event, wakeups: int) -> None:
        self.now = now
        self.stop = stop
        self.wakeups = wakeups
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if len(self.sleeps) >= self.wakeups:
            self.stop.set()


def test_run_live_writes_each_new_grid_point_once_and_matches_history() -> None:
    spec = FleetSpec(hosts=2, anomalies=(Anomaly(1, T0 + 60, T0 + 120, "network"),))
    stop = threading.Event()
    fake = FakeTime(T0 + 20, stop, wakeups=12)
    vm = RecordingVM()
    run_live(
        spec, "http://vm:8428", stop=stop, since=T0, clock=fake.clock, sleep=fake.sleep, client=vm.client()
    )
    live = collect(vm.bodies)
    last = next(iter(live.values()))[0][-1] / 1000
    assert fake.now - spec.step <= last <= fake.now  # caught up with the clock
    history = collect(generate_import_lines(spec, T0 + 15, last))
    assert live.keys() == history.keys()
    for key, (ts, values) in history.items():
        np.testing.assert_array_equal(live[key][0], ts)
        np.testing.assert_array_equal(live[key][1], values)
    assert all(0 < s <= spec.step for s in fake.sleeps)


def test_run_live_catches_up_in_bounded_pieces_and_retries_after_errors() -> None:
    spec = FleetSpec(hosts=1)
    stop = threading.Event()
    fake = FakeTime(T0 + 3600, stop, wakeups=2)
    outcomes = iter([503])

    def flaky(request: httpx.Request) -> httpx.Response:
        status = next(outcomes, 204)
        if status == 204 and request.url.path == "/api/v1/import":
            bodies.append(request.content)
        return httpx.Response(status)

    bodies: list[bytes] = []
    client = httpx.Client(transport=httpx.MockTransport(flaky))
    run_live(
        spec,
        "http://vm:8428",
        stop=stop,
        since=T0,
        clock=fake.clock,
        sleep=fake.sleep,
        client=client,
        max_steps_per_write=50,
    )
    steps = [len(orjson.loads(b.splitlines()[0])["timestamps"]) for b in bodies]
    assert max(steps) <= 50
    data = collect(bodies)
    ts = next(iter(data.values()))[0]
    assert ts[0] == (T0 + 15) * 1000 and np.all(np.diff(ts) == 15000)
    assert fake.sleeps[0] == spec.step  # the failed write waited one step


# --- against a real VictoriaMetrics -----------------------------------------------------


@pytest.fixture(scope="module")
def victoriametrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("victoria-metrics") is None:
        pytest.skip("victoria-metrics is not installed (Debian package victoria-metrics)")
    from lstmad.localstack import start_victoriametrics

    data_dir: Path = tmp_path_factory.mktemp("vm")
    vm = start_victoriametrics(data_dir / "data", extra_args=["-retentionPeriod=100y"])
    try:
        yield vm.url
    finally:
        vm.stop()


def query(vm_url: str, expr: str, at: float) -> dict[str, float]:
    resp = httpx.get(f"{vm_url}/api/v1/query", params={"query": expr, "time": at}, timeout=30)
    resp.raise_for_status()
    result = resp.json()["data"]["result"]
    return {r["metric"]["instance"]: float(r["value"][1]) for r in result}


@pytest.mark.integration
def test_default_feature_queries_run_on_imported_fleet(victoriametrics: str) -> None:
    import time

    end = math.floor(time.time() / 15) * 15
    start = end - 2 * HOUR
    anomaly = Anomaly(2, end - 60 * 60, end - 30 * 60, "cpu")
    spec = FleetSpec(hosts=4, anomalies=(anomaly,))
    bodies = list(generate_import_lines(spec, start, end))
    written = import_to_vm(victoriametrics, bodies)
    assert written == 4 * 20 * (2 * 240 + 1)

    inside = end - 45 * 60
    expected = features(collect(bodies), spec)
    ts = np.arange(start, end + 1, 15)
    for name, expr in FEATURES.items():
        for at in (inside, end - 10 * 60):
            got = query(victoriametrics, expr, at)
            assert sorted(got) == instance_names(spec), name
            assert all(math.isfinite(v) for v in got.values()), name
            # VictoriaMetrics agrees with the features computed from the raw series.
            column = int(np.searchsorted(ts, at))
            want = expected[name][:, column]
            have = np.array([got[i] for i in instance_names(spec)])
            np.testing.assert_allclose(have, want, atol=0.02, err_msg=name)

    busy = query(victoriametrics, FEATURES["cpu_busy"], inside)
    assert busy.pop("demo-host-2:9100") > 0.9
    assert max(busy.values()) < 0.8
    after = query(victoriametrics, FEATURES["cpu_busy"], end - 10 * 60)
    assert max(after.values()) < 0.8
