"""Every unit ends done or failed, with the reason, through the real node.

One embedded-mode node (`molsub serve`, its Celery workers, the UNTRAINED bundle) with dcmtk's
storescp as the PACS:
- every messy-header case of tests/header_cases.py goes in by C-STORE and ends ``done``, its
  SR, SC and heatmap SEG at the PACS without dciodvfy errors;
- a SEG with an empty segment ends ``failed`` (permanent) at once, with the reason, and its
  spooled objects are still there;
- a study sent while the PACS is down ends ``failed`` (transient) when the delivery retries are
  spent; `molsub retry` after the PACS is back runs it again to ``done``.
`molsub units` shows the states, times and reasons, as a table and as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings, QueueSettings
from model.bundle import init_untrained
from molsub import launch
from molsub.launch import MOLSUB, free_port, stop_process, wait_for
from tests.dicom_peers import start_storescp, storescu
from tests.factories import disk_mask, make_mg, make_seg
from tests.header_cases import CASES, build_case
from tests.validators import dciodvfy_errors

PACS_AET = "PACS"
FINAL = ("done", "failed")


@dataclass
class Node:
    config: Path
    port: int
    pacs: subprocess.Popen[bytes]  # dcmtk storescp; a test may stop and start it again
    pacs_port: int
    pacs_dir: Path
    spool: Path
    log: Path

    def units(self, *args: str) -> list[dict]:
        proc = subprocess.run(
            [*MOLSUB, "units", "--config", str(self.config), "--json", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def unit(self, unit_id: str) -> dict:
        return next((u for u in self.units() if u["unit_id"] == unit_id), {})

    def wait_final(self, unit_ids: list[str], timeout_s: float = 600) -> dict[str, dict]:
        def finished() -> dict[str, dict] | None:
            units = {u["unit_id"]: u for u in self.units()}
            if all(units.get(i, {}).get("state") in FINAL for i in unit_ids):
                return units
            return None

        try:
            return wait_for(finished, timeout_s, f"{len(unit_ids)} units done or failed", 2.0)
        except TimeoutError:
            print(self.log.read_text(errors="replace")[-6000:])
            raise


def send(port: int, files: list[Path]) -> None:
    # -xs: propose JPEG Lossless SV1 (the Siemens sample) besides the uncompressed syntaxes.
    proc = storescu(port, files, options=("-R", "-xs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    bundle = tmp / "bundle"
    init_untrained(bundle)
    pacs_port = free_port()
    config = NodeConfig(
        node=NodeSettings(spool_dir=tmp / "spool", study_timeout_s=600),
        model=ModelSettings(bundle=bundle, device="cpu"),
        # Spent quickly, so that the PACS-down study fails within the test.
        queue=QueueSettings(
            delivery_max_retries=1, delivery_retry_base_s=1.0, delivery_retry_max_s=1.0
        ),
        destinations=(Destination("pacs", ae_title=PACS_AET, host="127.0.0.1", port=pacs_port),),
    )
    path = launch.write_config(config, tmp / "node.toml")
    log = tmp / "node.log"
    pacs = start_storescp(tmp / "pacs", pacs_port, aet=PACS_AET, log=tmp / "storescp.log")
    node = None
    try:
        with launch.running_node(path, log, env=dict(os.environ)) as (_, listening):
            node = Node(path, listening.port, pacs, pacs_port, tmp / "pacs", tmp / "spool", log)
            yield node
    finally:
        stop_process(node.pacs if node else pacs)


@pytest.fixture(scope="module")
def header_run(node: Node, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every header case and the empty-segment SEG sent; case -> its unit, once all are final."""
    folder = tmp_path_factory.mktemp("cases")
    seg_uids: dict[str, str] = {}
    names: dict[str, tuple[str, object]] = {}  # case -> the MG's PatientName, character set
    for index, case in enumerate(CASES):
        mg, seg = build_case(case, samples_dir, index)
        files = []
        for name, ds in (("MG", mg), ("SEG", seg)):
            files.append(folder / f"{case.name}-{name}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        send(node.port, files)
        seg_uids[case.name] = str(seg.SOPInstanceUID)
        names[case.name] = (str(mg.PatientName), mg.get("SpecificCharacterSet"))
    mg = make_mg(seed=5)
    seg = make_seg([mg], [disk_mask((256, 200), (90, 90), 15)])
    seg.PixelData = bytes(len(seg.PixelData))  # the one segment is empty
    files = [folder / "empty-MG.dcm", folder / "empty-SEG.dcm"]
    mg.save_as(files[0], enforce_file_format=True)
    seg.save_as(files[1], enforce_file_format=True)
    send(node.port, files)
    seg_uids["empty-segment"] = str(seg.SOPInstanceUID)
    units = node.wait_final(list(seg_uids.values()))
    return {name: {**units[uid], "source_name": names.get(name)} for name, uid in seg_uids.items()}


@pytest.mark.slow
def test_every_header_case_ends_done_with_valid_results_at_the_pacs(
    node: Node, header_run: dict
) -> None:
    by_study: dict[str, list[Path]] = {}
    for path in node.pacs_dir.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(path)
    for case in CASES:
        unit = header_run[case.name]
        assert unit["state"] == "done", (case.name, unit)
        assert unit["reason"] == ""
        assert {"ready", "enqueued", "prepared", "inferred", "done"} <= set(unit["times"])
        received = by_study.get(unit["study_uid"], [])
        assert len(received) == 3, (case.name, received)  # SR, SC, heatmap SEG
        for path in received:
            assert dciodvfy_errors(path) == [], (case.name, path.name)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            # The name arrives at the PACS as it left the modality, in its character set.
            assert (str(ds.PatientName), ds.get("SpecificCharacterSet")) == unit["source_name"]


@pytest.mark.slow
def test_empty_segment_fails_at_once_with_the_reason_and_keeps_its_objects(
    node: Node, header_run: dict
) -> None:
    unit = header_run["empty-segment"]
    assert unit["state"] == "failed"
    assert unit["reason"].startswith("permanent: prepare: ")
    assert "segment 1" in unit["reason"] and "empty" in unit["reason"]
    assert unit["seg_uid"] in unit["reason"]  # named by UID
    assert "prepared" not in unit["times"] and "failed" in unit["times"]
    spooled = list((node.spool / "studies" / unit["study_uid"]).glob("*.dcm"))
    assert len(spooled) == 2  # the SEG and its MG: nothing is deleted by a failure
    failed = node.units("--state", "failed")
    assert [u["unit_id"] for u in failed] == [unit["unit_id"]]
    table = subprocess.run(
        [*MOLSUB, "units", "--config", str(node.config), "--state", "failed"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unit["unit_id"] in table.stdout and "permanent: prepare:" in table.stdout


@pytest.mark.slow
def test_pacs_down_fails_after_retries_then_retry_delivers(
    node: Node, header_run: dict, tmp_path: Path
) -> None:
    """After the header cases (so that their results are in): the PACS goes down."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(800, 3000, (256, 200)).astype(np.uint16)
    mg = make_mg(pixels, seed=9)
    seg = make_seg([mg], [disk_mask((256, 200), (120, 100), 20)])
    files = [tmp_path / "MG.dcm", tmp_path / "SEG.dcm"]
    mg.save_as(files[0], enforce_file_format=True)
    seg.save_as(files[1], enforce_file_format=True)
    unit_id = str(seg.SOPInstanceUID)
    stop_process(node.pacs)
    send(node.port, files)
    unit = node.wait_final([unit_id])[unit_id]
    assert unit["state"] == "failed", unit
    assert unit["reason"].startswith("transient: delivery failed after 1 retries (pacs: ")
    node.pacs = start_storescp(node.pacs_dir, node.pacs_port, aet=PACS_AET)
    retry = subprocess.run(
        [*MOLSUB, "retry", unit_id, "--config", str(node.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert retry.returncode == 0, retry.stderr
    unit = wait_for(
        lambda: (u := node.unit(unit_id)).get("state") == "done" and u,
        600,
        "the retried unit to be done",
        2.0,
    )
    assert unit["reason"] == ""
    sent = [
        p
        for p in node.pacs_dir.iterdir()
        if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == unit["study_uid"]
    ]
    assert len(sent) == 3
    # A done unit is not retried.
    again = subprocess.run(
        [*MOLSUB, "retry", unit_id, "--config", str(node.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1 and "only failed or timed-out" in again.stderr
