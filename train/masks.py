"""A row's lesion mask on its image's grid, from a DICOM SEG or a mask file (NIfTI, NRRD, MHA).

The authors drew their ROIs in ITK-SNAP and saved NIfTI; the node receives DICOM SEGs. Both end
as one boolean array of the image's Rows x Columns, as ``model.preprocess.rois.lesion_input``
takes it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from common.errors import InputError
from common.seg_refs import referenced_image_uids
from common.sop_classes import SEGMENTATION
from model.preprocess.seg_mask import SegmentMask, segment_masks

# What ITK-SNAP and SimpleITK write; any other file is read as a DICOM SEG.
MASK_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


class RoiKind(StrEnum):
    SEG = "DICOM SEG"
    MASK_FILE = "mask file"


def roi_kind(path: Path) -> RoiKind:
    """By the file name: the mask-file suffixes above, else a DICOM SEG (any name)."""
    name = path.name.lower()
    return RoiKind.MASK_FILE if name.endswith(MASK_FILE_SUFFIXES) else RoiKind.SEG


class MaskProblem(StrEnum):
    UNREADABLE = "unreadable ROI"
    NOT_ON_IMAGE = "ROI not drawn on this image"
    GRID = "mask/image grid mismatch"
    EMPTY = "empty mask"


class MaskError(ValueError):
    """A mask that cannot be used for a row; names the ROI file, never header values."""

    def __init__(self, path: Path, problem: MaskProblem, reason: str) -> None:
        self.path = path
        self.problem = problem
        self.reason = reason
        super().__init__(f"{path}: {problem}: {reason}")


@dataclass(frozen=True)
class _ParsedSeg:
    uid: str
    grid: tuple[int, int]
    segment_numbers: frozenset[int]
    references: tuple[str, ...]
    masks: tuple[SegmentMask, ...]


class RoiMasks:
    """Reads masks for rows, parsing each SEG once: a study's CC and MLO rows share one SEG."""

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._segs: OrderedDict[Path, _ParsedSeg | MaskError] = OrderedDict()

    def mask(self, path: Path, image: Dataset, segment: int | None = None) -> np.ndarray:
        """The lesion mask (bool, Rows x Columns of ``image``) for ``segment`` or all of them.

        For a SEG ``segment`` is a segment number; for a label map it is the label value.
        Raises MaskError (unreadable, not on this image, grid mismatch, empty).
        """
        grid = (int(image.Rows), int(image.Columns))
        if roi_kind(path) is RoiKind.MASK_FILE:
            return _file_mask(path, grid, segment)
        parsed = self._seg(path)
        uid = str(image.get("SOPInstanceUID", ""))
        if uid not in parsed.references:
            raise MaskError(path, MaskProblem.NOT_ON_IMAGE, f"the SEG does not reference {uid}")
        _check_grid(path, parsed.grid, grid)
        if segment is not None and segment not in parsed.segment_numbers:
            numbers = ", ".join(str(n) for n in sorted(parsed.segment_numbers))
            raise MaskError(
                path, MaskProblem.EMPTY, f"the SEG has no segment {segment} (it has {numbers})"
            )
        chosen = [
            m.mask
            for m in parsed.masks
            if m.source_sop_instance_uid == uid and segment in (None, m.segment_number)
        ]
        if not chosen:
            which = "no segment" if segment is None else f"segment {segment} is not"
            raise MaskError(path, MaskProblem.EMPTY, f"{which} drawn on image {uid}")
        return np.logical_or.reduce(chosen)

    def _seg(self, path: Path) -> _ParsedSeg:
        if path not in self._segs:
            try:
                self._segs[path] = _parse_seg(path)
            except MaskError as exc:
                self._segs[path] = exc
            while len(self._segs) > self._keep:
                self._segs.popitem(last=False)
        self._segs.move_to_end(path)
        found = self._segs[path]
        if isinstance(found, MaskError):
            raise found
        return found


def read_roi_mask(path: Path, image: Dataset, segment: int | None = None) -> np.ndarray:
    """``RoiMasks().mask`` for a single row."""
    return RoiMasks().mask(path, image, segment)


def _check_grid(path: Path, mask_grid: tuple[int, ...], image_grid: tuple[int, int]) -> None:
    if tuple(mask_grid) == image_grid:
        return
    hint = " (transposed?)" if tuple(mask_grid) == image_grid[::-1] else ""
    raise MaskError(
        path,
        MaskProblem.GRID,
        f"mask is {'x'.join(map(str, mask_grid))} (rows x columns), the image "
        f"{image_grid[0]}x{image_grid[1]}{hint}",
    )


def _parse_seg(path: Path) -> _ParsedSeg:
    """Every segment's mask on every image the SEG references.

    ``segment_masks`` wants the referenced images only for their grids; the SEG's own grid
    stands in for them here, and each row's image is checked against it afterwards.
    """
    try:
        seg = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise MaskError(path, MaskProblem.UNREADABLE, f"not a DICOM file ({exc})") from exc
    if str(seg.get("SOPClassUID", "")) != SEGMENTATION:
        raise MaskError(path, MaskProblem.UNREADABLE, "not a DICOM Segmentation")
    try:
        grid = (int(seg.Rows), int(seg.Columns))
        references = referenced_image_uids(seg)
        stand_in = Dataset()
        stand_in.Rows, stand_in.Columns = grid
        masks = segment_masks(seg, dict.fromkeys(references, stand_in))
        numbers = frozenset(int(item.SegmentNumber) for item in seg.SegmentSequence)
    except (InputError, AttributeError, ValueError, TypeError) as exc:
        raise MaskError(path, MaskProblem.UNREADABLE, str(exc)) from exc
    return _ParsedSeg(
        uid=str(seg.SOPInstanceUID),
        grid=grid,
        segment_numbers=numbers,
        references=tuple(references),
        masks=tuple(masks),
    )


def _file_mask(path: Path, grid: tuple[int, int], segment: int | None) -> np.ndarray:
    """A label image SimpleITK reads: nonzero (or == ``segment``) is the lesion."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise MaskError(
            path, MaskProblem.UNREADABLE, f"SimpleITK cannot read it: {reason}"
        ) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MaskError(path, MaskProblem.UNREADABLE, "not a label image (several components)")
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise MaskError(
            path, MaskProblem.GRID, f"mask is {'x'.join(map(str, arr.shape))}, not one 2-D slice"
        )
    _check_grid(path, arr.shape, grid)
    mask = arr == segment if segment is not None else arr != 0
    if not mask.any():
        which = f"no pixel has label {segment}" if segment is not None else "no nonzero pixel"
        raise MaskError(path, MaskProblem.EMPTY, which)
    return mask
