"""Which received objects are inputs: the node's own results and lesion SEGs, told by header.

A PACS rule that routes every SEG (or every object of a study) to the node sends the node's own
results back; taken as input, its FRACTIONAL heatmap SEG would start a unit whose results come
back again, for ever. Both checks read the header only (no pixels, no highdicom): the SCP calls
them on every SR, SC and SEG it receives, before anything is spooled.

Codes are (coding scheme designator, code value) pairs; the SNOMED RT ("SRT") forms that older
toolkits (dcmqi, DCMTK) still write are listed beside the SNOMED CT ("SCT") ones.
"""

from __future__ import annotations

from collections.abc import Collection

from pydicom.dataset import Dataset

from common.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE, SEGMENTATION

# What every object the node writes carries as Manufacturer and as its Contributing Equipment's
# Manufacturer (worker/results/equipment.py imports it from here).
NODE_MANUFACTURER = "molsub-node open-source project"
# The SOP classes the node writes: only objects of these classes can be its own results.
NODE_OUTPUT_SOP_CLASSES = frozenset({COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE, SEGMENTATION})

Concept = tuple[str, str]

# Segmented Property Categories (CID 7150) under which any type is taken as a lesion, unless the
# type says otherwise (NOT_LESION_TYPES).
# - Morphologically abnormal structure: every type under it is an abnormality (mass, lesion,
#   neoplasm, calcification, cyst...); what molsub synth and careful annotation tools write.
# - Tissue: what 3D Slicer, OHIF (dcmjs) and dcmqi write when a reader outlines a region without
#   choosing codes, as both public SEG samples do (Tissue / Connective tissue, Tissue / Liver).
#   Refusing it would refuse most hand-drawn lesions.
LESION_CATEGORIES: frozenset[Concept] = frozenset(
    {
        ("SCT", "49755003"),  # Morphologically abnormal structure
        ("SRT", "M-01000"),
        ("SCT", "85756007"),  # Tissue
        ("SRT", "T-D0050"),
    }
)
# Segmented Property Types taken as a lesion under any category: the abnormal types of CID 7159
# (Lesion Segmentation Types) and the mammography lesion findings of CID 6014 / 6016.
LESION_TYPES: frozenset[Concept] = frozenset(
    {
        ("SCT", "52988006"),  # Lesion
        ("SRT", "M-01100"),
        ("SCT", "4147007"),  # Mass
        ("SRT", "M-03000"),
        ("SCT", "108369006"),  # Neoplasm (tumour)
        ("SRT", "M-8FFFF"),
        ("SCT", "372087000"),  # Primary malignant neoplasm
        ("SCT", "86049000"),  # Malignant neoplasm, primary
        ("SRT", "M-80003"),
        ("SCT", "14799000"),  # Neoplasm, metastatic
        ("SRT", "M-80006"),
        ("SCT", "27925004"),  # Nodule
        ("SRT", "M-03010"),
        ("SCT", "367643001"),  # Cyst
        ("SRT", "M-3340A"),
        ("SCT", "129788004"),  # Mammographic breast mass
        ("SRT", "F-01791"),
        ("SCT", "129769006"),  # Calcification cluster
        ("SRT", "F-01775"),
        ("SCT", "129770007"),  # Individual calcification
        ("SRT", "F-01776"),
        ("SCT", "129792006"),  # Architectural distortion of breast
        ("SRT", "F-01795"),
        ("SCT", "129790003"),  # Asymmetric breast tissue
        ("SRT", "F-01793"),
        ("SCT", "129789007"),  # Focal asymmetric breast tissue
        ("SRT", "F-01792"),
    }
)
# Types that are never a lesion, whatever the category: background, normal, "non-lesion" and the
# visual explanations of CID 217 (the node's own heatmap is Class activation / Gradient-weighted
# class activation).
NOT_LESION_TYPES: frozenset[Concept] = frozenset(
    {
        ("DCM", "125040"),  # Background
        ("SCT", "17621005"),  # Normal
        ("SRT", "G-A460"),
        ("DCM", "111102"),  # Non-lesion
        ("DCM", "130402"),  # Class activation
        ("DCM", "130403"),  # Gradient-weighted class activation
        ("DCM", "130404"),  # Saliency
    }
)


def own_result_reason(ds: Dataset, device_uids: Collection[str] = ()) -> str:
    """Why ``ds`` is a result this node wrote, or "" when it is not.

    Only the SOP classes the node writes qualify, so a name alone never decides. Then a
    Contributing Equipment item with one of ``device_uids`` (the bundles this node serves), or
    the node's manufacturer on such an item or on the object: the SCP does not know which
    bundle made an old result, so the manufacturer is what recognises those.
    """
    if str(ds.get("SOPClassUID", "") or "") not in NODE_OUTPUT_SOP_CLASSES:
        return ""
    equipment = list(ds.get("ContributingEquipmentSequence", []) or [])
    known = set(device_uids)
    if any(str(item.get("DeviceUID", "") or "") in known for item in equipment):
        return "a result of this node (Contributing Equipment device UID)"
    if any(_is_node(item.get("Manufacturer")) for item in equipment):
        return "a result of this node (Contributing Equipment manufacturer)"
    if _is_node(ds.get("Manufacturer")):
        return "a result of this node (Manufacturer)"
    return ""


def non_lesion_reason(seg: Dataset) -> str:
    """Why a SEG is not a lesion outline the node can take, or "" when it is.

    FRACTIONAL SEGs are maps (probabilities, occupancy), not outlines. Every segment must be a
    lesion (LESION_CATEGORIES, LESION_TYPES, NOT_LESION_TYPES): the node predicts a subtype for
    each segment, so one segment that is not a lesion makes the SEG unusable as a whole.
    """
    if str(seg.get("SegmentationType", "") or "").upper() == "FRACTIONAL":
        return "FRACTIONAL SEG, not a lesion outline"
    segments = list(seg.get("SegmentSequence", []) or [])
    if not segments:
        return "SEG describes no segment"
    for index, segment in enumerate(segments, start=1):
        number = segment.get("SegmentNumber", index)
        category = _concept(segment, "SegmentedPropertyCategoryCodeSequence")
        kind = _concept(segment, "SegmentedPropertyTypeCodeSequence")
        if category is None or kind is None:
            return f"segment {number} has no segmented property category or type"
        if not _is_lesion(category, kind):
            return f"segment {number} is not a lesion ({_code(category)} / {_code(kind)})"
    return ""


def _is_lesion(category: Concept, kind: Concept) -> bool:
    if kind in NOT_LESION_TYPES:
        return False
    return category in LESION_CATEGORIES or kind in LESION_TYPES


def _concept(item: Dataset, keyword: str) -> Concept | None:
    codes = item.get(keyword) or []
    if not codes:
        return None
    code = codes[0]
    scheme = str(code.get("CodingSchemeDesignator", "") or "").strip().upper()
    value = str(code.get("CodeValue", "") or code.get("LongCodeValue", "") or "").strip()
    return (scheme, value) if scheme and value else None


def _code(concept: Concept) -> str:
    return f"{concept[0]} {concept[1]}"


def _is_node(manufacturer: object) -> bool:
    return str(manufacturer or "").strip() == NODE_MANUFACTURER
