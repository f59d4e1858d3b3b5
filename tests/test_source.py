from __future__ import annotations

import contextlib
import time

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lstmad.config import Feature, SourceConfig
from lstmad.errors import SourceConnectionError, SourceHTTPError, SourceResponseError, SourceTimeout
from lstmad.localstack import ManagedProcess
from lstmad.source import PromClient, align, escape_label_value, fetch_range, parse_response, split_range

MATRIX = orjson.dumps({
    "status": "success",
    "data": {"resultType": "matrix", "result": [
        {"metric": {"instance": "a"}, "values": [[100, "1.5"], [115, "NaN"], [130, "+Inf"]]},
        {"metric": {"instance": "b"}, "values": [[115, "2"]]},
        {"metric": {"job": "x"}, "values": [[100, "9"]]},
    ]},
})  # fmt: skip


def test_parse_matrix_keeps_missing_values_missing() -> None:
    batch = parse_response(MATRIX)
    assert len(batch) == 3
    np.testing.assert_array_equal(batch.offsets, [0, 3, 4, 5])
    np.testing.assert_array_equal(batch.timestamps, [100, 115, 130, 115, 100])
    assert batch.values[0] == 1.5 and np.isnan(batch.values[1]) and np.isnan(batch.values[2])


def test_parse_vector() -> None:
    body = (
        b'{"status":"success","data":{"resultType":"vector",'
        b'"result":[{"metric":{"instance":"a"},"value":[1,"3"]}]}}'
    )
    batch = parse_response(body)
    assert batch.labels == [{"instance": "a"}] and batch.values.tolist() == [3.0]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", "bad_response"),
        (b'{"status":"error","errorType":"bad_data","error":"parse error at char 3"}', "status_error"),
        (b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{}}]}}', "bad_response"),
        (b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}',
         "bad_response"),
        (b'{"status":"succ', "bad_response"),
        (b"[]", "bad_response"),
    ],
)  # fmt: skip
def test_parse_rejects_bad_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(SourceResponseError) as info:
        parse_response(body)
    assert info.value.reason == reason


@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_source_errors(body: bytes) -> None:
    with contextlib.suppress(SourceResponseError):
        parse_response(body)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
)


@given(st.recursive(SCALARS,
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=12))  # fmt: skip
def test_parse_arbitrary_json_documents(doc: object) -> None:
    body = orjson.dumps({"status": "success", "data": {"resultType": "matrix", "result": doc}})
    with contextlib.suppress(SourceResponseError):
        parse_response(body)


def test_split_range_respects_point_limit_without_overlap() -> None:
    chunks = split_range(0, 99 * 15, 15, 30)
    assert chunks == [(0, 29 * 15), (30 * 15, 59 * 15), (60 * 15, 89 * 15), (90 * 15, 99 * 15)]
    assert split_range(10, 5, 1, 10) == []


def test_align_places_points_on_grid_and_drops_unlabelled() -> None:
    batch = parse_response(MATRIX)
    entities, values, dropped = align([batch, batch], "instance", start=100, step=15, n_steps=3)
    assert entities == ["a", "b"] and dropped == 2
    assert values.shape == (2, 3, 2)
    assert values[0, 0, 0] == 1.5 and np.isnan(values[0, 1, 0]) and values[1, 1, 1] == 2.0
    assert np.isnan(values[1, 0, 0])


@given(st.text(max_size=20))
def test_label_escaping_round_trips_through_a_promql_string(value: str) -> None:
    escaped = escape_label_value(value)
    assert '"' not in escaped.replace('\\"', "")
    decoded = escaped.encode().decode("unicode_escape") if value.isascii() else None
    if decoded is not None:
        assert decoded == value


def _client(handler, **cfg: object) -> tuple[PromClient, list[Exception]]:  # type: ignore[no-untyped-def]
    errors: list[Exception] = []
    client = PromClient(
        SourceConfig(url="http://vm.test", **cfg),  # type: ignore[arg-type]
        transport=httpx.MockTransport(handler),
        on_error=errors.append,
        sleep=lambda s: None,
    )
    return client, errors


def test_client_retries_5xx_then_succeeds_and_counts_each_failure() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, text="busy") if len(calls) < 3 else httpx.Response(200, content=MATRIX)

    client, errors = _client(handler, retries=3)
    assert len(client.query_range("up", 100, 130, 15)) == 3
    assert len(calls) == 3 and [type(e) for e in errors] == [SourceHTTPError, SourceHTTPError]


def test_client_does_not_retry_bad_query() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, content=b'{"status":"error","errorType":"bad_data","error":"bad"}')

    client, errors = _client(handler, retries=3)
    with pytest.raises(SourceResponseError) as info:
        client.query("up(")
    assert info.value.reason == "status_error" and len(errors) == 1


def test_client_bounds_response_size() -> None:
    client, _ = _client(lambda r: httpx.Response(200, content=b" " * 5000 + MATRIX), max_response_bytes=1000)
    with pytest.raises(SourceResponseError, match="exceeds the limit"):
        client.query("up")


def test_client_maps_timeouts_and_connection_errors() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client, errors = _client(slow, retries=1)
    with pytest.raises(SourceTimeout):
        client.query("up")
    assert len(errors) == 2
    refused = PromClient(SourceConfig(url="http://127.0.0.1:9", retries=0, timeout=2.0))
    with pytest.raises(SourceConnectionError):
        refused.query("up")


def test_bearer_token_and_tenant_path() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=MATRIX)

    client, _ = _client(handler, bearer_token="tok", tenant="3:1")
    client.query("up")
    assert seen[0].headers["Authorization"] == "Bearer tok"
    assert seen[0].url.path == "/select/3:1/prometheus/api/v1/query"


@pytest.mark.integration
def test_long_range_is_split_and_stitched_against_real_victoriametrics(
    victoriametrics: ManagedProcess,
) -> None:
    """More points than the per-request limit come back whole and in order."""
    now = int(time.time())
    start = now - 2000
    lines = b"\n".join(
        orjson.dumps({"metric": {"__name__": "split_test", "instance": f"h{i}"},
                      "values": list(range(2001)), "timestamps": [(start + t) * 1000 for t in range(2001)]})
        for i in range(3)
    )  # fmt: skip
    httpx.post(f"{victoriametrics.url}/api/v1/import", content=lines, timeout=30).raise_for_status()
    httpx.get(f"{victoriametrics.url}/internal/force_flush", timeout=30)
    cfg = SourceConfig(url=victoriametrics.url, max_points_per_series=300)
    with PromClient(cfg) as client:
        frame = fetch_range(client, [Feature("v", "split_test")], "instance", start, start + 1999, 1)
    assert frame.entities == ["h0", "h1", "h2"]
    assert frame.values.shape == (3, 2000, 1)
    np.testing.assert_array_equal(frame.values[1, :, 0], np.arange(2000))
