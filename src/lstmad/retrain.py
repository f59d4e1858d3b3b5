"""Scheduled retraining inside ``serve``, without stalling the scoring loop.

Every ``serve.retrain_every`` the retrainer runs ``lstmad train`` in a child
process (one torch thread, so the scoring loop keeps a core) on the last
``serve.fit_window`` of history, with the periods that were flagged as
anomalous cut out so that an incident does not become the new normal. The
candidate model is written to a separate directory, validated (it loads, its
features match, its threshold and validation loss are finite and not wildly
off the serving model's), then saved atomically over the model path and
swapped into the loop. If anything fails, the old model keeps serving.
Outcomes are counted in ``lstmad_retrains_total{outcome}``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from lstmad.artifact import LoadedModel, load_model, save_model
from lstmad.config import Config, to_dict
from lstmad.errors import LstmadError, ModelError

__all__ = ["Retrainer", "validate_candidate"]

log = logging.getLogger(__name__)
MAX_THRESHOLD_RATIO = 50.0


def validate_candidate(candidate: LoadedModel, current: LoadedModel | None) -> None:
    """Raise :class:`ModelError` unless ``candidate`` is sane enough to replace ``current``."""
    det = candidate.detector
    value = det.threshold.fitted_value
    if not math.isfinite(value) or value <= 0:
        raise ModelError(f"candidate threshold {value} is not a positive finite number")
    val_loss = candidate.metadata.get("val_loss") or []
    if val_loss and not all(math.isfinite(v) for v in val_loss):
        raise ModelError(f"candidate validation loss is not finite: {val_loss}")
    if current is not None:
        old = current.detector.threshold.fitted_value
        ratio = max(value / old, old / value)
        if ratio > MAX_THRESHOLD_RATIO:
            raise ModelError(
                f"candidate threshold {value:.4g} is {ratio:.0f}x the serving model's {old:.4g} "
                f"(limit {MAX_THRESHOLD_RATIO:.0f}x)"
            )


class Retrainer:
    """Runs retraining on a schedule and swaps validated models into the loop."""

    def __init__(
        self,
        cfg: Config,
        loop: object,
        *,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        from lstmad.service import ScoringLoop

        if not isinstance(loop, ScoringLoop):
            raise TypeError("Retrainer needs a ScoringLoop")
        self.cfg = cfg
        self.loop = loop
        self._run = run
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self._forever, args=(stop,), name="retrain", daemon=True)
        self._thread.start()

    def _forever(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.serve.retrain_every):
            self.retrain_once()

    def _command(self, config: Path, candidate: Path, exclude: Path) -> list[str]:
        return [
            sys.executable, "-m", "lstmad.cli", "train", "--no-progress",
            "--config", str(config), "--model", str(candidate),
            f"--start=now-{self.cfg.serve.fit_window:g}s", "--exclude", str(exclude),
        ]  # fmt: skip

    def retrain_once(self) -> str:
        """One retraining; returns the outcome: ``success``, ``failure`` or ``rejected``."""
        model_path = Path(self.cfg.model.path)
        workdir = model_path.parent / f".{model_path.name}.retrain"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        candidate_path = workdir / "candidate"
        exclude = workdir / "exclude.json"
        exclude.write_text(json.dumps(self.loop.anomalous_periods()))
        # The effective config (it may hold secrets: owner-only, removed afterwards).
        config = workdir / "config.yml"
        config.touch(mode=0o600)
        config.write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LSTMAD_")},
            "LSTMAD_TRAINING__THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        outcome = "failure"
        try:
            proc = self._run(
                self._command(config, candidate_path, exclude),
                capture_output=True,
                text=True,
                env=env,
                timeout=max(3600.0, self.cfg.serve.retrain_every),
            )
            if proc.returncode != 0:
                tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
                raise LstmadError(f"training exited with code {proc.returncode}: {tail[0]}")
            outcome = "rejected"
            candidate = load_model(candidate_path, self.cfg.feature_names)
            validate_candidate(candidate, self.loop.model)
            outcome = "failure"
            save_model(
                model_path,
                candidate.detector,
                entity_label=self.cfg.entity_label,
                interval=self.cfg.interval,
                extra_metadata={k: v for k, v in candidate.metadata.items() if k != "model_id"},
            )
            self.loop.use_model(load_model(model_path, self.cfg.feature_names))
            outcome = "success"
            log.info("retrained: now serving %s", self.loop.model.model_id)
        except (LstmadError, OSError, subprocess.TimeoutExpired) as err:
            log.warning("retraining %s, keeping model %s: %s", outcome, self.loop.model.model_id, err)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self.loop.monitor.retrains.labels(outcome).inc()
        return outcome
