"""From a SEG and its MG images to network-ready RoiCrops (the prepare stage's core)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydicom.dataset import Dataset

from common.errors import InputError
from model.preprocess.crop import crop_square, lesion_square
from model.preprocess.decode import decode_frame
from model.preprocess.intensity import normalise, reference_intensity, to_display_range
from model.preprocess.reference_exact import authors_input, authors_square
from model.preprocess.resize import resize_square
from model.preprocess.seg_mask import segment_masks
from model.profiles import Profile
from model.roi import RoiCrop, SquareBox

MAX_DISPLAY_SIDE = 2048
# The profiles whose network sees the authors' 8-bit CLAHE image.
_AUTHORS_INTENSITIES = (Profile.REFERENCE, Profile.REFERENCE_EXACT)


def image_intensities(ds: Dataset, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """(display, network) whole-image intensities in [0, 1], float32, for one MG image.

    The display is always the ``default`` pipeline (what the radiologist sees); the network's
    input is the profile's, which for ``default`` is the same array.
    """
    stored = decode_frame(ds)
    display = to_display_range(ds, stored)
    if profile in _AUTHORS_INTENSITIES:
        return display, reference_intensity(stored).astype(np.float32) / 255.0
    return display, display


def lesion_box(mask: np.ndarray, bound_size: int, profile: Profile) -> SquareBox:
    """Where the network looks for a lesion: the authors' square for ``reference-exact``
    (model/preprocess/reference_exact.py), the centred square otherwise."""
    if profile is Profile.REFERENCE_EXACT:
        return authors_square(mask, bound_size)
    return lesion_square(mask, bound_size)


def network_crop(
    network_image: np.ndarray, box: SquareBox, profile: Profile, input_size: int
) -> np.ndarray:
    """The network's input for one lesion square: crop, resize, normalise (float32, square)."""
    if profile is Profile.REFERENCE_EXACT:
        return authors_input(network_image, box, input_size)
    square = crop_square(network_image, box)
    if profile is Profile.REFERENCE:
        # The authors resize the 8-bit crop and normalise from 0..255.
        square = np.round(square * 255.0) / 255.0
    return normalise(resize_square(square, input_size))


def lesion_input(
    ds: Dataset,
    mask: np.ndarray,
    *,
    profile: Profile | str = Profile.DEFAULT,
    bound_size: int = 100,
    input_size: int = 224,
) -> np.ndarray:
    """The network input for a lesion ``mask`` (bool, the image's grid) on one MG image.

    Training (train/) caches exactly this, so what is trained is what the node serves: the
    node's ``extract_rois`` computes its crops with the same ``network_crop``.
    """
    profile = Profile.parse(profile)
    if mask.shape != (int(ds.Rows), int(ds.Columns)) or not mask.any():
        raise ValueError(f"mask {mask.shape} is empty or not on the image's grid")
    box = lesion_box(mask, bound_size, profile)
    _, network_image = image_intensities(ds, profile)
    return network_crop(network_image, box, profile, input_size)


def extract_rois(
    seg: Dataset,
    images: Mapping[str, Dataset],
    *,
    profile: Profile | str = Profile.DEFAULT,
    bound_size: int = 100,
    input_size: int = 224,
) -> list[RoiCrop]:
    """One RoiCrop per (segment, image) the segment is drawn on; each image decoded once."""
    profile = Profile.parse(profile)
    masks = segment_masks(seg, images)
    intensities: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    crops: list[RoiCrop] = []
    for item in masks:
        uid = item.source_sop_instance_uid
        ds = images[uid]
        if uid not in intensities:
            intensities[uid] = image_intensities(ds, profile)
        display_image, network_image = intensities[uid]
        try:
            box = lesion_box(item.mask, bound_size, profile)
        except ValueError as exc:
            raise InputError(uid, f"segment {item.segment_number}: {exc}") from exc
        display = crop_square(display_image, box)
        mask = crop_square(item.mask, box, fill=False)
        if box.size > MAX_DISPLAY_SIDE:
            display = resize_square(display, MAX_DISPLAY_SIDE)
            mask = resize_square(mask.astype(np.float32), MAX_DISPLAY_SIDE) >= 0.5
        crops.append(
            RoiCrop(
                segment_number=item.segment_number,
                segment_label=item.segment_label,
                source_sop_instance_uid=uid,
                source_frame_number=1,
                image_shape=(int(ds.Rows), int(ds.Columns)),
                box=box,
                network_input=network_crop(network_image, box, profile, input_size),
                display=np.round(display * 255.0).astype(np.uint8),
                mask=mask,
            )
        )
    return crops
