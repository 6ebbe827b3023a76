"""SYNTHETIC mammography studies with lesion SEGs and subtype labels (`molsub synth`).

Nothing here is patient data. The images only have to look enough like mammograms for the
node's pipeline (DICOM in, ROI crop, networks, DICOM out) to be exercised end to end, and the
lesion's look depends on its subtype label so that a training run has something to learn.

Per patient: one breast (random laterality), a CC and an MLO image (MG For Presentation,
12-bit data in 16-bit words, MONOCHROME2) and one BINARY SEG with segment "Lesion 1" over both.
Everything is deterministic for a seed: pixels, dates and UIDs ("2.25.<int>" from a hash of
the seed, the patient index and the object's role).

The package, lowest layer first (a module imports only from those above it in this list):

- ``headers``: SYNTHETIC UIDs, the MG header and the SYNTHETIC wording in headers.
- ``seg``: the multi-image BINARY lesion SEG over a study's CC and MLO.
- ``lesion``: the lesion's look by subtype (style, outline, mass, calcifications).
- ``image``: breast shape and texture, pixel spacing, lesion position, the two views.
- ``studies``: studies on disk (per-patient files, labels.csv, README) and subtype labels.
"""

from molsub.synth.headers import (
    DEIDENTIFICATION_METHOD,
    SYNTHETIC_COMMENT,
    build_mg,
    synthetic_uid,
)
from molsub.synth.image import (
    DETECTOR_HEIGHT_MM,
    VIEWS,
    SyntheticViews,
    pixel_spacing_for,
    render_views,
)
from molsub.synth.lesion import CALC_THRESHOLD, LESION_STYLES, LesionStyle
from molsub.synth.seg import build_lesion_seg
from molsub.synth.studies import (
    LABEL_COLUMNS,
    PAPER_CLASS_COUNTS,
    README_TEXT,
    SynthStudy,
    assign_subtypes,
    write_synthetic_studies,
)

__all__ = [
    "CALC_THRESHOLD",
    "DEIDENTIFICATION_METHOD",
    "DETECTOR_HEIGHT_MM",
    "LABEL_COLUMNS",
    "LESION_STYLES",
    "PAPER_CLASS_COUNTS",
    "README_TEXT",
    "SYNTHETIC_COMMENT",
    "VIEWS",
    "LesionStyle",
    "SynthStudy",
    "SyntheticViews",
    "assign_subtypes",
    "build_lesion_seg",
    "build_mg",
    "pixel_spacing_for",
    "render_views",
    "synthetic_uid",
    "write_synthetic_studies",
]
