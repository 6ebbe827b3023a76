"""Builders of small MG images and lesion SEGs for tests. All data made here is SYNTHETIC."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def make_mg(
    pixels: np.ndarray | None = None,
    *,
    rows: int = 256,
    cols: int = 200,
    laterality: str = "L",
    view: str = "CC",
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-0001",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    for_processing: bool = False,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    rescale: tuple[float, float] | None = None,
    seed: int = 0,
) -> Dataset:
    """A single-frame MG image with the header a real mammography unit writes (SYNTHETIC)."""
    if pixels is None:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 2**bits_stored, size=(rows, cols), dtype=np.uint16)
    rows, cols = pixels.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = MG_FOR_PROCESSING if for_processing else MG_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "SYNTHETIC^PATIENT"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "056Y"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101500"
    ds.ContentDate = "20260101"
    ds.ContentTime = "101600"
    ds.AcquisitionDateTime = "20260101101600"
    ds.AccessionNumber = "SYN0001"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = "SYNTHETIC MAMMOGRAM"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "MG"
    ds.Manufacturer = "SYNTHETIC"
    ds.ManufacturerModelName = "molsub-test"
    ds.BodyPartExamined = "BREAST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", ""]
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.ImageLaterality = laterality
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "76752008", "SCT", "Breast"
    ds.AnatomicRegionSequence = [region]
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.ViewPosition = view
    view_item = Dataset()
    view_item.CodeValue, view_item.CodeMeaning = VIEW_CODES[view]
    view_item.CodingSchemeDesignator = "SCT"
    view_item.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view_item]
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.PixelSpacing = [0.1, 0.1]
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.BurnedInAnnotation = "NO"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.DistanceSourceToDetector = 660
    ds.DistanceSourceToPatient = 640
    ds.EstimatedRadiographicMagnificationFactor = 1.0
    ds.KVP = 28
    ds.Exposure = 100
    ds.ExposureTime = 1000
    ds.XRayTubeCurrent = 100
    ds.FilterMaterial = "RHODIUM"
    ds.AnodeTargetMaterial = "TUNGSTEN"
    ds.CompressionForce = 100
    ds.BodyPartThickness = 50
    ds.PositionerPrimaryAngle = 0
    ds.DetectorType = "DIRECT"
    ds.QualityControlImage = "NO"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.OrganExposed = "BREAST"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "SYNTHETIC TEST DATA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    intercept, slope = rescale or (0.0, 1.0)
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.RescaleType = "US"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME2" else -1
    if window is None and not for_processing:
        window = (2 ** (bits_stored - 1), 2**bits_stored)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
        if voi_function:
            ds.VOILUTFunction = voi_function
    ds.AcquisitionContextSequence = []
    ds.LossyImageCompression = "00"
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def make_seg(
    sources: Sequence[Dataset],
    masks: Sequence[np.ndarray],
    *,
    segment_labels: Sequence[str] | None = None,
    seg_uid: str | None = None,
) -> Dataset:
    """A BINARY SEG: ``masks[i]`` (HxW or SxHxW for S segments) is over ``sources[i]``.

    highdicom builds a SEG over one image without a Frame of Reference (as MG images are); a
    SEG over CC and MLO together is made by merging per-image SEGs frame by frame, as other
    toolkits write them.
    """
    seg_uid = seg_uid or generate_uid()
    parts = [
        _single_seg(src, m, segment_labels=segment_labels, seg_uid=seg_uid)
        for src, m in zip(sources, masks, strict=True)
    ]
    if len(parts) == 1:
        return parts[0]
    return _merge_segs(parts)


def _merge_segs(parts: list[Dataset]) -> Dataset:
    merged = roundtrip(parts[0])
    frames = []
    per_frame = []
    ref_instances = []
    for part in parts:
        part = roundtrip(part)
        n = int(part.NumberOfFrames)
        bits = np.unpackbits(np.frombuffer(part.PixelData, np.uint8), bitorder="little")
        frames.append(bits[: n * part.Rows * part.Columns])
        per_frame.extend(part.PerFrameFunctionalGroupsSequence)
        ref_instances.extend(part.ReferencedSeriesSequence[0].ReferencedInstanceSequence)
    for i, item in enumerate(per_frame):
        item.FrameContentSequence[0].DimensionIndexValues = [
            int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ]
        del i
    merged.PerFrameFunctionalGroupsSequence = per_frame
    merged.NumberOfFrames = len(per_frame)
    merged.ReferencedSeriesSequence[0].ReferencedInstanceSequence = ref_instances
    merged.PixelData = np.packbits(np.concatenate(frames), bitorder="little").tobytes()
    return merged


def _single_seg(
    source: Dataset,
    mask: np.ndarray,
    *,
    segment_labels: Sequence[str] | None,
    seg_uid: str,
) -> Dataset:
    masks = [mask]
    sources = [source]
    stacked = [m if m.ndim == 3 else m[None] for m in masks]
    n_segments = stacked[0].shape[0]
    labels = list(segment_labels or [f"Lesion {i + 1}" for i in range(n_segments)])
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=labels[i],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Mass,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=generate_uid(),
            tracking_id=labels[i],
        )
        for i in range(n_segments)
    ]
    # highdicom wants frames x rows x cols x segments.
    pixel_array = np.stack([np.moveaxis(m, 0, -1) for m in stacked]).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=seg_uid,
        instance_number=1,
        manufacturer="SYNTHETIC",
        manufacturer_model_name="molsub-test",
        software_versions="0",
        device_serial_number="0",
        omit_empty_frames=True,
    )
    seg.PatientOrientation = source.PatientOrientation
    return seg


def roundtrip(ds: Dataset) -> Dataset:
    """Write and read back, as a receiver would see the object."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def disk_mask(shape: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return ((rr - center[0]) ** 2 + (cc - center[1]) ** 2) <= radius**2
