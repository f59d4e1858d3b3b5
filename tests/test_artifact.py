from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lstmad.artifact import load_model, save_model
from lstmad.config import ModelConfig, TrainingConfig
from lstmad.detector import LSTMDetector
from lstmad.errors import ModelError

FEATURES = ["a", "b"]


def trained(seed: int = 0) -> LSTMDetector:
    rng = np.random.default_rng(seed)
    data = [np.cumsum(rng.standard_normal((400, 2)), axis=0) * 0.1]
    return LSTMDetector(FEATURES, ModelConfig(window=8, hidden=8)).fit(
        data, TrainingConfig(epochs=1, max_windows=500, seed=seed)
    )


@pytest.fixture(scope="module")
def detector() -> LSTMDetector:
    return trained()


def test_round_trip_gives_identical_scores(detector: LSTMDetector, tmp_path: Path) -> None:
    save_model(tmp_path / "m", detector, entity_label="instance", interval=15)
    loaded = load_model(tmp_path / "m", FEATURES)
    values = np.random.default_rng(1).standard_normal((50, 2))
    np.testing.assert_allclose(
        loaded.detector.score(values).score, detector.score(values).score, equal_nan=True
    )
    assert loaded.info["interval"] == 15 and loaded.info["entity_label"] == "instance"
    assert loaded.trained_at > 0


def test_refuses_other_features(detector: LSTMDetector, tmp_path: Path) -> None:
    save_model(tmp_path / "m", detector, entity_label="instance", interval=15)
    with pytest.raises(ModelError, match=r"trained on features \['a', 'b'\].*\['a', 'c'\]"):
        load_model(tmp_path / "m", ["a", "c"])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("weights.safetensors", b"\x00\x01garbage", "not a valid safetensors"),
        ("model.json", b'{"format_version": 1, "feat', "not valid JSON"),
        ("scaler.json", b'{"mean": [0], "scale": [1]}', "expected 2 features"),
        ("threshold.json", b'{"method": "quantile", "value": "NaN"}', "positive finite"),
        ("metadata.json", None, "missing"),
    ],
)
def test_corrupt_model_directory_is_refused(
    detector: LSTMDetector, tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    save_model(tmp_path / "m", detector, entity_label="instance", interval=15)
    target = (tmp_path / "m").resolve() / name
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "m", FEATURES)


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def test_pickle_payload_never_runs(detector: LSTMDetector, tmp_path: Path) -> None:
    save_model(tmp_path / "m", detector, entity_label="instance", interval=15)
    (tmp_path / "m" / "weights.safetensors").write_bytes(pickle.dumps(Payload()))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ModelError):
            load_model(tmp_path / "m", FEATURES)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "PWNED").exists()


def test_cli_exits_2_on_corrupt_model(detector: LSTMDetector, tmp_path: Path) -> None:
    save_model(tmp_path / "m", detector, entity_label="instance", interval=15)
    (tmp_path / "m" / "weights.safetensors").write_bytes(b"truncated")
    cfg = tmp_path / "c.yml"
    cfg.write_text("features:\n  - {name: a, query: up}\n  - {name: b, query: up}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lstmad.cli", "serve", "--config", str(cfg), "--model", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "safetensors" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


SAVE_FOREVER = """
import sys, numpy as np
from lstmad.artifact import save_model
from lstmad.config import ModelConfig, TrainingConfig
from lstmad.detector import LSTMDetector
rng = np.random.default_rng(5)
det = LSTMDetector(["a", "b"], ModelConfig(window=8, hidden=8)).fit(
    [np.cumsum(rng.standard_normal((400, 2)), axis=0) * 0.1], TrainingConfig(epochs=1, max_windows=500))
print("ready", flush=True)
while True:
    save_model(sys.argv[1], det, entity_label="instance", interval=15)
"""


def test_kill_during_save_leaves_a_loadable_model(detector: LSTMDetector, tmp_path: Path) -> None:
    target = tmp_path / "m"
    save_model(target, detector, entity_label="instance", interval=15)
    for delay in (0.05, 0.13, 0.21):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(target)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        loaded = load_model(target, FEATURES)
        assert loaded.detector.is_fitted
        json.loads((target / "metadata.json").read_text())
