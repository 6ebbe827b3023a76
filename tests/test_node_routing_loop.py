"""A PACS rule that routes the node's results back to it must not loop.

The real node (`molsub serve`, embedded workers, UNTRAINED bundle) delivers to a folder; a
SYNTHETIC study goes in, and every result object it produced (SR, 2 SCs, 2 FRACTIONAL heatmap
SEGs) is sent back by storescu. Each is answered with success and dropped ([inputs] own_results
= "ignore", the default): no new unit, nothing new in the spool or the folder, and the log
names each object by UID with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings
from model.bundle import init_untrained
from molsub import launch
from molsub.launch import MOLSUB, wait_for
from molsub.synth import write_synthetic_studies
from tests.dicom_peers import SCU_AET, storescu

RESULT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.34": 1,  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.7": 2,  # Secondary Capture, one per view
    "1.2.840.10008.5.1.4.1.1.66.4": 2,  # heatmap SEG, one per view
}
RESULTS_TIMEOUT_S = 300
SETTLE_S = 5.0  # several dispatcher rounds (1 s each): time for a unit to appear, were one made


def files_in(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        p: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def dicom_files(folder: Path) -> dict[str, tuple[str, Path]]:
    """SOP Instance UID -> (SOP Class UID, file) for the DICOM files under ``folder``."""
    found = {}
    for path in files_in(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found[str(ds.SOPInstanceUID)] = (str(ds.SOPClassUID), path)
        except Exception:  # a file the destination is still writing, or not DICOM
            continue
    return found


def units(config: Path) -> list[dict]:
    proc = subprocess.run(
        [*MOLSUB, "units", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_results_routed_back_are_ignored_without_a_new_unit(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    init_untrained(bundle)
    study = write_synthetic_studies(tmp_path / "study", patients=1, seed=23)[0]
    folder, spool, log = tmp_path / "delivered", tmp_path / "spool", tmp_path / "node.log"
    config = launch.write_config(
        NodeConfig(
            node=NodeSettings(spool_dir=spool, study_timeout_s=600),
            model=ModelSettings(bundle=bundle, device="cpu"),
            destinations=(Destination("folder", folder=folder),),
        ),
        tmp_path / "node.toml",
    )
    try:
        with launch.running_node(config, log, env=dict(os.environ)) as (proc, listening):
            sent = storescu(listening.port, [study.seg_path, *study.image_paths.values()])
            assert sent.returncode == 0, sent.stderr

            def delivered() -> dict[str, tuple[str, Path]] | None:
                assert proc.poll() is None, f"the node exited with {proc.returncode}"
                found = dicom_files(folder)
                counts = {c: sum(v[0] == c for v in found.values()) for c in RESULT_CLASSES}
                done = [u["state"] for u in units(config)] == ["done"]
                return found if counts == RESULT_CLASSES and done else None

            results = wait_for(delivered, RESULTS_TIMEOUT_S, "results in the folder", 2.0)
            spooled, before = files_in(spool / "studies"), files_in(folder)
            assert len(spooled) == 3  # the SEG and its two images

            back = storescu(listening.port, [p for _, p in results.values()], options=("-R", "-v"))
            assert back.returncode == 0, back.stderr
            assert back.stderr.count("Received Store Response (Success)") == 5, back.stderr
            time.sleep(SETTLE_S)

            [unit] = units(config)
            assert (unit["unit_id"], unit["state"]) == (study.seg_uid, "done")
            assert files_in(spool / "studies") == spooled  # nothing spooled
            assert files_in(folder) == before  # nothing delivered again
    except BaseException:
        print(log.read_text(errors="replace")[-6000:] if log.exists() else "(no log)")
        raise
    text = log.read_text(errors="replace")
    for uid in results:
        said = f"C-STORE of {uid} from {SCU_AET} ignored ([inputs] own_results)"
        assert f"{said}: a result of this node" in text, uid
    assert text.count("enqueued (") == 1  # the study's unit, once
