from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lstmad import __version__
from lstmad.localstack import free_port

from .conftest import LSTMAD


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LSTMAD, *args], capture_output=True, text=True, timeout=120)


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"lstmad {__version__}"


def test_usage_error_exits_2() -> None:
    proc = run("serve", "--no-such-flag")
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_unreachable_source_exits_1_with_one_line_and_json_logs(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = run("train", "--vm-url", url, "--model", str(tmp_path / "m"), "--log-format", "json",
               "--no-progress")  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("lstmad: source error: cannot reach")
    logs = [json.loads(line) for line in lines[:-1]]
    assert logs and all({"ts", "level", "logger", "msg"} <= set(doc) for doc in logs)
    assert not (tmp_path / "m").exists()


def test_time_arguments_reject_garbage(tmp_path: Path) -> None:
    proc = run("train", "--start", "yesterday-ish", "--model", str(tmp_path / "m"))
    assert proc.returncode == 2 and "time" in proc.stderr
