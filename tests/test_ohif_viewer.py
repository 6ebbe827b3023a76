"""The node's results as a user sees them: OHIF 3.12 (npm @ohif/app, prebuilt) in headless Chromium.

The results (built in-process by worker.results, with the MG CC + MLO and the lesion SEG they
derive from) are stored in a real Orthanc; OHIF reads them through Orthanc's DICOMweb, proxied
on the viewer's own origin (tests/ohif_viewer.py). The SR's measurements must be drawn on the
MG and listed in OHIF's measurements panel (our app-config lets OHIF restore them without
asking: disableConfirmationPrompts), with the predicted subtype readable; the SC must render,
the BINARY heatmap SEG must show, and the browser console must stay free of errors (the few
OHIF makes on its own are listed below, each with its reason). What OHIF does with the default
FRACTIONAL heatmap SEG is recorded, not required: OHIF 3.12 cannot show FRACTIONAL SEGs.

Needs scripts/fetch-viewer's cache, Debian's chromium, node and Orthanc; skipped without them
unless MOLSUB_REQUIRE_VIEWER=1 (.ci/run), which makes a missing piece a failure. Screenshots
and the browser's JSON report go to MOLSUB_ARTIFACTS_DIR (else the test's tmp_path).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from common.settings import HeatmapSegType, ResultsSettings
from tests.node_results import node_results
from tests.ohif_viewer import find_viewer_tools, found_or_skip, open_study, serve_viewer
from tests.orthanc_peer import running_orthanc

ARTIFACTS_ENV = "MOLSUB_ARTIFACTS_DIR"

# Console errors OHIF 3.12 logs about things that are not the node's results. Anything else of
# type "error", and every uncaught page error, fails the test.
TOLERATED_CONSOLE_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"^Illegal ERMF value: 1$"),
        "OHIF's radiographic calibration (getERMF) logs this for Estimated Radiographic "
        "Magnification Factor 1, a legal value (no magnification); it is the input MG's "
        "attribute, logged once per render",
    ),
)
# Requests the browser itself cancels when the viewport changes (OHIF aborts frame loads).
TOLERATED_REQUEST_ERRORS = ("net::ERR_ABORTED",)


@pytest.fixture(scope="module")
def tools() -> Any:  # noqa: ANN401 - ViewerTools
    return found_or_skip(*find_viewer_tools())


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where this test's screenshots go: kept by CI (MOLSUB_ARTIFACTS_DIR) or in tmp_path."""
    root = os.environ.get(ARTIFACTS_ENV)
    out = (Path(root) / "ohif" / request.node.name) if root else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def results_study(heatmap_seg: HeatmapSegType) -> tuple[list[Dataset], Dataset]:
    """(MG CC + MLO, lesion SEG and the node's results, the SR): tests/node_results.py's study,
    "Luminal B" (class 1) called everywhere at 0.84, with the heatmap SEG type chosen."""
    results, images, seg = node_results(ResultsSettings(heatmap_seg=heatmap_seg), winner=1)
    datasets = [*images, seg, *results]
    sr = next(ds for ds in datasets if ds.Modality == "SR")
    return datasets, sr


def group_labels(sr: Dataset) -> tuple[list[str], list[str]]:
    """(per-ROI, fused) measurement groups' Comments: the call in words, which OHIF shows."""
    measurements = next(
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    per_roi, fused = [], []
    for group in measurements.ContentSequence:
        texts = [
            str(item.TextValue)
            for item in group.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "121106"
        ]
        is_fused = any(
            item.ConceptNameCodeSequence[0].CodeValue == "MS0904" for item in group.ContentSequence
        )
        (fused if is_fused else per_roi).extend(texts)
    return per_roi, fused


def view_in_ohif(
    tools: Any,  # noqa: ANN401 - ViewerTools
    workdir: Path,
    artifacts: Path,
    datasets: list[Dataset],
    **open_args: Any,  # noqa: ANN401
) -> dict[str, Any]:
    """Store the datasets in a fresh Orthanc, open their study in OHIF; the browser's report."""
    files = workdir / "dicom"
    files.mkdir(parents=True)
    with running_orthanc(workdir / "orthanc") as orthanc:
        for i, ds in enumerate(datasets):
            path = files / f"{i:02d}-{ds.Modality}.dcm"
            ds.save_as(path, enforce_file_format=True)
            answer = orthanc.upload(path)
            assert answer.get("Status") in ("Success", "AlreadyStored"), answer
        with serve_viewer(tools.dist, f"{orthanc.url}/dicom-web") as (base, requests):
            try:
                report = open_study(
                    tools, base, str(datasets[0].StudyInstanceUID), artifacts, **open_args
                )
            finally:
                (artifacts / "requests.txt").write_text("\n".join(requests) + "\n")
    print(f"OHIF screenshots and report in {artifacts}:")
    for shot in report["screenshots"]:
        print(f"  {shot}")
    return report


def console_errors(report: dict[str, Any]) -> list[str]:
    """The browser's errors that are not on the tolerated list."""
    errors = [
        f"console: {c['text']} ({c['location']})"
        for c in report["console"]
        if c["type"] == "error"
        and not any(p.search(c["text"]) for p, _ in TOLERATED_CONSOLE_ERRORS)
    ]
    errors += [f"page error: {e}" for e in report["pageErrors"]]
    errors += [
        f"request: {r['url']} {r.get('status') or r.get('error')}"
        for r in report["failedRequests"]
        if r.get("error") not in TOLERATED_REQUEST_ERRORS
    ]
    return errors


def test_ohif_lists_and_draws_the_results(tools: Any, tmp_path: Path, artifacts: Path) -> None:  # noqa: ANN401
    datasets, sr = results_study(HeatmapSegType.BINARY)
    per_roi, fused = group_labels(sr)
    assert len(per_roi) == 2 and len(fused) == 1, (per_roi, fused)
    report = view_in_ohif(tools, tmp_path, artifacts, datasets, seg="Grad-CAM")
    summary = json.dumps({k: v for k, v in report.items() if k != "console"}, indent=1)[:6000]
    assert not report.get("fatal"), report["fatal"]
    steps = report["steps"]

    # The SR: OHIF restores its measurements into the panel, one per ROI (the fused lesion
    # under "Additional Findings": a point, not a tool's measurement), each labelled with the
    # call in words, which carries the predicted subtype.
    sr_step = steps["sr"]
    assert sr_step.get("thumbnail"), f"no SR thumbnail in OHIF: {report.get('thumbnails')}"
    panel = sr_step.get("panelText", "")
    assert f"Measurements ({len(per_roi)})" in panel, f"measurements not listed: {summary}"
    assert "Additional Findings (1)" in panel, f"fused lesion not listed: {summary}"
    for label in [*per_roi, *fused]:
        assert " ".join(label.split()) in " ".join(panel.split()), f"{label!r} not listed"
    called = "Luminal B"  # results_study's predictions: class 1 of the five wins
    assert all(label.startswith(called) or called in label for label in per_roi + fused)
    # ... and drawn on the MG: annotation SVG over the image, coloured pixels the bare MG lacks.
    svg = sr_step.get("svg") or {}
    assert svg.get("annotationUIDs") and svg.get("shapes"), f"no SR annotation drawn: {summary}"
    bare = steps["mg"]["pixels"]["coloured"]
    assert sr_step["pixels"]["coloured"] > bare + 100, f"SR region not visible: {summary}"
    assert sr_step["pixels"]["lit"] > 0.2 * sr_step["pixels"]["width"] * sr_step["pixels"]["height"]

    # The SC renders: a good part of the viewport lit.
    sc = steps["sc"]
    assert sc.get("thumbnail"), f"no SC thumbnail: {report.get('thumbnails')}"
    assert sc["pixels"]["lit"] > 0.05 * sc["pixels"]["width"] * sc["pixels"]["height"], summary

    # The BINARY heatmap SEG loads: no error screen, coloured overlay pixels.
    loads = steps["seg"]["loads"]
    assert loads, f"no heatmap SEG thumbnail: {report.get('thumbnails')}"
    for load in loads:
        assert "Something went wrong" not in load.get("panelText", ""), load.get("notifications")
        assert load["pixels"] and load["pixels"]["coloured"] > 100, summary

    assert not console_errors(report), "\n".join(console_errors(report))
    assert not report["timeouts"], report["timeouts"]


def test_ohif_on_fractional_heatmap_seg_is_recorded(
    tools: Any,  # noqa: ANN401
    tmp_path: Path,
    artifacts: Path,
) -> None:
    """OHIF 3.12 cannot show a FRACTIONAL SEG (the reason [results] heatmap_seg = "binary"
    exists): record what it does, for the docs, without requiring it."""
    datasets, _ = results_study(HeatmapSegType.FRACTIONAL)
    report = view_in_ohif(tools, tmp_path, artifacts, datasets, steps="seg", seg="Grad-CAM")
    loads = report["steps"].get("seg", {}).get("loads", [])
    outcome = {
        "notifications": [n for load in loads for n in load.get("notifications", [])],
        "error_screen": any("Something went wrong" in load.get("panelText", "") for load in loads),
        "console_errors": console_errors(report),
    }
    (artifacts / "fractional-outcome.json").write_text(json.dumps(outcome, indent=2))
    print("OHIF with the FRACTIONAL heatmap SEG:", json.dumps(outcome, indent=2)[:4000])
    assert loads, f"no heatmap SEG thumbnail: {report.get('thumbnails')}"
