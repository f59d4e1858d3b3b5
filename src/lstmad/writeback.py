"""Write scores back to VictoriaMetrics with the data's own timestamps.

Scores exported on ``/metrics`` carry the scrape's timestamp; written back, they
carry the timestamp of the data point they score, so a replay (``backtest
--write-to-vm``) or a live detector can be graphed next to the raw metrics.
The lines use VictoriaMetrics' ``/api/v1/import/prometheus`` (Prometheus text
format with millisecond timestamps) and the same metric names as ``/metrics``,
with ``job="lstmad-writeback"`` so they never collide with the scraped series.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx
import numpy as np

from lstmad.errors import SourceConnectionError, SourceHTTPError, SourceTimeout
from lstmad.exposition import escape_label_value, format_value

__all__ = ["VMWriter", "render_import_lines"]

log = logging.getLogger(__name__)
WRITEBACK_JOB = "lstmad-writeback"


def render_import_lines(
    entity_label: str,
    entities: Sequence[str],
    timestamps: np.ndarray,
    score: np.ndarray,
    error: np.ndarray,
    threshold: float,
) -> bytes:
    """Prometheus text lines for every finite score; ``timestamps`` in seconds, one per row."""
    lines: list[str] = []
    ok = np.flatnonzero(np.isfinite(score))
    for i in ok.tolist():
        labels = f'{entity_label}="{escape_label_value(entities[i])}",job="{WRITEBACK_JOB}"'
        ms = round(float(timestamps[i]) * 1000)
        lines.append(f"lstmad_anomaly_score{{{labels}}} {format_value(float(score[i]))} {ms}")
        lines.append(f"lstmad_anomaly{{{labels}}} {1 if score[i] > 1.0 else 0} {ms}")
        lines.append(f"lstmad_error{{{labels}}} {format_value(float(error[i]))} {ms}")
    if ok.size:
        ms = round(float(np.max(timestamps[ok])) * 1000)
        lines.append(f'lstmad_threshold{{job="{WRITEBACK_JOB}"}} {format_value(threshold)} {ms}')
    return ("\n".join(lines) + "\n").encode() if lines else b""


class VMWriter:
    """POSTs import bodies to ``{url}/api/v1/import/prometheus`` with a timeout."""

    def __init__(
        self,
        url: str,
        *,
        tenant: str | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        base = url.rstrip("/")
        if tenant:
            base = f"{base}/insert/{tenant}/prometheus"
        self.url = base + "/api/v1/import/prometheus"
        self._owned = client is None
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout))

    def write(self, body: bytes) -> None:
        if not body:
            return
        try:
            resp = self._client.post(self.url, content=body)
        except httpx.TimeoutException as err:
            raise SourceTimeout(f"write-back to {self.url} timed out") from err
        except httpx.TransportError as err:
            raise SourceConnectionError(f"cannot reach {self.url} for write-back: {err}") from err
        if resp.status_code >= 300:
            raise SourceHTTPError(
                f"write-back to {self.url} answered HTTP {resp.status_code}: {resp.text[:200]}",
                resp.status_code,
            )

    def close(self) -> None:
        if self._owned:
            self._client.close()
