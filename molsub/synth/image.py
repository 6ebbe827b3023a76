"""SYNTHETIC breast images: breast shape, tissue texture, pixel spacing, the two views."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.mammo import View
from model.preprocess.resize import resize_bilinear
from molsub.synth.lesion import LESION_STYLES, draw_lesion, lesion_outline

VIEWS = tuple(View)

# The detector is this tall whatever the row count, so lesion sizes in mm stay plausible.
DETECTOR_HEIGHT_MM = 256.0


# --------------------------------------------------------------------------------------------
# Image content


@dataclass
class SyntheticViews:
    """The two views of one synthetic breast: uint16 images, bool lesion masks, per view."""

    laterality: str
    subtype_index: int
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    pixel_spacing_mm: float
    lesion_centres: dict[str, tuple[int, int]] = field(default_factory=dict)


def pixel_spacing_for(rows: int) -> float:
    """Pixel spacing (mm) that keeps the detector DETECTOR_HEIGHT_MM tall at any row count."""
    return round(DETECTOR_HEIGHT_MM / rows, 6)


def render_views(
    subtype_index: int,
    rng: np.random.Generator,
    *,
    laterality: str,
    rows: int = 1280,
    cols: int = 1024,
) -> SyntheticViews:
    """Draw a breast in CC and MLO with one lesion of the given subtype at the same depth.

    Drawing happens with the chest wall at column 0; a right breast is mirrored afterwards.
    """
    if subtype_index not in LESION_STYLES:
        raise ValueError(f"subtype index {subtype_index} is not one of {sorted(LESION_STYLES)}")
    spacing = pixel_spacing_for(rows)
    style = LESION_STYLES[subtype_index]
    radius = rng.uniform(*style.radius_mm) / spacing
    shapes = {view: _breast_shape(rng, view, rows, cols) for view in VIEWS}
    depth, ml, si = _lesion_position(rng, shapes, radius)
    lesion = lesion_outline(rng, style, radius)
    # The other projection sees the same mass turned: the outline is rotated, not redrawn.
    rotations = {"CC": 0.0, "MLO": rng.uniform(0.4, 1.0)}
    images, masks, centres = {}, {}, {}
    for view in VIEWS:
        shape = shapes[view]
        image, breast = _breast_image(rng, shape, rows, cols, spacing)
        v = ml if view == "CC" else 0.7 * si + 0.3 * ml
        centre = (int(round(shape.cy + v * shape.ay)), int(round(depth * shape.bx)))
        mask = draw_lesion(
            image, rng, style, lesion, centre, radius, spacing, breast, rotations[view]
        )
        np.clip(image, 0, 4095, out=image)
        pixels = image.astype(np.uint16)
        if laterality == "R":
            pixels, mask = pixels[:, ::-1].copy(), mask[:, ::-1].copy()
            centre = (centre[0], cols - 1 - centre[1])
        images[view], masks[view], centres[view] = pixels, mask, centre
    return SyntheticViews(laterality, subtype_index, images, masks, spacing, centres)


@dataclass(frozen=True)
class _BreastShape:
    """Half-ellipse against the chest wall (column 0): centre row, semi-axes, pectoral."""

    cy: float
    ay: float
    bx: float
    pectoral: tuple[float, float] | None  # (height in rows, width in columns) of the triangle

    def in_pectoral(self, row: float, col: float) -> bool:
        if self.pectoral is None:
            return False
        height, width = self.pectoral
        return row / height + col / width < 1.15


def _breast_shape(rng: np.random.Generator, view: str, rows: int, cols: int) -> _BreastShape:
    if view == "CC":
        return _BreastShape(
            cy=rows * rng.uniform(0.47, 0.53),
            ay=rows * rng.uniform(0.36, 0.43),
            bx=cols * rng.uniform(0.66, 0.80),
            pectoral=None,
        )
    return _BreastShape(
        cy=rows * rng.uniform(0.50, 0.56),
        ay=rows * rng.uniform(0.40, 0.45),
        bx=cols * rng.uniform(0.62, 0.76),
        pectoral=(rows * rng.uniform(0.40, 0.55), cols * rng.uniform(0.22, 0.32)),
    )


def _lesion_position(
    rng: np.random.Generator, shapes: dict[str, _BreastShape], radius: float
) -> tuple[float, float, float]:
    """(depth from the chest wall as a fraction of the breast, medio-lateral, cranio-caudal)."""
    for _ in range(1000):
        depth, ml, si = rng.uniform(0.3, 0.7), rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)
        mlo = shapes["MLO"]
        v_mlo = 0.7 * si + 0.3 * ml
        margin = 2.5 * radius
        if (
            depth**2 + ml**2 < 0.6
            and depth**2 + v_mlo**2 < 0.6
            and not mlo.in_pectoral(mlo.cy + v_mlo * mlo.ay - margin, depth * mlo.bx - margin)
        ):
            return depth, ml, si
    return 0.5, 0.0, 0.0


def _power_law_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum, scaled to zero mean and unit SD."""
    white = rng.standard_normal(shape).astype(np.float32)
    spectrum = np.fft.rfft2(white)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    freq = np.sqrt(fy**2 + fx**2)
    freq[0, 0] = 1.0
    spectrum *= freq ** (-beta / 2)
    spectrum[0, 0] = 0
    noise = np.fft.irfft2(spectrum, s=shape).astype(np.float32)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _breast_image(
    rng: np.random.Generator, shape: _BreastShape, rows: int, cols: int, spacing: float
) -> tuple[np.ndarray, np.ndarray]:
    """Background, breast tissue with texture, skin line and (MLO) pectoral muscle."""
    small = (max(rows // 4, 8), max(cols // 4, 8))
    density = resize_bilinear(_power_law_noise(rng, small, 3.2), (rows, cols))
    texture = resize_bilinear(_power_law_noise(rng, (rows // 2, cols // 2), 2.0), (rows, cols))
    yy = ((np.arange(rows, dtype=np.float32) - shape.cy) / shape.ay)[:, None]
    xx = (np.arange(cols, dtype=np.float32) / shape.bx)[None, :]
    r = np.sqrt(yy**2 + xx**2)
    breast = r < 1.0
    thickness = np.sqrt(np.clip(1.0 - r**2, 0.0, 1.0))
    # Fibroglandular tissue: thresholded smooth noise, denser behind the nipple region.
    glandular_weight = np.clip(1.2 - r, 0, 1) * rng.uniform(0.6, 1.0)
    dense = 1.0 / (1.0 + np.exp(-(density - rng.uniform(0.0, 0.6)) / 0.35))
    image = 1050 + 300 * thickness + 950 * dense * glandular_weight + 50 * texture
    skin_width = 1.6 / spacing / min(shape.ay, shape.bx)
    skin = breast & (r > 1.0 - skin_width)
    image = np.where(skin, image + 220, image)
    if shape.pectoral is not None:
        height, width = shape.pectoral
        rows_idx = np.arange(rows, dtype=np.float32)[:, None]
        cols_idx = np.arange(cols, dtype=np.float32)[None, :]
        edge = 1.0 - (rows_idx / height + cols_idx / width)
        muscle = 1.0 / (1.0 + np.exp(np.clip(-edge / 0.01, -30, 30)))
        image = image * (1 - muscle) + (2250 + 60 * texture) * muscle
        breast = breast | (edge > 0)
    image = np.where(breast, image, 60 + 15 * texture)
    image += rng.normal(0, 12, size=(rows, cols)).astype(np.float32)
    return image.astype(np.float32), breast
