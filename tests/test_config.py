from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lstmad.config import load_config, mask_secrets, parse_duration, preset_text
from lstmad.errors import ConfigError

from .conftest import LSTMAD

INVALID = sorted((Path(__file__).parent / "fixtures" / "config" / "invalid").glob("*.yaml"))


def expected_key(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first.removeprefix("# expect: ")


def test_preset_is_valid_and_has_eight_host_comparable_features() -> None:
    cfg = load_config(None)
    assert cfg.feature_names == [
        "cpu_busy", "cpu_iowait", "memory_used", "load1_per_core",
        "disk_io_busy", "net_receive", "net_transmit", "fs_used",
    ]  # fmt: skip
    assert cfg.entity_label == "instance"
    assert cfg.interval == 15.0
    assert cfg.victoriametrics.url == "http://127.0.0.1:8428"
    assert all("by (instance)" in f.query or "/" in f.query for f in cfg.features)


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_names_the_key(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected_key(path) in str(info.value)


@pytest.mark.parametrize("path", INVALID[:4], ids=[p.stem for p in INVALID[:4]])
def test_cli_exits_2_with_one_line(path: Path) -> None:
    proc = subprocess.run([*LSTMAD, "config", "check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected_key(path) in lines[0]


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(preset_text().replace("interval: 15s", "interval: 30s"))
    env = {"LSTMAD_INTERVAL": "1m", "LSTMAD_VICTORIAMETRICS__URL": "http://env:8428",
           "LSTMAD_TRAINING__EPOCHS": "5", "HOME": "/root"}  # fmt: skip
    cfg = load_config(
        path, env=env, overrides={"victoriametrics.url": "http://flag:8428", "model.path": None}
    )
    assert cfg.interval == 60.0
    assert cfg.training.epochs == 5
    assert cfg.victoriametrics.url == "http://flag:8428"
    assert cfg.model.path == "model"
    assert load_config(path).interval == 30.0


def test_env_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"training\.epoch"):
        load_config(None, env={"LSTMAD_TRAINING__EPOCH": "3"})


@pytest.mark.parametrize(
    ("text", "seconds"), [("15s", 15), ("1m30s", 90), ("7d", 604800), ("250ms", 0.25), (42, 42), ("2.5", 2.5)]
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15 s", "s", "1x", True, "-5s", None])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, "interval")


def test_secrets_are_masked() -> None:
    cfg = load_config(
        None,
        overrides={"victoriametrics.bearer_token": "s3cret-token", "victoriametrics.username": "u",
                   "victoriametrics.password": "hunter2", "victoriametrics.url": "https://u:pw@vm:8428"},
    )  # fmt: skip
    text = repr(mask_secrets(cfg))
    assert "s3cret-token" not in text and "hunter2" not in text and ":pw@" not in text
    assert "<secret>" in text


def test_config_check_prints_effective_config(tmp_path: Path) -> None:
    proc = subprocess.run([*LSTMAD, "config", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"entity_label": "instance"' in proc.stdout
