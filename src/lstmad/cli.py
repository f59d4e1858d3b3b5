"""Command line: the only module that reads argv and wires objects together.

Usage, configuration and model errors exit with code 2 and one clear line;
a failing metrics source exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lstmad._version import __version__
from lstmad.config import Config, load_config, mask_secrets, parse_duration, parse_listen
from lstmad.errors import ConfigError, DataError, LstmadError, ModelError, SourceError

__all__ = ["build_parser", "main"]

log = logging.getLogger("lstmad")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _time_arg(text: str | None, now: float) -> float | None:
    """``now``, a Unix timestamp, an RFC 3339 time, or ``now-7d`` (or ``-7d``) relative to now."""
    if text is None:
        return None
    if text == "now":
        return now
    if text.startswith(("-", "now-")):
        return now - parse_duration(text.split("-", 1)[1], "time")
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ConfigError(f"expected now, -7d, a Unix time or RFC 3339, found {text!r}", "time") from None


def _config_args(p: argparse.ArgumentParser, vm: bool = True) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (default: the node_exporter preset)")
    if vm:
        p.add_argument("--vm-url", help="VictoriaMetrics or Prometheus URL (overrides the config)")
    p.add_argument("--log-format", choices=["text", "json"], help="log format (default: text)")
    p.add_argument("--log-level", default="info", help="log level (default: info)")


def build_parser() -> argparse.ArgumentParser:
    from lstmad import simulate

    parser = argparse.ArgumentParser(
        prog="lstmad", description="Real-time LSTM anomaly detection for server metrics."
    )
    parser.add_argument("--version", action="version", version=f"lstmad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from VictoriaMetrics history")
    _config_args(p)
    p.add_argument("--start", help="start of the training range (default: end minus training.range)")
    p.add_argument("--end", help="end of the training range (default: now)")
    p.add_argument("--model", type=Path, help="model directory to write (default: model.path)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--exclude",
        type=Path,
        help="JSON file {entity: [[start, end], ...]} of periods to leave out (flagged anomalies)",
    )

    p = sub.add_parser("serve", help="score continuously and expose /metrics")
    _config_args(p)
    p.add_argument("--model", type=Path, help="model directory (default: model.path)")
    p.add_argument("--listen", help="HOST:PORT to listen on (default: 127.0.0.1:9731)")
    p.add_argument("--shard-index", type=int, help="this replica's index (env LSTMAD_SHARD_INDEX)")
    p.add_argument("--shard-count", type=int, help="number of replicas (env LSTMAD_SHARD_COUNT)")

    p = sub.add_parser("simulate", help="write a simulated node_exporter fleet into VictoriaMetrics")
    simulate.add_arguments(p)

    p = sub.add_parser(
        "demo",
        help="the embedded default: local VictoriaMetrics, node_exporter, "
        "a demo fleet, training and serving (what `make run` runs)",
    )
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="working directory (default .demo)")
    p.add_argument("--hosts", type=int, default=4, help="simulated hosts (default 4)")
    p.add_argument("--history", default="2d", help="simulated history (default 2d)")
    p.add_argument("--listen", default="127.0.0.1:9731", help="lstmad listen address")
    p.add_argument("--vm-port", type=int, default=8428, help="VictoriaMetrics port (default 8428)")
    p.add_argument("--node-exporter-port", type=int, default=9100, help="node_exporter port")
    p.add_argument("--duration", help="stop after this long (default: until Ctrl-C)")

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", help="validate a config and print it with secrets masked")
    c.add_argument("file", type=Path, nargs="?", help="config file (default: the preset)")

    from lstmad import backtest, bench

    p = sub.add_parser("backtest", help="replay history through the detector and measure it")
    backtest.add_arguments(p)
    _config_args(p, vm=False)

    p = sub.add_parser("bench", help="measure scoring, rendering, training and whole cycles")
    bench.add_arguments(p)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "victoriametrics.url": getattr(args, "vm_url", None),
        "model.path": str(args.model) if getattr(args, "model", None) else None,
        "serve.listen": getattr(args, "listen", None),
        "serve.shard_index": getattr(args, "shard_index", None),
        "serve.shard_count": getattr(args, "shard_count", None),
        "log_format": getattr(args, "log_format", None),
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Kubernetes StatefulSet convention: the shard comes from the pod's environment.
    for short, key in (
        ("LSTMAD_SHARD_INDEX", "LSTMAD_SERVE__SHARD_INDEX"),
        ("LSTMAD_SHARD_COUNT", "LSTMAD_SERVE__SHARD_COUNT"),
    ):
        if short in env:
            env.setdefault(key, env.pop(short))
    return env


def load_cli_config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None), env=_env(), overrides=_overrides(args))


def cmd_train(args: argparse.Namespace) -> int:
    from lstmad.artifact import save_model
    from lstmad.detector import LSTMDetector
    from lstmad.source import PromClient, fetch_range

    cfg = load_cli_config(args)
    setup_logging(cfg.log_format, args.log_level)
    now = time.time()
    # The source hides its newest samples: stop where complete data ends.
    end = _time_arg(args.end, now) or now - cfg.victoriametrics.query_delay
    start = _time_arg(args.start, now) or end - cfg.training.range
    step = cfg.interval
    end = (end // step) * step
    start = (start // step) * step
    log.info(
        "fetching %d features from %s, %.1f days at %gs steps",
        len(cfg.features),
        cfg.victoriametrics.url,
        (end - start) / 86400,
        step,
    )
    with PromClient(cfg.victoriametrics) as client:
        frame = fetch_range(client, cfg.features, cfg.entity_label, start, end, step, require_data=True)
    if args.exclude is not None:
        _exclude_periods(frame.values, frame.entities, frame.timestamps, _read_exclude(args.exclude))
    series = [frame.values[i] for i in range(len(frame.entities))]
    log.info("training on %d entities x %d steps", len(series), frame.timestamps.size)
    detector = LSTMDetector(cfg.feature_names, cfg.model, cfg.threshold)
    detector.fit(series, cfg.training, progress=_progress_factory(not args.no_progress))
    version = save_model(
        cfg.model.path,
        detector,
        entity_label=cfg.entity_label,
        interval=cfg.interval,
        extra_metadata={
            "train_start": start,
            "train_end": end,
            "entities": len(series),
            "source": "victoriametrics",
        },
    )
    assert detector.training is not None
    print(
        f"model saved to {cfg.model.path} ({version.name}): {len(series)} entities, "
        f"{len(detector.training.train_loss)} epochs, threshold "
        f"{detector.threshold.method}={detector.threshold.fitted_value:.4g}"
    )
    return 0


def _read_exclude(path: Path) -> dict[str, list[list[float]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read exclusions from {path}: {err}", "--exclude") from err
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v) for v in data.values()
    ):
        raise ConfigError(f"expected {{entity: [[start, end], ...]}} in {path}", "--exclude")
    return data


def _exclude_periods(
    values: Any, entities: list[str], timestamps: Any, periods: dict[str, list[list[float]]]
) -> None:
    """Blank out (NaN) the excluded periods in place, so training skips them as gaps."""
    index = {e: i for i, e in enumerate(entities)}
    for entity, spans in periods.items():
        row = index.get(entity)
        if row is None:
            continue
        for start, end in spans:
            values[row, (timestamps >= float(start)) & (timestamps <= float(end))] = float("nan")


def _progress_factory(enabled: bool) -> Any:
    from lstmad.training import no_progress

    if not enabled:
        return no_progress
    from tqdm import tqdm

    def factory(total: int, desc: str) -> Any:
        return tqdm(total=total, desc=desc, unit="win", leave=False, file=sys.stderr)

    return factory


def load_serving_model(cfg: Config) -> Any:
    from lstmad.artifact import load_model

    model = load_model(cfg.model.path, cfg.feature_names)
    interval = float(model.info.get("interval", cfg.interval))
    if abs(interval - cfg.interval) > 1e-9:
        raise ModelError(
            f"model {cfg.model.path} was trained at a {interval:g}s step, but interval is "
            f"{cfg.interval:g}s: retrain or set interval: {interval:g}s"
        )
    return model


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_cli_config(args)
    setup_logging(cfg.log_format, args.log_level)
    model = load_serving_model(cfg)
    from lstmad.server import run_server

    return run_server(cfg, model)


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, env=_env())
    print(json.dumps(mask_secrets(cfg), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lstmad.demo import run_demo

    setup_logging("text", "info")
    duration = parse_duration(args.duration, "--duration") if args.duration else None
    parse_listen(args.listen, "--listen")
    return run_demo(
        workdir=args.dir,
        hosts=args.hosts,
        history=parse_duration(args.history, "--history"),
        listen=args.listen,
        vm_port=args.vm_port,
        node_exporter_port=args.node_exporter_port,
        duration=duration,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "simulate":
            from lstmad import simulate

            setup_logging("text", "info")
            return simulate.run_from_args(args)
        if args.command == "config":
            return cmd_config(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "backtest":
            from lstmad import backtest

            setup_logging(args.log_format or "text", args.log_level)
            return backtest.run_from_args(args)
        if args.command == "bench":
            from lstmad import bench

            setup_logging("text", "warning")
            return bench.run_from_args(args)
    except (ConfigError, ModelError, DataError) as err:
        print(f"lstmad: error: {err}", file=sys.stderr)
        return 2
    except SourceError as err:
        print(f"lstmad: source error: {err}", file=sys.stderr)
        return 1
    except LstmadError as err:
        print(f"lstmad: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
