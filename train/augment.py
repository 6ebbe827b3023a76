"""The paper's four augmentations, acting on the image plane of normalised crops.

Horizontal flip (p 0.5), vertical flip (p 0.5), rotation uniform in +-20 degrees, horizontal
(x-axis) shear uniform in +-10 degrees. The authors' code ran its albumentations pipeline on
channel-first arrays, so its flips and affine acted on the wrong axes, and its "shear" was
``A.Affine(shear=(-0.1, 0.1))``: 0.1 degrees on both axes. It also applied the rotation and
the shear each with p 0.5; ``rotation_p`` and ``shear_p`` reproduce that. The paper gives no
probability for them, and the defaults here apply them to every sample.

Geometry is torchvision.transforms.v2.functional.affine, the kernel of ``RandomAffine``: about
the image centre (pixel index ((W - 1) / 2, (H - 1) / 2)), bilinear, shear first and then the
rotation in one resampling, after the flips. Conventions, with rows growing downwards as the
image is displayed: a positive angle turns the content clockwise; a positive x-shear of s
degrees moves the row dy pixels below the centre by -tan(s) * dy columns (rows below the centre
go left, rows above go right) and moves nothing vertically. Area brought in from outside the
crop is filled with ``BACKGROUND``, the normalised value of 0 (black, as the crops are padded),
not torchvision's default 0, which after normalisation is mid-grey.

Random draws: six uniforms per sample, whatever the settings, from ``generator`` when given,
otherwise from torch's global RNG. Training is to seed the global RNG once (``torch.manual_seed``)
and pass no generator: each DataLoader worker then gets its own seed (base seed + worker id),
whereas a generator would be copied into every worker and repeat the same draws there. A
generator is for reproducible single-process use (tests, previews).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from model.preprocess.intensity import NORM_MEAN, NORM_STD

# The normalised value of 0: what the crops are padded with, and the affine's fill.
BACKGROUND = -NORM_MEAN / NORM_STD
_DRAWS_PER_SAMPLE = 6


@dataclass(frozen=True)
class AugmentSettings:
    """Probabilities in [0, 1]; angles in degrees as (low, high), drawn uniformly."""

    hflip_p: float = 0.5
    vflip_p: float = 0.5
    rotation_deg: tuple[float, float] = (-20.0, 20.0)
    rotation_p: float = 1.0
    shear_x_deg: tuple[float, float] = (-10.0, 10.0)
    shear_p: float = 1.0
    fill: float = BACKGROUND
    interpolation: InterpolationMode = InterpolationMode.BILINEAR

    @classmethod
    def none(cls) -> AugmentSettings:
        """No augmentation: every image passes unchanged (validation, evaluation)."""
        return cls(hflip_p=0.0, vflip_p=0.0, rotation_deg=(0.0, 0.0), shear_x_deg=(0.0, 0.0))

    def __post_init__(self) -> None:
        for name in ("hflip_p", "vflip_p", "rotation_p", "shear_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {getattr(self, name)}")
        for name, limit in (("rotation_deg", 180.0), ("shear_x_deg", 89.0)):
            low, high = getattr(self, name)
            if not -limit <= low <= high <= limit:
                raise ValueError(f"{name} must be (low, high) within +-{limit}, not {low, high}")
        if self.interpolation not in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR):
            raise ValueError(f"interpolation must be NEAREST or BILINEAR, not {self.interpolation}")


@dataclass(frozen=True)
class AugmentDraw:
    """What one sample gets."""

    hflip: bool
    vflip: bool
    angle_deg: float
    shear_x_deg: float

    @property
    def is_identity(self) -> bool:
        return not (self.hflip or self.vflip or self.angle_deg or self.shear_x_deg)


def draw_params(settings: AugmentSettings, generator: torch.Generator | None = None) -> AugmentDraw:
    """One sample's draw (six uniforms from ``generator`` or torch's global RNG)."""
    u = torch.rand(_DRAWS_PER_SAMPLE, generator=generator, dtype=torch.float64).tolist()
    rot_low, rot_high = settings.rotation_deg
    shear_low, shear_high = settings.shear_x_deg
    angle = rot_low + (rot_high - rot_low) * u[2] if u[3] < settings.rotation_p else 0.0
    shear = shear_low + (shear_high - shear_low) * u[4] if u[5] < settings.shear_p else 0.0
    return AugmentDraw(
        hflip=u[0] < settings.hflip_p,
        vflip=u[1] < settings.vflip_p,
        angle_deg=float(angle),
        shear_x_deg=float(shear),
    )


def apply_draw(image: Tensor, draw: AugmentDraw, settings: AugmentSettings) -> Tensor:
    """``draw`` applied to one (C, H, W) image: flips, then x-shear and rotation together."""
    if draw.hflip:
        image = F.horizontal_flip(image)
    if draw.vflip:
        image = F.vertical_flip(image)
    if draw.angle_deg or draw.shear_x_deg:
        # Resampled about the fill with zero padding rather than with ``fill=``: torchvision's
        # bilinear fill weights by its mask twice, a seam up to 0.53 brighter along the edges.
        shifted = F.affine(
            image - settings.fill,
            angle=draw.angle_deg,
            translate=[0.0, 0.0],
            scale=1.0,
            shear=[draw.shear_x_deg, 0.0],
            interpolation=settings.interpolation,
        )
        image = shifted + settings.fill
    return image


def build_augment(
    settings: AugmentSettings, generator: torch.Generator | None = None
) -> Callable[[Tensor], Tensor]:
    """A function augmenting a float (1, H, W) image or (N, 1, H, W) batch, each sample with
    its own draw (in batch order), returning a new tensor of the same shape and dtype."""

    def augment(images: Tensor) -> Tensor:
        if not torch.is_floating_point(images) or images.ndim not in (3, 4):
            raise ValueError(
                f"expected a float (C, H, W) image or (N, C, H, W) batch, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        batch = images if images.ndim == 4 else images[None]
        out = []
        for sample in batch:
            draw = draw_params(settings, generator)
            out.append(sample.clone() if draw.is_identity else apply_draw(sample, draw, settings))
        stacked = torch.stack(out)
        return stacked if images.ndim == 4 else stacked[0]

    return augment
