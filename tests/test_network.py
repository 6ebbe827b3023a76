"""DenseNet121-CBAM: shapes, CBAM placement, the authors' state-dict layout, ImageNet init."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import densenet121, resnet18

from model.network import (
    CBAM,
    DEFAULT_GRADCAM_LAYER,
    DenseNet121CBAM,
    build_densenet121_cbam,
)


@pytest.fixture(scope="module")
def net() -> DenseNet121CBAM:
    torch.manual_seed(0)
    return build_densenet121_cbam(5).eval()


def test_one_channel_224_input_gives_one_logit_per_class() -> None:
    for num_classes in (2, 5):
        model = build_densenet121_cbam(num_classes).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 1, 224, 224))
        assert out.shape == (2, num_classes)
        assert torch.isfinite(out).all()


def test_three_channel_input_is_rejected(net: DenseNet121CBAM) -> None:
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 3, 64, 64))


def test_cbam_only_after_blocks_1_to_3_on_256_512_1024_channels(net: DenseNet121CBAM) -> None:
    cbams = {name: m for name, m in net.named_modules() if isinstance(m, CBAM)}
    assert sorted(cbams) == [
        "features.denseblock1.1",
        "features.denseblock2.1",
        "features.denseblock3.1",
    ]
    for block, channels in (("denseblock1", 256), ("denseblock2", 512), ("denseblock3", 1024)):
        cbam = cbams[f"features.{block}.1"]
        assert cbam.channel_attention.fc1.in_channels == channels
        assert cbam.channel_attention.fc1.out_channels == channels // 16
        assert cbam.channel_attention.fc2.out_channels == channels
    names = [name for name, _ in net.features.named_children()]
    # CBAM sits inside the block's Sequential, i.e. before each transition.
    assert names.index("denseblock1") + 1 == names.index("transition1")
    assert not isinstance(net.features.denseblock4, nn.Sequential)


def test_block_outputs_have_the_documented_channel_counts(net: DenseNet121CBAM) -> None:
    seen: dict[str, int] = {}
    hooks = [
        getattr(net.features, name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out.shape[1])
        )
        for name in ("denseblock1", "denseblock2", "denseblock3", "denseblock4")
    ]
    with torch.no_grad():
        net(torch.randn(1, 1, 64, 64))
    for hook in hooks:
        hook.remove()
    assert seen == {
        "denseblock1": 256,
        "denseblock2": 512,
        "denseblock3": 1024,
        "denseblock4": 1024,
    }


def test_state_dict_layout_matches_the_authors_checkpoints(net: DenseNet121CBAM) -> None:
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = {
        "features.conv0.0.weight": (64, 1, 7, 7),
        "features.norm0.weight": (64,),
        "features.denseblock1.0.denselayer1.norm1.weight": (64,),
        "features.denseblock1.0.denselayer1.conv1.weight": (128, 64, 1, 1),
        "features.denseblock1.0.denselayer6.conv2.weight": (32, 128, 3, 3),
        "features.denseblock1.1.channel_attention.fc1.weight": (16, 256, 1, 1),
        "features.denseblock1.1.channel_attention.fc2.weight": (256, 16, 1, 1),
        "features.denseblock1.1.spatial_attention.conv1.weight": (1, 2, 7, 7),
        "features.denseblock2.1.channel_attention.fc1.weight": (32, 512, 1, 1),
        "features.denseblock3.1.channel_attention.fc2.weight": (1024, 64, 1, 1),
        "features.denseblock3.0.denselayer24.conv2.weight": (32, 128, 3, 3),
        "features.denseblock4.denselayer16.conv2.weight": (32, 128, 3, 3),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.transition3.norm.weight": (1024,),
        "features.norm5.weight": (1024,),
        "classifier.weight": (5, 1024),
        "classifier.bias": (5,),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    # denseblock4 is not wrapped and no other prefix exists.
    assert not any(k.startswith("features.denseblock4.0.") for k in shapes)
    assert not any(k.startswith("features.denseblock4.1.") for k in shapes)
    prefixes = {k.split(".")[1] for k in shapes if k.startswith("features.")}
    blocks = {f"denseblock{i}" for i in range(1, 5)} | {f"transition{i}" for i in range(1, 4)}
    assert prefixes == {"conv0", "norm0", "norm5"} | blocks  # relu0/pool0 hold no tensors
    assert sum(1 for k in shapes if ".channel_attention." in k) == 6
    assert sum(1 for k in shapes if ".spatial_attention." in k) == 3


def test_gradcam_layer_exists(net: DenseNet121CBAM) -> None:
    assert DEFAULT_GRADCAM_LAYER in dict(net.named_modules())


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    torch.manual_seed(1)
    theirs = densenet121(weights=None)
    for module in theirs.modules():  # non-default BatchNorm stats so copying is visible
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = theirs.state_dict()
    path = tmp_path_factory.mktemp("imagenet") / "densenet121.pth"
    torch.save(state, path)
    return path, state


def test_imagenet_init_averages_conv0_and_copies_dense_layers(
    imagenet_file: tuple[Path, dict],
) -> None:
    path, theirs = imagenet_file
    model = build_densenet121_cbam(2, imagenet_checkpoint=path)
    ours = model.state_dict()
    torch.testing.assert_close(
        ours["features.conv0.0.weight"], theirs["features.conv0.weight"].mean(dim=1, keepdim=True)
    )
    for their_key in (
        "features.denseblock2.denselayer5.conv2.weight",
        "features.denseblock4.denselayer16.conv1.weight",
        "features.denseblock3.denselayer1.norm1.running_mean",
        "features.transition2.conv.weight",
        "features.norm5.running_var",
    ):
        # Blocks 1-3 live at index 0 of their Sequential(block, CBAM) in our layout.
        our_key = re.sub(r"(denseblock[123])\.", r"\1.0.", their_key)
        torch.testing.assert_close(ours[our_key], theirs[their_key])
    assert ours["classifier.weight"].shape == (2, 1024)  # the 1000-class head is not used


def test_imagenet_init_accepts_torchvision_legacy_key_names(
    imagenet_file: tuple[Path, dict], tmp_path: Path
) -> None:
    _, theirs = imagenet_file
    legacy = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in theirs.items()
        if not k.endswith("num_batches_tracked")  # torchvision's own file predates them
    }
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    model = build_densenet121_cbam(2, imagenet_checkpoint=path)
    torch.testing.assert_close(
        model.state_dict()["features.denseblock1.0.denselayer3.conv2.weight"],
        theirs["features.denseblock1.denselayer3.conv2.weight"],
    )


def test_non_densenet_checkpoint_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet18\.pth: not a (complete )?DenseNet121"):
        build_densenet121_cbam(2, imagenet_checkpoint=path)


def test_partial_densenet_checkpoint_is_refused(
    imagenet_file: tuple[Path, dict], tmp_path: Path
) -> None:
    _, theirs = imagenet_file
    partial = {k: v for k, v in theirs.items() if "denseblock4" not in k}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(ValueError, match=r"partial\.pth: not a complete DenseNet121.*denseblock4"):
        build_densenet121_cbam(2, imagenet_checkpoint=path)


def test_non_state_dict_file_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match=r"tensor\.pth: not a DenseNet121"):
        build_densenet121_cbam(2, imagenet_checkpoint=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth: not a loadable"):
        build_densenet121_cbam(2, imagenet_checkpoint=garbage)
