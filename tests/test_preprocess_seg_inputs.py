"""Lesion SEGs in: several images and segments, FRACTIONAL masks, and SEGs that cannot be used."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from common.errors import InputError
from common.seg_refs import referenced_image_uids
from model.preprocess import extract_rois, segment_masks
from tests.factories import disk_mask, make_mg, make_seg, roundtrip

SHAPE = (256, 200)  # 51200 px: every BINARY frame starts on a byte boundary


def by_uid(*images: Dataset) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in images}


TwoViews = tuple[Dataset, Dataset, Dataset, list[np.ndarray]]


@pytest.fixture(scope="module")
def two_views() -> TwoViews:
    """CC and MLO of one breast, a SEG with two lesions drawn on both."""
    study = generate_uid()
    cc = make_mg(rows=SHAPE[0], cols=SHAPE[1], view="CC", study_uid=study, seed=1)
    mlo = make_mg(rows=SHAPE[0], cols=SHAPE[1], view="MLO", study_uid=study, seed=2)
    cc_masks = np.stack([disk_mask(SHAPE, (60, 50), 12), disk_mask(SHAPE, (180, 140), 20)])
    mlo_masks = np.stack([disk_mask(SHAPE, (90, 70), 15), disk_mask(SHAPE, (200, 120), 8)])
    seg = roundtrip(make_seg([cc, mlo], [cc_masks, mlo_masks], segment_labels=["Mass A", "Mass B"]))
    return seg, roundtrip(cc), roundtrip(mlo), [cc_masks, mlo_masks]


def test_multi_image_seg_gives_one_roi_per_segment_and_image(two_views: TwoViews) -> None:
    seg, cc, mlo, (cc_masks, mlo_masks) = two_views
    rois = extract_rois(seg, by_uid(mlo, cc), bound_size=20)
    cc_uid, mlo_uid = str(cc.SOPInstanceUID), str(mlo.SOPInstanceUID)
    assert [(r.segment_number, r.source_sop_instance_uid) for r in rois] == [
        (1, cc_uid),
        (1, mlo_uid),
        (2, cc_uid),
        (2, mlo_uid),
    ]
    assert [r.segment_label for r in rois] == ["Mass A", "Mass A", "Mass B", "Mass B"]
    expected = [cc_masks[0], mlo_masks[0], cc_masks[1], mlo_masks[1]]
    for roi, source_mask in zip(rois, expected, strict=True):
        assert roi.mask.sum() == source_mask.sum()
        height = np.flatnonzero(source_mask.any(axis=1)).size
        width = np.flatnonzero(source_mask.any(axis=0)).size
        assert roi.box.size == max(height, width) + 2 * 20
        assert roi.network_input.shape == (224, 224)
        assert roi.source_frame_number == 1


def test_referenced_image_uids_needs_no_pixels(two_views: TwoViews) -> None:
    seg, cc, mlo, _ = two_views
    header_only = Dataset()
    header_only.update(seg)
    del header_only.PixelData  # nothing to decode: the UIDs come from the header alone
    assert referenced_image_uids(header_only) == [str(cc.SOPInstanceUID), str(mlo.SOPInstanceUID)]


def test_seg_referencing_a_missing_image_names_both(two_views: TwoViews) -> None:
    seg, cc, mlo, _ = two_views
    with pytest.raises(InputError) as caught:
        extract_rois(seg, by_uid(cc))
    assert caught.value.uid == str(seg.SOPInstanceUID)
    assert str(seg.SOPInstanceUID) in str(caught.value)
    assert str(mlo.SOPInstanceUID) in str(caught.value)
    assert "not received" in str(caught.value)


def test_empty_segment_is_refused() -> None:
    mg = make_mg(rows=SHAPE[0], cols=SHAPE[1])
    masks = np.stack([disk_mask(SHAPE, (100, 100), 10), disk_mask(SHAPE, (50, 60), 6)])
    seg = roundtrip(make_seg([mg], [masks]))
    segment_of_frame = [
        int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]
    frame_bytes = SHAPE[0] * SHAPE[1] // 8
    data = bytearray(seg.PixelData)
    emptied = segment_of_frame.index(2)
    data[emptied * frame_bytes : (emptied + 1) * frame_bytes] = bytes(frame_bytes)
    seg.PixelData = bytes(data)
    with pytest.raises(InputError) as caught:
        extract_rois(roundtrip(seg), by_uid(mg))
    assert caught.value.uid == str(seg.SOPInstanceUID)
    assert "segment 2" in str(caught.value) and "empty" in str(caught.value)


def test_seg_grid_not_matching_the_image_is_refused() -> None:
    mg = make_mg(rows=256, cols=200)
    seg = roundtrip(make_seg([mg], [disk_mask((256, 200), (100, 100), 10)]))
    taller = make_mg(rows=300, cols=200)
    taller.SOPInstanceUID = mg.SOPInstanceUID
    with pytest.raises(InputError) as caught:
        extract_rois(seg, by_uid(taller))
    message = str(caught.value)
    assert caught.value.uid == str(seg.SOPInstanceUID)
    assert "256x200" in message and "300x200" in message
    assert str(mg.SOPInstanceUID) in message


def test_seg_over_a_non_mg_image_names_the_image() -> None:
    mg = make_mg(rows=SHAPE[0], cols=SHAPE[1])
    seg = roundtrip(make_seg([mg], [disk_mask(SHAPE, (100, 100), 10)]))
    wrapped = roundtrip(mg)
    wrapped.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # the same pixels as Secondary Capture
    with pytest.raises(InputError) as caught:
        extract_rois(seg, by_uid(wrapped))
    assert caught.value.uid == str(mg.SOPInstanceUID)
    assert "Secondary Capture" in str(caught.value)


def test_a_dataset_that_is_not_a_seg_is_refused() -> None:
    mg = make_mg(rows=SHAPE[0], cols=SHAPE[1])
    with pytest.raises(InputError, match="not a DICOM Segmentation") as caught:
        extract_rois(mg, by_uid(mg))
    assert caught.value.uid == str(mg.SOPInstanceUID)


def test_fractional_seg_is_thresholded_at_half() -> None:
    mg = make_mg(rows=SHAPE[0], cols=SHAPE[1])
    fraction = np.zeros(SHAPE, dtype=np.float32)
    fraction[disk_mask(SHAPE, (120, 100), 30)] = 0.3  # a faint halo: not lesion
    fraction[disk_mask(SHAPE, (120, 100), 14)] = 0.7  # the core
    fraction[disk_mask(SHAPE, (120, 100), 6)] = 1.0
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Soft lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=[mg],
        pixel_array=fraction[None, :, :, None],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="SYNTHETIC",
        manufacturer_model_name="molsub-test",
        software_versions="0",
        device_serial_number="0",
        max_fractional_value=255,
    )
    seg.PatientOrientation = mg.PatientOrientation
    seg = roundtrip(seg)
    assert seg.SegmentationType == "FRACTIONAL"
    (mask,) = segment_masks(seg, by_uid(mg))
    np.testing.assert_array_equal(mask.mask, fraction >= 0.5)
    (roi,) = extract_rois(seg, by_uid(mg), bound_size=10)
    assert roi.mask.sum() == int((fraction >= 0.5).sum())
    assert roi.box.size == 29 + 20


def test_segment_drawn_on_one_view_only_gives_one_roi() -> None:
    study = generate_uid()
    cc = make_mg(rows=SHAPE[0], cols=SHAPE[1], view="CC", study_uid=study)
    mlo = make_mg(rows=SHAPE[0], cols=SHAPE[1], view="MLO", study_uid=study)
    cc_masks = np.stack([disk_mask(SHAPE, (60, 50), 12), disk_mask(SHAPE, (180, 140), 20)])
    mlo_masks = np.stack([disk_mask(SHAPE, (70, 60), 12), np.zeros(SHAPE, dtype=bool)])
    seg = roundtrip(make_seg([cc, mlo], [cc_masks, mlo_masks]))
    rois = extract_rois(seg, by_uid(cc, mlo))
    assert [(r.segment_number, r.source_sop_instance_uid) for r in rois] == [
        (1, str(cc.SOPInstanceUID)),
        (1, str(mlo.SOPInstanceUID)),
        (2, str(cc.SOPInstanceUID)),
    ]
    assert rois[2].mask.sum() == cc_masks[1].sum()


def test_seg_written_by_another_toolkit_reads_bit_for_bit(samples_dir: Path) -> None:
    """highdicom's public CR test pair: the mask equals the SEG's own unpacked frame bits."""
    seg = pydicom.dcmread(samples_dir / "sr_seg" / "seg_image_cr_binary.dcm")
    cr = pydicom.dcmread(samples_dir / "sr_seg" / "cr_source_of_seg_image_cr_binary.dcm")
    assert referenced_image_uids(seg) == [str(cr.SOPInstanceUID)]
    (mask,) = segment_masks(seg, by_uid(cr))
    rows, cols = int(seg.Rows), int(seg.Columns)
    bits = np.unpackbits(np.frombuffer(seg.PixelData, np.uint8), bitorder="little")
    np.testing.assert_array_equal(mask.mask, bits[: rows * cols].reshape(rows, cols) == 1)
    assert mask.mask.any() and not mask.mask.all()
    # A CR is not a mammogram: the crop stage refuses it by the image's UID.
    with pytest.raises(InputError, match="Computed Radiography") as caught:
        extract_rois(seg, by_uid(cr))
    assert caught.value.uid == str(cr.SOPInstanceUID)
