"""The embedded default behind ``make run``.

Starts VictoriaMetrics and node_exporter on 127.0.0.1 (VictoriaMetrics scrapes
node_exporter and the detector), writes a simulated fleet into VictoriaMetrics
when it holds no history yet, keeps writing live samples with a CPU anomaly
injected into one host, trains a model, and serves it. The local host, scraped
for real, is scored as soon as its window has filled.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import httpx

from lstmad import simulate
from lstmad.artifact import save_model
from lstmad.config import TrainingConfig, format_duration, load_config, parse_listen
from lstmad.detector import LSTMDetector
from lstmad.localstack import (
    free_port,
    port_in_use,
    start_node_exporter,
    start_victoriametrics,
    write_scrape_config,
)
from lstmad.source import PromClient, fetch_range

__all__ = ["run_demo"]

log = logging.getLogger(__name__)
STEP = 15.0
ANOMALY_HOST = 3
ANOMALY_DELAY = 240.0
ANOMALY_LENGTH = 1200.0


def _port(preferred: int) -> int:
    return preferred if not port_in_use(preferred) else free_port()


def _has_history(vm_url: str, prefix: str, history: float) -> bool:
    query = f'count(count_over_time(node_load1{{instance=~"{prefix}-.*"}}[{format_duration(history)}]))'
    try:
        resp = httpx.post(f"{vm_url}/api/v1/query", data={"query": query}, timeout=30)
        result = resp.json()["data"]["result"]
        return bool(result) and float(result[0]["value"][1]) > 0
    except (httpx.HTTPError, KeyError, ValueError, IndexError):
        return False


def _load_anomalies(workdir: Path) -> list[simulate.Anomaly]:
    try:
        data = json.loads((workdir / "anomalies.json").read_text())
        return [simulate.Anomaly(**a) for a in data]
    except (OSError, ValueError, TypeError):
        return []


def _save_anomalies(workdir: Path, anomalies: tuple[simulate.Anomaly, ...]) -> None:
    (workdir / "anomalies.json").write_text(json.dumps([asdict(a) for a in anomalies]))


def run_demo(
    *,
    workdir: Path,
    hosts: int,
    history: float,
    listen: str,
    vm_port: int,
    node_exporter_port: int,
    duration: float | None,
) -> int:
    from lstmad.server import run_server

    workdir.mkdir(parents=True, exist_ok=True)
    host, port = parse_listen(listen)
    port = _port(port)
    listen = f"{host}:{port}"
    ne_port = _port(node_exporter_port)
    vm_port = _port(vm_port)
    scrape = write_scrape_config(
        workdir / "scrape.yml",
        {"node": [f"127.0.0.1:{ne_port}"], "lstmad": [listen]},
        interval=f"{STEP:g}s",
    )
    node_exporter = start_node_exporter(ne_port, log_path=workdir / "node_exporter.log")
    vm = start_victoriametrics(
        workdir / "vm-data", vm_port, scrape_config=scrape, log_path=workdir / "victoria-metrics.log"
    )
    stop = threading.Event()
    try:
        now = time.time()
        anomaly = simulate.Anomaly(
            host=min(ANOMALY_HOST, hosts),
            start=now + ANOMALY_DELAY,
            end=now + ANOMALY_DELAY + ANOMALY_LENGTH,
            kind="cpu",
        )
        spec = simulate.FleetSpec(hosts=hosts, step=STEP, anomalies=(anomaly,))
        has_history = _has_history(vm.url, spec.prefix, history)
        # Counters integrate every anomaly so far: a rerun keeps the earlier ones so that
        # live samples continue the stored history without a jump.
        earlier = _load_anomalies(workdir) if has_history else []
        spec = simulate.FleetSpec(hosts=hosts, step=STEP, anomalies=(*earlier, anomaly))
        _save_anomalies(workdir, spec.anomalies)
        if has_history:
            log.info("VictoriaMetrics already holds demo history; not writing it again")
        else:
            log.info(
                "writing %s of history for %d simulated hosts into %s",
                format_duration(history),
                hosts,
                vm.url,
            )
            samples = simulate.import_to_vm(vm.url, simulate.generate_import_lines(spec, now - history, now))
            log.info("imported %d samples", samples)
        live = threading.Thread(
            target=simulate.run_live,
            args=(spec, vm.url),
            kwargs={"stop": stop, "since": now},
            name="simulate-live",
            daemon=True,
        )
        live.start()

        cfg = load_config(
            None,
            overrides={
                "victoriametrics.url": vm.url,
            "victoriametrics.query_delay": 2.0,
                "model.path": str(workdir / "model"),
                "serve.listen": listen,
                "training.range": history,
            },
        )
        training = TrainingConfig(range=history, epochs=8, max_windows=20000, seed=cfg.training.seed)
        end = (now // STEP) * STEP
        with PromClient(cfg.victoriametrics) as client:
            frame = fetch_range(
                client, cfg.features, cfg.entity_label, end - history, end, STEP, require_data=True
            )
        series = [frame.values[i] for i in range(len(frame.entities))]
        log.info("training on %d entities x %d steps (about a minute)", len(series), frame.timestamps.size)
        detector = LSTMDetector(cfg.feature_names, cfg.model, cfg.threshold).fit(series, training)
        save_model(
            cfg.model.path,
            detector,
            entity_label=cfg.entity_label,
            interval=cfg.interval,
            extra_metadata={"train_start": end - history, "train_end": end, "source": "demo"},
        )
        from lstmad.artifact import load_model

        model = load_model(cfg.model.path, cfg.feature_names)
        print(
            "\n"
            f"  lstmad metrics:      http://{listen}/metrics\n"
            f"  VictoriaMetrics UI:  {vm.url}/vmui  (try: lstmad_anomaly_score)\n"
            f"  node_exporter:       http://127.0.0.1:{ne_port}/metrics\n"
            f"  injected anomaly:    {spec.prefix}-{ANOMALY_HOST}:9100, CPU saturation from "
            f"{time.strftime('%H:%M:%S', time.localtime(anomaly.start))} for "
            f"{format_duration(ANOMALY_LENGTH)}\n"
            f"  local host:          127.0.0.1:{ne_port}, scored once its window of "
            f"{format_duration(cfg.model.window * cfg.interval)} has filled\n"
            "  stop with Ctrl-C\n",
            flush=True,
        )
        if duration is not None:
            timer = threading.Timer(duration, os.kill, args=(os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()
        return run_server(cfg, model)
    finally:
        stop.set()
        vm.stop()
        node_exporter.stop()
