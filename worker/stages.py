"""The three stages of one unit of work (one SEG and the MG images it references).

prepare: reads DICOM (pixels), decodes and crops -> RoiCrops + header-only datasets.
infer:   the model only (GPU queue in production) -> RoiPredictions.
deliver: builds the SR, Secondary Captures and heatmap SEGs from headers, crops and predictions.

The offline CLI (`molsub predict`) and the Celery tasks call these same functions, so both modes
share one code path. Nothing here touches the network or a broker.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from model.preprocess import extract_rois, referenced_image_uids
from model.roi import RoiCrop, RoiPrediction

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass
class PreparedUnit:
    """What infer and deliver need, with no pixel data of the source objects left in it."""

    seg: Dataset
    sources: list[Dataset]
    rois: list[RoiCrop]


def header_only(ds: Dataset) -> Dataset:
    """A copy without pixel data: what results need of an image, small enough for a message."""
    out = Dataset()
    out.file_meta = copy.deepcopy(getattr(ds, "file_meta", Dataset()))
    for elem in ds:
        if elem.keyword not in PIXEL_KEYWORDS:
            out.add(copy.deepcopy(elem))
    return out


def prepare(
    seg: Dataset,
    images: Mapping[str, Dataset],
    *,
    profile: str,
    bound_size: int,
    input_size: int,
) -> PreparedUnit:
    """Decode and crop every ROI of one SEG; keep only headers of the sources it references."""
    rois = extract_rois(seg, images, profile=profile, bound_size=bound_size, input_size=input_size)
    sources = [header_only(images[uid]) for uid in referenced_image_uids(seg)]
    return PreparedUnit(seg=header_only(seg), sources=sources, rois=rois)


def infer(unit: PreparedUnit, predictor) -> list[RoiPrediction]:  # noqa: ANN001 - model.inference.Predictor
    """Run every task network and Grad-CAM on the unit's crops."""
    return predictor.predict(unit.rois)


def deliver_objects(
    unit: PreparedUnit, predictions: Sequence[RoiPrediction], bundle_info
) -> list[Dataset]:  # noqa: ANN001 - model.bundle.BundleInfo
    """Build SR, Secondary Captures and heatmap SEGs for one unit."""
    from worker.results import build_results

    return build_results(unit.seg, unit.sources, unit.rois, list(predictions), bundle_info).all()
