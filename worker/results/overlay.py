"""The picture a radiologist sees in the Secondary Capture (and the CLI's PNG).

Grad-CAM colour overlay (pytorch-grad-cam's own blending) on the windowed ROI crop, the lesion
contour, and burned-in text: predicted subtype and probability, research use, UNTRAINED.
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
CONTOUR_RGB = (255, 255, 255)
WARNING_RGB = (255, 64, 64)


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


def render_overlay(roi: RoiCrop, prediction: RoiPrediction, bundle: BundleInfo) -> np.ndarray:
    """HxWx3 uint8, long side >= 512 px, text burned in."""
    side = max(MIN_SIDE, roi.display.shape[0])
    gray = np.clip(resize_square(roi.display, side) / 255.0, 0.0, 1.0)
    cam = resize_square(prediction.cam, side)
    rgb = show_cam_on_image(
        np.repeat(gray[..., None], 3, axis=2), np.clip(cam, 0, 1), use_rgb=True, image_weight=0.6
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
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    size = max(14, side // 28)
    font = ImageFont.load_default(size=size)
    lines = [
        (caption(prediction), (255, 255, 255)),
        ("RESEARCH USE ONLY - not for diagnosis", (255, 255, 0)),
    ]
    if bundle.untrained:
        lines.append(("UNTRAINED MODEL - output meaningless", WARNING_RGB))
    elif bundle.synthetic_training_data:
        lines.append(("TRAINED ON SYNTHETIC DATA - not for patients", WARNING_RGB))
    y = 4
    for text, colour in lines:
        draw.text((6, y), text, fill=colour, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        y += size + 6
    return np.asarray(image)
