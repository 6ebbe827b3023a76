"""Import the authors' published checkpoints (Luo et al. 2025) into a model bundle.

Their files are ``torch.save(model)`` pickles of whole modules (REFERENCE.md section 2), and
unpickling runs whatever the file names. So they are read with an unpickler that resolves only
an explicit allow-list of torch/torchvision classes, maps the authors' ``mob_cbam`` classes onto
ours, and refuses everything else. Only the state_dict is kept; the classifier rows are then put
into this product's class order (``model.tasks``), which differs from theirs for two tasks.
"""

from __future__ import annotations

import pickle
import types
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from common.errors import BundleError
from model import network
from model.bundle import write_bundle
from model.bundle_info import BundleInfo, sha256_file
from model.network import DenseNet121CBAM
from model.profiles import Profile
from model.tasks import TASKS

REFERENCE_VERSION = "1.1.0"  # __version__ of the authors' code that made the checkpoints
SOURCE_REPOSITORY = "https://github.com/LemonWei111/molsub"

# Our class index i is their output index THEIR_INDEX_FOR_OURS[task][i].
THEIR_INDEX_FOR_OURS: dict[str, tuple[int, ...]] = {
    "subtype5": (0, 1, 2, 3, 4),  # same order
    "luminal": (1, 0),  # theirs 0 = Luminal, 1 = non-Luminal
    "her2": (1, 0),  # theirs 0 = HER2+, 1 = HER2-
    "tn": (0, 1),  # theirs 0 = not TN, 1 = TN
}
THEIR_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "subtype5": ("Luminal A", "Luminal B", "HER2+/HR+", "HER2+/HR-", "Triple-negative"),
    "luminal": ("Luminal", "non-Luminal"),
    "her2": ("HER2-positive", "HER2-negative"),
    "tn": ("not triple-negative", "triple-negative"),
}

_NN = "torch.nn.modules."
# (module, name) pairs a DenseNet121-CBAM whole-module pickle legitimately needs.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "device"): torch.device,
    (_NN + "container", "Sequential"): nn.Sequential,
    (_NN + "container", "ModuleDict"): nn.ModuleDict,
    (_NN + "container", "ModuleList"): nn.ModuleList,
    (_NN + "conv", "Conv2d"): nn.Conv2d,
    (_NN + "batchnorm", "BatchNorm2d"): nn.BatchNorm2d,
    (_NN + "activation", "ReLU"): nn.ReLU,
    (_NN + "activation", "Sigmoid"): nn.Sigmoid,
    (_NN + "pooling", "MaxPool2d"): nn.MaxPool2d,
    (_NN + "pooling", "AvgPool2d"): nn.AvgPool2d,
    (_NN + "pooling", "AdaptiveAvgPool2d"): nn.AdaptiveAvgPool2d,
    (_NN + "pooling", "AdaptiveMaxPool2d"): nn.AdaptiveMaxPool2d,
    (_NN + "dropout", "Dropout"): nn.Dropout,
    (_NN + "dropout", "Dropout2d"): nn.Dropout2d,
    (_NN + "linear", "Linear"): nn.Linear,
    ("torch.nn.parallel.data_parallel", "DataParallel"): nn.DataParallel,
    # The authors' CBAM module, mapped onto ours (same attribute names, REFERENCE.md s.2).
    ("mob_cbam", "CBAM"): network.CBAM,
    ("mob_cbam", "ChannelAttention"): network.ChannelAttention,
    ("mob_cbam", "SpatialAttention"): network.SpatialAttention,
}
_TORCHVISION_DENSENET = ("DenseNet", "_DenseBlock", "_DenseLayer", "_Transition")


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``ALLOWED_GLOBALS`` and torchvision's DenseNet classes."""

    def find_class(self, module: str, name: str) -> object:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torchvision.models.densenet" and name in _TORCHVISION_DENSENET:
            from torchvision.models import densenet

            return getattr(densenet, name)
        raise BundleError(
            f"refusing to unpickle {module}.{name}: not on the allow-list for the authors' "
            "DenseNet121-CBAM checkpoints"
        )


def _restricted_load(file: IO[bytes], **kwargs: object) -> object:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load wants a module-like object offering Unpickler and load (it subclasses Unpickler
# and calls super().find_class, so our allow-list sees every global the pickle names).
restricted_pickle = types.ModuleType("molsub_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
restricted_pickle.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]


def load_reference_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Unpickle one authors' checkpoint safely and return its state_dict (CPU tensors)."""
    try:
        obj = torch.load(
            path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False
        )
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    except Exception as exc:
        raise BundleError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc
    if isinstance(obj, nn.DataParallel):
        obj = obj.module
    if isinstance(obj, nn.Module):
        state = _module_state(obj, path)
    elif isinstance(obj, Mapping):
        state = dict(obj.get("state_dict", obj))
    else:
        raise BundleError(f"{path}: holds a {type(obj).__name__}, not a module or state_dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise BundleError(f"{path}: state_dict holds something other than named tensors")
    return {_strip_data_parallel(k): v for k, v in state.items()}


def convert_reference(task: str, path: Path) -> DenseNet121CBAM:
    """Load one authors' checkpoint into our network, classifier rows in our class order."""
    if task not in TASKS:
        raise BundleError(f"{path}: unknown task {task!r} (known: {', '.join(TASKS)})")
    state = load_reference_state_dict(path)
    weight = state.get("classifier.weight")
    num_classes = TASKS[task].num_classes
    if weight is None or weight.ndim != 2 or weight.shape[0] != num_classes:
        shape = None if weight is None else list(weight.shape)
        raise BundleError(
            f"{path}: classifier.weight has shape {shape}, task {task!r} needs {num_classes} "
            "output rows (is this the right file for the task?)"
        )
    if "classifier.bias" not in state:
        raise BundleError(f"{path}: no classifier.bias (not a DenseNet121-CBAM checkpoint?)")
    order = torch.tensor(THEIR_INDEX_FOR_OURS[task])
    state["classifier.weight"] = state["classifier.weight"][order].clone()
    state["classifier.bias"] = state["classifier.bias"][order].clone()
    model = DenseNet121CBAM(num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path}: does not match the DenseNet121-CBAM layout: {exc}") from exc
    return model.eval()


def import_reference(
    files: Mapping[str, Path | None],
    out: Path,
    *,
    name: str = "reference",
    version: str = REFERENCE_VERSION,
    overwrite: bool = False,
    profile: Profile = Profile.REFERENCE,
) -> BundleInfo:
    """Convert the authors' checkpoints (task -> file; None entries skipped) into a bundle.

    The bundle uses their intensity pipeline: ``reference`` (our correct crop geometry) by
    default, or ``reference-exact`` (their crop and resize, defects included) to re-evaluate
    their weights on inputs exactly like the ones they were trained on. It records each source
    file's sha256 and the class mapping applied.
    """
    if profile is Profile.DEFAULT:
        raise BundleError(f"{out}: the authors' weights need a reference profile, not 'default'")
    chosen = {task: Path(p) for task, p in files.items() if p is not None}
    if not chosen:
        raise BundleError(f"{out}: no checkpoint files given (tasks: {', '.join(TASKS)})")
    networks: dict[str, nn.Module] = {}
    sources: dict[str, dict[str, Any]] = {}
    for task, path in chosen.items():
        networks[task] = convert_reference(task, path)
        sources[task] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "their_classes": list(THEIR_CLASS_NAMES[task]),
            "our_index_from_their_index": list(THEIR_INDEX_FOR_OURS[task]),
        }
    provenance = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "created_by": "molsub model.reference_import.import_reference",
        "source": f"authors' published checkpoints, {SOURCE_REPOSITORY} (MIT licence)",
        "paper": "Luo et al., Front. Oncol. 2025, doi 10.3389/fonc.2025.1638212",
        "source_files": sources,
        "mapping": "classifier rows reordered: ours[i] = theirs[our_index_from_their_index[i]]",
        "imagenet_init": "ImageNet DenseNet121 (by the authors, before their training)",
        "training_data": "authors' private data set: 390 patients, 762 images (paper)",
    }
    return write_bundle(
        out,
        networks,
        name=name,
        version=version,
        profile=profile,
        untrained=False,
        provenance=provenance,
        overwrite=overwrite,
    )


def _module_state(module: nn.Module, path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict() without running the module's hooks: the object came from an untrusted file,
    so only its parameter, buffer and child dictionaries are read."""
    state: dict[str, torch.Tensor] = {}
    parts = [getattr(module, attr, None) for attr in ("_parameters", "_buffers", "_modules")]
    if not all(isinstance(part, dict) for part in parts):
        raise BundleError(f"{path}: module {prefix or '<root>'} lacks its tensor dictionaries")
    parameters, buffers, children = parts
    skip = getattr(module, "_non_persistent_buffers_set", set())
    for name, value in [*parameters.items(), *buffers.items()]:
        if value is not None and name not in skip:
            state[prefix + name] = value.detach()
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(child, nn.Module):
            raise BundleError(f"{path}: {prefix}{name} is a {type(child).__name__}, not a module")
        state.update(_module_state(child, path, f"{prefix}{name}."))
    return state


def _strip_data_parallel(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


__all__ = [
    "ALLOWED_GLOBALS",
    "RestrictedUnpickler",
    "THEIR_INDEX_FOR_OURS",
    "convert_reference",
    "import_reference",
    "load_reference_state_dict",
    "restricted_pickle",
]
