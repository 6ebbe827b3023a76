"""The crop cache: values are lesion_input's, a second call reads no image, each image is read
once per call, keys change with the mask, segment and settings, corrupt files are rebuilt."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from model.preprocess.rois import lesion_input
from tests.factories import disk_mask, make_mg, make_seg
from train.cache import CACHE_VERSION, CropCache, CropError
from train.manifest import Manifest, ManifestRow, read_manifest
from train.masks import read_roi_mask

ROWS, COLS = 160, 128
SETTINGS = {"profile": "default", "bound_size": 10, "input_size": 32}


class CountingReader:
    """pydicom.dcmread that counts which files were read."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def __call__(self, path: Path) -> Dataset:
        self.paths.append(Path(path))
        return pydicom.dcmread(path)


@pytest.fixture
def data(tmp_path: Path) -> Manifest:
    """Image a (SEG with two segments: union and segment 2 rows) and image b (NIfTI mask)."""
    a = make_mg(rows=ROWS, cols=COLS, seed=1, window=(2048, 4096))
    b = make_mg(rows=ROWS, cols=COLS, seed=2, view="MLO")
    a.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    b.save_as(tmp_path / "b.dcm", enforce_file_format=True)
    one, two = disk_mask((ROWS, COLS), (40, 40), 8), disk_mask((ROWS, COLS), (120, 90), 12)
    make_seg([a], [np.stack([one, two])]).save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    sitk.WriteImage(sitk.GetImageFromArray(two.astype(np.uint8)), str(tmp_path / "b.nii.gz"))
    rows = [
        ("a.dcm", "seg.dcm", "CC", ""),
        ("a.dcm", "seg.dcm", "CC", "2"),
        ("b.dcm", "b.nii.gz", "MLO", ""),
    ]
    with (tmp_path / "m.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["patient_id", "study_uid", "image_path", "roi_path", "view", "laterality"]
            + ["subtype", "segment"]
        )
        for image, roi, view, segment in rows:
            writer.writerow(["P1", "1.2.3", image, roi, view, "L", "LumB", segment])
    return read_manifest(tmp_path / "m.csv")


def expected(row: ManifestRow, profile: str = "default") -> np.ndarray:
    ds = pydicom.dcmread(row.image_path)
    mask = read_roi_mask(row.roi_path, ds, row.segment)
    return lesion_input(ds, mask, profile=profile, bound_size=10, input_size=32)


def cache_files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("profile", ["default", "reference"])
def test_crops_equal_lesion_input(data: Manifest, tmp_path: Path, profile: str) -> None:
    crops = CropCache(tmp_path / "cache").crops(
        data.rows, **{**SETTINGS, "profile": profile}, progress=False
    )
    assert crops.shape == (3, 32, 32) and crops.dtype == np.float32
    for crop, row in zip(crops, data.rows, strict=True):
        np.testing.assert_array_equal(crop, expected(row, profile))
    assert not np.array_equal(crops[0], crops[1])  # union and segment 2 differ


def test_second_call_reads_no_image_and_writes_nothing(data: Manifest, tmp_path: Path) -> None:
    reader = CountingReader()
    cache = CropCache(tmp_path / "cache", read_image=reader)
    first = cache.crops(data.rows, **SETTINGS, progress=False)
    # image a has two rows and is read once
    assert sorted(p.name for p in reader.paths) == ["a.dcm", "b.dcm"]
    files = cache_files(tmp_path / "cache")
    assert len(files) == 3 and all(p.suffix == ".npy" for p in files)
    reader.paths.clear()
    again = CropCache(tmp_path / "cache", read_image=reader).crops(
        list(reversed(data.rows)), **SETTINGS, progress=False
    )
    assert reader.paths == []
    np.testing.assert_array_equal(again, first[::-1])  # in the order asked
    assert cache_files(tmp_path / "cache") == files


def test_keys_follow_content_segment_and_settings(data: Manifest, tmp_path: Path) -> None:
    cache = CropCache(tmp_path / "cache")
    union, segment2, nifti = data.rows
    key = cache.key(nifti, **SETTINGS)
    assert len(key) == 64 and key == cache.key(nifti, **SETTINGS)
    assert cache.key(union, **SETTINGS) != cache.key(segment2, **SETTINGS)
    changed = [
        cache.key(nifti, **{**SETTINGS, "profile": "reference"}),
        cache.key(nifti, **{**SETTINGS, "bound_size": 11}),
        cache.key(nifti, **{**SETTINGS, "input_size": 64}),
    ]
    assert len({key, *changed}) == 4
    assert isinstance(CACHE_VERSION, int)
    # the same path with other content: another key, and a crop of the new mask
    before = cache.crops([nifti], **SETTINGS, progress=False)
    moved = disk_mask((ROWS, COLS), (60, 60), 12).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(moved), str(nifti.roi_path))
    assert cache.key(nifti, **SETTINGS) != key
    after = cache.crops([nifti], **SETTINGS, progress=False)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after[0], expected(nifti))


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"garbage",
        lambda data: data[: len(data) // 2],
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # one bit of one value
        lambda data: b"",
    ],
    ids=["garbage", "truncated", "bit-flip", "empty"],
)
def test_corrupt_cache_file_is_rebuilt(
    data: Manifest, tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    reader = CountingReader()
    cache = CropCache(tmp_path / "cache", read_image=reader)
    row = data.rows[2]
    first = cache.crops([row], **SETTINGS, progress=False)
    path = cache.path_for(cache.key(row, **SETTINGS))
    assert path is not None
    good_bytes = path.read_bytes()
    path.write_bytes(damage(good_bytes))
    reader.paths.clear()
    rebuilt = cache.crops([row], **SETTINGS, progress=False)
    assert reader.paths == [row.image_path]  # recomputed, not trusted
    np.testing.assert_array_equal(rebuilt, first)
    assert cache.path_for(cache.key(row, **SETTINGS)).read_bytes() == good_bytes


def test_bad_row_names_its_case(data: Manifest, tmp_path: Path) -> None:
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((ROWS, COLS), np.uint8)), str(data.rows[2].roi_path)
    )
    with pytest.raises(CropError, match=r"case b\.dcm .*b\.dcm\).*empty mask"):
        CropCache(tmp_path / "cache").crops(data.rows, **SETTINGS, progress=False)


def test_unknown_profile_is_refused(data: Manifest, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preprocessing profile 'clahe'"):
        CropCache(tmp_path / "cache").crops(
            data.rows, **{**SETTINGS, "profile": "clahe"}, progress=False
        )


def test_no_rows_and_the_progress_bar(
    data: Manifest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = CropCache(tmp_path / "cache")
    assert cache.crops([], **SETTINGS).shape == (0, 32, 32)
    cache.crops(data.rows, **SETTINGS, progress=True)
    captured = capsys.readouterr()
    assert "cropping" in captured.err and "3/3" in captured.err and captured.out == ""
    assert not list((tmp_path / "cache").rglob(".tmp-*"))
