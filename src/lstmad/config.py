"""Typed, frozen, validated configuration.

The CLI builds one :class:`Config` from, in order of precedence (last wins):
the YAML file (or the embedded node_exporter preset), ``LSTMAD_*`` environment
variables, then command-line flags. Library code receives the object and never
reads the environment itself.

Environment variables name a key by its path, upper-cased, with ``__`` between
levels: ``LSTMAD_INTERVAL=30s``, ``LSTMAD_VICTORIAMETRICS__URL=http://vm:8428``,
``LSTMAD_TRAINING__EPOCHS=5``. Values are read as YAML scalars.

Example::

    >>> cfg = load_config(None, env={"LSTMAD_INTERVAL": "30s"})
    >>> cfg.interval
    30.0
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from lstmad.errors import ConfigError

__all__ = [
    "Config",
    "Feature",
    "ModelConfig",
    "ServeConfig",
    "SourceConfig",
    "ThresholdConfig",
    "TrainingConfig",
    "format_duration",
    "load_config",
    "mask_secrets",
    "parse_duration",
]

ENV_PREFIX = "LSTMAD_"
_DURATION = {"duration": True}
_SECRET = {"secret": True}
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_FEATURE_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def parse_duration(value: object, key: str = "duration") -> float:
    """Parse ``15s``, ``1m30s``, ``7d`` or a number of seconds into seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a duration like 15s, 5m or 7d, found {value!r}", key)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION_RE.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ConfigError(f"expected a duration like 15s, 5m or 7d, found {value!r}", key) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ConfigError(f"expected a duration like 15s, 5m or 7d, found {value!r}", key)
    if seconds < 0:
        raise ConfigError(f"expected a non-negative duration, found {value!r}", key)
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact ``15s``/``5m``/``7d`` spelling of a number of seconds."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Feature:
    """One model input: a PromQL/MetricsQL query returning one series per entity."""

    name: str
    query: str


@dataclass(frozen=True)
class SourceConfig:
    """How to reach VictoriaMetrics or Prometheus (the ``victoriametrics:`` key)."""

    url: str = "http://127.0.0.1:8428"
    timeout: float = field(default=10.0, metadata=_DURATION)
    query_delay: float = field(default=30.0, metadata=_DURATION)
    retries: int = 3
    backoff_max: float = field(default=30.0, metadata=_DURATION)
    max_points_per_series: int = 30000
    max_response_bytes: int = 512 * 1024 * 1024
    tenant: str | None = None
    write_url: str | None = None
    username: str | None = None
    password: str | None = field(default=None, metadata=_SECRET)
    password_file: str | None = None
    bearer_token: str | None = field(default=None, metadata=_SECRET)
    bearer_token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Network size and where the model directory lives."""

    path: str = "model"
    window: int = 60
    layers: int = 2
    hidden: int = 32
    dropout: float = 0.0
    max_gap_steps: int = 4


@dataclass(frozen=True)
class TrainingConfig:
    """How ``lstmad train`` fits the model."""

    range: float = field(default=7 * 86400.0, metadata=_DURATION)
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.002
    validation_split: float = 0.2
    seed: int = 42
    early_stopping_patience: int = 3
    max_windows: int = 10000
    threads: int = 0


@dataclass(frozen=True)
class ThresholdConfig:
    """How the error threshold is chosen: learned (``quantile``/``dynamic``) or ``static``."""

    method: Literal["quantile", "dynamic", "static"] = "quantile"
    quantile: float = 0.99
    margin: float = 1.0
    value: float | None = None
    smoothing: int = 15
    z_max: float = 12.0


@dataclass(frozen=True)
class ServeConfig:
    """The ``serve`` loop and HTTP endpoint."""

    listen: str = "127.0.0.1:9731"
    stale_after: float = field(default=0.0, metadata=_DURATION)
    entity_grace: float = field(default=300.0, metadata=_DURATION)
    feature_errors_top_k: int = 3
    resync_every: int = 240
    startup_history: float = field(default=0.0, metadata=_DURATION)
    basic_auth_username: str | None = None
    basic_auth_password: str | None = field(default=None, metadata=_SECRET)
    bearer_token: str | None = field(default=None, metadata=_SECRET)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    shard_index: int = 0
    shard_count: int = 1
    retrain_every: float = field(default=0.0, metadata=_DURATION)
    fit_window: float = field(default=7 * 86400.0, metadata=_DURATION)
    write_back: bool = False
    threads: int = 0


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``features`` must hold at least one feature."""

    features: tuple[Feature, ...]
    victoriametrics: SourceConfig = field(default_factory=SourceConfig)
    entity_label: str = "instance"
    interval: float = field(default=15.0, metadata=_DURATION)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    log_format: Literal["text", "json"] = "text"

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return str(tp)


def _coerce(value: Any, tp: Any, key: str, meta: Mapping[str, Any]) -> Any:
    """Check one value against a field type; return it in canonical form."""
    if meta.get("duration"):
        return parse_duration(value, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, meta)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"expected one of {', '.join(map(str, allowed))}, found {value!r}", key)
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, found {type(value).__name__}", key)
        return tuple(_coerce(v, item_tp, f"{key}[{i}]", {}) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, found {value!r}", key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, found {value!r}", key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, found {value!r}", key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, found {value!r}", key)
        return value
    raise ConfigError(f"unsupported type {_type_name(tp)}", key)  # pragma: no cover


def _build(cls: Any, data: Any, prefix: str) -> Any:
    where = prefix or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, found {type(data).__name__}", where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"unknown key (known: {', '.join(sorted(fields))})", key)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, fields[name].metadata)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError("required key is missing", key)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    if not cfg.features:
        raise ConfigError("expected at least one feature, found an empty list", "features")
    seen: set[str] = set()
    for i, feat in enumerate(cfg.features):
        if not _FEATURE_NAME_RE.match(feat.name):
            raise ConfigError(
                f"expected a name of letters, digits and _, found {feat.name!r}",
                f"features[{i}].name",
            )
        if feat.name in seen:
            raise ConfigError(f"duplicate feature name {feat.name!r}", f"features[{i}].name")
        seen.add(feat.name)
        if not feat.query.strip():
            raise ConfigError("expected a PromQL query, found an empty string", f"features[{i}].query")
    for url_key, url_value in (
        ("url", cfg.victoriametrics.url),
        ("write_url", cfg.victoriametrics.write_url),
    ):
        if url_value is None:
            continue
        url = urlsplit(url_value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                f"expected an http:// or https:// URL, found {url_value!r}", f"victoriametrics.{url_key}"
            )
    if not _FEATURE_NAME_RE.match(cfg.entity_label):
        raise ConfigError(f"expected a label name, found {cfg.entity_label!r}", "entity_label")
    if cfg.interval <= 0:
        raise ConfigError(f"expected a positive duration, found {cfg.interval}", "interval")
    positive = {
        "victoriametrics.timeout": cfg.victoriametrics.timeout,
        "victoriametrics.max_points_per_series": cfg.victoriametrics.max_points_per_series,
        "victoriametrics.max_response_bytes": cfg.victoriametrics.max_response_bytes,
        "model.window": cfg.model.window,
        "model.layers": cfg.model.layers,
        "model.hidden": cfg.model.hidden,
        "training.epochs": cfg.training.epochs,
        "training.batch_size": cfg.training.batch_size,
        "training.learning_rate": cfg.training.learning_rate,
        "training.max_windows": cfg.training.max_windows,
        "training.range": cfg.training.range,
        "threshold.smoothing": cfg.threshold.smoothing,
        "threshold.margin": cfg.threshold.margin,
        "serve.resync_every": cfg.serve.resync_every,
        "serve.shard_count": cfg.serve.shard_count,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"expected a positive value, found {value}", key)
    if cfg.victoriametrics.retries < 0:
        raise ConfigError(
            f"expected 0 or more, found {cfg.victoriametrics.retries}", "victoriametrics.retries"
        )
    if not 0.0 < cfg.training.validation_split < 1.0:
        raise ConfigError(
            f"expected a fraction between 0 and 1, found {cfg.training.validation_split}",
            "training.validation_split",
        )
    if not 0.0 < cfg.threshold.quantile < 1.0:
        raise ConfigError(
            f"expected a quantile between 0 and 1, found {cfg.threshold.quantile}", "threshold.quantile"
        )
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"expected a fraction in [0, 1), found {cfg.model.dropout}", "model.dropout")
    if cfg.threshold.method == "static" and (cfg.threshold.value is None or cfg.threshold.value <= 0):
        raise ConfigError(
            f"method static needs a positive threshold.value, found {cfg.threshold.value}",
            "threshold.value",
        )
    if cfg.model.max_gap_steps < 0:
        raise ConfigError(f"expected 0 or more, found {cfg.model.max_gap_steps}", "model.max_gap_steps")
    if cfg.serve.feature_errors_top_k < 0:
        raise ConfigError(
            f"expected 0 or more, found {cfg.serve.feature_errors_top_k}", "serve.feature_errors_top_k"
        )
    if not 0 <= cfg.serve.shard_index < cfg.serve.shard_count:
        raise ConfigError(
            f"expected 0 <= shard_index < shard_count={cfg.serve.shard_count}, found {cfg.serve.shard_index}",
            "serve.shard_index",
        )
    parse_listen(cfg.serve.listen, "serve.listen")
    if (cfg.serve.tls_cert_file is None) != (cfg.serve.tls_key_file is None):
        raise ConfigError("tls_cert_file and tls_key_file must be given together", "serve.tls_cert_file")
    if (cfg.serve.basic_auth_username is None) != (cfg.serve.basic_auth_password is None):
        raise ConfigError(
            "basic_auth_username and basic_auth_password must be given together",
            "serve.basic_auth_username",
        )
    if (cfg.victoriametrics.cert_file is None) != (cfg.victoriametrics.key_file is None):
        raise ConfigError("cert_file and key_file must be given together", "victoriametrics.cert_file")


def parse_listen(text: str, key: str = "serve.listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9731`` for IPv6) into host and port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT such as 127.0.0.1:9731, found {text!r}", key)
    return host.strip("[]"), int(port)


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict | list):
            value = raw
        _set_path(data, path, value)
    return data


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_text() -> str:
    """The embedded node_exporter preset, used when no config file is given."""
    return resources.files("lstmad").joinpath("presets/node_exporter.yaml").read_text()


def read_yaml(path: Path | None) -> dict[str, Any]:
    """Read a config file (or the preset) into a plain mapping."""
    if path is None:
        text, where = preset_text(), "<preset node_exporter>"
    else:
        try:
            text, where = Path(path).read_text(), str(path)
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def load_config(
    path: Path | str | None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration from file (or preset), environment and flag overrides.

    ``overrides`` maps dotted keys (``"victoriametrics.url"``) to values; ``None``
    values are ignored so that absent flags leave the file's value alone.
    """
    data = read_yaml(Path(path) if path is not None else None)
    data = _merge(data, _env_overrides(env or {}))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, dotted.split("."), value)
    data.setdefault("features", [])
    cfg: Config = _build(Config, data, "")
    _validate(cfg)
    return cfg


def to_dict(cfg: Any) -> Any:
    """The configuration as plain data, durations in seconds."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def mask_secrets(cfg: Config) -> dict[str, Any]:
    """The configuration as plain data with every secret replaced by ``<secret>``."""

    def walk(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            out = {}
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if f.metadata.get("secret") and value is not None:
                    out[f.name] = "<secret>"
                else:
                    out[f.name] = walk(value)
            return out
        if isinstance(obj, tuple):
            return [walk(v) for v in obj]
        return obj

    masked: dict[str, Any] = walk(cfg)
    url = urlsplit(cfg.victoriametrics.url)
    if url.password:
        masked["victoriametrics"]["url"] = url._replace(
            netloc=f"{url.username}:<secret>@{url.hostname}" + (f":{url.port}" if url.port else "")
        ).geturl()
    return masked
