"""Offline prediction: DICOM files in, result objects out, through the node's own stages."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from common.errors import InputError
from common.sop_classes import MG_SOP_CLASSES, SEGMENTATION
from worker.results.result_set import ResultSet

log = logging.getLogger(__name__)


@dataclass
class UnitResult:
    seg_uid: str
    summary: str
    written: list[Path] = field(default_factory=list)


@dataclass
class PredictReport:
    units: list[UnitResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def iter_dicom_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, directories walked recursively (sorted, so runs are reproducible)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            found.append(path)
    return found


def read_inputs(
    paths: Sequence[Path], report: PredictReport
) -> tuple[list[Dataset], dict[str, Dataset]]:
    """Read every file; anything that is neither MG nor SEG is reported, not silently dropped."""
    segs: list[Dataset] = []
    images: dict[str, Dataset] = {}
    for path in iter_dicom_paths(paths):
        if path.suffix.lower() in {".csv", ".txt", ".json", ".png", ".md"}:
            continue
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            report.failures.append(f"file {path}: not a readable DICOM file ({exc})")
            continue
        uid = str(ds.get("SOPInstanceUID", "")) or None
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class == SEGMENTATION:
            segs.append(ds)
        elif sop_class in MG_SOP_CLASSES:
            if uid in images:
                report.failures.append(f"object {uid} (file {path}): given twice; first kept")
                continue
            images[str(uid)] = ds
        else:
            name = getattr(pydicom.uid.UID(sop_class), "name", sop_class) if sop_class else "none"
            report.failures.append(
                f"object {uid} (file {path}): not an MG image or a SEG (SOP class {name})"
            )
    return segs, images


def predict_files(
    paths: Sequence[Path],
    *,
    bundle_dir: Path,
    out_dir: Path,
    device: str = "cpu",
    write_png: bool = True,
) -> PredictReport:
    """Run every SEG among ``paths`` through the node's pipeline; write the objects."""
    from worker.pipeline import BundleModel, Pipeline, failure_kind
    from worker.results.overlay import render_overlay
    from worker.results.secondary_capture import image_label
    from worker.results.summary import summarize_sr

    report = PredictReport()
    segs, images = read_inputs(paths, report)
    if not segs:
        return report
    pipeline = Pipeline(BundleModel(bundle_dir, device))
    for seg in segs:
        seg_uid = str(seg.SOPInstanceUID)
        try:
            output = pipeline.run(seg, images)
        except Exception as exc:  # one SEG's failure must not stop the others; each is reported
            reason = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            log.error("SEG %s not processed (%s): %s", seg_uid, failure_kind(exc), reason)
            report.failures.append(f"SEG {seg_uid}: {reason}" if seg_uid not in reason else reason)
            continue
        target = out_dir / seg_uid
        target.mkdir(parents=True, exist_ok=True)
        written = _write_objects(target, output.results)
        rois = output.unit.rois
        if write_png:
            from PIL import Image

            by_uid = {str(s.SOPInstanceUID): s for s in output.unit.sources}
            for i, (roi, pred) in enumerate(zip(rois, output.predictions, strict=True), start=1):
                png = target / f"heatmap-{i:02d}.png"
                label = image_label(by_uid[roi.source_sop_instance_uid])
                Image.fromarray(render_overlay(roi, pred, output.info, label=label)).save(png)
                written.append(png)
        report.units.append(UnitResult(seg_uid, summarize_sr(output.results.sr), written))
        log.info("SEG %s: %d ROI(s), %d objects written", seg_uid, len(rois), len(written))
    return report


def _write_objects(target: Path, results: ResultSet) -> list[Path]:
    written = [target / "SR.dcm"]
    results.sr.save_as(written[0], enforce_file_format=True)
    for i, sc in enumerate(results.secondary_captures, start=1):
        written.append(target / f"SC-{i:02d}.dcm")
        sc.save_as(written[-1], enforce_file_format=True)
    for i, seg in enumerate(results.heatmap_segs, start=1):
        written.append(target / f"GRADCAM-SEG-{i:02d}.dcm")
        seg.save_as(written[-1], enforce_file_format=True)
    return written
