"""The only code that speaks HTTP to VictoriaMetrics or Prometheus.

It uses the Prometheus HTTP API (``/api/v1/query`` and ``/api/v1/query_range``),
which both VictoriaMetrics and Prometheus serve. Parsing a response is a pure
function (:func:`parse_response`) so it can be tested on recorded bodies, and
alignment of all features onto one (entities, time, features) grid is
vectorised (:func:`align`).

Example::

    client = PromClient(SourceConfig(url="http://127.0.0.1:8428"))
    frame = fetch_range(client, features, "instance", start, end, step=15)
    frame.values.shape  # (entities, steps, features), NaN where missing
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from lstmad.config import Feature, SourceConfig
from lstmad.errors import (
    DataError,
    SourceConnectionError,
    SourceError,
    SourceHTTPError,
    SourceResponseError,
    SourceTimeout,
)

__all__ = [
    "Frame",
    "PromClient",
    "SeriesBatch",
    "align",
    "escape_label_value",
    "fetch_range",
    "parse_response",
    "split_range",
]

log = logging.getLogger(__name__)

SOURCE_ERROR_REASONS = ("timeout", "connection", "http", "status_error", "bad_response", "empty")


@dataclass(frozen=True)
class SeriesBatch:
    """Parsed query result in columnar form.

    Series ``i`` owns ``timestamps[offsets[i]:offsets[i + 1]]`` and the same slice of
    ``values``. Non-finite values (``NaN``, ``±Inf``) are stored as ``NaN``: a missing
    value, never a zero.
    """

    labels: list[dict[str, str]]
    offsets: np.ndarray
    timestamps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(batches: Sequence[SeriesBatch]) -> SeriesBatch:
        if len(batches) == 1:
            return batches[0]
        labels: list[dict[str, str]] = []
        lengths: list[np.ndarray] = []
        for b in batches:
            labels.extend(b.labels)
            lengths.append(np.diff(b.offsets))
        all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64)
        return SeriesBatch(
            labels=labels,
            offsets=offsets,
            timestamps=np.concatenate([b.timestamps for b in batches]),
            values=np.concatenate([b.values for b in batches]),
        )


@dataclass(frozen=True)
class Frame:
    """All features of all entities on one time grid.

    ``values[e, t, f]`` is feature ``f`` of ``entities[e]`` at ``timestamps[t]``;
    ``NaN`` where the source had no finite value.
    """

    entities: list[str]
    timestamps: np.ndarray
    values: np.ndarray
    empty_features: list[str] = field(default_factory=list)
    dropped_series: int = 0


def _to_float_array(raw: list[Any]) -> np.ndarray:
    try:
        out = np.array(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SourceResponseError(f"expected numeric sample values, found {raw[:3]!r}...") from err
    out[~np.isfinite(out)] = np.nan
    return out


def parse_response(body: bytes) -> SeriesBatch:
    """Parse a Prometheus HTTP API body (``vector`` or ``matrix``) into a :class:`SeriesBatch`.

    Raises :class:`SourceResponseError` for anything that is not such a body,
    including ``{"status": "error"}`` answers (reason ``status_error``).
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise SourceResponseError(
            f"expected a JSON body, found {len(body)} bytes starting {body[:40]!r}"
        ) from err
    if not isinstance(doc, dict):
        raise SourceResponseError(f"expected a JSON object, found {type(doc).__name__}")
    status = doc.get("status")
    if status == "error":
        raise SourceResponseError(
            f"query failed: {doc.get('errorType', 'error')}: {doc.get('error', '')}",
            reason="status_error",
        )
    data = doc.get("data")
    if status != "success" or not isinstance(data, dict):
        raise SourceResponseError(f"expected status success with data, found status {status!r}")
    result_type = data.get("resultType")
    result = data.get("result")
    if not isinstance(result, list):
        raise SourceResponseError(f"expected data.result to be a list, found {type(result).__name__}")
    labels: list[dict[str, str]] = []
    ts_raw: list[Any] = []
    val_raw: list[Any] = []
    lengths: list[int] = []
    try:
        if result_type == "vector":
            for item in result:
                point = item["value"]
                labels.append(item["metric"])
                ts_raw.append(point[0])
                val_raw.append(point[1])
            lengths = [1] * len(result)
        elif result_type == "matrix":
            for item in result:
                points = item["values"]
                labels.append(item["metric"])
                ts_raw.extend([p[0] for p in points])
                val_raw.extend([p[1] for p in points])
                lengths.append(len(points))
        elif result_type == "scalar":
            labels.append({})
            ts_raw.append(result[0])
            val_raw.append(result[1])
            lengths = [1]
        else:
            raise SourceResponseError(f"expected resultType vector or matrix, found {result_type!r}")
    except (KeyError, IndexError, TypeError) as err:
        raise SourceResponseError(f"malformed series in data.result: {err!r}") from err
    for lab in labels:
        if not isinstance(lab, dict):
            raise SourceResponseError(f"expected a label mapping, found {type(lab).__name__}")
    timestamps = _to_float_array(ts_raw)
    if np.isnan(timestamps).any():
        raise SourceResponseError("expected finite sample timestamps, found NaN or Inf")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return SeriesBatch(labels, offsets, timestamps, _to_float_array(val_raw))


def split_range(start: float, end: float, step: float, max_points: int) -> list[tuple[float, float]]:
    """Split ``[start, end]`` into non-overlapping chunks of at most ``max_points`` steps."""
    if step <= 0:
        raise ValueError(f"expected a positive step, found {step}")
    if end < start:
        return []
    n = math.floor((end - start) / step + 1e-9) + 1
    chunks = []
    for first in range(0, n, max_points):
        last = min(n, first + max_points) - 1
        chunks.append((start + first * step, start + last * step))
    return chunks


def escape_label_value(value: str) -> str:
    """Escape a label value for a double-quoted PromQL selector string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _read_secret(inline: str | None, path: str | None, key: str) -> str | None:
    if inline is not None:
        return inline
    if path is None:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        raise SourceError(f"cannot read {key} {path}: {err.strerror}") from err


class PromClient:
    """A small client for the Prometheus HTTP API with timeouts and bounded retries.

    ``transport`` can be injected (for example ``httpx.MockTransport``) and
    ``on_error`` is called with every failed attempt so that the caller can count it.
    """

    def __init__(
        self,
        cfg: SourceConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        on_error: Callable[[SourceError], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        base = cfg.url.rstrip("/")
        if cfg.tenant:
            base = f"{base}/select/{cfg.tenant}/prometheus"
        self.base_url = base
        self._on_error = on_error
        self._sleep = sleep
        headers = {"Accept-Encoding": "gzip", "User-Agent": "lstmad"}
        token = _read_secret(cfg.bearer_token, cfg.bearer_token_file, "bearer_token_file")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        auth = None
        if cfg.username is not None:
            password = _read_secret(cfg.password, cfg.password_file, "password_file") or ""
            auth = httpx.BasicAuth(cfg.username, password)
        verify: bool | ssl.SSLContext = True
        if cfg.insecure_skip_verify:
            verify = False
        elif cfg.ca_file or cfg.cert_file:
            ctx = ssl.create_default_context(cafile=cfg.ca_file)
            if cfg.cert_file and cfg.key_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
            verify = ctx
        self._client = httpx.Client(
            timeout=httpx.Timeout(cfg.timeout),
            headers=headers,
            auth=auth,
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    @property
    def http(self) -> httpx.Client:
        """The configured HTTP client (auth, TLS, timeouts), shared by write-back."""
        return self._client

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PromClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _safe_url(self, path: str) -> str:
        return f"{self.base_url}{path}".split("@")[-1] if "@" in self.base_url else self.base_url + path

    def _get_once(self, path: str, params: dict[str, str]) -> bytes:
        url = self.base_url + path
        where = self._safe_url(path)
        try:
            with self._client.stream("POST", url, data=params) as resp:
                chunks = []
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > self.cfg.max_response_bytes:
                        raise SourceResponseError(
                            f"response from {where} exceeds the limit of {self.cfg.max_response_bytes} bytes"
                        )
                    chunks.append(chunk)
                body = b"".join(chunks)
                if resp.status_code >= 400:
                    detail = body[:200].decode("utf-8", "replace")
                    try:
                        doc = orjson.loads(body)
                        if isinstance(doc, dict) and doc.get("status") == "error":
                            raise SourceResponseError(
                                f"{where} answered {resp.status_code}: "
                                f"{doc.get('errorType', '')}: {doc.get('error', '')}",
                                reason="status_error",
                            )
                    except orjson.JSONDecodeError:
                        pass
                    raise SourceHTTPError(
                        f"{where} answered HTTP {resp.status_code}: {detail}", resp.status_code
                    )
                return body
        except httpx.TimeoutException as err:
            raise SourceTimeout(f"no answer from {where} within {self.cfg.timeout:g}s") from err
        except httpx.TransportError as err:
            raise SourceConnectionError(f"cannot reach {where}: {err}") from err

    def _retryable(self, err: SourceError) -> bool:
        if isinstance(err, SourceTimeout | SourceConnectionError):
            return True
        if isinstance(err, SourceHTTPError):
            return err.status >= 500 or err.status == 429
        return False

    def request(self, path: str, params: dict[str, str]) -> SeriesBatch:
        """POST ``params`` to an API path and parse the answer, retrying transient failures."""
        attempt = 0
        while True:
            try:
                return parse_response(self._get_once(path, params))
            except SourceError as err:
                if self._on_error is not None:
                    self._on_error(err)
                if attempt >= self.cfg.retries or not self._retryable(err):
                    raise
                delay = min(self.cfg.backoff_max, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("source attempt %d failed (%s); retrying in %.1fs", attempt + 1, err, delay)
                self._sleep(delay)
                attempt += 1

    def query(self, promql: str, at: float | None = None) -> SeriesBatch:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.request("/api/v1/query", params)

    def query_range(self, promql: str, start: float, end: float, step: float) -> SeriesBatch:
        """Range query, split under the points-per-series limit and stitched back."""
        batches = []
        for lo, hi in split_range(start, end, step, self.cfg.max_points_per_series):
            params = {
                "query": promql,
                "start": f"{lo:.3f}",
                "end": f"{hi:.3f}",
                "step": f"{step:g}s",
                "nocache": "1",
            }
            batches.append(self.request("/api/v1/query_range", params))
        if not batches:
            return SeriesBatch([], np.zeros(1, np.int64), np.zeros(0), np.zeros(0))
        return SeriesBatch.concat(batches)


def align(
    batches: Sequence[SeriesBatch],
    entity_label: str,
    start: float,
    step: float,
    n_steps: int,
    entities: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray, int]:
    """Place every feature's series on one (entities, steps, features) grid.

    Samples are snapped to the nearest grid point ``start + k * step``. A series
    without ``entity_label`` is dropped (counted in the returned number); when an
    entity has several series for one feature (duplicates), the later one wins.
    """
    if entities is None:
        names: dict[str, int] = {}
        for batch in batches:
            for lab in batch.labels:
                name = lab.get(entity_label)
                if name is not None and name not in names:
                    names[name] = len(names)
        entity_list = sorted(names)
    else:
        entity_list = list(entities)
    index = {name: i for i, name in enumerate(entity_list)}
    values = np.full((len(entity_list), n_steps, len(batches)), np.nan)
    dropped = 0
    for f, batch in enumerate(batches):
        if not len(batch):
            continue
        series_entity = np.array([index.get(lab.get(entity_label, ""), -1) for lab in batch.labels])
        dropped += int((series_entity < 0).sum())
        lengths = np.diff(batch.offsets)
        point_entity = np.repeat(series_entity, lengths)
        slot = np.rint((batch.timestamps - start) / step).astype(np.int64)
        keep = (point_entity >= 0) & (slot >= 0) & (slot < n_steps)
        values[point_entity[keep], slot[keep], f] = batch.values[keep]
    return entity_list, values, dropped


def fetch_range(
    client: PromClient,
    features: Sequence[Feature],
    entity_label: str,
    start: float,
    end: float,
    step: float,
    *,
    require_data: bool = False,
) -> Frame:
    """One range query per feature for all entities, aligned on the grid ``start + k * step``."""
    batches = [client.query_range(f.query, start, end, step) for f in features]
    empty = [f.name for f, b in zip(features, batches, strict=True) if not len(b)]
    if require_data and empty:
        feat = next(f for f in features if f.name == empty[0])
        raise DataError(
            f"feature {feat.name!r} returned no series between {start:.0f} and {end:.0f} "
            f"from {client.base_url} (query: {feat.query})"
        )
    n_steps = math.floor((end - start) / step + 1e-9) + 1 if end >= start else 0
    entities, values, dropped = align(batches, entity_label, start, step, n_steps)
    timestamps = start + step * np.arange(n_steps)
    return Frame(entities, timestamps, values, empty, dropped)
