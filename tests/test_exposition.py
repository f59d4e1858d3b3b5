from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from lstmad.exposition import EntityMetrics, render_entities


def metrics(names: list[str], exported: list[bool]) -> EntityMetrics:
    n = len(names)
    return EntityMetrics(
        entities=names,
        score=np.linspace(0.5, 2.0, n),
        anomaly=(np.linspace(0.5, 2.0, n) > 1).astype(float),
        error=np.full(n, 0.25),
        last_scored=np.full(n, 1.7e9),
        anomalies_total=np.arange(n, dtype=float),
        feature_errors=np.tile([0.1, 0.5, np.nan, 0.3], (n, 1)),
        feature_names=["cpu", "mem", "disk", "net"],
        exported=np.array(exported, dtype=bool),
    )


def parse(body: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_render_exports_fresh_entities_and_top_k_features() -> None:
    body = render_entities(metrics(["h1", "h2", "h3"], [True, True, False]), "instance", top_k=2)
    parsed = parse(body)
    assert [lab["instance"] for lab, _ in parsed["lstmad_anomaly_score"]] == ["h1", "h2"]
    assert len(parsed["lstmad_anomalies_total"]) == 3  # counters stay for stale entities
    feats = [(lab["instance"], lab["feature"]) for lab, _ in parsed["lstmad_feature_error"]]
    assert feats == [("h1", "mem"), ("h1", "net"), ("h2", "mem"), ("h2", "net")]  # NaN never exported


@settings(max_examples=200)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique=True))
def test_hostile_label_values_are_escaped(names: list[str]) -> None:
    body = render_entities(metrics(names, [True] * len(names)), "instance", top_k=1)
    parsed = parse(body)
    assert [lab["instance"] for lab, _ in parsed["lstmad_anomaly"]] == names
