"""The SOP classes the node takes in and sends out, named once (from pydicom's UID registry).

Imports nothing heavy: the SCP checks every received object against these.
"""

from __future__ import annotations

from pydicom.uid import (
    BreastProjectionXRayImageStorageForPresentation as BREAST_PROJECTION_FOR_PRESENTATION,
)
from pydicom.uid import (
    BreastProjectionXRayImageStorageForProcessing as BREAST_PROJECTION_FOR_PROCESSING,
)
from pydicom.uid import (
    BreastTomosynthesisImageStorage as BREAST_TOMOSYNTHESIS,
)
from pydicom.uid import (
    Comprehensive3DSRStorage as COMPREHENSIVE_3D_SR,
)
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation as MG_FOR_PRESENTATION,
)
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForProcessing as MG_FOR_PROCESSING,
)
from pydicom.uid import (
    SecondaryCaptureImageStorage as SECONDARY_CAPTURE,
)
from pydicom.uid import (
    SegmentationStorage as SEGMENTATION,
)

MG_SOP_CLASSES = frozenset({MG_FOR_PRESENTATION, MG_FOR_PROCESSING})

__all__ = [
    "BREAST_PROJECTION_FOR_PRESENTATION",
    "BREAST_PROJECTION_FOR_PROCESSING",
    "BREAST_TOMOSYNTHESIS",
    "COMPREHENSIVE_3D_SR",
    "MG_FOR_PRESENTATION",
    "MG_FOR_PROCESSING",
    "MG_SOP_CLASSES",
    "SECONDARY_CAPTURE",
    "SEGMENTATION",
]
