"""Per-entity metrics rendered once per cycle into Prometheus text format.

``/metrics`` must stay cheap at fleet size, so the per-entity families are
rendered when a snapshot is published (in the scoring thread), not on every
scrape; a scrape concatenates the prepared bytes with the self-monitoring
metrics of the service's own :class:`prometheus_client.CollectorRegistry`.

Series per entity: ``lstmad_anomaly_score``, ``lstmad_anomaly``,
``lstmad_error``, ``lstmad_last_scored_timestamp_seconds``,
``lstmad_anomalies_total``, and at most ``top_k`` ``lstmad_feature_error``
series (the features with the largest error), so 5 + top_k series.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["EntityMetrics", "escape_label_value", "format_value", "format_values", "render_entities"]

ENTITY_FAMILIES = {
    "lstmad_anomaly_score": (
        "gauge",
        "Anomaly score of the entity: smoothed forecast error divided by the threshold; "
        "above 1 is anomalous.",
    ),
    "lstmad_anomaly": ("gauge", "1 if the entity is anomalous now (score above 1), else 0."),
    "lstmad_error": (
        "gauge",
        "Smoothed mean squared forecast error of the entity, in standard-scaled units.",
    ),
    "lstmad_feature_error": (
        "gauge",
        "Smoothed squared forecast error of one feature, for the top features of each entity.",
    ),
    "lstmad_anomalies_total": (
        "counter",
        "Anomaly events of the entity: transitions from normal to anomalous.",
    ),
    "lstmad_last_scored_timestamp_seconds": (
        "gauge",
        "Timestamp of the data point that was last scored for the entity.",
    ),
}


def escape_label_value(value: str) -> str:
    """Escape a label value for the Prometheus text format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(float(value))


@dataclass(frozen=True)
class EntityMetrics:
    """The values one snapshot exports for its fresh entities (arrays aligned with ``entities``)."""

    entities: Sequence[str]
    score: np.ndarray
    anomaly: np.ndarray
    error: np.ndarray
    last_scored: np.ndarray
    anomalies_total: np.ndarray
    feature_errors: np.ndarray
    feature_names: Sequence[str]
    exported: np.ndarray


def _family(lines: list[str], name: str) -> None:
    kind, help_text = ENTITY_FAMILIES[name]
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def format_values(values: np.ndarray) -> list[str]:
    """:func:`format_value` of every element, in bulk (what a render of 10,000 entities needs).

    ``repr`` of a Python float is already the Prometheus spelling of every finite
    value except ``-0.0``; only the non-finite values and negative zeros go
    through :func:`format_value`.
    """
    arr = np.asarray(values, dtype=np.float64)
    out = list(map(repr, arr.tolist()))
    odd = np.flatnonzero(~np.isfinite(arr) | ((arr == 0.0) & np.signbit(arr)))
    for i in odd.tolist():
        out[i] = format_value(float(arr[i]))
    return out


def render_entities(m: EntityMetrics, entity_label: str, top_k: int) -> bytes:
    """Render the per-entity families; only entities with ``exported`` set get score series."""
    labels = [f'{entity_label}="{escape_label_value(e)}"' for e in m.entities]
    fresh = np.flatnonzero(m.exported)
    every = np.arange(len(labels))
    lines: list[str] = []
    for name, values, rows in (
        ("lstmad_anomaly_score", m.score, fresh),
        ("lstmad_anomaly", m.anomaly, fresh),
        ("lstmad_error", m.error, fresh),
        ("lstmad_anomalies_total", m.anomalies_total, every),
        ("lstmad_last_scored_timestamp_seconds", m.last_scored, every),
    ):
        _family(lines, name)
        vals = format_values(np.asarray(values)[rows])
        lines.extend([f"{name}{{{labels[i]}}} {v}" for i, v in zip(rows.tolist(), vals, strict=True)])
    _family(lines, "lstmad_feature_error")
    if top_k > 0 and fresh.size:
        fe = np.asarray(m.feature_errors, dtype=np.float64)[fresh]
        k = min(top_k, fe.shape[1])
        order = np.argsort(-np.nan_to_num(fe, nan=-1.0), axis=1)[:, :k]
        top = np.take_along_axis(fe, order, axis=1)
        row, rank = np.nonzero(~np.isnan(top))  # entity-major, largest error first
        names = [escape_label_value(n) for n in m.feature_names]
        vals = format_values(top[row, rank])
        lines.extend(
            [
                f'lstmad_feature_error{{{labels[i]},feature="{names[j]}"}} {v}'
                for i, j, v in zip(fresh[row].tolist(), order[row, rank].tolist(), vals, strict=True)
            ]
        )
    lines.append("")
    return "\n".join(lines).encode()
