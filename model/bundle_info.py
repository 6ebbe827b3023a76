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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from common.errors import BundleError
from common.uids import uid_from_hex_digest
from model.profiles import Profile
from model.tasks import TASK_NAMES, TASKS

FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
T = TypeVar("T")


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
        return f"{label} UNTRAINED" if self.untrained else label


def read_bundle_info(path: Path | str) -> BundleInfo:
    """Read and validate ``bundle.json`` and check every weights file's sha256."""
    bundle_dir = Path(path)
    info = parse_bundle_json(bundle_dir)
    for task in info.tasks:
        weights = weights_path(bundle_dir, task)
        check_digest(weights, sha256_file(weights), info.weights_sha256[task])
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
        profile=Profile(profile),
        input_size=input_size,
        bound_size=bound_size,
        untrained=untrained,
        tasks=tasks,
        weights_sha256=digests,
        provenance=provenance,
    )


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


def weights_path(bundle_dir: Path, task: str) -> Path:
    return bundle_dir / f"{task}.pt"


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
