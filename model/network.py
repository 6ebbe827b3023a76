"""DenseNet121-CBAM (Luo et al. 2025), built from torchvision's DenseNet121.

Layout follows the paper and REFERENCE.md section 1: one input channel, CBAM after dense
blocks 1-3 (before each transition), ReLU -> global average pool -> Linear head. The module
names match torchvision's so that an ImageNet DenseNet121 checkpoint loads by name, and match
the authors' checkpoints (``features.conv0.0``, ``features.denseblockK.0/.1``) so their weights
load without renaming.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import densenet121

CBAM_BLOCKS: tuple[tuple[str, int], ...] = (
    ("denseblock1", 256),
    ("denseblock2", 512),
    ("denseblock3", 1024),
)
DEFAULT_DROPOUT = 0.3
DEFAULT_GRADCAM_LAYER = "features.denseblock4"


class ChannelAttention(nn.Module):
    """Squeeze by average and max pooling through one shared two-layer 1x1-conv MLP."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        mx = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return self.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """A 7x7 convolution over the channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=1, keepdim=True)
        mx, _ = torch.max(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv1(torch.cat([avg, mx], dim=1)))


class CBAM(nn.Module):
    """Channel then spatial attention, both multiplicative."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)


class DenseNet121CBAM(nn.Module):
    """DenseNet121 with one input channel, CBAM after blocks 1-3 and an n-class linear head."""

    def __init__(self, num_classes: int, dropout: float = DEFAULT_DROPOUT) -> None:
        super().__init__()
        base = densenet121(weights=None)
        feats = base.features
        conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        layers: list[tuple[str, nn.Module]] = []
        for name, module in feats.named_children():
            if name == "conv0":
                # The authors put Dropout2d straight after conv0; kept for weight-compatibility.
                module = nn.Sequential(conv0, nn.Dropout2d(dropout))
            elif name in dict(CBAM_BLOCKS):
                module = nn.Sequential(module, CBAM(dict(CBAM_BLOCKS)[name]))
            layers.append((name, module))
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Linear(base.classifier.in_features, num_classes)
        nn.init.constant_(self.classifier.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def _imagenet_to_ours(key: str) -> str:
    """Map a torchvision DenseNet121 state-dict key onto this network's module names."""
    if key.startswith("features.conv0."):
        return key.replace("features.conv0.", "features.conv0.0.", 1)
    for block, _ in CBAM_BLOCKS:
        prefix = f"features.{block}."
        if key.startswith(prefix):
            return key.replace(prefix, f"features.{block}.0.", 1)
    return key


def load_imagenet_densenet121(model: DenseNet121CBAM, checkpoint: Path) -> list[str]:
    """Initialise from an ImageNet DenseNet121 state dict file (torchvision's layout).

    conv0's RGB kernels are averaged over the input-channel axis for one-channel input, as in
    the paper; the 1000-class classifier is dropped. Returns the keys left at their random
    initialisation (the CBAM modules and the head) so callers can log them.
    """
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights-only errors all mean "not usable"
        raise ValueError(f"{checkpoint}: not a loadable state_dict file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{checkpoint}: not a DenseNet121 checkpoint (no state_dict of tensors)")
    # torchvision's own published files use the legacy "denselayer1.norm.1" key names.
    state = {_legacy_key(k): v for k, v in state.items()}
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        if key == "features.conv0.weight" and value.ndim == 4 and value.shape[1] == 3:
            value = value.mean(dim=1, keepdim=True)
        mapped[_imagenet_to_ours(key)] = value
    try:
        result = model.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:  # size mismatches are raised even with strict=False
        raise ValueError(f"{checkpoint}: not a DenseNet121 checkpoint ({exc})") from exc
    if result.unexpected_keys:
        raise ValueError(
            f"{checkpoint}: not a DenseNet121 checkpoint, unexpected keys "
            f"{result.unexpected_keys[:5]}"
        )
    # Only the CBAM modules and the head may stay random; anything else means a partial file.
    backbone_missing = [k for k in result.missing_keys if not _random_init_key(k)]
    if backbone_missing:
        raise ValueError(
            f"{checkpoint}: not a complete DenseNet121 checkpoint, missing "
            f"{len(backbone_missing)} backbone tensors, e.g. {backbone_missing[:5]}"
        )
    return list(result.missing_keys)


def _random_init_key(key: str) -> bool:
    """Keys an ImageNet DenseNet121 file need not provide: CBAM modules, the head, and the
    BatchNorm step counters (torchvision's published file predates them)."""
    if key.startswith("classifier.") or key.endswith(".num_batches_tracked"):
        return True
    return any(key.startswith(f"features.{block}.1.") for block, _ in CBAM_BLOCKS)


def _legacy_key(key: str) -> str:
    import re

    return re.sub(
        r"\.(norm|relu|conv)\.((?:[12])\.(?:weight|bias|running_mean|running_var))", r".\1\2", key
    )


def build_densenet121_cbam(
    num_classes: int, imagenet_checkpoint: Path | None = None, dropout: float = DEFAULT_DROPOUT
) -> DenseNet121CBAM:
    """Build one task network, optionally initialised from an ImageNet DenseNet121 file."""
    model = DenseNet121CBAM(num_classes, dropout=dropout)
    if imagenet_checkpoint is not None:
        load_imagenet_densenet121(model, imagenet_checkpoint)
    return model
