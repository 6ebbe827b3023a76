"""Import of the authors' whole-module checkpoints, without their code, into our bundle.

The fixture rebuilds their model the way their ``mob_cbam.add_cbam_for_densenet`` does (class
names and module name as theirs), pickles it with ``torch.save(model)`` as they did, and then
removes ``mob_cbam`` from ``sys.modules`` so the import must work without their code.
"""

from __future__ import annotations

import builtins
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import densenet121

from common.errors import BundleError
from model.bundle import load_bundle
from model.bundle_info import read_bundle_info
from model.reference_import import THEIR_INDEX_FOR_OURS, import_reference
from model.tasks import TASK_NAMES, TASKS

INPUT = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(11))


# --- the authors' classes, as in their mob_cbam.py (registered as module "mob_cbam") -------


class ChannelAttention(nn.Module):
    def __init__(self, in_planes: int, ratio: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(in_planes, in_planes // ratio, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(in_planes // ratio, in_planes, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        max_out = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return self.sigmoid(avg_out + max_out)


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        padding = 3 if kernel_size == 7 else 1
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=padding, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv1(torch.cat([avg_out, max_out], dim=1)))


class CBAM(nn.Module):
    def __init__(self, in_planes: int, ratio: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(in_planes, ratio)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)


def _their_model(num_classes: int) -> nn.Module:
    """torchvision DenseNet121, conv0 -> Sequential(Conv2d(1,..), Dropout2d), CBAM after 1-3."""
    model = densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.Dropout2d(0.3))
    for block, transition in (
        ("denseblock1", "transition1"),
        ("denseblock2", "transition2"),
        ("denseblock3", "transition3"),
    ):
        channels = getattr(model.features, transition).conv.in_channels
        setattr(
            model.features, block, nn.Sequential(getattr(model.features, block), CBAM(channels))
        )
    # Non-default statistics and a non-zero head bias so that every copied tensor matters.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        model.classifier.bias.uniform_(-1, 1)
        model.classifier.weight.mul_(50)  # spread the logits so a wrong row order shows
    return model.eval()


@contextmanager
def _fake_mob_cbam() -> Iterator[None]:
    """Make our copies of their classes importable as ``mob_cbam.*`` (for pickling only)."""
    module = types.ModuleType("mob_cbam")
    for cls in (ChannelAttention, SpatialAttention, CBAM):
        cls.__module__ = "mob_cbam"
        setattr(module, cls.__name__, cls)
    sys.modules["mob_cbam"] = module
    try:
        yield
    finally:
        del sys.modules["mob_cbam"]
        for cls in (ChannelAttention, SpatialAttention, CBAM):
            cls.__module__ = __name__


@dataclass
class Reference:
    files: dict[str, Path]
    logits: dict[str, torch.Tensor]  # their outputs on INPUT, their class order


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    folder = tmp_path_factory.mktemp("authors")
    files: dict[str, Path] = {}
    logits: dict[str, torch.Tensor] = {}
    with _fake_mob_cbam():
        for index, task in enumerate(TASK_NAMES):
            torch.manual_seed(100 + index)
            model = _their_model(TASKS[task].num_classes)
            with torch.no_grad():
                logits[task] = model(INPUT)
            files[task] = folder / f"prefered_model_for_{task}.pth"
            torch.save(model, files[task])  # the whole module, as the authors did
    assert "mob_cbam" not in sys.modules
    return Reference(files, logits)


def test_their_file_needs_their_code(reference: Reference) -> None:
    """Precondition: plain unpickling fails without mob_cbam, so the import cannot cheat."""
    with pytest.raises(ModuleNotFoundError, match="mob_cbam"):
        torch.load(reference.files["tn"], weights_only=False)


def test_imported_bundle_reproduces_their_logits_in_our_class_order(
    reference: Reference, tmp_path: Path
) -> None:
    info = import_reference(reference.files, tmp_path / "bundle", name="luo2025", version="1.1.0")
    assert info.profile == "reference" and info.untrained is False
    assert read_bundle_info(tmp_path / "bundle") == info
    bundle = load_bundle(tmp_path / "bundle")
    assert set(bundle.networks) == set(TASK_NAMES)
    for task, network in bundle.networks.items():
        with torch.no_grad():
            ours = network(INPUT)
        theirs = reference.logits[task]
        order = list(THEIR_INDEX_FOR_OURS[task])
        torch.testing.assert_close(ours, theirs[:, order])
        if order != sorted(order):  # the reordering is real: unreordered logits differ
            assert not torch.allclose(ours, theirs, atol=1e-3)


def test_binary_positive_class_is_at_index_one_after_import(
    reference: Reference, tmp_path: Path
) -> None:
    """Their Luminal and HER2 files put the named condition at index 0; ours at 1."""
    files = {"luminal": reference.files["luminal"], "her2": reference.files["her2"]}
    import_reference(files, tmp_path / "b")
    bundle = load_bundle(tmp_path / "b")
    for task in files:
        with torch.no_grad():
            p_ours = torch.softmax(bundle.networks[task](INPUT), dim=1)[:, 1]
        p_theirs = torch.softmax(reference.logits[task], dim=1)[:, 0]
        torch.testing.assert_close(p_ours, p_theirs)


def test_provenance_names_sources_digests_and_mapping(reference: Reference, tmp_path: Path) -> None:
    info = import_reference({"tn": reference.files["tn"], "her2": None}, tmp_path / "b")
    assert list(info.tasks) == ["tn"]
    source = info.provenance["source_files"]["tn"]
    assert source["file"] == "prefered_model_for_tn.pth"
    assert len(source["sha256"]) == 64
    assert source["our_index_from_their_index"] == [0, 1]
    assert "reordered" in info.provenance["mapping"]


def test_their_weights_can_be_served_with_their_exact_crops(
    reference: Reference, tmp_path: Path
) -> None:
    from model.profiles import Profile

    files = {"tn": reference.files["tn"]}
    info = import_reference(files, tmp_path / "exact", profile=Profile.REFERENCE_EXACT)
    assert info.profile == "reference-exact"
    assert read_bundle_info(tmp_path / "exact").profile == "reference-exact"
    with pytest.raises(BundleError, match="need a reference profile"):
        import_reference(files, tmp_path / "default", profile=Profile.DEFAULT)


def test_wrong_file_for_a_task_is_refused(reference: Reference, tmp_path: Path) -> None:
    with pytest.raises(
        BundleError, match=r"subtype5\.pth: classifier\.weight has shape \[5, 1024\]"
    ):
        import_reference({"luminal": reference.files["subtype5"]}, tmp_path / "b")
    assert not (tmp_path / "b" / "bundle.json").exists()


class _Evil:
    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return (self.func, (self.arg,))


@pytest.mark.parametrize(("func", "shown"), [(os.system, "system"), (builtins.eval, "eval")])
def test_pickle_calling_arbitrary_code_is_refused(func: object, shown: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"open({str(marker)!r}, 'w')" if func is builtins.eval else f"touch {marker}"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _Evil(func, payload)}, path)
    with pytest.raises(BundleError, match=rf"evil\.pth: refusing to unpickle .*{shown}"):
        import_reference({"tn": path}, tmp_path / "b")
    assert not marker.exists()
    assert not (tmp_path / "b").exists()


def test_unknown_class_in_mob_cbam_is_refused(tmp_path: Path) -> None:
    class Sneaky(nn.Module):
        pass

    module = types.ModuleType("mob_cbam")
    Sneaky.__module__, Sneaky.__qualname__ = "mob_cbam", "Sneaky"
    module.Sneaky = Sneaky
    sys.modules["mob_cbam"] = module
    try:
        torch.save(Sneaky(), tmp_path / "sneaky.pth")
    finally:
        del sys.modules["mob_cbam"]
    with pytest.raises(BundleError, match=r"refusing to unpickle mob_cbam\.Sneaky"):
        import_reference({"tn": tmp_path / "sneaky.pth"}, tmp_path / "b")


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(BundleError, match=r"garbage\.pth: not a readable PyTorch checkpoint"):
        import_reference({"tn": path}, tmp_path / "b")
