"""Preprocessing: decode MG pixels, apply a profile's intensity pipeline, crop each lesion."""

from model.preprocess.decode import check_mg, decode_frame
from model.preprocess.rois import extract_rois, image_intensities
from model.preprocess.seg_mask import SegmentMask, segment_masks

__all__ = [
    "SegmentMask",
    "check_mg",
    "decode_frame",
    "extract_rois",
    "image_intensities",
    "segment_masks",
]
