"""The README's main command: `molsub demo` runs the node on embedded defaults end to end."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom

from common.sop_classes import COMPREHENSIVE_3D_SR, SECONDARY_CAPTURE

DEMO_TIMEOUT_S = 600


def run_demo(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "molsub.cli", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )


def test_demo_gets_results_back_and_a_rerun_processes_the_study_again(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    first = run_demo(workdir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "results back after" in first.stdout
    assert "RESEARCH USE ONLY" in first.stdout and "UNTRAINED" in first.stdout
    received = sorted((workdir / "received").rglob("*.dcm"))
    classes = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in received]
    assert classes.count(COMPREHENSIVE_3D_SR) == 1
    assert classes.count(SECONDARY_CAPTURE) == 2  # one per ROI: the lesion on CC and MLO
    assert sorted(p.name for p in workdir.glob("heatmap-*.png")) == [
        "heatmap-01.png",
        "heatmap-02.png",
    ]

    # Same seed, same UIDs: the second run must process the study again, not report the
    # first run's results.
    second_started = time.time()
    second = run_demo(workdir)
    assert second.returncode == 0, second.stdout + second.stderr
    received_again = sorted((workdir / "received").rglob("*.dcm"))
    assert [p.name for p in received_again] == [p.name for p in received]
    assert all(p.stat().st_mtime >= second_started for p in received_again)
