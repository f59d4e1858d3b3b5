"""A small HTTP(S) proxy in front of a real VictoriaMetrics that injects faults on demand.

Only for what a real VictoriaMetrics cannot do when asked: answer late, drip a body
byte by byte, send a body that is not JSON, cut off or oversized, say
``"status":"error"`` about a good query, put NaN/Inf samples, duplicate series or
non-string label values into an answer, or drop one entity's series for one feature.
It can also stand in for the tenant path of a VictoriaMetrics cluster
(``/select/<tenant>/prometheus``, which single-node VictoriaMetrics does not serve)
and require a client certificate (enterprise-only in VictoriaMetrics).

Everything else goes to the real VictoriaMetrics unchanged. The proxy runs in a
thread of the test process; :meth:`FaultProxy.close` (or leaving the ``with``
block) stops it and releases every socket.

Example::

    with FaultProxy(vm.url) as proxy:
        proxy.set(Fault(delay=5.0))          # answers start 5 s late
        ...
        proxy.set(Fault(transform=nan_values("host-1")))
        ...
        proxy.set(None)                      # pass through again
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson

__all__ = [
    "Fault",
    "FaultProxy",
    "Recorded",
    "add_series",
    "chain",
    "drop_entity",
    "duplicate_series",
    "label_values",
    "nan_values",
]

Transform = Callable[[dict[str, Any], str], dict[str, Any]]


@dataclass(frozen=True)
class Fault:
    """What to do to the next answers. The default passes everything through.

    ``delay``: seconds before the answer starts. ``drip``: seconds between chunks
    of ``drip_size`` bytes of the body. ``status``/``body``: replace the upstream
    status or body. ``transform``: edit the parsed JSON answer (it receives the
    document and the PromQL query). ``truncate``: keep this fraction of the body
    and announce only that much. ``cut``: announce the whole body but close the
    connection after this fraction of it. ``pad``: append this many spaces (still
    valid JSON, only bigger).
    """

    delay: float = 0.0
    drip: float = 0.0
    drip_size: int = 256
    status: int | None = None
    body: bytes | None = None
    transform: Transform | None = None
    truncate: float | None = None
    cut: float | None = None
    pad: int = 0


@dataclass(frozen=True)
class Recorded:
    """One request the proxy received (after TLS), as the client sent it."""

    method: str
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    at: float = 0.0  # time.monotonic() when it arrived


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy, tls: ssl.SSLContext | None) -> None:
        self.proxy = proxy
        self.tls = tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake runs in the connection's own thread, so a client that
        # fails it (no client certificate, plain HTTP) disturbs nobody else.
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            self.proxy._note_error(err)
            return
        try:
            super().finish_request(conn, client_address)
        except (ssl.SSLError, OSError) as err:
            self.proxy._note_error(err)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        self.proxy._note_error(sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def _proxy(self) -> None:
        proxy = self.server.proxy
        self.close_connection = True
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        proxy._record(
            Recorded(
                self.command,
                url.path,
                url.query,
                {k.lower(): v for k, v in self.headers.items()},
                time.monotonic(),
            )
        )
        path = url.path
        if proxy.tenant is not None:
            prefix = f"/select/{proxy.tenant}/prometheus"
            if not path.startswith(prefix + "/"):
                self._send(400, b"unsupported path: expected " + prefix.encode() + b"/...")
                return
            path = path[len(prefix) :]
        fault = proxy.fault
        if fault.delay and proxy._closing.wait(fault.delay):
            return
        try:
            upstream = proxy._client.request(
                self.command,
                proxy.upstream + path + (f"?{url.query}" if url.query else ""),
                content=payload,
                headers={"Content-Type": self.headers.get("Content-Type", "application/octet-stream")},
            )
        except httpx.HTTPError as err:
            self._send(502, f"upstream failed: {err}".encode())
            return
        status, body = upstream.status_code, upstream.content
        if fault.transform is not None and status == 200:
            form = parse_qs(payload.decode()) | parse_qs(url.query)
            query = (form.get("query") or [""])[0]
            body = orjson.dumps(fault.transform(orjson.loads(body), query))
        if fault.status is not None:
            status = fault.status
        if fault.body is not None:
            body = fault.body
        if fault.pad:
            body = body + b" " * fault.pad
        if fault.truncate is not None:
            body = body[: int(len(body) * fault.truncate)]
        self._send(status, body, fault)

    def _send(self, status: int, body: bytes, fault: Fault | None = None) -> None:
        fault = fault or Fault()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if fault.cut is not None:
                self.wfile.write(body[: int(len(body) * fault.cut)])
                self.wfile.flush()
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.drip:
                for i in range(0, len(body), fault.drip_size):
                    self.wfile.write(body[i : i + fault.drip_size])
                    self.wfile.flush()
                    if self.server.proxy._closing.wait(fault.drip):
                        return
                return
            self.wfile.write(body)
        except OSError:
            # The client gave up (its timeout): exactly what a slow source sees.
            return


class FaultProxy:
    """Forward to ``upstream`` (a real VictoriaMetrics), applying the current :class:`Fault`.

    ``tls`` makes it an HTTPS server; ``tenant`` makes it serve only
    ``/select/<tenant>/prometheus/...``, as a VictoriaMetrics cluster does.
    """

    def __init__(
        self, upstream: str, *, tls: ssl.SSLContext | None = None, tenant: str | None = None
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.tenant = tenant
        self.fault = Fault()
        self.requests: list[Recorded] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._client = httpx.Client(timeout=30.0)
        self._server = _Server(("127.0.0.1", 0), self, tls)
        self.port = int(self._server.server_address[1])
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="faultproxy", daemon=True
        )
        self._thread.start()

    def set(self, fault: Fault | None) -> None:
        """Apply ``fault`` to the answers from now on (``None``: pass through)."""
        self.fault = fault or Fault()

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def _note_error(self, err: BaseException | None) -> None:
        if err is not None:
            with self._lock:
                self.errors.append(err)

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self._client.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- transforms of a parsed Prometheus API answer -------------------------------------


def _series(doc: dict[str, Any]) -> list[dict[str, Any]]:
    data = doc.get("data")
    if isinstance(data, dict) and isinstance(data.get("result"), list):
        return data["result"]
    return []


def nan_values(entity: str, label: str = "instance") -> Transform:
    """Replace every sample of ``entity`` with ``NaN``, ``+Inf`` and ``-Inf`` in turn."""
    bad = ("NaN", "+Inf", "-Inf")

    def transform(doc: dict[str, Any], query: str) -> dict[str, Any]:
        for s in _series(doc):
            if s.get("metric", {}).get(label) == entity:
                s["values"] = [[ts, bad[i % 3]] for i, (ts, _) in enumerate(s.get("values", []))]
        return doc

    return transform


def drop_entity(entity: str, query_contains: str, label: str = "instance") -> Transform:
    """Leave out ``entity``'s series from the answers to queries containing ``query_contains``."""

    def transform(doc: dict[str, Any], query: str) -> dict[str, Any]:
        if query_contains in query:
            doc["data"]["result"] = [s for s in _series(doc) if s.get("metric", {}).get(label) != entity]
        return doc

    return transform


def duplicate_series() -> Transform:
    """Send every series twice (a broken federation or remote-read proxy does this)."""

    def transform(doc: dict[str, Any], query: str) -> dict[str, Any]:
        series = _series(doc)
        doc["data"]["result"] = series + [dict(s) for s in series]
        return doc

    return transform


def label_values(value: Any, label: str = "instance") -> Transform:
    """Replace the value of ``label`` in every series with ``value`` (of any JSON type)."""

    def transform(doc: dict[str, Any], query: str) -> dict[str, Any]:
        for s in _series(doc):
            s["metric"] = {**s.get("metric", {}), label: value}
        return doc

    return transform


def add_series(labels: list[dict[str, Any]]) -> Transform:
    """Add series with these label sets, copying the samples of the first series."""

    def transform(doc: dict[str, Any], query: str) -> dict[str, Any]:
        series = _series(doc)
        if series:
            doc["data"]["result"] = series + [
                {"metric": lab, "values": series[0]["values"]} for lab in labels
            ]
        return doc

    return transform


def chain(*transforms: Transform) -> Transform:
    """Apply several transforms in order."""

    def transform(doc: dict[str, Any], query: str) -> dict[str, Any]:
        for t in transforms:
            doc = t(doc, query)
        return doc

    return transform
