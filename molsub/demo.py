"""The README's main job on embedded defaults: no PACS, no broker server, no trained weights.

It runs the node as a real process (C-STORE SCP + local Celery workers on the embedded
filesystem broker), sends a SYNTHETIC study to it over DIMSE as a modality would, waits for the
results in a folder destination and shows them: the SR summary and the heatmaps as PNG.
``--offline`` skips the node and runs ``molsub predict`` in-process instead.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings
from common.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE
from molsub.launch import running_node, write_config

if TYPE_CHECKING:
    from molsub.synth import SynthStudy

DEMO_TIMEOUT_S = 600


def _prepare(workdir: Path) -> tuple[SynthStudy, Path]:
    """The SYNTHETIC study and the UNTRAINED bundle the demo uses."""
    from model.bundle import init_untrained
    from model.bundle_info import read_bundle_info
    from molsub.synth import write_synthetic_studies

    bundle_dir = workdir / "bundle"
    study = write_synthetic_studies(workdir / "studies", patients=1, seed=0)[0]
    if (bundle_dir / "bundle.json").exists():
        info = read_bundle_info(bundle_dir)
    else:
        info = init_untrained(bundle_dir)
    print(f"SYNTHETIC study {study.patient_id} ({study.subtype}); bundle {info.display_name}")
    return study, bundle_dir


def run_offline(workdir: Path) -> int:
    from molsub.predict import predict_files

    study, bundle_dir = _prepare(workdir)
    report = predict_files(study.paths, bundle_dir=bundle_dir, out_dir=workdir / "results")
    for unit in report.units:
        print(unit.summary)
        for path in unit.written:
            print(f"  {'heatmap PNG' if path.suffix == '.png' else 'DICOM':11s} {path}")
    for failure in report.failures:
        print(f"error: {failure}")
    return 1 if report.failures or not report.units else 0


def demo_config(workdir: Path, bundle_dir: Path) -> NodeConfig:
    """Embedded broker, the UNTRAINED bundle on the CPU, results to a folder."""
    return NodeConfig(
        node=NodeSettings(ae_title="MOLSUB", spool_dir=workdir / "spool"),
        model=ModelSettings(bundle=bundle_dir, device="cpu"),
        destinations=(Destination(name="demo-folder", folder=workdir / "received"),),
    )


def wait_for_results(folder: Path, timeout_s: float = DEMO_TIMEOUT_S) -> tuple[Path, list[Path]]:
    """The SR and as many SCs as it has ROIs, once all have arrived."""
    import pydicom

    from worker.results.summary import measurement_groups

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        by_class: dict[str, list[Path]] = {}
        for path in sorted(folder.rglob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            by_class.setdefault(str(ds.SOPClassUID), []).append(path)
        srs = by_class.get(COMPREHENSIVE_3D_SR, [])
        if srs:
            sr = pydicom.dcmread(srs[0])
            rois = sum(1 for _ in measurement_groups(sr))
            if len(by_class.get(SECONDARY_CAPTURE, [])) >= rois:
                return srs[0], by_class[SECONDARY_CAPTURE]
        time.sleep(0.5)
    raise TimeoutError(f"no complete results in {folder} after {timeout_s:.0f} s")


def run_demo(workdir: Path, offline: bool = False) -> int:
    """Node mode: synth -> C-STORE to the node -> SR + SC back in a folder -> summary + PNG."""
    if offline:
        return run_offline(workdir)
    import pydicom
    from PIL import Image

    from worker.delivery.targets import store_scu
    from worker.results.summary import summarize_sr

    workdir.mkdir(parents=True, exist_ok=True)
    # A fresh node every run: the study's UIDs are fixed (seed 0), so an old spool would take
    # the study as already done and old results would pass for this run's.
    for leftover in (workdir / "spool", workdir / "received"):
        shutil.rmtree(leftover, ignore_errors=True)
    study, bundle_dir = _prepare(workdir)
    config = write_config(demo_config(workdir, bundle_dir), workdir / "node.toml")
    with running_node(config, workdir / "node.log", timeout_s=DEMO_TIMEOUT_S) as (_, listening):
        port = listening.port
        print(
            f"node listening on 127.0.0.1:{port} (log: {workdir / 'node.log'}); "
            "sending the study by C-STORE"
        )
        started = time.monotonic()
        target = Destination(name="node", ae_title="MOLSUB", host="127.0.0.1", port=port)
        store_scu(target, study.paths, calling_ae="MOLSUB_DEMO")
        sr_path, sc_paths = wait_for_results(workdir / "received")
        print(f"results back after {time.monotonic() - started:.1f} s")
        print(summarize_sr(pydicom.dcmread(sr_path)))
        print(f"  SR          {sr_path}")
        for i, path in enumerate(sc_paths, start=1):
            png = workdir / f"heatmap-{i:02d}.png"
            Image.fromarray(pydicom.dcmread(path).pixel_array).save(png)
            print(f"  SC          {path}\n  heatmap PNG {png}")
    return 0
