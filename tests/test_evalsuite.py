"""The evaluation suite end to end on a tiny fake data folder, and its page."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lstmad import evalsuite
from lstmad.config import ModelConfig, ThresholdConfig, TrainingConfig
from lstmad.evalsuite import Settings, load_asd, load_nab, load_smd, render_markdown, run_suite

from .conftest import require_data

QUICK = Settings(
    model=ModelConfig(window=8, hidden=8, layers=1),
    training=TrainingConfig(epochs=1, max_windows=200, batch_size=64),
    threshold=ThresholdConfig(),
)


def wave(rows: int, features: int, seed: int, offset: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(offset, offset + rows)[:, None]
    return (
        0.5
        + 0.3 * np.sin(2 * np.pi * t / (20 + 5 * np.arange(features)))
        + 0.02 * rng.random((rows, features))
    )


def fake_data(root: Path) -> Path:
    """SMD, ASD and NAB folders in their real formats, a few hundred rows each."""
    for sub in ("train", "test", "test_label"):
        (root / "smd" / sub).mkdir(parents=True)
    for k, m in enumerate(evalsuite.SMD_MACHINES):
        train, test = wave(300, 4, k), wave(200, 4, k + 10, offset=300)
        labels = np.zeros(200, dtype=int)
        labels[100:110] = 1
        test[100:110] += 2.0
        for sub, arr in (("train", train), ("test", test)):
            with gzip.open(root / "smd" / sub / f"{m}.txt.gz", "wt") as fh:
                np.savetxt(fh, arr, delimiter=",", fmt="%.5f")
        np.savetxt(root / "smd" / "test_label" / f"{m}.txt", labels, fmt="%d")
    (root / "asd").mkdir()
    for k, s in enumerate(evalsuite.ASD_SERVERS):
        test = wave(150, 3, k + 20, offset=250).astype(np.float32)
        labels = np.zeros(150, dtype=np.int64)
        labels[60:70] = 1
        test[60:70] += 1.5
        np.save(root / "asd" / f"{s}_train.npy", wave(250, 3, k).astype(np.float32))
        np.save(root / "asd" / f"{s}_test.npy", test)
        np.save(root / "asd" / f"{s}_test_label.npy", labels)
    nab = root / "nab"
    (nab / "data" / "realAWSCloudwatch").mkdir(parents=True)
    (nab / "labels").mkdir()
    (nab / "config").mkdir()
    (nab / "results" / "numenta" / "realAWSCloudwatch").mkdir(parents=True)
    windows = {}
    start = np.datetime64("2014-02-14T14:30:00")
    for k, name in enumerate(("ec2_a", "ec2_b")):
        n = 400
        stamps = [str(start + np.timedelta64(300 * i, "s")).replace("T", " ") for i in range(n)]
        values = wave(n, 1, k)[:, 0]
        values[250:255] += 3.0
        lines = ["timestamp,value"] + [f"{s},{v:.4f}" for s, v in zip(stamps, values, strict=True)]
        (nab / "data" / "realAWSCloudwatch" / f"{name}.csv").write_text("\n".join(lines) + "\n")
        windows[f"realAWSCloudwatch/{name}.csv"] = [[stamps[230] + ".000000", stamps[270] + ".000000"]]
        htm = ["timestamp,value,anomaly_score"] + [
            f"{s},{v:.4f},{0.9 if i == 250 else 0.1}"
            for i, (s, v) in enumerate(zip(stamps, values, strict=True))
        ]
        (nab / "results" / "numenta" / "realAWSCloudwatch" / f"numenta_{name}.csv").write_text(
            "\n".join(htm) + "\n"
        )
    (nab / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    thresholds = {
        p: {"score": 0.0, "threshold": 0.5} for p in ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
    }
    (nab / "config" / "thresholds.json").write_text(json.dumps({"numenta": thresholds}))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def results(data_dir: Path) -> dict:
    return run_suite(data_dir, seeds=(0, 1), settings=QUICK)


def test_loaders_read_the_real_formats(data_dir: Path) -> None:
    smd = load_smd(data_dir)
    assert [e.name for e in smd] == list(evalsuite.SMD_MACHINES)
    e = smd[0]
    assert e.data.train[0].shape == (300, 4) and e.data.test.shape == (200, 4) and e.data.context == 0
    assert e.data.labels is not None and e.data.labels.sum() == 10
    assert e.data.timestamps is not None and e.data.timestamps[0] == 300 * 60.0
    asd = load_asd(data_dir, rows=100)
    assert asd[0].data.train[0].shape == (100, 3) and asd[0].data.test.shape == (100, 3)
    nab = load_nab(data_dir)
    assert [e.name for e in nab] == ["ec2_a", "ec2_b"]
    assert nab[0].nab_prefix == 60 and nab[0].data.test.shape == (340, 1)
    assert nab[0].nab_file is not None and nab[0].nab_file.windows == [(230, 270)]


def test_suite_runs_every_detector_and_seed(results: dict) -> None:
    protocol = [("lstm", 0), ("lstm", 1), ("pca", 0), ("isolation-forest", 0), ("zscore", 0), ("random", 0)]
    for ds in ("smd", "asd", "nab"):
        runs = results["datasets"][ds]["runs"]
        assert [(r["detector"], r["seed"]) for r in runs if not r["variant"]] == protocol
        variants = [r for r in runs if r["variant"]]
        if ds == "nab":  # the extra run that retrains, first seed only
            assert [(r["detector"], r["seed"]) for r in variants] == [("lstm", 0)]
            assert variants[0]["variant"] == f"retraining every {evalsuite.NAB_RETRAIN_TRIED} rows"
        else:
            assert variants == []
        for r in runs:
            assert r["seconds"] >= 0
            if r["detector"] == "lstm" and not r["variant"]:
                assert "default" in r["threshold_metrics"] and "dynamic (Hundman)" in r["threshold_metrics"]
    smd_lstm = results["datasets"]["smd"]["runs"][0]["metrics"]
    assert smd_lstm["rows"] == 600 and smd_lstm["anomaly_rows"] == 30 and smd_lstm["events_labelled"] == 3
    assert set(smd_lstm["per_entity_best_f1"]) == set(evalsuite.SMD_MACHINES)
    nab = results["datasets"]["nab"]
    assert nab["windows"] == 2
    assert set(nab["runs"][0]["metrics"]) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
    # The fake HTM flags exactly the anomaly at the start of each window's second half: near-perfect.
    assert nab["htm"]["standard"]["published_threshold"] > 90


def test_default_threshold_rule_rescoring_matches_the_run(results: dict) -> None:
    for ds in ("smd", "asd"):
        run = results["datasets"][ds]["runs"][0]
        assert run["threshold_metrics"]["default"]["f1"] == pytest.approx(run["metrics"]["f1"])
    nab = results["datasets"]["nab"]["runs"][0]
    assert nab["threshold_metrics"]["default"]["standard"]["own_score"] == pytest.approx(
        nab["metrics"]["standard"]["own_score"]
    )


def test_page_has_every_section_and_only_generated_numbers(results: dict) -> None:
    page = render_markdown(results, notes="## Notes\n\nA note.\n")
    for heading in (
        "# Detection quality",
        "## Targets",
        "## SMD",
        "## ASD",
        "## NAB realAWSCloudwatch",
        "## LSTM across seeds 0, 1",
        "## Thresholds: quantile against dynamic",
        "## Notes",
    ):
        assert heading in page
    assert evalsuite.COMMAND in page
    assert results["machine"]["cpu"] in page
    assert "| lstm |" in page and "| random |" in page and "Numenta HTM" in page
    assert f"| lstm, retraining every {evalsuite.NAB_RETRAIN_TRIED} rows (seed 0) |" in page
    assert "## Tried: scoring onsets instead of states" in page
    assert "±" in page
    assert page.endswith("\n") and "nan" not in page.lower().replace("nanmean", "")


def test_main_writes_page_and_json(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evalsuite.Settings, "quick", classmethod(lambda cls: QUICK))
    page, raw = tmp_path / "docs" / "results.md", tmp_path / "raw.json"
    argv = ["--data", str(data_dir), "--write", str(page), "--json", str(raw), "--seeds", "3", "--quick",
            "--datasets", "asd", "--detectors", "lstm,pca"]  # fmt: skip
    assert evalsuite.main(argv) == 0
    text = page.read_text()
    assert "Quick run" in text and "## ASD" in text and "## SMD" not in text
    doc = json.loads(raw.read_text())
    assert doc["seeds"] == [3] and [r["detector"] for r in doc["datasets"]["asd"]["runs"]] == ["lstm", "pca"]
    again = tmp_path / "again.md"
    assert evalsuite.main(["--data", str(data_dir), "--from-json", str(raw), "--write", str(again)]) == 0
    assert again.read_text().split("## Targets")[1] == text.split("## Targets")[1]
    assert evalsuite.main(["--data", str(tmp_path / "missing"), "--datasets", "smd", "--quick"]) == 2
    assert evalsuite.main(["--data", str(data_dir), "--from-json", str(tmp_path / "none.json")]) == 2
    with pytest.raises(SystemExit):
        evalsuite.main(["--data", str(data_dir), "--datasets", "kdd"])


@pytest.mark.data
def test_loaders_on_the_real_data() -> None:
    root = require_data("smd").parent
    smd = load_smd(root, rows=500)
    assert smd[0].data.train[0].shape == (500, 38) and smd[0].data.labels is not None
    asd = load_asd(root, rows=500)
    assert asd[0].data.test.shape == (500, 19)
    nab = load_nab(root)
    assert len(nab) == 17 and sum(len(e.nab_file.windows) for e in nab if e.nab_file) == 30
    assert all(e.nab_prefix == min(int(0.15 * e.nab_file.n_rows), 750) for e in nab if e.nab_file)
