"""Preprocessing: decode MG pixels, apply a profile's intensity pipeline, crop each lesion."""

from model.preprocess.decode import MG_SOP_CLASSES, check_mg, decode_frame
from model.preprocess.intensity import PROFILES
from model.preprocess.rois import extract_rois, load_image
from model.preprocess.seg_mask import SegmentMask, referenced_image_uids, segment_masks

__all__ = [
    "MG_SOP_CLASSES",
    "PROFILES",
    "SegmentMask",
    "check_mg",
    "decode_frame",
    "extract_rois",
    "load_image",
    "referenced_image_uids",
    "segment_masks",
]
