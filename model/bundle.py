"""Model bundles: one state_dict per task plus ``bundle.json`` recording classes and digests.

A bundle is the unit a site installs. Every weights file is checked against the sha256 in
``bundle.json`` before it is used, and the digest over all weights names the model in DICOM
output (``device_uid``), so a retrained or tampered model can never pass as the one recorded.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.durable import atomic_write_bytes
from common.errors import BundleError
from model.bundle_info import (
    BUNDLE_JSON,
    ENSEMBLE_COMBINE,
    FORMAT_VERSION,
    BundleInfo,
    check_digest,
    check_settings,
    ordered_tasks,
    parse_bundle_json,
    read_bundle_info,
    sha256_file,
)
from model.ensemble import ProbabilityEnsemble
from model.network import build_densenet121_cbam
from model.profiles import Profile
from model.tasks import TASK_NAMES, TASKS


@dataclass
class LoadedBundle:
    """A verified bundle with one eval-mode network per task on the requested device."""

    path: Path
    info: BundleInfo
    networks: dict[str, nn.Module]


def load_bundle(path: Path | str, device: str | torch.device = "cpu") -> LoadedBundle:
    """Verify the bundle and build one network per task, loading its weights strictly.

    Each weights file is read once; the bytes that are hashed are the bytes that are loaded.
    """
    bundle_dir = Path(path)
    info = parse_bundle_json(bundle_dir)
    networks: dict[str, nn.Module] = {}
    for task, classes in info.tasks.items():
        loaded = [
            _load_member(bundle_dir / m.file, m.sha256, task, len(classes))
            for m in info.members[task]
        ]
        network = loaded[0] if len(loaded) == 1 else ProbabilityEnsemble(loaded)
        networks[task] = network.to(device).eval()
    return LoadedBundle(path=bundle_dir, info=info, networks=networks)


def _load_member(weights: Path, sha256: str, task: str, num_classes: int) -> nn.Module:
    data = _read_bytes(weights)
    check_digest(weights, hashlib.sha256(data).hexdigest(), sha256)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BundleError(f"{weights}: not a loadable state_dict ({exc})") from exc
    network = build_densenet121_cbam(num_classes)
    try:
        network.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise BundleError(
            f"{weights}: weights do not fit DenseNet121-CBAM with {num_classes} classes "
            f"for task {task!r}: {exc}"
        ) from exc
    return network


def write_bundle(
    out: Path | str,
    networks: Mapping[str, nn.Module | Sequence[nn.Module]],
    *,
    name: str,
    version: str,
    profile: Profile = Profile.DEFAULT,
    input_size: int = 224,
    bound_size: int = 100,
    untrained: bool,
    provenance: Mapping[str, Any],
    overwrite: bool = False,
) -> BundleInfo:
    """Write each task's state_dict atomically, then ``bundle.json`` (last, so it marks a
    complete bundle). Class lists come from ``model.tasks.TASKS``.

    A task given a sequence of networks becomes an ensemble (``<task>.member<i>.pt``) whose
    probabilities are averaged when it is loaded.
    """
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise BundleError(f"{out_dir}: directory is not empty (pass overwrite=True to replace)")
    if not networks:
        raise BundleError(f"{out_dir}: no task networks to write")
    check_settings(out_dir, name, version, profile, input_size, bound_size)
    members = {task: _as_members(task, value) for task, value in networks.items()}
    for task, nets in members.items():
        if not nets:
            raise BundleError(f"{out_dir}: task {task!r} has no network")
        for network in nets:
            _check_network_fits_task(out_dir, task, network)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BUNDLE_JSON).unlink(missing_ok=True)

    tasks_json: dict[str, dict[str, Any]] = {}
    for task in ordered_tasks(members):
        nets = members[task]
        entry: dict[str, Any] = {"classes": list(TASKS[task].class_names)}
        if len(nets) == 1:
            entry.update(_write_state(out_dir, f"{task}.pt", nets[0]))
        else:
            entry["ensemble"] = [
                _write_state(out_dir, f"{task}.member{i}.pt", net)
                for i, net in enumerate(nets, start=1)
            ]
            entry["combine"] = ENSEMBLE_COMBINE
        tasks_json[task] = entry
    document = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "tasks": tasks_json,
        "preprocessing": {
            "profile": str(profile),
            "input_size": input_size,
            "bound_size": bound_size,
        },
        "provenance": dict(provenance),
        "untrained": bool(untrained),
    }
    text = json.dumps(document, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write_bytes(out_dir / BUNDLE_JSON, text.encode("utf-8"))
    return read_bundle_info(out_dir)


def init_untrained(
    out: Path | str,
    *,
    name: str = "untrained",
    version: str = "0.0.0",
    seed: int = 0,
    imagenet_checkpoint: Path | None = None,
    overwrite: bool = False,
) -> BundleInfo:
    """Randomly initialised networks for all tasks (reproducible for a seed), marked UNTRAINED.

    For demos and plumbing tests only: the outputs carry no information about the patient.
    """
    networks: dict[str, nn.Module] = {}
    with torch.random.fork_rng(devices=[]):
        for index, task in enumerate(TASK_NAMES):
            torch.manual_seed(seed + index)
            networks[task] = build_densenet121_cbam(
                TASKS[task].num_classes, imagenet_checkpoint=imagenet_checkpoint
            )
    imagenet = None
    if imagenet_checkpoint is not None:
        imagenet = {
            "file": Path(imagenet_checkpoint).name,
            "sha256": sha256_file(Path(imagenet_checkpoint)),
        }
    provenance = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": "molsub model.bundle.init_untrained",
        "source": f"random initialisation, seed {seed}",
        "seed": seed,
        "imagenet_init": imagenet,
        "training_data": "none: UNTRAINED, predictions are meaningless",
    }
    return write_bundle(
        out,
        networks,
        name=name,
        version=version,
        untrained=True,
        provenance=provenance,
        overwrite=overwrite,
    )


def _as_members(task: str, value: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    return [value] if isinstance(value, nn.Module) else list(value)


def _write_state(out_dir: Path, name: str, network: nn.Module) -> dict[str, str]:
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    atomic_write_bytes(out_dir / name, data)
    return {"weights": name, "sha256": hashlib.sha256(data).hexdigest()}


def _check_network_fits_task(where: Path, task: str, network: nn.Module) -> None:
    if task not in TASKS:
        raise BundleError(f"{where}: unknown task {task!r} (known: {', '.join(TASKS)})")
    classifier = getattr(network, "classifier", None)
    expected = TASKS[task].num_classes
    if not isinstance(classifier, nn.Linear) or classifier.out_features != expected:
        raise BundleError(f"{where}: network for task {task!r} must end in Linear(..., {expected})")


# --- files ---------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: weights file missing or unreadable ({exc.strerror})") from exc
