"""The README's main job on embedded defaults: no PACS, no broker server, no trained weights.

It runs the node as a real process (C-STORE SCP + local Celery workers on the embedded
filesystem broker), sends a SYNTHETIC study to it over DIMSE as a modality would, waits for the
results in a folder destination and shows them: the SR summary and the heatmaps as PNG.
``--offline`` skips the node and runs ``molsub predict`` in-process instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from model.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE
from molsub.node import wait_until_listening

DEMO_TIMEOUT_S = 600


def _prepare(workdir: Path):  # noqa: ANN202 - (study, bundle info, bundle dir)
    from model.bundle import init_untrained, read_bundle_info
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


def write_demo_config(workdir: Path, bundle_dir: Path) -> Path:
    path = workdir / "node.toml"
    path.write_text(
        "# written by `molsub demo`: embedded broker, results to a folder\n"
        '[node]\nae_title = "MOLSUB"\nhost = "127.0.0.1"\nport = 11112\n'
        f'spool_dir = "{(workdir / "spool").resolve()}"\nstudy_timeout_s = 600\n'
        f'[model]\nbundle = "{bundle_dir.resolve()}"\ndevice = "cpu"\n'
        '[queue]\nbroker_url = ""\n'
        f'[[destinations]]\nname = "demo-folder"\nfolder = "{(workdir / "received").resolve()}"\n'
    )
    return path


def start_node(config: Path, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    """`molsub serve` on a free port; returns the process and the port it listens on.

    The node's and its workers' logs go to ``log_path``; stdout carries the "listening" line.
    """
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "molsub.cli", "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    return proc, wait_until_listening(proc, DEMO_TIMEOUT_S).port


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

    from molsub.config import Destination
    from worker.delivery import store_scu
    from worker.results import summarize_sr

    workdir.mkdir(parents=True, exist_ok=True)
    # A fresh node every run: the study's UIDs are fixed (seed 0), so an old spool would take
    # the study as already done and old results would pass for this run's.
    for leftover in (workdir / "spool", workdir / "received"):
        shutil.rmtree(leftover, ignore_errors=True)
    study, bundle_dir = _prepare(workdir)
    config = write_demo_config(workdir, bundle_dir)
    node, port = start_node(config, workdir / "node.log")
    try:
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
    finally:
        node.terminate()
        node.wait(timeout=120)
    return 0
