"""Model bundles: one state_dict per task plus ``bundle.json`` recording classes and digests.

A bundle is the unit a site installs. Every weights file is checked against the sha256 in
``bundle.json`` before it is used, and the digest over all weights names the model in DICOM
output (``device_uid``), so a retrained or tampered model can never pass as the one recorded.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.durable import atomic_write_bytes
from model.errors import BundleError
from model.network import build_densenet121_cbam
from model.tasks import TASK_NAMES, TASKS

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
PROFILES: tuple[str, ...] = ("default", "reference")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BundleInfo:
    """What ``bundle.json`` says, after validation and digest checks."""

    name: str
    version: str
    profile: str
    input_size: int
    bound_size: int
    untrained: bool
    tasks: dict[str, tuple[str, ...]]
    weights_sha256: dict[str, str]
    provenance: dict

    @property
    def digest(self) -> str:
        """sha256 over the sorted ``task:sha256`` pairs: identifies exactly these weights."""
        text = "\n".join(f"{task}:{self.weights_sha256[task]}" for task in sorted(self.tasks))
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    @property
    def device_uid(self) -> str:
        """A "2.25" UID from the first 128 bits of ``digest``; changes with any weight change."""
        return f"2.25.{int(self.digest[:32], 16)}"

    @property
    def display_name(self) -> str:
        label = f"molsub DenseNet121-CBAM {self.name} {self.version}"
        return f"{label} UNTRAINED" if self.untrained else label


@dataclass
class LoadedBundle:
    """A verified bundle with one eval-mode network per task on the requested device."""

    path: Path
    info: BundleInfo
    networks: dict[str, nn.Module]


def read_bundle_info(path: Path | str) -> BundleInfo:
    """Read and validate ``bundle.json`` and check every weights file's sha256."""
    bundle_dir = Path(path)
    info = _parse_bundle_json(bundle_dir)
    for task in info.tasks:
        weights = _weights_path(bundle_dir, task)
        _check_digest(weights, sha256_file(weights), info.weights_sha256[task])
    return info


def load_bundle(path: Path | str, device: str | torch.device = "cpu") -> LoadedBundle:
    """Verify the bundle and build one network per task, loading its weights strictly.

    Each weights file is read once; the bytes that are hashed are the bytes that are loaded.
    """
    bundle_dir = Path(path)
    info = _parse_bundle_json(bundle_dir)
    networks: dict[str, nn.Module] = {}
    for task, classes in info.tasks.items():
        weights = _weights_path(bundle_dir, task)
        data = _read_bytes(weights)
        _check_digest(weights, hashlib.sha256(data).hexdigest(), info.weights_sha256[task])
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BundleError(f"{weights}: not a loadable state_dict ({exc})") from exc
        network = build_densenet121_cbam(len(classes))
        try:
            network.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise BundleError(
                f"{weights}: weights do not fit DenseNet121-CBAM with {len(classes)} classes "
                f"for task {task!r}: {exc}"
            ) from exc
        networks[task] = network.to(device).eval()
    return LoadedBundle(path=bundle_dir, info=info, networks=networks)


def write_bundle(
    out: Path | str,
    networks: Mapping[str, nn.Module],
    *,
    name: str,
    version: str,
    profile: str = "default",
    input_size: int = 224,
    bound_size: int = 100,
    untrained: bool,
    provenance: Mapping[str, Any],
    overwrite: bool = False,
) -> BundleInfo:
    """Write each task's state_dict atomically, then ``bundle.json`` (last, so it marks a
    complete bundle). Class lists come from ``model.tasks.TASKS``."""
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise BundleError(f"{out_dir}: directory is not empty (pass overwrite=True to replace)")
    if not networks:
        raise BundleError(f"{out_dir}: no task networks to write")
    _check_settings(out_dir, name, version, profile, input_size, bound_size)
    for task, network in networks.items():
        _check_network_fits_task(out_dir, task, network)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / BUNDLE_JSON).unlink(missing_ok=True)

    tasks_json: dict[str, dict[str, Any]] = {}
    for task in _ordered(networks):
        state = {k: v.detach().cpu().clone() for k, v in networks[task].state_dict().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        atomic_write_bytes(out_dir / f"{task}.pt", data)
        tasks_json[task] = {
            "classes": list(TASKS[task].class_names),
            "weights": f"{task}.pt",
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    document = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "tasks": tasks_json,
        "preprocessing": {"profile": profile, "input_size": input_size, "bound_size": bound_size},
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


# --- bundle.json validation ----------------------------------------------------------------


def _parse_bundle_json(bundle_dir: Path) -> BundleInfo:
    json_path = bundle_dir / BUNDLE_JSON
    if not json_path.is_file():
        raise BundleError(f"{bundle_dir}: not a model bundle (no {BUNDLE_JSON})")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{json_path}: unreadable JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise BundleError(f"{json_path}: top level must be an object")
    version = _field(doc, "format_version", int, json_path)
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{json_path}: unknown format_version {version!r} (want {FORMAT_VERSION})"
        )
    name = _field(doc, "name", str, json_path)
    model_version = _field(doc, "version", str, json_path)
    untrained = _field(doc, "untrained", bool, json_path)
    provenance = _field(doc, "provenance", dict, json_path)
    prep = _field(doc, "preprocessing", dict, json_path)
    profile = _field(prep, "profile", str, json_path, "preprocessing.")
    input_size = _field(prep, "input_size", int, json_path, "preprocessing.")
    bound_size = _field(prep, "bound_size", int, json_path, "preprocessing.")
    _check_settings(json_path, name, model_version, profile, input_size, bound_size)

    tasks_doc = _field(doc, "tasks", dict, json_path)
    if not tasks_doc:
        raise BundleError(f"{json_path}: 'tasks' is empty")
    tasks: dict[str, tuple[str, ...]] = {}
    digests: dict[str, str] = {}
    for task in _ordered(tasks_doc):
        entry = tasks_doc[task]
        if task not in TASKS:
            raise BundleError(f"{json_path}: unknown task {task!r} (known: {', '.join(TASKS)})")
        if not isinstance(entry, dict):
            raise BundleError(f"{json_path}: tasks.{task} must be an object")
        where = f"tasks.{task}."
        classes = tuple(_field(entry, "classes", list, json_path, where))
        if classes != TASKS[task].class_names:
            raise BundleError(
                f"{json_path}: tasks.{task}.classes {list(classes)} do not match the known "
                f"classes {list(TASKS[task].class_names)}"
            )
        if _field(entry, "weights", str, json_path, where) != f"{task}.pt":
            raise BundleError(f"{json_path}: tasks.{task}.weights must be '{task}.pt'")
        sha = _field(entry, "sha256", str, json_path, where)
        if not _SHA256_RE.match(sha):
            raise BundleError(f"{json_path}: tasks.{task}.sha256 is not 64 lowercase hex digits")
        tasks[task] = classes
        digests[task] = sha
    return BundleInfo(
        name=name,
        version=model_version,
        profile=profile,
        input_size=input_size,
        bound_size=bound_size,
        untrained=untrained,
        tasks=tasks,
        weights_sha256=digests,
        provenance=provenance,
    )


def _field(doc: dict, key: str, kind: type, where: Path, prefix: str = "") -> Any:
    if key not in doc:
        raise BundleError(f"{where}: missing field '{prefix}{key}'")
    value = doc[key]
    # bool is an int subclass in Python; do not let true pass as a size or a version.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BundleError(
            f"{where}: field '{prefix}{key}' must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _check_settings(
    where: Path, name: str, version: str, profile: str, input_size: int, bound_size: int
) -> None:
    if not name or not version:
        raise BundleError(f"{where}: name and version must not be empty")
    if profile not in PROFILES:
        raise BundleError(f"{where}: unknown preprocessing profile {profile!r} (known: {PROFILES})")
    if input_size < 32:
        raise BundleError(f"{where}: input_size {input_size} is below 32 px")
    if bound_size < 0:
        raise BundleError(f"{where}: bound_size {bound_size} is negative")


def _check_network_fits_task(where: Path, task: str, network: nn.Module) -> None:
    if task not in TASKS:
        raise BundleError(f"{where}: unknown task {task!r} (known: {', '.join(TASKS)})")
    classifier = getattr(network, "classifier", None)
    expected = TASKS[task].num_classes
    if not isinstance(classifier, nn.Linear) or classifier.out_features != expected:
        raise BundleError(f"{where}: network for task {task!r} must end in Linear(..., {expected})")


def _ordered(tasks: Mapping[str, Any]) -> list[str]:
    """Known tasks in TASK_NAMES order, unknown ones after (so they get validated too)."""
    return [t for t in TASK_NAMES if t in tasks] + [t for t in tasks if t not in TASKS]


# --- files ---------------------------------------------------------------------------------


def _weights_path(bundle_dir: Path, task: str) -> Path:
    return bundle_dir / f"{task}.pt"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: weights file missing or unreadable ({exc.strerror})") from exc


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file read in 1 MiB chunks; BundleError if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise BundleError(f"{path}: weights file missing or unreadable ({exc.strerror})") from exc
    return digest.hexdigest()


def _check_digest(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise BundleError(
            f"{path}: sha256 mismatch, expected {expected}, actual {actual} "
            "(file changed or corrupted since the bundle was written)"
        )
