"""The picture a radiologist sees in the Secondary Capture (and the CLI's PNG).

Layout: a black caption band on top, then two squares side by side::

    +----------------------------------------------+
    | R CC   Luminal A  p=0.43                     |  caption band (burned-in text)
    | RESEARCH USE ONLY - not for diagnosis        |
    | UNTRAINED MODEL - output meaningless         |
    +----------------------+-----------------------+
    |  windowed ROI crop   |  Grad-CAM overlay     |
    |  exactly as is       |  + lesion outline     |
    +----------------------+-----------------------+

Side by side rather than a translucent overlay alone: any colour blended over the crop lowers
the contrast of the tissue it covers and changes its grey levels, however light the heatmap is
made, and a floor under which the heatmap is left out hides how weak the map is elsewhere. With
the plain crop beside it, the left square shows the tissue with its windowed grey levels
untouched (no outline, no text), and the right square can keep a heatmap strong enough to read
(pytorch-grad-cam's blending, image weight 0.6) with the lesion outline over it; the two
squares share one pixel grid, so a spot on the right is found at the same place on the left.
The text sits in its own band, so it covers neither. The view and laterality of the source
image ("R CC") lead the caption line, as on a viewer's own overlay.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam.utils.image import show_cam_on_image

from model.bundle_info import BundleInfo
from model.preprocess.resize import resize_square
from model.roi import RoiCrop, RoiPrediction
from model.tasks import SUBTYPE5, TASKS

MIN_SIDE = 512
IMAGE_WEIGHT = 0.6  # the crop's share of the overlay square (pytorch-grad-cam's image_weight)
CONTOUR_RGB = (255, 255, 255)
WARNING_RGB = (255, 64, 64)
LABEL_RGB = (0, 255, 255)
MARGIN = 6


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def caption(prediction: RoiPrediction) -> str:
    """The predicted five-class subtype, or the first task's call for a partial bundle."""
    task = SUBTYPE5.name if SUBTYPE5.name in prediction.probabilities else None
    task = task or next(iter(prediction.probabilities))
    index = prediction.predicted_index(task)
    probability = float(prediction.probabilities[task][index])
    return f"{TASKS[task].class_names[index]}  p={probability:.2f}"


def text_size(side: int) -> int:
    """The font size of the burned-in text for squares of ``side`` pixels."""
    return max(14, side // 28)


def band_height(side: int, lines: int) -> int:
    """The caption band over squares of ``side`` pixels, for ``lines`` lines of text."""
    return 4 + lines * (text_size(side) + MARGIN)


def plain_crop(roi: RoiCrop, side: int) -> np.ndarray:
    """The windowed crop at ``side`` x ``side``, RGB uint8: the left square as it is shown."""
    gray = np.clip(np.rint(resize_square(roi.display, side)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _heatmap_square(roi: RoiCrop, prediction: RoiPrediction, side: int) -> np.ndarray:
    """The crop under the Grad-CAM colours, with the lesion outline."""
    gray = np.clip(resize_square(roi.display, side) / 255.0, 0.0, 1.0)
    cam = resize_square(prediction.cam, side)
    rgb = show_cam_on_image(
        np.repeat(gray[..., None], 3, axis=2),
        np.clip(cam, 0, 1),
        use_rgb=True,
        image_weight=IMAGE_WEIGHT,
    )
    mask = (
        np.asarray(
            Image.fromarray(roi.mask.astype(np.uint8) * 255).resize(
                (side, side), resample=Image.Resampling.NEAREST
            )
        )
        > 127
    )
    edge = _contour(mask)
    edge |= np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)
    rgb[edge] = CONTOUR_RGB
    return rgb


def render_overlay(
    roi: RoiCrop,
    prediction: RoiPrediction,
    bundle: BundleInfo,
    label: str | None = None,
) -> np.ndarray:
    """HxWx3 uint8: the caption band over [plain crop | overlay], each square >= 512 px.

    ``label`` is the source image's laterality and view ("R CC"), put before the caption."""
    side = max(MIN_SIDE, roi.display.shape[0])
    size = text_size(side)
    lines = [
        (caption(prediction), (255, 255, 255)),
        ("RESEARCH USE ONLY - not for diagnosis", (255, 255, 0)),
    ]
    if bundle.untrained:
        lines.append(("UNTRAINED MODEL - output meaningless", WARNING_RGB))
    elif bundle.synthetic_training_data:
        lines.append(("TRAINED ON SYNTHETIC DATA - not for patients", WARNING_RGB))
    band = band_height(side, len(lines))
    canvas = np.zeros((band + side, 2 * side, 3), dtype=np.uint8)
    canvas[band:, :side] = plain_crop(roi, side)
    canvas[band:, side:] = _heatmap_square(roi, prediction, side)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    y = 4
    for n, (text, colour) in enumerate(lines):
        x = MARGIN
        if n == 0 and label:
            draw.text(
                (x, y), label, fill=LABEL_RGB, font=font, stroke_width=2, stroke_fill=(0, 0, 0)
            )
            x += int(draw.textlength(label, font=font)) + 3 * size // 2
        draw.text((x, y), text, fill=colour, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        y += size + MARGIN
    return np.asarray(image)
