"""Save and load a model directory: weights without pickles, everything else as JSON.

Layout of a model directory::

    weights.safetensors   the network's tensors (safetensors: no code runs on load)
    model.json            format version, features, entity label, step, network sizes
    scaler.json           per-feature mean and scale
    threshold.json        method, value and parameters
    metadata.json         when and how it was trained

Saving is atomic: the files are written and fsynced into a fresh version
directory next to the target, then the target (a symbolic link) is switched to
it with one ``rename``. A crash at any point leaves the previous model intact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lstmad._version import __version__
from lstmad.config import ModelConfig, ThresholdConfig
from lstmad.detector import LSTMDetector
from lstmad.errors import DataError, ModelError
from lstmad.preprocessing import StandardScaler
from lstmad.threshold import threshold_from_dict

__all__ = ["FORMAT_VERSION", "LoadedModel", "load_model", "model_id", "save_model"]

FORMAT_VERSION = 1
FILES = ("weights.safetensors", "model.json", "scaler.json", "threshold.json", "metadata.json")


class LoadedModel:
    """A detector with the context it was trained in."""

    def __init__(self, detector: LSTMDetector, info: dict[str, Any], metadata: dict[str, Any], path: Path):
        self.detector = detector
        self.info = info
        self.metadata = metadata
        self.path = path

    @property
    def trained_at(self) -> float:
        return float(self.metadata.get("trained_at", 0.0))

    @property
    def model_id(self) -> str:
        return str(self.metadata.get("model_id", "unknown"))


def model_id(trained_at: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(trained_at)) + f"-{uuid.uuid4().hex[:8]}"


def _write_json(path: Path, data: Any) -> None:
    with path.open("w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(
    path: Path | str,
    detector: LSTMDetector,
    *,
    entity_label: str,
    interval: float,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``detector`` to the model directory ``path`` atomically; return the version dir."""
    if detector.model is None:
        raise ModelError("cannot save a detector that is not fitted")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = detector.metadata() | (extra_metadata or {})
    metadata["model_id"] = model_id(metadata["trained_at"])
    metadata["lstmad_version"] = __version__
    version = target.parent / f".{target.name}.{metadata['model_id']}"
    tmp = version.with_name(version.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.contiguous() for k, v in detector.model.state_dict().items()}
    save_file(state, str(tmp / "weights.safetensors"))
    with (tmp / "weights.safetensors").open("rb+") as fh:
        os.fsync(fh.fileno())
    _write_json(
        tmp / "model.json",
        {
            "format_version": FORMAT_VERSION,
            "features": detector.features,
            "entity_label": entity_label,
            "interval": interval,
            "model": asdict(detector.model_cfg) | {"path": None},
            "threshold_config": asdict(detector.threshold_cfg),
        },
    )
    _write_json(tmp / "scaler.json", detector.scaler.to_dict())
    _write_json(tmp / "threshold.json", detector.threshold.to_dict())
    _write_json(tmp / "metadata.json", metadata)
    _fsync_dir(tmp)
    os.rename(tmp, version)

    previous: Path | None = None
    if target.is_symlink():
        previous = target.parent / os.readlink(target)
    elif target.exists():
        # A plain directory from elsewhere: keep it as the previous version.
        previous = target.parent / f".{target.name}.previous-{int(time.time())}"
        os.rename(target, previous)
    link = target.parent / f".{target.name}.link-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(version.name, link)
    os.replace(link, target)
    _fsync_dir(target.parent)
    _prune_versions(target, keep={version.name, previous.name if previous else ""})
    return version


def _prune_versions(target: Path, keep: set[str]) -> None:
    """Remove versions other than the current and the previous one."""
    prefix = f".{target.name}."
    for entry in target.parent.iterdir():
        if entry.name.startswith(prefix) and entry.name not in keep and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"model file {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"model file {path} is not valid JSON: {err}") from err


def load_model(path: Path | str, expected_features: list[str] | None = None) -> LoadedModel:
    """Load a model directory; refuse one trained on other features than ``expected_features``."""
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"model directory {root} does not exist (train one with `lstmad train`)")
    info = _read_json(root / "model.json")
    if not isinstance(info, dict) or info.get("format_version") != FORMAT_VERSION:
        found = info.get("format_version") if isinstance(info, dict) else info
        raise ModelError(f"{root}/model.json: expected format_version {FORMAT_VERSION}, found {found!r}")
    features = info.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features) or not features:
        raise ModelError(f"{root}/model.json: expected a list of feature names, found {features!r}")
    if expected_features is not None and list(expected_features) != features:
        raise ModelError(
            f"model {root} was trained on features {features}, but the config has "
            f"{list(expected_features)}: retrain with `lstmad train` or use the matching config"
        )
    try:
        model_cfg = ModelConfig(**info["model"])
        threshold_cfg = ThresholdConfig(**info["threshold_config"])
    except (KeyError, TypeError) as err:
        raise ModelError(f"{root}/model.json: unexpected model settings: {err}") from err
    detector = LSTMDetector(features, model_cfg, threshold_cfg)
    try:
        detector.scaler = StandardScaler.from_dict(_read_json(root / "scaler.json"))
    except DataError as err:
        raise ModelError(f"{root}/scaler.json: {err}") from err
    if detector.scaler.mean is not None and detector.scaler.mean.size != len(features):
        raise ModelError(
            f"{root}/scaler.json: expected {len(features)} features, found {detector.scaler.mean.size}"
        )
    threshold_doc = _read_json(root / "threshold.json")
    if not isinstance(threshold_doc, dict):
        raise ModelError(f"{root}/threshold.json: expected an object, found {threshold_doc!r:.60}")
    detector.threshold = threshold_from_dict(threshold_doc)
    weights = root / "weights.safetensors"
    if not weights.is_file():
        raise ModelError(f"model file {weights} is missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelError(f"{weights} is not a valid safetensors file: {err}") from err
    model = detector.build_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelError(f"{weights} does not match the network in model.json: {err}") from err
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise ModelError(f"{weights}: tensor {name} holds NaN or Inf")
    model.eval()
    detector.model = model
    metadata = _read_json(root / "metadata.json")
    if not isinstance(metadata, dict):
        raise ModelError(f"{root}/metadata.json: expected an object, found {metadata!r:.60}")
    return LoadedModel(detector, info, metadata, root.resolve())
