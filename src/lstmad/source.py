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

import base64
import contextlib
import gc
import logging
import math
import random
import re
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import numpy as np
import orjson

from lstmad.config import Feature, SourceConfig
from lstmad.errors import (
    ConfigError,
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


# One ``[timestamp,"value"]`` pair as Prometheus and VictoriaMetrics write it: a plain
# number, then a string without quotes, escapes or brackets.
_POINT = rb'\[-?[0-9][0-9.eE+\-]*,"[^"\\\[\]]*"\]'
_VALUES = re.compile(rb'"values":\[(' + _POINT + rb"(?:," + _POINT + rb")*)?\]")
_EMPTY_VALUES = b'"values":[]'


def _parse_matrix_fast(body: bytes) -> SeriesBatch | None:
    """The common case of a ``matrix`` body, without a Python object per sample.

    The ``values`` arrays are cut out with one regular expression and parsed as
    one flat array of numbers; the rest (status, labels) is parsed by orjson
    with every ``values`` array left empty. Returns ``None`` for anything not in
    the canonical form (other result types, errors, odd values, malformed
    JSON), which :func:`parse_response` then parses the general way, so both
    paths accept and reject the same bodies.
    """
    parts = _VALUES.split(body)
    groups: list[bytes | None] = parts[1::2]
    if not groups:
        return None
    try:
        doc = orjson.loads(_EMPTY_VALUES.join(parts[0::2]))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        return None
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        return None
    result = data.get("result")
    if not isinstance(result, list) or len(result) != len(groups):
        return None
    try:
        if any(item["values"] != [] for item in result):
            return None
        labels: list[dict[str, str]] = [item["metric"] for item in result]
    except (KeyError, TypeError):
        return None
    if not all(type(lab) is dict for lab in labels):
        return None
    lengths = np.array([g.count(b"],[") + 1 if g else 0 for g in groups], dtype=np.int64)
    total = int(lengths.sum())
    # Every sample as one flat JSON array of numbers: orjson reads it in C, numpy
    # turns it into one array; NaN and ±Inf become null, and null becomes NaN.
    raw = b",".join(g for g in groups if g)
    for special in (b'"NaN"', b'"+Inf"', b'"-Inf"'):
        raw = raw.replace(special, b"null")
    try:
        numbers = np.array(orjson.loads(b"[" + raw.translate(None, b'[]"') + b"]"), dtype=np.float64)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
    if numbers.shape != (2 * total,):
        return None
    pairs = numbers.reshape(total, 2)
    timestamps = np.ascontiguousarray(pairs[:, 0])
    if not np.isfinite(timestamps).all():
        return None
    values = np.ascontiguousarray(pairs[:, 1])
    values[~np.isfinite(values)] = np.nan
    offsets = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return SeriesBatch(labels, offsets, timestamps, values)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector, restoring its previous state afterwards.

    A parse allocates a dict per series (its labels) that all stay alive until
    the batch is aligned; in a process with a large heap (torch, the web app),
    every full collection those allocations trigger walks every live object,
    which made parsing a 10,000-host answer about three times slower. Nothing
    here creates reference cycles, so there is nothing for the collector to find.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_response(body: bytes) -> SeriesBatch:
    """Parse a Prometheus HTTP API body (``vector`` or ``matrix``) into a :class:`SeriesBatch`.

    Raises :class:`SourceResponseError` for anything that is not such a body,
    including ``{"status": "error"}`` answers (reason ``status_error``).
    """
    with _gc_paused():
        return _parse_response(body)


def _parse_response(body: bytes) -> SeriesBatch:
    fast = _parse_matrix_fast(body)
    if fast is not None:
        return fast
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
        raise ConfigError(f"cannot read {path}: {err.strerror}", f"victoriametrics.{key}") from err


class _BearerTokenFile(httpx.Auth):
    """``Authorization: Bearer <token>`` read from a file, re-read when the file changes.

    Kubernetes rotates projected service-account tokens in place, so a token read
    once at start would expire under a long-running ``serve``. If the file cannot
    be read later, the last token read is kept.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._mtime = self.path.stat().st_mtime_ns
        self.token = self.path.read_text().strip()

    def _current(self) -> str:
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime != self._mtime:
                self.token, self._mtime = self.path.read_text().strip(), mtime
        except OSError as err:
            log.warning("cannot re-read bearer_token_file %s (%s); keeping the last token", self.path, err)
        return self.token

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Bearer {self._current()}"
        yield request


def _tls_context(cfg: SourceConfig) -> bool | ssl.SSLContext:
    """Verification on unless ``insecure_skip_verify``; a custom CA and a client certificate if given."""
    if not (cfg.insecure_skip_verify or cfg.ca_file or cfg.cert_file):
        return True
    try:
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(
            f"cannot load CA bundle {cfg.ca_file}: {getattr(err, 'strerror', None) or err}",
            "victoriametrics.ca_file",
        ) from err
    if cfg.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file and cfg.key_file:
        try:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"cannot load client certificate {cfg.cert_file} with key {cfg.key_file}: "
                f"{getattr(err, 'strerror', None) or err}",
                "victoriametrics.cert_file",
            ) from err
    return ctx


def _cert_verify_error(err: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = err
    for _ in range(10):
        if seen is None or isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class PromClient:
    """A small client for the Prometheus HTTP API with timeouts and bounded retries.

    ``transport`` can be injected (for example ``httpx.MockTransport``) and
    ``on_error`` is called with every failed attempt so that the caller can count it.

    Every answer must be complete within ``cfg.timeout`` (checked as the body
    arrives, so a source that drips its answer is cut off, at the latest one
    read timeout after the deadline). Credentials (basic auth, bearer token,
    user info in the URL) never appear in error messages: the URL is shown
    without user info and any secret echoed back by the server is masked.
    TLS certificates are verified unless ``insecure_skip_verify`` is set.
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
        url = urlsplit(cfg.url.rstrip("/"))
        url_user = unquote(url.username) if url.username is not None else None
        url_password = unquote(url.password) if url.password is not None else None
        if url_user is not None or url_password is not None:
            url = url._replace(netloc=url.netloc.rpartition("@")[2])
        base = urlunsplit(url)
        if cfg.tenant:
            base = f"{base}/select/{cfg.tenant}/prometheus"
        self.base_url = base
        self._on_error = on_error
        self._sleep = sleep
        headers = {"Accept-Encoding": "gzip", "User-Agent": "lstmad"}
        secrets: list[str] = []
        auth: httpx.Auth | None = None
        self._token_file: _BearerTokenFile | None = None
        if cfg.bearer_token is not None:
            headers["Authorization"] = f"Bearer {cfg.bearer_token}"
            secrets.append(cfg.bearer_token)
        elif cfg.bearer_token_file is not None:
            try:
                token_file = _BearerTokenFile(cfg.bearer_token_file)
            except OSError as err:
                raise ConfigError(
                    f"cannot read {cfg.bearer_token_file}: {err.strerror}",
                    "victoriametrics.bearer_token_file",
                ) from err
            auth = self._token_file = token_file
        user, password = cfg.username, _read_secret(cfg.password, cfg.password_file, "password_file")
        if user is None and url_user is not None:
            user, password = url_user, url_password
        if user is not None:
            auth = httpx.BasicAuth(user, password or "")
            secrets.append(base64.b64encode(f"{user}:{password or ''}".encode()).decode())
        if password:
            secrets.append(password)
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._client = httpx.Client(
            timeout=httpx.Timeout(cfg.timeout),
            headers=headers,
            auth=auth,
            verify=_tls_context(cfg),
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
        return self.base_url + path

    def _all_secrets(self) -> list[str]:
        if self._token_file is not None and self._token_file.token:
            return [*self._secrets, self._token_file.token]
        return self._secrets

    def _redact(self, text: str) -> str:
        """``text`` with every configured secret (also one echoed back by a server) masked."""
        for secret in self._all_secrets():
            text = text.replace(secret, "<secret>")
        return text

    def _redact_bytes(self, body: bytes) -> bytes:
        # Masked before any quote is cut from the body, so no prefix of a secret survives.
        for secret in self._all_secrets():
            body = body.replace(secret.encode(), b"<secret>")
        return body

    def _get_once(self, path: str, params: dict[str, str]) -> bytes:
        url = self.base_url + path
        where = self._safe_url(path)
        deadline = time.monotonic() + self.cfg.timeout
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
                    if time.monotonic() > deadline:
                        raise SourceTimeout(
                            f"no complete answer from {where} within {self.cfg.timeout:g}s "
                            f"({size} bytes so far)"
                        )
                body = b"".join(chunks)
                if resp.status_code >= 400:
                    detail = self._redact_bytes(body)[:200].decode("utf-8", "replace")
                    try:
                        doc = orjson.loads(body)
                        if isinstance(doc, dict) and doc.get("status") == "error":
                            raise SourceResponseError(
                                self._redact(
                                    f"{where} answered {resp.status_code}: "
                                    f"{doc.get('errorType', '')}: {doc.get('error', '')}"
                                ),
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
            cert = _cert_verify_error(err)
            if cert is not None:
                raise SourceConnectionError(
                    f"TLS certificate of {where} is not trusted ({cert.verify_message}): set "
                    "victoriametrics.ca_file to the CA bundle that signed it (verification is on "
                    "unless victoriametrics.insecure_skip_verify is true)"
                ) from err
            raise SourceConnectionError(self._redact(f"cannot reach {where}: {err}")) from err

    def _retryable(self, err: SourceError) -> bool:
        if isinstance(err, SourceConnectionError) and _cert_verify_error(err) is not None:
            return False  # a certificate does not become trusted by asking again
        if isinstance(err, SourceTimeout | SourceConnectionError):
            return True
        if isinstance(err, SourceHTTPError):
            return err.status >= 500 or err.status == 429
        return False

    def _check_labels(self, batch: SeriesBatch, where: str) -> SeriesBatch:
        # A label value that is not a string (a number, a list) would break the
        # entity index and the exposition far from here; refuse the answer instead.
        if not all(type(v) is str for lab in batch.labels for v in lab.values()):
            bad = next(v for lab in batch.labels for v in lab.values() if type(v) is not str)
            raise SourceResponseError(
                f"expected string label values in the answer from {where}, found {bad!r:.60}"
            )
        return batch

    def _parse(self, body: bytes) -> SeriesBatch:
        try:
            return parse_response(body)
        except SourceResponseError as err:
            # The message quotes the start of the body, which a server may have filled
            # with the credentials it was sent: word it from the masked body instead.
            redacted = self._redact_bytes(body)
            if redacted == body:
                raise
            try:
                parse_response(redacted)
            except SourceResponseError as masked:
                raise SourceResponseError(str(masked), reason=masked.reason) from None
            raise SourceResponseError("the answer quoted a credential", reason=err.reason) from None

    def request(self, path: str, params: dict[str, str]) -> SeriesBatch:
        """POST ``params`` to an API path and parse the answer, retrying transient failures."""
        attempt = 0
        while True:
            try:
                return self._check_labels(self._parse(self._get_once(path, params)), self._safe_url(path))
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
    keys: list[list[Any]] = [[lab.get(entity_label) for lab in batch.labels] for batch in batches]
    if entities is None:
        found: set[Any] = set().union(*keys)
        found.discard(None)
        entity_list = sorted(found)
    else:
        entity_list = list(entities)
    index = {name: i for i, name in enumerate(entity_list)}
    # One contiguous (entities, steps) plane per feature, so each feature's samples
    # land in one block of memory; transposed once at the end.
    planes = np.full((len(batches), len(entity_list), n_steps), np.nan)
    dropped = 0
    for f, (batch, names) in enumerate(zip(batches, keys, strict=True)):
        if not len(batch):
            continue
        series_entity = np.fromiter(map(index.get, names, repeat(-1)), dtype=np.int64, count=len(names))
        dropped += int((series_entity < 0).sum())
        lengths = np.diff(batch.offsets)
        point_entity = series_entity if (lengths == 1).all() else np.repeat(series_entity, lengths)
        slot = np.rint((batch.timestamps - start) / step).astype(np.int64)
        keep = (point_entity >= 0) & (slot >= 0) & (slot < n_steps)
        planes[f][point_entity[keep], slot[keep]] = batch.values[keep]
    values = np.ascontiguousarray(np.moveaxis(planes, 0, -1))
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
