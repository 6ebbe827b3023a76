"""How a SYNTHETIC lesion looks by subtype: style, outline, mass and calcifications."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------------
# Image content


@dataclass(frozen=True)
class LesionStyle:
    """How one subtype's lesion is drawn (sizes in mm, intensities in 12-bit units)."""

    radius_mm: tuple[float, float]
    lobulation: float  # amplitude of the boundary's low harmonics (0 = a circle)
    roughness: float  # amplitude of higher harmonics (irregular margin)
    edge_px: float  # width of the soft margin in pixels; negative: fraction of the radius
    level: float  # target intensity of the mass body
    spicules: tuple[int, int] = (0, 0)
    calcifications: tuple[int, int] = (0, 0)
    calc_spread: float = 0.0  # cluster radius as a fraction of the mass radius
    calc_level: tuple[float, float] = (3600.0, 4000.0)


LESION_STYLES: dict[int, LesionStyle] = {
    # Luminal A: small round circumscribed mass.
    0: LesionStyle((4.5, 6.5), lobulation=0.03, roughness=0.0, edge_px=1.0, level=2650),
    # Luminal B: irregular mass with spiculations.
    1: LesionStyle(
        (6.0, 8.5), lobulation=0.10, roughness=0.06, edge_px=1.5, level=2700, spicules=(10, 16)
    ),
    # HER2+/HR+: mass with fine pleomorphic calcifications scattered in and around it.
    2: LesionStyle(
        (6.0, 8.5),
        lobulation=0.06,
        roughness=0.02,
        edge_px=2.0,
        level=2600,
        calcifications=(14, 22),
        calc_spread=1.3,
        calc_level=(3500.0, 3850.0),
    ),
    # HER2+/HR-: indistinct mass with a dense cluster of bright calcifications.
    3: LesionStyle(
        (7.0, 9.5),
        lobulation=0.08,
        roughness=0.02,
        edge_px=-0.3,
        level=2500,
        calcifications=(30, 45),
        calc_spread=0.45,
        calc_level=(3800.0, 4095.0),
    ),
    # Triple-negative: larger round, very dense, circumscribed mass.
    4: LesionStyle((10.0, 13.5), lobulation=0.03, roughness=0.0, edge_px=1.0, level=3050),
}

CALC_THRESHOLD = 3400  # no tissue or mass pixel reaches this; calcifications do


@dataclass(frozen=True)
class _LesionOutline:
    """Boundary radius as a function of angle (harmonics) and spicule directions/lengths."""

    harmonics: tuple[tuple[int, float, float], ...]  # (order, amplitude, phase)
    spicules: tuple[tuple[float, float, float], ...]  # (angle, length / radius, width px)

    def radius_at(self, theta: np.ndarray, radius: float, rotation: float = 0.0) -> np.ndarray:
        r = np.ones_like(theta)
        for order, amplitude, phase in self.harmonics:
            r += amplitude * np.cos(order * (theta - rotation) + phase)
        return radius * r


def lesion_outline(rng: np.random.Generator, style: LesionStyle, radius: float) -> _LesionOutline:
    harmonics = [
        (k, style.lobulation * rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)) for k in (2, 3)
    ]
    harmonics += [
        (k, style.roughness * rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi))
        for k in (5, 7, 9, 11)
    ]
    n_spicules = int(rng.integers(style.spicules[0], style.spicules[1] + 1))
    spicules = tuple(
        (rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.8), rng.uniform(1.0, 2.0) * radius / 40)
        for _ in range(n_spicules)
    )
    return _LesionOutline(tuple((k, a, p) for k, a, p in harmonics if a > 0), spicules)


def draw_lesion(
    image: np.ndarray,
    rng: np.random.Generator,
    style: LesionStyle,
    outline: _LesionOutline,
    centre: tuple[int, int],
    radius: float,
    spacing: float,
    breast: np.ndarray,
    rotation: float,
) -> np.ndarray:
    """Blend the mass (and spicules, calcifications) into ``image``; return the mass mask."""
    rows, cols = image.shape
    reach = int(np.ceil(radius * 3.2)) + 4
    top, bottom = max(centre[0] - reach, 0), min(centre[0] + reach + 1, rows)
    left, right = max(centre[1] - reach, 0), min(centre[1] + reach + 1, cols)
    dy = np.arange(top, bottom, dtype=np.float32)[:, None] - centre[0]
    dx = np.arange(left, right, dtype=np.float32)[None, :] - centre[1]
    rho = np.sqrt(dy**2 + dx**2)
    theta = np.arctan2(dy, dx)
    edge = outline.radius_at(theta, radius, rotation)
    edge_width = style.edge_px if style.edge_px > 0 else -style.edge_px * radius
    body = 1.0 / (1.0 + np.exp(np.clip((rho - edge) / max(edge_width / 2, 0.3), -30, 30)))
    for angle, length, width in outline.spicules:
        along = rho * np.cos(theta - angle - rotation)
        across = np.abs(rho * np.sin(theta - angle - rotation))
        extent = edge + length * radius
        fade = np.clip((extent - along) / (extent - edge + 1e-3), 0, 1)
        line = np.exp(-((across / max(width, 0.7)) ** 2)) * fade * (along > 0)
        body = np.maximum(body, 0.8 * line)
    window = image[top:bottom, left:right]
    inner_texture = rng.normal(0, 25, size=window.shape).astype(np.float32)
    window[:] = window * (1 - body) + (style.level + inner_texture) * body
    mask = np.zeros(image.shape, dtype=bool)
    mask[top:bottom, left:right] = rho <= edge
    mask &= breast
    _draw_calcifications(image, rng, style, centre, radius, spacing)
    return mask


def _draw_calcifications(
    image: np.ndarray,
    rng: np.random.Generator,
    style: LesionStyle,
    centre: tuple[int, int],
    radius: float,
    spacing: float,
) -> None:
    count = int(rng.integers(style.calcifications[0], style.calcifications[1] + 1))
    if count == 0:
        return
    # A dense cluster sits inside the mass, off-centre; fine pleomorphic ones spread around it.
    offset = rng.uniform(0, 0.3 * radius, size=2) if style.calc_spread < 1 else np.zeros(2)
    rows, cols = image.shape
    for _ in range(count):
        r = style.calc_spread * radius * np.sqrt(rng.uniform())
        a = rng.uniform(0, 2 * np.pi)
        cy = centre[0] + offset[0] + r * np.sin(a)
        cx = centre[1] + offset[1] + r * np.cos(a)
        size = max(rng.uniform(0.15, 0.4) / spacing, 0.6)
        level = rng.uniform(*style.calc_level)
        y0, y1 = int(max(cy - size - 1, 0)), int(min(cy + size + 2, rows))
        x0, x1 = int(max(cx - size - 1, 0)), int(min(cx + size + 2, cols))
        yy = np.arange(y0, y1)[:, None] - cy
        xx = np.arange(x0, x1)[None, :] - cx
        # Elongated, irregular specks: an ellipse at a random angle.
        b = rng.uniform(0.5, 1.0)
        phi = rng.uniform(0, np.pi)
        u = xx * np.cos(phi) + yy * np.sin(phi)
        v = -xx * np.sin(phi) + yy * np.cos(phi)
        speck = (u / size) ** 2 + (v / (size * b)) ** 2 <= 1.0
        if not speck.any():
            speck = (np.abs(yy) <= 0.5) & (np.abs(xx) <= 0.5)
        region = image[y0:y1, x0:x1]
        region[speck] = np.maximum(region[speck], level)
