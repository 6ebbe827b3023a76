"""End to end through the real `molsub` console script: synth -> model init -> predict.

All data here is SYNTHETIC (or a public sample); nothing measures clinical performance.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.factories import disk_mask, make_seg
from tests.validators import dciodvfy_errors, pixelmed_sr_errors

MOLSUB = [sys.executable, "-m", "molsub.cli"]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def molsub(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*MOLSUB, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"molsub {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "untrained"
    molsub("model", "init", "--untrained", out)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    molsub("synth", out, "--patients", "1", "--seed", "3")
    return out


def _objects(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.filename = str(path)
        found.setdefault(str(ds.SOPClassUID), []).append(ds)
    return found


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, bundle: Path, study: Path) -> Path:
    out = tmp_path_factory.mktemp("pred")
    proc = molsub("predict", "--bundle", bundle, "--out", out, study)
    assert "RESEARCH USE ONLY" in proc.stdout.upper()
    assert "UNTRAINED" in proc.stdout
    return out


def test_predict_writes_sr_sc_and_heatmap_seg_that_validate(predicted: Path, study: Path) -> None:
    objs = _objects(predicted)
    assert len(objs[SR_CLASS]) == 1
    # One segment over CC and MLO: two ROIs -> two SCs, two heatmap SEGs (one per image).
    assert len(objs[SC_CLASS]) == 2
    assert len(objs[SEG_CLASS]) == 2
    mg = [pydicom.dcmread(p) for p in study.rglob("MG_*.dcm")]
    assert {ds.StudyInstanceUID for v in objs.values() for ds in v} == {mg[0].StudyInstanceUID}
    for datasets in objs.values():
        for ds in datasets:
            assert dciodvfy_errors(Path(ds.filename)) == [], ds.filename
    assert pixelmed_sr_errors(Path(objs[SR_CLASS][0].filename)) == []
    for sc in objs[SC_CLASS]:
        assert "UNTRAINED" in sc.SeriesDescription and "RESEARCH" in sc.SeriesDescription.upper()
        assert sc.BurnedInAnnotation == "YES"
        assert max(sc.Rows, sc.Columns) >= 512
    for seg in objs[SEG_CLASS]:
        assert seg.SegmentationType == "FRACTIONAL"
    pngs = list(predicted.rglob("*.png"))
    assert len(pngs) == 2


def test_predict_is_deterministic(
    tmp_path: Path, bundle: Path, study: Path, predicted: Path
) -> None:
    molsub("predict", "--bundle", bundle, "--out", tmp_path, study)
    first = {ds.SOPInstanceUID for v in _objects(predicted).values() for ds in v}
    second = {ds.SOPInstanceUID for v in _objects(tmp_path).values() for ds in v}
    assert first == second and len(first) == 5


def test_model_info_verifies_and_refuses_tampering(tmp_path: Path, bundle: Path) -> None:
    proc = molsub("model", "info", bundle)
    assert "untrained   yes" in proc.stdout and "verified" in proc.stdout
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    weights = copy / "her2.pt"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = molsub("model", "info", copy, check=False)
    assert proc.returncode == 1 and "her2.pt" in proc.stderr


def test_missing_image_and_non_mg_input_are_named(
    tmp_path: Path, bundle: Path, study: Path, samples_dir: Path
) -> None:
    seg_path = next(study.rglob("SEG.dcm"))
    cc = next(study.rglob("MG_*_CC.dcm"))
    seg = pydicom.dcmread(seg_path)
    mlo_uid = pydicom.dcmread(next(study.rglob("MG_*_MLO.dcm"))).SOPInstanceUID
    hologic = samples_dir / "mg" / "MG-Im-Hologic-PropProj.dcm"
    proc = molsub(
        "predict", "--bundle", bundle, "--out", tmp_path, seg_path, cc, hologic, check=False
    )
    assert proc.returncode == 1
    assert seg.SOPInstanceUID in proc.stderr and mlo_uid in proc.stderr
    hologic_uid = pydicom.dcmread(hologic).SOPInstanceUID
    assert hologic_uid in proc.stderr
    assert not list(tmp_path.rglob("*.dcm"))


def test_real_siemens_jpeg_lossless_sample(tmp_path: Path, bundle: Path, samples_dir: Path) -> None:
    """The public Siemens Mammomat image (JPEG Lossless SV1) with a SEG built here."""
    src = samples_dir / "mg" / "OutOfBoundsOverlay.dcm"
    mg = pydicom.dcmread(src)
    assert mg.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    shape = (int(mg.Rows), int(mg.Columns))
    # Lesion near the bottom-right corner: the crop must be padded, not cut.
    mask = disk_mask(shape, (shape[0] - 30, shape[1] - 25), 18)
    seg = make_seg([mg], [mask])
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    out = tmp_path / "out"
    molsub("predict", "--bundle", bundle, "--out", out, src, seg_path)
    objs = _objects(out)
    assert len(objs[SR_CLASS]) == 1 and len(objs[SC_CLASS]) == 1 and len(objs[SEG_CLASS]) == 1
    heat = objs[SEG_CLASS][0]
    assert (heat.Rows, heat.Columns) == shape
    frame = heat.pixel_array.astype(np.float32)
    assert frame.max() > 0
    for datasets in objs.values():
        for ds in datasets:
            assert dciodvfy_errors(Path(ds.filename)) == [], ds.filename
    assert objs[SR_CLASS][0].PatientID == mg.PatientID
