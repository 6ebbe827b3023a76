"""Coded concepts of the results, including this product's private coding scheme.

SNOMED CT has disorder concepts for two of the subtypes (triple-negative, HER2-positive and
HER2-negative carcinoma of breast), and those are used. It has none for Luminal A/B, for the
hormone-receptor split of HER2-positive, nor for the "not ..." classes, and DICOM has none at
all (REFERENCE.md s.3), so the rest live in the private scheme ``99MOLSUB``, declared in every
SR's Coding Scheme Identification Sequence so that receiving systems can tell what it means.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from model.tasks import TASKS

SCHEME = "99MOLSUB"
SCHEME_NAME = "molsub-node molecular subtype concepts"
SCHEME_VERSION = "1"
SCHEME_ORGANIZATION = "molsub-node open-source project"


def _private(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


# The concept each task's call is reported under (a qualitative evaluation's name).
TASK_CONCEPTS: dict[str, Code] = {
    "subtype5": _private("MS0001", "Molecular subtype (five classes)"),
    "luminal": _private("MS0002", "Luminal status"),
    "her2": _private("MS0003", "HER2 status"),
    "tn": _private("MS0004", "Triple-negative status"),
}

# SNOMED CT disorders (International Edition) for the classes it names.
TRIPLE_NEGATIVE_BREAST_CANCER = Code(
    "706970001", "SCT", "Triple negative malignant neoplasm of breast"
)
HER2_POSITIVE_BREAST_CANCER = Code(
    "427685000", "SCT", "Human epidermal growth factor 2 positive carcinoma of breast"
)
HER2_NEGATIVE_BREAST_CANCER = Code(
    "431396003", "SCT", "Human epidermal growth factor 2 negative carcinoma of breast"
)

# One code per class of every task, in model.tasks order.
CLASS_CODES: dict[str, tuple[Code, ...]] = {
    "subtype5": (
        _private("MS0101", "Luminal A"),
        _private("MS0102", "Luminal B"),
        _private("MS0103", "HER2-positive, hormone receptor-positive"),
        _private("MS0104", "HER2-positive, hormone receptor-negative"),
        TRIPLE_NEGATIVE_BREAST_CANCER,
    ),
    "luminal": (_private("MS0110", "Non-Luminal"), _private("MS0111", "Luminal")),
    "her2": (HER2_NEGATIVE_BREAST_CANCER, HER2_POSITIVE_BREAST_CANCER),
    "tn": (_private("MS0130", "Not triple-negative"), TRIPLE_NEGATIVE_BREAST_CANCER),
}
# What a viewer shows beside a lesion's outline (the tracking identifier): short class names.
SHORT_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "subtype5": ("Luminal A", "Luminal B", "HER2+ HR+", "HER2+ HR-", "Triple-negative"),
    "luminal": ("non-Luminal", "Luminal"),
    "her2": ("HER2-", "HER2+"),
    "tn": ("not TN", "TN"),
}

# The probability of each class: a measurement named per class, so a reader needs no
# qualifier to tell which of the many probabilities in a group a value is.
_MODEL_NAMES = {"subtype5": "five-class", "luminal": "Luminal", "her2": "HER2", "tn": "TN"}
PROBABILITY_CODES: dict[str, tuple[Code, ...]] = {
    task: tuple(
        _private(f"MS{200 + 10 * i + j:04d}", f"Probability of {name} ({_MODEL_NAMES[task]} model)")
        for j, name in enumerate(TASKS[task].class_names)
    )
    for i, task in enumerate(("subtype5", "luminal", "her2", "tn"))
}

INTENDED_USE = _private("MS0900", "Intended use")
RESEARCH_USE_ONLY = _private("MS0901", "Research use only, not for diagnostic use")
MODEL_STATUS = _private("MS0902", "Model status")
UNTRAINED_MODEL = _private("MS0903", "Untrained model, output is meaningless")
# A lesion seen on several views also gets one fused group (model.fusion); this evaluation says
# what its values are, so neither a radiologist nor a program mistakes it for one more view.
VIEW_FUSION = _private("MS0904", "View fusion")
MEAN_OF_VIEWS = _private("MS0905", "Mean of the views' probabilities, per task")
SYNTHETIC_TRAINED_MODEL = _private("MS0906", "Trained on synthetic data only, not for patients")

NO_UNITS = codes.UCUM.NoUnits
MAMMOGRAPHY = Code("71651007", "SCT", "Mammography")
BREAST = Code("76752008", "SCT", "Breast")
LATERALITY = {"L": Code("7771000", "SCT", "Left"), "R": Code("24028007", "SCT", "Right")}
IMAGE_LATERALITY = Code("111027", "DCM", "Image Laterality")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = Code("121106", "DCM", "Comment")
IMAGE_VIEW = Code("111031", "DCM", "Image View")
GRADCAM = codes.DCM.GradientWeightedClassActivation
# A lesion's explanation in the SR: its Secondary Capture (CID 7003) and its heatmap segment.
ILLUSTRATION_OF_ROI = codes.DCM.IllustrationOfROI
CLASS_ACTIVATION = codes.DCM.ClassActivation
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment
AI_FAMILY = codes.DCM.ArtificialIntelligence

assert set(CLASS_CODES) == set(TASKS)
assert all(len(CLASS_CODES[t]) == TASKS[t].num_classes for t in TASKS)
assert all(len(SHORT_CLASS_NAMES[t]) == TASKS[t].num_classes for t in TASKS)
assert all(len(c.meaning) <= 64 for cs in CLASS_CODES.values() for c in cs)
assert all(len(c.meaning) <= 64 for cs in PROBABILITY_CODES.values() for c in cs)


def coding_scheme_identification() -> Dataset:
    """The item that declares ``99MOLSUB`` (Coding Scheme Identification Sequence)."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeVersion = SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = SCHEME_ORGANIZATION
    return item


def concept_key(item: Dataset) -> tuple[str, str]:
    """An SR content item's concept name as (scheme designator, code value)."""
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)
