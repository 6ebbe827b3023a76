"""Which images a DICOM SEG is drawn on, read from its header alone.

Kept free of torch and highdicom imports: the SCP calls it on every received SEG to know which
images to wait for, and the preprocessing calls it to know which images to crop.
"""

from __future__ import annotations

from pydicom.dataset import Dataset


def referenced_image_uids(seg: Dataset) -> list[str]:
    """SOP Instance UIDs the SEG references, in first-seen order, without decoding pixels.

    Read from the Referenced Series Sequence and the per-frame (or shared) Derivation Image
    Sequence: other toolkits fill one or the other.
    """
    found: list[object] = []
    for series in seg.get("ReferencedSeriesSequence", []):
        found += [
            i.get("ReferencedSOPInstanceUID") for i in series.get("ReferencedInstanceSequence", [])
        ]
    groups = list(seg.get("PerFrameFunctionalGroupsSequence", []))
    groups += list(seg.get("SharedFunctionalGroupsSequence", []))
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []):
            found += [
                s.get("ReferencedSOPInstanceUID") for s in derivation.get("SourceImageSequence", [])
            ]
    return list(dict.fromkeys(str(uid) for uid in found if uid))
