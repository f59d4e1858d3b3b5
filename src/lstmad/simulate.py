"""The demo fleet: deterministic node_exporter series for N simulated hosts.

Every sample is a pure function of ``(seed, host index, t)`` for ``t`` on the step
grid, so history imported first and live samples written later continue each other
without a seam, and any range can be generated on its own, in any order. Counters
are closed-form in ``t``: the exact integral, from the Unix epoch, of a non-negative
rate built from sinusoids (a daily pattern with a per-host phase and amplitude, a
weaker weekly one and a few faster "noise" components), plus a non-negative jitter
smaller than the least increment per step, so they never decrease and never reset.
Gauges add hashed white noise. Injected :class:`Anomaly` windows change the rates,
and so the counters, in closed form too; an anomaly leaves its counters shifted for
good (a saturated cpu's extra user seconds stay counted), so history and live
samples must come from the same :class:`FleetSpec`.

The metric names and labels are those of node_exporter, so the detector's default
feature queries (``rate(node_cpu_seconds_total{mode="idle"}[1m])`` and friends) run
unchanged on the simulated data.

Example::

    spec = FleetSpec(hosts=4, anomalies=(Anomaly(3, now - 600, now + 1200, "cpu"),))
    samples = import_to_vm("http://127.0.0.1:8428",
                           generate_import_lines(spec, now - 2 * 86400, now))
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, NamedTuple

import httpx
import numpy as np
import orjson

from lstmad.errors import (
    ConfigError,
    SourceConnectionError,
    SourceError,
    SourceHTTPError,
    SourceTimeout,
)

__all__ = [
    "ANOMALY_KINDS",
    "Anomaly",
    "FleetSpec",
    "add_arguments",
    "generate_import_lines",
    "import_to_vm",
    "instance_names",
    "parse_duration",
    "run_from_args",
    "run_live",
]

log = logging.getLogger(__name__)

ANOMALY_KINDS = ("cpu", "memory", "network", "disk")
"""``cpu``: saturation (idle near 0, user/system/iowait and load1 up); ``memory``: a
leak (available memory falls steadily, recovers at the end); ``network``: traffic
x20 on eth0; ``disk``: io time near 1 s/s and iowait up."""

DAY = 86400.0
WEEK = 7 * DAY
_TAU = 2.0 * math.pi
_NOISE_COMPONENTS = 4
_NOISE_AMPLITUDE = 0.18
# A counter's jitter takes at most this fraction of its least increment over
# min(step, _JITTER_SPAN): enough to look noisy, never enough to go backwards, and
# (capped at 15 s) no noisier on coarser grids.
_JITTER = 0.5
_JITTER_SPAN = 15.0

_CPU_SHIFT = 0.97  # share of the normally idle time a cpu anomaly takes
_CPU_SPLIT = (0.70, 0.22, 0.08)  # where that time goes: user, system, iowait
_DISK_IOWAIT_SHIFT = 0.40  # share of the normally idle time a disk anomaly turns into iowait
_DISK_IO_SHIFT = 0.97  # share of the normally not-busy disk time a disk anomaly fills
_NETWORK_FACTOR = 20.0
_LEAK = 0.95  # share of the normally available memory a leak has eaten at its end
_LOAD_TAU = 60.0  # node_load1 is an exponentially damped one-minute average
_CPU_LOAD_PER_CORE = 4.0
_DISK_LOAD_PER_CORE = 1.0

_MEMORY_GIB = np.array([2, 4, 8, 16, 32, 64], dtype=np.float64)
_DISK_GB = np.array([20, 40, 80, 160, 320, 500], dtype=np.float64)
_CPU_MODES = ("idle", "iowait", "system", "user")

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class Anomaly:
    """An injected incident on one host over ``[start, end)`` (Unix seconds).

    ``host`` is the 1-based host index (``demo-host-3`` is host 3); ``kind`` is one of
    :data:`ANOMALY_KINDS`.
    """

    host: int
    start: float
    end: float
    kind: str

    def __post_init__(self) -> None:
        if isinstance(self.host, bool) or not isinstance(self.host, int) or self.host < 1:
            raise ConfigError(f"expected a 1-based host index, found {self.host!r}", "anomaly.host")
        if self.kind not in ANOMALY_KINDS:
            raise ConfigError(
                f"expected one of {', '.join(ANOMALY_KINDS)}, found {self.kind!r}", "anomaly.kind"
            )
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            raise ConfigError(
                f"expected finite start and end, found {self.start!r}..{self.end!r}",
                "anomaly",
            )
        if self.end <= self.start:
            raise ConfigError(f"expected end after start, found start={self.start} end={self.end}", "anomaly")


@dataclass(frozen=True)
class FleetSpec:
    """What to simulate: how many hosts, on which grid, from which seed, with which incidents.

    Host ``i`` (1-based) is ``instance="<prefix>-<i>:9100"``; two specs that differ
    only in ``hosts`` give identical series for the hosts they share.
    """

    hosts: int = 4
    step: float = 15.0
    seed: int = 0
    prefix: str = "demo-host"
    job: str = "node"
    cpus: int = 2
    anomalies: tuple[Anomaly, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "anomalies", tuple(self.anomalies))
        if isinstance(self.hosts, bool) or not isinstance(self.hosts, int) or self.hosts < 1:
            raise ConfigError(f"expected a positive number of hosts, found {self.hosts!r}", "hosts")
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int) or self.cpus < 1:
            raise ConfigError(f"expected a positive number of cpus, found {self.cpus!r}", "cpus")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"expected an integer seed, found {self.seed!r}", "seed")
        if not isinstance(self.step, int | float) or not math.isfinite(self.step):
            raise ConfigError(f"expected a positive step in seconds, found {self.step!r}", "step")
        step_ms = round(self.step * 1000)
        if step_ms < 1 or abs(self.step * 1000 - step_ms) > 1e-6:
            raise ConfigError(
                f"expected a positive step that is a whole number of milliseconds, found {self.step!r}",
                "step",
            )
        if not self.prefix or not self.job:
            raise ConfigError(
                f"expected non-empty prefix and job, found {self.prefix!r} and {self.job!r}",
                "prefix",
            )
        for anomaly in self.anomalies:
            if not isinstance(anomaly, Anomaly):
                raise ConfigError(f"expected Anomaly objects, found {anomaly!r}", "anomalies")
            if anomaly.host > self.hosts:
                raise ConfigError(
                    f"expected a host index in 1..{self.hosts}, found {anomaly.host}",
                    "anomaly.host",
                )
        ordered = sorted(self.anomalies, key=lambda a: (a.host, a.start))
        for first, second in itertools.pairwise(ordered):
            if first.host == second.host and second.start < first.end:
                raise ConfigError(
                    f"expected anomalies on one host not to overlap, found {first} and {second}",
                    "anomalies",
                )

    @property
    def step_ms(self) -> int:
        """The step in whole milliseconds, the unit of the timestamp grid."""
        return round(self.step * 1000)


def instance_names(spec: FleetSpec) -> list[str]:
    """The ``instance`` label of every host, host 1 first."""
    return [f"{spec.prefix}-{i}:9100" for i in range(1, spec.hosts + 1)]


# --- deterministic randomness -------------------------------------------------------


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on uint64 arrays (wrapping on purpose)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _to_unit(z: np.ndarray) -> np.ndarray:
    """uint64 hashes to floats uniform in [0, 1)."""
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _host_keys(seed: int, hosts: np.ndarray) -> np.ndarray:
    seed_key = _mix(np.array([seed & _MASK64], dtype=np.uint64))
    return _mix(seed_key ^ (hosts.astype(np.uint64) * _GOLDEN))


def _stream_keys(keys: np.ndarray, stream: int) -> np.ndarray:
    return _mix(keys ^ _mix(np.array([stream], dtype=np.uint64) * _GOLDEN))


class _Draw:
    """Per-host constants, each from its own hash stream of (seed, host)."""

    def __init__(self, keys: np.ndarray) -> None:
        self._keys = keys
        self._stream = 0

    def unit(self) -> np.ndarray:
        self._stream += 1
        return _to_unit(_stream_keys(self._keys, self._stream))[:, None]

    def uniform(self, low: float, high: float) -> np.ndarray:
        return low + (high - low) * self.unit()

    def log_uniform(self, low: float, high: float) -> np.ndarray:
        return np.exp(self.uniform(math.log(low), math.log(high)))

    def choice(self, options: np.ndarray) -> np.ndarray:
        index = np.minimum((self.unit() * len(options)).astype(np.int64), len(options) - 1)
        return options[index]


def _fleet_unit(seed: int, stream: int) -> float:
    """A fleet-wide constant in [0, 1): what all hosts of one seed share."""
    return float(_to_unit(_stream_keys(_host_keys(seed, np.array([0])), 1000 + stream))[0])


# --- the latent activity processes -------------------------------------------------


@dataclass(frozen=True)
class _Process:
    """``1 + sum_k a_k sin(2 pi t / P_k + phi_k)`` per host; arrays are (hosts, components)."""

    amps: np.ndarray
    periods: np.ndarray
    phases: np.ndarray

    def row(self, r: int) -> _Process:
        return _Process(self.amps[r : r + 1], self.periods[r : r + 1], self.phases[r : r + 1])

    @property
    def low(self) -> np.ndarray:
        return 1.0 - self.amps.sum(axis=1, keepdims=True)

    @property
    def high(self) -> np.ndarray:
        return 1.0 + self.amps.sum(axis=1, keepdims=True)

    def value(self, t: np.ndarray) -> np.ndarray:
        out = np.ones((self.amps.shape[0], t.shape[-1]))
        for k in range(self.amps.shape[1]):
            period = self.periods[:, k : k + 1]
            angle = np.fmod(t, period) * (_TAU / period) + self.phases[:, k : k + 1]
            out += self.amps[:, k : k + 1] * np.sin(angle)
        return out

    def integral(self, t: np.ndarray) -> np.ndarray:
        """The exact integral of :meth:`value` from 0 to ``t``."""
        out = np.zeros((self.amps.shape[0], t.shape[-1])) + t
        for k in range(self.amps.shape[1]):
            period = self.periods[:, k : k + 1]
            phase = self.phases[:, k : k + 1]
            angle = np.fmod(t, period) * (_TAU / period) + phase
            out += (self.amps[:, k : k + 1] * period / _TAU) * (np.cos(phase) - np.cos(angle))
        return out


def _process(
    draw: _Draw, n: int, daily: tuple[float, float], phase: np.ndarray, weekly_phase: np.ndarray
) -> _Process:
    daily_amp = draw.uniform(*daily)
    weekly_amp = daily_amp * draw.uniform(0.2, 0.35)
    weights = np.hstack([draw.uniform(0.5, 1.0) for _ in range(_NOISE_COMPONENTS)])
    noise_amps = _NOISE_AMPLITUDE * weights / weights.sum(axis=1, keepdims=True)
    noise_periods = np.hstack([draw.log_uniform(120.0, 3 * 3600.0) for _ in range(_NOISE_COMPONENTS)])
    noise_phases = np.hstack([_TAU * draw.unit() for _ in range(_NOISE_COMPONENTS)])
    return _Process(
        amps=np.hstack([daily_amp, weekly_amp, noise_amps]),
        periods=np.hstack([np.full((n, 1), DAY), np.full((n, 1), WEEK), noise_periods]),
        phases=np.hstack([phase, weekly_phase, noise_phases]),
    )


@dataclass(frozen=True)
class _Hosts:
    """Everything constant about a block of hosts; every array has one row per host."""

    index: np.ndarray  # 1-based host numbers, shape (n,)
    keys: np.ndarray  # hash keys, shape (n, 1)
    activity: _Process  # drives cpu, load and network
    storage: _Process  # drives disk, iowait and memory
    busy: np.ndarray  # mean non-idle, non-iowait share of a cpu
    user_share: np.ndarray
    iowait: np.ndarray
    cpu_scale: np.ndarray  # (n, cpus)
    io_busy: np.ndarray
    rx: np.ndarray
    tx: np.ndarray  # transmit as a multiple of receive
    lo: np.ndarray
    mem_total: np.ndarray
    mem_used: np.ndarray
    fs_size: np.ndarray
    fs_used: np.ndarray
    fs_growth: np.ndarray
    fs_phase: np.ndarray
    run_size: np.ndarray
    run_avail: np.ndarray


def _hosts(spec: FleetSpec, first: int, last: int) -> _Hosts:
    index = np.arange(first, last + 1)
    n = index.size
    keys = _host_keys(spec.seed, index)[:, None]
    draw = _Draw(keys[:, 0])
    # Hosts of one fleet peak around the same hour, each a few hours off, and share
    # their quiet days of the week.
    phase = _TAU * _fleet_unit(spec.seed, 1) + draw.uniform(-math.pi / 3, math.pi / 3)
    weekly = _TAU * _fleet_unit(spec.seed, 2) + draw.uniform(-0.2, 0.2)
    activity = _process(draw, n, (0.25, 0.5), phase, weekly)
    storage_phase = phase + draw.uniform(-math.pi / 6, math.pi / 6)
    storage = _process(draw, n, (0.15, 0.45), storage_phase, weekly)
    mem_total = draw.choice(_MEMORY_GIB) * 2**30 * draw.uniform(0.95, 0.985)
    return _Hosts(
        index=index,
        keys=keys,
        activity=activity,
        storage=storage,
        busy=draw.log_uniform(0.04, 0.32),
        user_share=draw.uniform(0.62, 0.8),
        iowait=draw.log_uniform(0.002, 0.015),
        cpu_scale=np.hstack([draw.uniform(0.85, 1.15) for _ in range(spec.cpus)]),
        io_busy=draw.log_uniform(0.01, 0.25),
        rx=draw.log_uniform(2e4, 2e6),
        tx=draw.uniform(0.3, 1.5),
        lo=draw.log_uniform(300.0, 3000.0),
        mem_total=np.floor(mem_total / 1024) * 1024,
        mem_used=draw.uniform(0.2, 0.6),
        fs_size=draw.choice(_DISK_GB) * 1e9 // 4096 * 4096,
        fs_used=draw.uniform(0.15, 0.6),
        fs_growth=draw.uniform(0.005, 0.03),
        fs_phase=draw.unit(),
        run_size=np.floor(mem_total / 10 / 4096) * 4096,
        run_avail=draw.uniform(0.97, 0.998),
    )


# --- the series -----------------------------------------------------------------------


class _Series(NamedTuple):
    name: str
    labels: dict[str, str]


def _series_layout(spec: FleetSpec) -> list[_Series]:
    """Every series of one host, in output order (matching :func:`_sample_block`)."""
    layout = [
        _Series("node_cpu_seconds_total", {"cpu": str(c), "mode": mode})
        for c in range(spec.cpus)
        for mode in _CPU_MODES
    ]
    sda = {"device": "sda"}
    root = {"device": "/dev/sda1", "fstype": "ext4", "mountpoint": "/"}
    run = {"device": "tmpfs", "fstype": "tmpfs", "mountpoint": "/run"}
    layout += [
        _Series("node_memory_MemAvailable_bytes", {}),
        _Series("node_memory_MemTotal_bytes", {}),
        _Series("node_load1", {}),
        _Series("node_disk_io_time_seconds_total", sda),
        _Series("node_network_receive_bytes_total", {"device": "eth0"}),
        _Series("node_network_receive_bytes_total", {"device": "lo"}),
        _Series("node_network_transmit_bytes_total", {"device": "eth0"}),
        _Series("node_network_transmit_bytes_total", {"device": "lo"}),
        _Series("node_filesystem_avail_bytes", root),
        _Series("node_filesystem_size_bytes", root),
        _Series("node_filesystem_avail_bytes", run),
        _Series("node_filesystem_size_bytes", run),
    ]
    return layout


class _Noise:
    """Hashed white noise in [0, 1) per (host, stream, timestamp)."""

    def __init__(self, keys: np.ndarray, ms: np.ndarray) -> None:
        self._keys = keys
        self._time = _mix(ms.astype(np.uint64) * _GOLDEN)

    def __call__(self, stream: int) -> np.ndarray:
        return _to_unit(_mix(_stream_keys(self._keys, 10_000 + stream) ^ self._time))


def _ramp(t: np.ndarray, start: float, end: float) -> np.ndarray:
    """How far an exponentially damped average has followed a step up at ``start``
    that ends at ``end``: 0 before, rising towards 1, decaying after."""
    inside = np.clip(t, start, end) - start
    rise = 1.0 - np.exp(-inside / _LOAD_TAU)
    after = np.maximum(t - end, 0.0)
    return np.where(t < start, 0.0, rise * np.exp(-after / _LOAD_TAU))


def _floor_to(x: np.ndarray, scale: float) -> np.ndarray:
    """Round down to ``1 / scale`` (dividing, so the JSON shows short decimals)."""
    return np.floor(x * scale) / scale


def _sample_block(spec: FleetSpec, hosts: _Hosts, ms: np.ndarray) -> list[np.ndarray]:
    """All series of ``hosts`` at timestamps ``ms``: one (hosts, timestamps) array per
    entry of :func:`_series_layout`. A pure function of (seed, host, timestamp)."""
    t = ms / 1000.0
    step = spec.step
    n = hosts.index.size
    noise = _Noise(hosts.keys, ms)
    act, sto = hosts.activity, hosts.storage
    int_act, int_sto = act.integral(t), sto.integral(t)
    val_act, val_sto = act.value(t), sto.value(t)
    anomalies = [a for a in spec.anomalies if hosts.index[0] <= a.host <= hosts.index[-1]]

    # Rates as linear functions of the processes, so their integrals are closed form.
    busy = hosts.busy * hosts.cpu_scale  # (n, cpus)
    user_share = hosts.user_share

    # Where the idle counters may only take a smaller jitter: an anomaly that lowers
    # the idle rate overlaps [t, t + step].
    idle_room = np.ones((n, t.size))
    for a in anomalies:
        if a.kind in ("cpu", "disk"):
            near = (t + step >= a.start) & (t <= a.end)
            keep = 1.0 - (_CPU_SHIFT if a.kind == "cpu" else _DISK_IOWAIT_SHIFT)
            row = a.host - hosts.index[0]
            idle_room[row] = np.where(near, np.minimum(idle_room[row], keep), idle_room[row])

    span = min(step, _JITTER_SPAN)

    def jitter(stream: int, least_rate: np.ndarray) -> np.ndarray:
        return (_JITTER * span) * least_rate * noise(stream)

    cpu: list[list[np.ndarray]] = []
    for c in range(spec.cpus):
        b = busy[:, c : c + 1]
        busy_int = b * int_act
        iowait_int = hosts.iowait * int_sto
        modes = {
            "idle": t - busy_int - iowait_int,
            "iowait": iowait_int.copy(),
            "system": (1.0 - user_share) * busy_int,
            "user": user_share * busy_int,
        }
        least_busy = b * act.low + hosts.iowait * sto.low
        least = {
            # Idle jitter is cpu_busy noise: keep it below the least busy share, so
            # cpu_busy never looks negative.
            "idle": np.minimum((1.0 - b * act.high - hosts.iowait * sto.high) * idle_room, least_busy),
            "iowait": hosts.iowait * sto.low,
            "system": (1.0 - user_share) * b * act.low,
            "user": user_share * b * act.low,
        }
        for i, mode in enumerate(_CPU_MODES):
            modes[mode] += jitter(100 * c + i, least[mode])
        cpu.append([modes[mode] for mode in _CPU_MODES])

    io = hosts.io_busy * int_sto + jitter(1001, hosts.io_busy * sto.low)
    rx_int = hosts.rx * int_act
    tx_int = hosts.tx * hosts.rx * 0.5 * (int_act + int_sto)
    rx = rx_int + jitter(1002, hosts.rx * act.low)
    tx = tx_int + jitter(1003, hosts.tx * hosts.rx * 0.5 * (act.low + sto.low))
    lo = hosts.lo * 0.5 * (t + int_sto) + jitter(1004, hosts.lo * 0.5 * (1.0 + sto.low))

    mean_busy = hosts.busy * hosts.cpu_scale.mean(axis=1, keepdims=True)
    load = spec.cpus * (1.2 * mean_busy * val_act + hosts.iowait * val_sto) * (0.8 + 0.4 * noise(2001))
    used = hosts.mem_used * (1.0 + 0.15 * (val_sto - 1.0)) + 0.01 * (noise(2002) - 0.5)
    avail_share = 1.0 - used

    # A weekly cleanup: the root filesystem fills for most of a week, then drops back
    # over a few hours.
    cycle = np.fmod(t + hosts.fs_phase * WEEK, WEEK) / WEEK
    fill = np.where(cycle < 0.98, cycle / 0.98, (1.0 - cycle) / 0.02)
    fs_used = hosts.fs_used + hosts.fs_growth * fill + 0.0001 * noise(2003)

    for a in anomalies:
        r = a.host - hosts.index[0]
        clipped = np.clip(t, a.start, a.end)
        start = np.array([a.start])
        row_act, row_sto = act.row(r), sto.row(r)
        d_act = (row_act.integral(clipped) - row_act.integral(start))[0]
        d_sto = (row_sto.integral(clipped) - row_sto.integral(start))[0]
        d_t = clipped - a.start
        if a.kind in ("cpu", "disk"):
            for c in range(spec.cpus):
                idle_int = d_t - busy[r, c] * d_act - hosts.iowait[r, 0] * d_sto
                idle, iowait, system, user = cpu[c]
                if a.kind == "cpu":
                    moved = _CPU_SHIFT * idle_int
                    user[r] += _CPU_SPLIT[0] * moved
                    system[r] += _CPU_SPLIT[1] * moved
                    iowait[r] += _CPU_SPLIT[2] * moved
                else:
                    moved = _DISK_IOWAIT_SHIFT * idle_int
                    iowait[r] += moved
                idle[r] -= moved
            per_core = _CPU_LOAD_PER_CORE if a.kind == "cpu" else _DISK_LOAD_PER_CORE
            load[r] += spec.cpus * per_core * _ramp(t, a.start, a.end)
            if a.kind == "disk":
                io[r] += _DISK_IO_SHIFT * (d_t - hosts.io_busy[r, 0] * d_sto)
        elif a.kind == "network":
            extra = _NETWORK_FACTOR - 1.0
            rx[r] += extra * hosts.rx[r, 0] * d_act
            tx[r] += extra * hosts.tx[r, 0] * hosts.rx[r, 0] * 0.5 * (d_act + d_sto)
        elif a.kind == "memory":
            progress = np.where(t < a.end, d_t / (a.end - a.start), 0.0)
            avail_share[r] *= 1.0 - _LEAK * progress

    ones = np.ones((1, t.size))
    out: list[np.ndarray] = [_floor_to(series, 100.0) for per_cpu in cpu for series in per_cpu]
    lo_bytes = np.floor(lo).astype(np.int64)
    out += [
        (np.floor(hosts.mem_total * avail_share / 1024) * 1024).astype(np.int64),
        (hosts.mem_total * ones).astype(np.int64),
        np.round(load, 2),
        _floor_to(io, 1000.0),
        np.floor(rx).astype(np.int64),
        lo_bytes,
        np.floor(tx).astype(np.int64),
        lo_bytes,
        (np.floor(hosts.fs_size * (1.0 - fs_used) / 4096) * 4096).astype(np.int64),
        (hosts.fs_size * ones).astype(np.int64),
        (np.floor(hosts.run_size * hosts.run_avail / 4096) * 4096 * ones).astype(np.int64),
        (hosts.run_size * ones).astype(np.int64),
    ]
    return [np.ascontiguousarray(series) for series in out]


# --- import lines ----------------------------------------------------------------------


def _grid(spec: FleetSpec, start: float, end: float) -> tuple[int, int]:
    """First and last grid timestamp (ms) inside [start, end]; first > last when none."""
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ConfigError(f"expected a finite time range, found {start!r}..{end!r}", "range")
    if start < 0:
        raise ConfigError(f"expected a start at or after the Unix epoch, found {start!r}", "range")
    step_ms = spec.step_ms
    start_ms = math.ceil(start * 1000 - 1e-6)
    end_ms = math.floor(end * 1000 + 1e-6)
    return -(-start_ms // step_ms) * step_ms, end_ms // step_ms * step_ms


def _check_chunks(hosts_per_chunk: int, steps_per_chunk: int) -> None:
    if hosts_per_chunk < 1 or steps_per_chunk < 1:
        raise ConfigError(
            f"expected positive chunk sizes, found hosts_per_chunk={hosts_per_chunk} "
            f"steps_per_chunk={steps_per_chunk}",
            "chunk",
        )


def _bodies(
    spec: FleetSpec, first_ms: int, last_ms: int, hosts_per_chunk: int, steps_per_chunk: int
) -> Iterator[bytes]:
    if first_ms > last_ms:
        return
    step_ms = spec.step_ms
    layout = _series_layout(spec)
    names = instance_names(spec)
    for first_host in range(1, spec.hosts + 1, hosts_per_chunk):
        last_host = min(first_host + hosts_per_chunk - 1, spec.hosts)
        hosts = _hosts(spec, first_host, last_host)
        metrics = [
            [
                orjson.dumps({"__name__": s.name, "instance": names[h - 1], "job": spec.job, **s.labels})
                for s in layout
            ]
            for h in range(first_host, last_host + 1)
        ]
        for slice_ms in range(first_ms, last_ms + 1, step_ms * steps_per_chunk):
            ms = np.arange(slice_ms, min(slice_ms + step_ms * steps_per_chunk, last_ms + 1), step_ms)
            series = _sample_block(spec, hosts, ms.astype(np.int64))
            tail = b',"timestamps":' + orjson.dumps(ms, option=_NUMPY) + b"}\n"
            parts: list[bytes] = []
            for r, host_metrics in enumerate(metrics):
                for metric, values in zip(host_metrics, series, strict=True):
                    parts += (
                        b'{"metric":',
                        metric,
                        b',"values":',
                        orjson.dumps(values[r], option=_NUMPY),
                        tail,
                    )
            yield b"".join(parts)


def generate_import_lines(
    spec: FleetSpec,
    start: float,
    end: float,
    *,
    hosts_per_chunk: int = 500,
    steps_per_chunk: int = 120,
) -> Iterator[bytes]:
    """VictoriaMetrics ``/api/v1/import`` bodies for every grid point in ``[start, end]``.

    Grid points are the multiples of ``spec.step`` inside the range, both ends
    included. Each body is JSON lines (one line per series, up to ``hosts_per_chunk``
    hosts and ``steps_per_chunk`` timestamps), so memory stays bounded whatever the
    fleet size and range; bodies are produced lazily.
    """
    _check_chunks(hosts_per_chunk, steps_per_chunk)
    first_ms, last_ms = _grid(spec, start, end)
    return _bodies(spec, first_ms, last_ms, hosts_per_chunk, steps_per_chunk)


_TIMESTAMPS_KEY = b'"timestamps":['


def _count_samples(body: bytes) -> int:
    """The number of samples in an import body (one per timestamp of each line)."""
    total = 0
    for line in body.splitlines():
        if not line.strip():
            continue
        at = line.rfind(_TIMESTAMPS_KEY)
        close = line.find(b"]", at) if at >= 0 else -1
        if at < 0 or close < 0:
            total += len(orjson.loads(line).get("timestamps", ()))
            continue
        begin = at + len(_TIMESTAMPS_KEY)
        if line[begin:close].strip():
            total += line.count(b",", begin, close) + 1
    return total


def _request(client: httpx.Client, method: str, url: str, timeout: float, body: bytes | None = None) -> None:
    try:
        response = client.request(method, url, content=body, timeout=timeout)
    except httpx.TimeoutException as err:
        raise SourceTimeout(f"{method} {url}: no answer within {timeout:g}s") from err
    except httpx.TransportError as err:
        raise SourceConnectionError(f"{method} {url}: {err}") from err
    if not response.is_success:
        raise SourceHTTPError(
            f"{method} {url}: expected a 2xx status, found {response.status_code}: {response.text[:200]!r}",
            response.status_code,
        )


def import_to_vm(
    vm_url: str,
    bodies: Iterable[bytes],
    *,
    client: httpx.Client | None = None,
    timeout: float = 60.0,
) -> int:
    """POST each body to ``{vm_url}/api/v1/import``; return the number of samples written.

    Afterwards ``/internal/force_flush`` is called so the samples are searchable at
    once. Raises :class:`~lstmad.errors.SourceError` (naming the URL, and the status
    for a non-2xx answer) on the first failure.
    """
    base = vm_url.rstrip("/")
    http = client if client is not None else httpx.Client(timeout=timeout)
    try:
        samples = 0
        for body in bodies:
            _request(http, "POST", f"{base}/api/v1/import", timeout, body)
            samples += _count_samples(body)
        _request(http, "GET", f"{base}/internal/force_flush", timeout)
        return samples
    finally:
        if client is None:
            http.close()


def run_live(
    spec: FleetSpec,
    vm_url: str,
    *,
    stop: threading.Event,
    since: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], object] | None = None,
    client: httpx.Client | None = None,
    timeout: float = 60.0,
    max_steps_per_write: int = 240,
) -> None:
    """Write every grid point after ``since`` as soon as ``clock()`` reaches it, until
    ``stop`` is set.

    Each iteration writes at most ``max_steps_per_write`` steps, so a simulator that
    fell behind (or a VictoriaMetrics that was down) catches up in bounded pieces. A
    failed write is logged and retried one step later; ``sleep`` defaults to
    ``stop.wait`` so setting ``stop`` ends a wait at once.
    """
    _check_chunks(1, max_steps_per_write)
    wait = sleep if sleep is not None else stop.wait
    step_ms = spec.step_ms
    done_ms = math.floor(since * 1000 + 1e-6)
    http = client if client is not None else httpx.Client(timeout=timeout)
    try:
        while not stop.is_set():
            now_ms = math.floor(clock() * 1000)
            first_ms = (done_ms // step_ms + 1) * step_ms
            if first_ms > now_ms:
                wait((first_ms - now_ms) / 1000)
                continue
            last_ms = min(now_ms // step_ms * step_ms, first_ms + (max_steps_per_write - 1) * step_ms)
            bodies = _bodies(spec, first_ms, last_ms, 500, max_steps_per_write)
            try:
                import_to_vm(vm_url, bodies, client=http, timeout=timeout)
            except SourceError as err:
                log.warning(
                    "live write of %d steps failed, retrying: %s",
                    (last_ms - first_ms) // step_ms + 1,
                    err,
                )
                wait(spec.step)
                continue
            done_ms = last_ms
    finally:
        if client is None:
            http.close()


# --- command line ----------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": WEEK}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str, key: str = "duration") -> float:
    """Seconds in ``90s``, ``15m``, ``1h30m``, ``2d``, ``-10m`` or a plain number of seconds.

    A leading sign is allowed (anomaly offsets are relative to now). Raises
    :class:`~lstmad.errors.ConfigError` naming ``key`` for anything else.
    """
    raw = text.strip()
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw[1:] if raw[:1] in "+-" else raw
    seconds: float | None = None
    if re.fullmatch(r"\d+(?:\.\d+)?", body):
        seconds = float(body)
    else:
        parts = _DURATION_RE.findall(body)
        if parts and "".join(n + u for n, u in parts) == body:
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds is None or not math.isfinite(seconds):
        raise ConfigError(f"expected a duration like 30s, 90m, 6h or 2d, found {text!r}", key)
    return sign * seconds


class _AnomalyArg(NamedTuple):
    host: int
    kind: str
    offset: float
    duration: float


def _anomaly_arg(text: str) -> _AnomalyArg:
    parts = text.split(":")
    if len(parts) != 4:
        raise ConfigError(
            f"expected HOST:KIND:START_OFFSET:DURATION like 3:cpu:-10m:30m, found {text!r}",
            "--anomaly",
        )
    host, kind, offset, duration = parts
    if not host.isdigit() or int(host) < 1:
        raise ConfigError(f"expected a 1-based host index, found {host!r} in {text!r}", "--anomaly")
    if kind not in ANOMALY_KINDS:
        raise ConfigError(
            f"expected a kind in {', '.join(ANOMALY_KINDS)}, found {kind!r} in {text!r}",
            "--anomaly",
        )
    length = parse_duration(duration, "--anomaly")
    if length <= 0:
        raise ConfigError(f"expected a positive duration, found {duration!r} in {text!r}", "--anomaly")
    return _AnomalyArg(int(host), kind, parse_duration(offset, "--anomaly"), length)


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = parse.__name__.strip("_")
    return convert


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ConfigError(f"expected a positive duration, found {text!r}")
    return seconds


def _non_negative_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds < 0:
        raise ConfigError(f"expected a non-negative duration, found {text!r}")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lstmad simulate``."""
    parser.add_argument(
        "--vm-url",
        default="http://127.0.0.1:8428",
        help="VictoriaMetrics base URL (default %(default)s)",
    )
    parser.add_argument("--hosts", type=int, default=4, help="number of hosts (default 4)")
    parser.add_argument(
        "--history",
        type=_argparse_type(_non_negative_duration),
        default=2 * DAY,
        help="history to import before now, e.g. 2d, 6h, 90m (default 2d)",
    )
    parser.add_argument(
        "--step",
        type=_argparse_type(_positive_duration),
        default=15.0,
        help="sample interval (default 15s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--prefix",
        default="demo-host",
        help='instance label prefix: "<prefix>-<i>:9100" (default %(default)s)',
    )
    parser.add_argument("--cpus", type=int, default=2, help="cpus per host (default 2)")
    parser.add_argument(
        "--anomaly",
        type=_argparse_type(_anomaly_arg),
        action="append",
        default=[],
        metavar="HOST:KIND:START_OFFSET:DURATION",
        help="inject an anomaly, offset relative to now, e.g. 3:cpu:-10m:30m; "
        f"kinds: {', '.join(ANOMALY_KINDS)} (repeatable)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="after the history, keep writing samples until SIGINT/SIGTERM",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the import lines to stdout instead of writing them",
    )


def _spec_from_args(args: argparse.Namespace, now: float) -> FleetSpec:
    return FleetSpec(
        hosts=args.hosts,
        step=args.step,
        seed=args.seed,
        prefix=args.prefix,
        cpus=args.cpus,
        anomalies=tuple(
            Anomaly(a.host, now + a.offset, now + a.offset + a.duration, a.kind) for a in args.anomaly
        ),
    )


def run_from_args(args: argparse.Namespace, *, clock: Callable[[], float] = time.time) -> int:
    """``lstmad simulate``: import the history, then optionally keep writing live."""
    if args.live and args.dry_run:
        raise ConfigError("expected at most one of --live and --dry-run, found both", "--live")
    now = clock()
    spec = _spec_from_args(args, now)
    end = math.floor(now / spec.step) * spec.step
    bodies = generate_import_lines(spec, end - args.history, end)
    if args.dry_run:
        out = sys.stdout.buffer
        for body in bodies:
            out.write(body)
        out.flush()
        return 0
    samples = import_to_vm(args.vm_url, bodies)
    log.info("imported %d samples for %d hosts into %s", samples, spec.hosts, args.vm_url)
    if args.live:
        stop = threading.Event()
        with _stop_on_signals(stop):
            log.info("writing live samples every %gs until interrupted", spec.step)
            run_live(spec, args.vm_url, stop=stop, since=end, clock=clock)
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM while active (main thread only), then restore."""
    previous: dict[signal.Signals, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
