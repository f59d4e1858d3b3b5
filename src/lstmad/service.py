"""``lstmad serve``: the scoring loop, the snapshot it publishes, and the HTTP app.

The loop (:class:`ScoringLoop`) is the only place where time passes. Every
``interval`` it fetches the new grid points of every feature for all entities
(one query per feature), advances the streaming engine, and publishes an
immutable :class:`Snapshot` with the per-entity metrics already rendered. A
scrape of ``/metrics`` never queries the source: it returns the self-monitoring
registry plus the prepared bytes of the latest snapshot.
"""

from __future__ import annotations

import base64
import hmac
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lstmad._version import __version__
from lstmad.artifact import LoadedModel
from lstmad.config import Config
from lstmad.errors import SourceError
from lstmad.exposition import EntityMetrics, render_entities
from lstmad.sharding import ShardFilter
from lstmad.source import SOURCE_ERROR_REASONS, PromClient, fetch_range
from lstmad.streaming import StepResult, StreamingEngine
from lstmad.writeback import VMWriter, render_import_lines

__all__ = ["Monitor", "ScoringLoop", "Snapshot", "create_app"]

log = logging.getLogger(__name__)

CYCLE_STAGES = ("fetch", "score", "publish")
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Monitor:
    """Self-monitoring metrics, pre-initialised for every label value so they exist at 0."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.cycle_duration = Histogram(
            "lstmad_cycle_duration_seconds",
            "Duration of each stage of a scoring cycle (fetch, score, publish).",
            ["stage"],
            buckets=CYCLE_BUCKETS,
            registry=registry,
        )
        self.source_errors = Counter(
            "lstmad_source_errors",
            "Failed requests to the metrics source, by reason.",
            ["reason"],
            registry=registry,
        )
        self.source_up = Gauge(
            "lstmad_source_up", "1 if the last request to the metrics source succeeded.", registry=registry
        )
        self.entities = Gauge("lstmad_entities", "Entities being scored.", registry=registry)
        self.stale_entities = Gauge(
            "lstmad_stale_entities",
            "Entities without fresh data: tracked, but not scored and never flagged.",
            registry=registry,
        )
        self.threshold = Gauge(
            "lstmad_threshold",
            "Threshold on lstmad_error above which an entity is anomalous.",
            registry=registry,
        )
        self.model_info = Gauge(
            "lstmad_model_info",
            "The model being served (value 1).",
            ["model_id", "features", "window", "layers", "hidden", "threshold_method"],
            registry=registry,
        )
        self.model_trained = Gauge(
            "lstmad_model_trained_timestamp_seconds",
            "When the served model was trained.",
            registry=registry,
        )
        self.cycles = Counter("lstmad_cycles", "Scoring cycles, by outcome.", ["outcome"], registry=registry)
        self.last_success = Gauge(
            "lstmad_last_cycle_success_timestamp_seconds",
            "When the last scoring cycle succeeded.",
            registry=registry,
        )
        self.retrains = Counter(
            "lstmad_retrains", "Scheduled retrainings, by outcome.", ["outcome"], registry=registry
        )
        self.build_info = Gauge(
            "lstmad_build_info", "lstmad version (value 1).", ["version"], registry=registry
        )
        self.build_info.labels(__version__).set(1)
        for stage in CYCLE_STAGES:
            self.cycle_duration.labels(stage)
        for reason in SOURCE_ERROR_REASONS:
            self.source_errors.labels(reason)
        for outcome in ("success", "failure"):
            self.cycles.labels(outcome)
        for outcome in ("success", "failure", "rejected"):
            self.retrains.labels(outcome)

    def count_source_error(self, err: SourceError) -> None:
        reason = err.reason if err.reason in SOURCE_ERROR_REASONS else "bad_response"
        self.source_errors.labels(reason).inc()

    def set_model(self, model: LoadedModel) -> None:
        det = model.detector
        self.model_info.clear()
        self.model_info.labels(
            model.model_id,
            ",".join(det.features),
            str(det.model_cfg.window),
            str(det.model_cfg.layers),
            str(det.model_cfg.hidden),
            det.threshold.method,
        ).set(1)
        self.model_trained.set(model.trained_at)
        self.threshold.set(det.threshold.fitted_value)


@dataclass(frozen=True)
class Snapshot:
    """What one cycle published: read by scrapes, never mutated."""

    published_at: float
    body: bytes
    entities: int
    anomalous: tuple[str, ...] = ()


@dataclass
class EntityTable:
    """Per-entity bookkeeping of the service, aligned with ``names``."""

    n_features: int
    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.n_features
        self.last_seen = np.zeros(0)
        self.last_scored = np.zeros(0)
        self.score = np.zeros(0)
        self.error = np.zeros(0)
        self.feature_errors = np.zeros((0, f))
        self.anomalous = np.zeros(0, bool)
        self.anomalies_total = np.zeros(0)

    def ensure(self, names: Sequence[str], now: float) -> np.ndarray:
        new = [n for n in names if n not in self.index]
        if new:
            k = len(new)
            for n in new:
                self.index[n] = len(self.names)
                self.names.append(n)
            self.last_seen = np.concatenate([self.last_seen, np.full(k, now)])
            self.last_scored = np.concatenate([self.last_scored, np.zeros(k)])
            self.score = np.concatenate([self.score, np.full(k, np.nan)])
            self.error = np.concatenate([self.error, np.full(k, np.nan)])
            self.feature_errors = np.concatenate([self.feature_errors, np.full((k, self.n_features), np.nan)])
            self.anomalous = np.concatenate([self.anomalous, np.zeros(k, bool)])
            self.anomalies_total = np.concatenate([self.anomalies_total, np.zeros(k)])
        return np.fromiter((self.index[n] for n in names), dtype=np.int64, count=len(names))

    def remove(self, drop: np.ndarray) -> list[str]:
        gone = [self.names[i] for i in np.flatnonzero(drop)]
        keep = ~drop
        self.names = [n for n, k in zip(self.names, keep, strict=True) if k]
        self.index = {n: i for i, n in enumerate(self.names)}
        for attr in (
            "last_seen",
            "last_scored",
            "score",
            "error",
            "feature_errors",
            "anomalous",
            "anomalies_total",
        ):
            setattr(self, attr, getattr(self, attr)[keep])
        return gone


class ScoringLoop:
    """Fetch, score and publish every ``interval`` seconds.

    Collaborators are injected: the source client, the loaded model, the
    monitor (metrics) and the clock, so tests can drive cycles one by one.
    """

    def __init__(
        self,
        cfg: Config,
        client: PromClient,
        model: LoadedModel,
        monitor: Monitor,
        *,
        clock: Callable[[], float] = time.time,
        shard: ShardFilter | None = None,
        writer: VMWriter | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.monitor = monitor
        self.clock = clock
        self.shard = shard or ShardFilter(cfg.serve.shard_index, cfg.serve.shard_count)
        self.step = cfg.interval
        self.stale_after = cfg.serve.stale_after or 3 * cfg.interval
        self.table = EntityTable(len(cfg.features))
        self.snapshot = Snapshot(0.0, b"", 0)
        self.last_success = 0.0
        self.last_processed: float | None = None
        self.consecutive_failures = 0
        self.writer = writer
        self._periods: dict[str, list[list[float]]] = {}
        self._lock = threading.Lock()
        self.model: LoadedModel
        self.engine: StreamingEngine
        self.use_model(model)

    def use_model(self, model: LoadedModel) -> None:
        """Switch to a (new) model: state is rebuilt from history at the next cycle."""
        with self._lock:
            self.model = model
            self.engine = model.detector.new_engine(resync_every=self.cfg.serve.resync_every)
            self.last_processed = None
            self.monitor.set_model(model)

    @property
    def history_steps(self) -> int:
        extra = math.ceil(self.cfg.serve.startup_history / self.step) if self.cfg.serve.startup_history else 0
        return self.model.detector.window + max(extra, 10)

    def ready(self) -> tuple[bool, str]:
        if self.last_success == 0.0:
            return False, "no scoring cycle has succeeded yet"
        age = self.clock() - self.last_success
        limit = max(3 * self.step, 30.0)
        if age > limit:
            return False, f"last successful cycle was {age:.0f}s ago (limit {limit:.0f}s)"
        return True, "ok"

    def run_cycle(self) -> bool:
        """One fetch-score-publish cycle; returns whether it succeeded."""
        with self._lock:
            try:
                self._cycle()
            except SourceError as err:
                self.monitor.source_up.set(0)
                self.monitor.cycles.labels("failure").inc()
                self.consecutive_failures += 1
                log.warning("cycle failed: %s", err)
                self._publish(self.clock())
                return False
        self.consecutive_failures = 0
        return True

    def _cycle(self) -> None:
        now = self.clock()
        step = self.step
        # The source hides its newest samples (VictoriaMetrics' -search.latencyOffset).
        end = math.floor((now - self.cfg.victoriametrics.query_delay) / step) * step
        resync = self.last_processed is None or end - self.last_processed > self.history_steps * step
        if resync:
            start = end - self.history_steps * step
        else:
            assert self.last_processed is not None
            start = self.last_processed + step
        if start > end:
            self._publish(now)
            return
        t0 = time.perf_counter()
        frame = fetch_range(self.client, self.cfg.features, self.cfg.entity_label, start, end, step)
        for name in frame.empty_features:
            self.monitor.source_errors.labels("empty").inc()
            log.info("feature %s returned no series between %.0f and %.0f", name, start, end)
        self.monitor.source_up.set(1)
        t1 = time.perf_counter()
        self.monitor.cycle_duration.labels("fetch").observe(t1 - t0)

        mine = [self.shard.owns(e) for e in frame.entities]
        names = [e for e, m in zip(frame.entities, mine, strict=True) if m]
        values = frame.values[np.flatnonzero(mine)] if names else frame.values[:0]
        fetched = set(names)
        tracked = [n for n in self.table.names if n not in fetched]
        if tracked:
            names = names + tracked
            values = np.concatenate([values, np.full((len(tracked), *values.shape[1:]), np.nan)])
        # Trailing steps where no entity has a complete sample are left for the next
        # cycle instead of being consumed as missing: right after VictoriaMetrics
        # restarts, or while a collector delivers its backlog, the newest data
        # arrives late, and consuming the hole would reset every entity's window.
        complete = (~np.isnan(values).any(axis=2)).any(axis=0) if values.size else np.zeros(0, bool)
        usable = np.flatnonzero(complete)
        n_steps = int(usable[-1]) + 1 if usable.size else 0
        if n_steps == 0:
            log.info("no complete sample between %.0f and %.0f yet; fetching it again next cycle", start, end)
        if resync and n_steps:
            self.engine = self.model.detector.new_engine(resync_every=self.cfg.serve.resync_every)
            log.info(
                "rebuilding streaming state from history: %d steps (%s)",
                n_steps,
                "start or new model"
                if self.last_processed is None
                else f"gap of {end - self.last_processed:.0f}s since the last processed sample",
            )
        rows = self.table.ensure(names, now) if n_steps else np.zeros(0, np.int64)
        table = self.table
        written: list[bytes] = []
        for t, ts in enumerate(frame.timestamps[:n_steps].tolist()):
            res = self.engine.step(names, values[:, t])
            has_data = ~np.isnan(values[:, t]).all(axis=1)
            table.last_seen[rows[has_data]] = now if t == n_steps - 1 else ts
            s = rows[res.scored]
            if s.size:
                table.score[s] = res.score[res.scored]
                table.error[s] = res.error[res.scored]
                table.feature_errors[s] = res.feature_errors[res.scored]
                table.last_scored[s] = ts
                flagged = res.score[res.scored] > 1.0
                table.anomalies_total[s] += flagged & ~table.anomalous[s]
                table.anomalous[s] = flagged
                if flagged.any():
                    self._record_anomalies(names, np.flatnonzero(res.scored)[flagged], ts)
                if self.writer is not None:
                    written.append(self._writeback_lines(names, res, ts))
        if n_steps:
            self.last_processed = float(frame.timestamps[n_steps - 1])
        if written and self.writer is not None:
            try:
                self.writer.write(b"".join(written))
            except SourceError as err:
                self.monitor.count_source_error(err)
                log.warning("write-back failed: %s", err)
        t2 = time.perf_counter()
        self.monitor.cycle_duration.labels("score").observe(t2 - t1)
        self._publish(now)
        self.monitor.cycle_duration.labels("publish").observe(time.perf_counter() - t2)
        self.monitor.cycles.labels("success").inc()
        self.last_success = now
        self.monitor.last_success.set(now)

    def _record_anomalies(self, names: Sequence[str], which: np.ndarray, ts: float) -> None:
        """Remember flagged periods per entity, so retraining can leave them out."""
        for i in which.tolist():
            periods = self._periods.setdefault(names[i], [])
            if periods and ts - periods[-1][1] <= 2 * self.step:
                periods[-1][1] = ts
            else:
                periods.append([ts, ts])

    def anomalous_periods(self) -> dict[str, list[list[float]]]:
        """Flagged ``[start, end]`` periods per entity within ``serve.fit_window``."""
        horizon = self.clock() - self.cfg.serve.fit_window
        with self._lock:
            out = {}
            for name, periods in list(self._periods.items()):
                kept = [p for p in periods if p[1] >= horizon]
                if kept:
                    out[name] = [list(p) for p in kept]
                    self._periods[name] = kept
                else:
                    del self._periods[name]
            return out

    def _writeback_lines(self, names: Sequence[str], res: StepResult, ts: float) -> bytes:
        ok = np.flatnonzero(res.scored)
        return render_import_lines(
            self.cfg.entity_label,
            [names[i] for i in ok.tolist()],
            np.full(ok.size, ts),
            res.score[ok],
            res.error[ok],
            self.engine.threshold,
        )

    def _publish(self, now: float) -> None:
        table = self.table
        gone = now - table.last_seen > self.cfg.serve.entity_grace
        if gone.any():
            dropped = table.remove(gone)
            self.engine.drop(dropped)
            log.info("dropped %d entities without data for %.0fs", len(dropped), self.cfg.serve.entity_grace)
        # Measured from the newest sample the source shows, not from now: with a
        # query_delay of several intervals, every entity would otherwise look stale.
        visible = now - self.cfg.victoriametrics.query_delay
        fresh = (visible - table.last_scored <= self.stale_after + self.step) & ~np.isnan(table.score)
        # Nothing stale stays flagged: an entity without fresh data is exported as stale.
        table.anomalous &= fresh
        metrics = EntityMetrics(
            entities=table.names,
            score=table.score,
            anomaly=table.anomalous.astype(np.float64),
            error=table.error,
            last_scored=table.last_scored,
            anomalies_total=table.anomalies_total,
            feature_errors=table.feature_errors,
            feature_names=self.cfg.feature_names,
            exported=fresh,
        )
        body = render_entities(metrics, self.cfg.entity_label, self.cfg.serve.feature_errors_top_k)
        self.monitor.entities.set(int(fresh.sum()))
        # Stale: no data lately. Entities that have data but no full window yet are warming up.
        self.monitor.stale_entities.set(int((now - table.last_seen > self.stale_after + self.step).sum()))
        anomalous = tuple(n for n, a in zip(table.names, table.anomalous, strict=True) if a)
        self.snapshot = Snapshot(now, body, len(table.names), anomalous)

    def next_delay(self) -> float:
        """Seconds until the next cycle: the next interval tick, or a capped backoff after failures."""
        if self.consecutive_failures:
            backoff = min(
                self.cfg.victoriametrics.backoff_max, self.step * 2 ** (self.consecutive_failures - 1)
            )
            return min(backoff, self.step * 8) * random.uniform(0.5, 1.0)
        # A little after the next grid point becomes visible in the source.
        visible = self.clock() - self.cfg.victoriametrics.query_delay
        return self.step - (visible % self.step) + min(1.0, self.step / 10)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_cycle()
            except Exception:  # a bug in one cycle must not kill the exporter
                log.exception("unexpected error in scoring cycle")
                self.monitor.cycles.labels("failure").inc()
                self.consecutive_failures += 1
            stop.wait(self.next_delay())


def _authorised(cfg: Config) -> Callable[[], bool]:
    serve = cfg.serve
    if serve.bearer_token is None and serve.basic_auth_username is None:
        return lambda: True
    token = serve.bearer_token
    user, password = serve.basic_auth_username, serve.basic_auth_password

    def check() -> bool:
        header = request.headers.get("Authorization", "")
        if token is not None and header.startswith("Bearer "):
            return hmac.compare_digest(header[7:].encode(), token.encode())
        if user is not None and password is not None and header.startswith("Basic "):
            try:
                raw = base64.b64decode(header[6:], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            got_user, _, got_pw = raw.partition(":")
            return hmac.compare_digest(got_user.encode(), user.encode()) & hmac.compare_digest(
                got_pw.encode(), password.encode()
            )
        return False

    return check


def create_app(loop: ScoringLoop, registry: CollectorRegistry, cfg: Config) -> Flask:
    """The WSGI app: ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (scoring works)."""
    app = Flask(__name__)
    authorised = _authorised(cfg)
    scheme = "Basic" if cfg.serve.basic_auth_username is not None else "Bearer"
    challenge = {"WWW-Authenticate": f'{scheme} realm="lstmad"'}

    @app.get("/metrics")
    def metrics() -> Response:
        if not authorised():
            return Response("unauthorised\n", 401, challenge, mimetype="text/plain")
        body = generate_latest(registry) + loop.snapshot.body
        return Response(body, 200, content_type=CONTENT_TYPE)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", 200, mimetype="text/plain")

    @app.get("/readyz")
    def readyz() -> Response:
        ok, reason = loop.ready()
        return Response(reason + "\n", 200 if ok else 503, mimetype="text/plain")

    @app.get("/")
    def index() -> Response:
        return Response("lstmad: see /metrics, /healthz, /readyz\n", 200, mimetype="text/plain")

    return app
