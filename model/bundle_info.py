"""What a model bundle is, read without torch: ``bundle.json`` validated, every weights file's
sha256 checked, and the digest that names the model in DICOM output.

Torch-free on purpose: the SCP's check, the prepare and deliver workers and the CLI's ``model
info`` need the description of a bundle, never its networks (model/bundle.py loads those).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from common.errors import BundleError
from common.uids import uid_from_hex_digest
from model.profiles import Profile
from model.tasks import TASK_NAMES, TASKS

FORMAT_VERSION = 1
# How an ensemble's members are combined: the mean of their softmax probabilities.
ENSEMBLE_COMBINE = "mean-probability"
BUNDLE_JSON = "bundle.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class WeightsFile:
    """One state_dict file of a bundle and the sha256 it must have."""

    file: str
    sha256: str


@dataclass(frozen=True)
class BundleInfo:
    """What ``bundle.json`` says, after validation and digest checks."""

    name: str
    version: str
    profile: Profile
    input_size: int
    bound_size: int
    untrained: bool
    tasks: dict[str, tuple[str, ...]]
    weights_sha256: dict[str, str]
    provenance: dict[str, Any]
    # Per task: one file, or several (an ensemble whose probabilities are averaged).
    members: dict[str, tuple[WeightsFile, ...]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> BundleInfo:
        """Rebuild from ``dataclasses.asdict`` after a JSON round trip (how workers ship it)."""
        values = dict(fields)
        values["tasks"] = {task: tuple(classes) for task, classes in values["tasks"].items()}
        values["profile"] = Profile(values["profile"])
        values["members"] = {
            task: tuple(WeightsFile(**m) for m in members)
            for task, members in values.get("members", {}).items()
        }
        return cls(**values)

    def is_ensemble(self, task: str) -> bool:
        return len(self.members.get(task, ())) > 1

    @property
    def synthetic_training_data(self) -> bool:
        """Trained on SYNTHETIC data (``molsub synth``): outputs must say so."""
        return self.provenance.get("training_data_synthetic") is True

    @property
    def digest(self) -> str:
        """sha256 over the sorted ``task:sha256`` pairs: identifies exactly these weights."""
        text = "\n".join(f"{task}:{self.weights_sha256[task]}" for task in sorted(self.tasks))
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    @property
    def device_uid(self) -> str:
        """A "2.25" UID from the first 128 bits of ``digest``; changes with any weight change."""
        return uid_from_hex_digest(self.digest)

    @property
    def display_name(self) -> str:
        label = f"molsub DenseNet121-CBAM {self.name} {self.version}"
        if self.untrained:
            return f"{label} UNTRAINED"
        return f"{label} SYNTHETIC-TRAINED" if self.synthetic_training_data else label


def read_bundle_info(path: Path | str) -> BundleInfo:
    """Read and validate ``bundle.json`` and check every weights file's sha256."""
    bundle_dir = Path(path)
    info = parse_bundle_json(bundle_dir)
    for members in info.members.values():
        for member in members:
            weights = bundle_dir / member.file
            check_digest(weights, sha256_file(weights), member.sha256)
    return info


# --- bundle.json validation ----------------------------------------------------------------


def parse_bundle_json(bundle_dir: Path) -> BundleInfo:
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
    check_settings(json_path, name, model_version, profile, input_size, bound_size)

    tasks_doc = _field(doc, "tasks", dict, json_path)
    if not tasks_doc:
        raise BundleError(f"{json_path}: 'tasks' is empty")
    tasks: dict[str, tuple[str, ...]] = {}
    digests: dict[str, str] = {}
    members: dict[str, tuple[WeightsFile, ...]] = {}
    for task in ordered_tasks(tasks_doc):
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
        tasks[task] = classes
        members[task] = _task_members(entry, task, json_path)
        digests[task] = task_weights_digest(members[task])
    return BundleInfo(
        name=name,
        version=model_version,
        profile=Profile(profile),
        input_size=input_size,
        bound_size=bound_size,
        untrained=untrained,
        tasks=tasks,
        weights_sha256=digests,
        provenance=provenance,
        members=members,
    )


def _task_members(entry: dict[str, Any], task: str, where: Path) -> tuple[WeightsFile, ...]:
    """``weights`` + ``sha256`` (one network), or ``ensemble``: a list of such pairs."""
    prefix = f"tasks.{task}."
    if "ensemble" not in entry:
        if _field(entry, "weights", str, where, prefix) != f"{task}.pt":
            raise BundleError(f"{where}: {prefix}weights must be '{task}.pt'")
        return (WeightsFile(f"{task}.pt", _sha(entry, where, prefix)),)
    if entry.get("combine") != ENSEMBLE_COMBINE:
        raise BundleError(f"{where}: {prefix}combine must be {ENSEMBLE_COMBINE!r}")
    items = _field(entry, "ensemble", list, where, prefix)
    if len(items) < 2:
        raise BundleError(f"{where}: {prefix}ensemble needs at least two members")
    out = []
    for i, item in enumerate(items):
        at = f"{prefix}ensemble[{i}]."
        if not isinstance(item, dict):
            raise BundleError(f"{where}: {at[:-1]} must be an object")
        file = _field(item, "weights", str, where, at)
        if not re.fullmatch(rf"{re.escape(task)}\.[A-Za-z0-9_-]+\.pt", file):
            raise BundleError(f"{where}: {at}weights must be named '{task}.<member>.pt'")
        out.append(WeightsFile(file, _sha(item, where, at)))
    if len({m.file for m in out}) != len(out):
        raise BundleError(f"{where}: {prefix}ensemble names a weights file twice")
    return tuple(out)


def _sha(entry: dict[str, Any], where: Path, prefix: str) -> str:
    sha = _field(entry, "sha256", str, where, prefix)
    if not _SHA256_RE.match(sha):
        raise BundleError(f"{where}: {prefix}sha256 is not 64 lowercase hex digits")
    return sha


def task_weights_digest(members: tuple[WeightsFile, ...]) -> str:
    """A task's weights identity: the file's sha256, or for an ensemble the sha256 over its
    members' (in order), so the bundle digest and device UID change with any member."""
    if len(members) == 1:
        return members[0].sha256
    text = "\n".join(m.sha256 for m in members)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _field(doc: dict[str, Any], key: str, kind: type[T], where: Path, prefix: str = "") -> T:
    if key not in doc:
        raise BundleError(f"{where}: missing field '{prefix}{key}'")
    value = doc[key]
    # bool is an int subclass in Python; do not let true pass as a size or a version.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BundleError(
            f"{where}: field '{prefix}{key}' must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def check_settings(
    where: Path, name: str, version: str, profile: str, input_size: int, bound_size: int
) -> None:
    if not name or not version:
        raise BundleError(f"{where}: name and version must not be empty")
    if profile not in set(Profile):
        known = ", ".join(Profile)
        raise BundleError(f"{where}: unknown preprocessing profile {profile!r} (known: {known})")
    if input_size < 32:
        raise BundleError(f"{where}: input_size {input_size} is below 32 px")
    if bound_size < 0:
        raise BundleError(f"{where}: bound_size {bound_size} is negative")


def ordered_tasks(tasks: Mapping[str, Any]) -> list[str]:
    """Known tasks in TASK_NAMES order, unknown ones after (so they get validated too)."""
    return [t for t in TASK_NAMES if t in tasks] + [t for t in tasks if t not in TASKS]


# --- files ---------------------------------------------------------------------------------


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


def check_digest(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise BundleError(
            f"{path}: sha256 mismatch, expected {expected}, actual {actual} "
            "(file changed or corrupted since the bundle was written)"
        )


def format_test_metrics(m: dict[str, Any]) -> str:
    """One task's provenance ``test_metrics`` in a line (`molsub model info`, the status page):
    test-set AUC with its CI, accuracy, lesion-level AUC and CV mean +- SD, as recorded."""

    def num(x: object) -> str:
        return f"{x:.3f}" if isinstance(x, int | float) else "n/a"

    ci = m.get("auc_ci95") or [None, None]
    cv = m.get("cv_auc") or {}
    return (
        f"test AUC {num(m.get('auc'))} (95% CI {num(ci[0])}-{num(ci[1])}, n={m.get('n')}), "
        f"ACC {num(m.get('accuracy'))}, lesion-level AUC {num(m.get('lesion_auc'))}, "
        f"CV AUC {num(cv.get('mean'))} +- {num(cv.get('sd'))}"
    )
