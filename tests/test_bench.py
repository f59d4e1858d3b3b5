"""``lstmad bench``: the JSON it prints and the page it writes (shapes and sanity, never timings)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from lstmad import bench

REQUIRED = (
    "hosts",
    "features",
    "score_seconds",
    "window_seconds",
    "ratio",
    "render_seconds",
    "rss_bytes",
    "train_windows_per_second",
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def small_run() -> dict[str, object]:
    args = parse(["--hosts", "200", "--features", "4", "--steps", "3", "--train-windows", "256", "--json"])
    with pytest.MonkeyPatch.context() as mp:
        printed: list[str] = []
        mp.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        assert bench.run_from_args(args) == 0
    assert len(printed) == 1, "expected exactly one line of output"
    doc = json.loads(printed[0])
    assert isinstance(doc, dict)
    return doc


def test_prints_one_json_object_with_the_required_keys(small_run: dict[str, object]) -> None:
    missing = [k for k in REQUIRED if k not in small_run]
    assert not missing
    assert small_run["hosts"] == 200 and small_run["features"] == 4


def test_values_are_positive_and_the_ratio_is_computed_from_them(small_run: dict[str, object]) -> None:
    for key in REQUIRED[2:]:
        value = small_run[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, key
    score, window, ratio = small_run["score_seconds"], small_run["window_seconds"], small_run["ratio"]
    assert isinstance(score, float) and isinstance(window, float) and isinstance(ratio, float)
    assert ratio == pytest.approx(window / score)
    assert small_run["render_bytes"] and small_run["render_series"]
    by_threads = small_run["train_windows_per_second_by_threads"]
    assert isinstance(by_threads, dict) and set(by_threads) >= {"1", "2"}


def test_render_series_count_matches_the_exposition_contract(small_run: dict[str, object]) -> None:
    # 5 + feature_errors_top_k (3) series per scored entity, plus the self-monitoring series.
    series = small_run["render_series"]
    assert isinstance(series, int) and series >= 200 * 8


def test_page_has_every_target_and_says_what_was_not_measured(small_run: dict[str, object]) -> None:
    results = {
        "date": "2026-01-01 00:00 UTC",
        "load_average": [0.5, 0.7],
        "machine": bench.machine_info(),
        "micro": small_run,
    }
    page = bench.render_page(results, "lstmad bench --hosts 200 --write PAGE")
    for target in bench.TARGETS:
        assert target.text in page
    assert "not measured" in page  # no end-to-end, load or training run here
    assert "`lstmad bench --hosts 200 --write PAGE`" in page


@pytest.mark.parametrize(
    ("target", "value", "verdict"),
    [
        (bench.Target("t", "t", 2.0, True, "s"), 1.0, "holds"),
        (bench.Target("t", "t", 2.0, True, "s"), 3.0, "misses"),
        (bench.Target("t", "t", 20.0, False, "x"), 25.0, "holds"),
        (bench.Target("t", "t", 20.0, False, "x"), 10.0, "misses"),
        (bench.Target("t", "t", 20.0, False, "x"), None, "not measured"),
    ],
)
def test_target_verdicts(target: bench.Target, value: float | None, verdict: str) -> None:
    assert target.check(value)[0] == verdict


def test_a_miss_says_by_how_much() -> None:
    assert bench.Target("t", "t", 2.0, True, "s").check(3.0) == ("misses", "by 50 %")
    assert bench.Target("t", "t", 20.0, False, "x").check(15.0) == ("misses", "by 25 %")


WRK_OUTPUT = (
    """Running 10s test @ http://127.0.0.1:9731/metrics
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    60.15ms  156.22ms   1.79s    95.91%
    Req/Sec   330.62    104.58   626.00     67.00%
  Latency Distribution
     50%   29.47ms
     75%  839.00us
     90%   59.85ms
"""
    "     99%    1.02s \n"  # wrk pads this line
    """  6627 requests in 10.09s, 3.76GB read
  Socket errors: connect 0, read 1, write 0, timeout 6
  Non-2xx or 3xx responses: 2
Requests/sec:    656.72
Transfer/sec:    381.08MB
"""
)


def test_parse_wrk() -> None:
    out = bench.parse_wrk(WRK_OUTPUT)
    assert out["requests"] == 6627
    assert out["percentiles"] == {"50": 0.02947, "75": 0.000839, "90": 0.05985, "99": 1.02}
    assert out["socket_errors"] == {"connect": 0, "read": 1, "write": 0, "timeout": 6}
    assert out["non_2xx"] == 2
    assert out["requests_per_second"] == pytest.approx(656.72)
    assert out["max_seconds"] == pytest.approx(1.79)


def test_superlinear_stages_are_named_with_their_growth() -> None:
    def run(hosts: int, score: float) -> dict[str, object]:
        stages = {"http": 0.01 * hosts / 100, "parse": 0.001, "score": score, "publish": 0.001}
        return {"hosts": hosts, "cycles": 20, "stage_median_seconds": stages}

    notes = bench._superlinear([run(100, 0.01), run(1000, 0.1), run(10000, 10.0)])
    assert len(notes) == 1
    stage, text = notes[0]
    assert stage == "score" and text.startswith("`score` grows 100x from 1,000 to 10,000 hosts")
