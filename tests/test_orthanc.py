"""The node behind a real Orthanc (Debian's 1.10): routed by REST, by the shipped Lua scripts,
and into the hardened configuration that deploy/orthanc/orthanc.json ships.

One node (`molsub serve`, embedded workers, UNTRAINED bundle) serves the whole module; its
destination is Orthanc by DICOM on ports chosen beforehand, and each case starts its own Orthanc
(fresh storage) on those ports, with the node registered as modality "molsub". A case uploads a
study over REST, has it routed, and waits until Orthanc holds the SR, both SCs and both heatmap
SEGs in the input's study with the input's patient and study attributes, while Orthanc logs no
warning from the moment routing starts. Without Orthanc the module skips (tests/orthanc_peer.py).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from common.settings import Destination, ModelSettings, NodeConfig, NodeSettings, QueueSettings
from model.bundle import init_untrained
from molsub import launch
from molsub.launch import MOLSUB, free_port, wait_for
from molsub.synth import write_synthetic_studies
from tests.dicom_peers import SCU_AET, storescu
from tests.factories import disk_mask, make_seg
from tests.orthanc_peer import (
    OrthancPeer,
    log_warnings,
    read_orthanc_json,
    require_orthanc,
    running_orthanc,
    wait_until_jobs_done,
)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "orthanc"
SHIPPED_CONFIG = DEPLOY / "orthanc.json"
ROUTE_LUA = DEPLOY / "molsub-route.lua"
STABLE_LUA = DEPLOY / "molsub-route-stable.lua"

SR, SC, SEG = (
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.66.4",
)
NODE_AET = "MOLSUB"
MANUFACTURER = "molsub-node open-source project"
RESULTS_TIMEOUT_S = 300
STABLE_AGE_S = 3
SETTLE_S = 6.0  # several node dispatcher rounds and Orthanc job polls after the last result
IDENTITY = ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber")


@dataclass(frozen=True)
class Node:
    """The module's running node and the Orthanc ports its destination points at."""

    config: Path
    log: Path
    port: int
    proc: subprocess.Popen[str]
    orthanc_http: int
    orthanc_dicom: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def unit(self, unit_id: str) -> dict | None:
        proc = subprocess.run(
            [*MOLSUB, "units", "--config", str(self.config), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return next((u for u in json.loads(proc.stdout) if u["unit_id"] == unit_id), None)

    def orthanc(
        self,
        workdir: Path,
        **kwargs: Any,  # noqa: ANN401
    ) -> AbstractContextManager[OrthancPeer]:
        """``running_orthanc`` on this node's destination ports, the node as "molsub"."""
        kwargs.setdefault("modalities", {"molsub": (NODE_AET, "127.0.0.1", self.port)})
        return running_orthanc(
            workdir, http_port=self.orthanc_http, dicom_port=self.orthanc_dicom, **kwargs
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    require_orthanc()
    work = tmp_path_factory.mktemp("orthanc-node")
    bundle = work / "bundle"
    init_untrained(bundle)
    http, dicom = free_port(), free_port()
    config = launch.write_config(
        NodeConfig(
            # Orthanc calls as ORTHANC; TESTSCU is the negative case's direct sender.
            node=NodeSettings(
                ae_title=NODE_AET,
                allowed_calling_aets=("ORTHANC", SCU_AET),
                spool_dir=work / "spool",
                study_timeout_s=600,
            ),
            model=ModelSettings(bundle=bundle, device="cpu"),
            # One quick retry: the rejection case ends failed in seconds, not minutes.
            queue=QueueSettings(
                delivery_max_retries=1, delivery_retry_base_s=1.0, delivery_retry_max_s=2.0
            ),
            destinations=(
                Destination(
                    "orthanc",
                    ae_title="ORTHANC",
                    host="127.0.0.1",
                    port=dicom,
                    acse_timeout_s=10,
                    dimse_timeout_s=60,
                    network_timeout_s=60,
                ),
            ),
        ),
        work / "node.toml",
    )
    log = work / "node.log"
    try:
        with launch.running_node(config, log, env=dict(os.environ)) as (proc, listening):
            yield Node(config, log, listening.port, proc, http, dicom)
    except BaseException:
        print(log.read_text(errors="replace")[-6000:] if log.exists() else "(no node log)")
        raise


def synthetic(folder: Path, seed: int) -> tuple[list[Path], Path, str, str]:
    """A SYNTHETIC study: (files, SEG file, SEG UID = the node's unit id, StudyInstanceUID)."""
    study = write_synthetic_studies(folder, patients=1, seed=seed)[0]
    return (
        [*study.image_paths.values(), study.seg_path],
        study.seg_path,
        study.seg_uid,
        study.study_uid,
    )


def upload(orthanc: OrthancPeer, files: list[Path]) -> list[str]:
    """Every file over REST; Orthanc's instance IDs."""
    ids = []
    for path in files:
        answer = orthanc.upload(path)
        assert answer["Status"] == "Success", answer
        ids.append(answer["ID"])
    return ids


def wait_for_results(
    node: Node, orthanc: OrthancPeer, unit_id: str, study_uid: str, images: int = 2
) -> list[dict]:
    """Orthanc's study holds the SR, an SC and a heatmap SEG per image, and the unit is done."""
    expected = sorted([SR] + [SC, SEG] * images)

    def ready() -> list[dict] | None:
        assert node.proc.poll() is None, f"the node exited with {node.proc.returncode}"
        results = [
            t for t in orthanc.study_instances(study_uid) if t.get("Manufacturer") == MANUFACTURER
        ]
        classes = sorted(t["SOPClassUID"] for t in results)
        if classes != expected:
            return None
        unit = node.unit(unit_id)
        return results if unit and unit["state"] == "done" else None

    return wait_for(ready, RESULTS_TIMEOUT_S, f"the results of unit {unit_id} in Orthanc", 2.0)


def assert_same_study(orthanc: OrthancPeer, results: list[dict], source: Path) -> None:
    """One Orthanc study and patient; every result carries the input's identity."""
    src = pydicom.dcmread(source, stop_before_pixels=True)
    assert len(orthanc.study_ids(str(src.StudyInstanceUID))) == 1
    assert len(orthanc.get("/patients")) == 1
    for tags in results:
        for keyword in IDENTITY:
            assert tags.get(keyword, "") == str(src.get(keyword, "")), (
                keyword,
                tags["SOPInstanceUID"],
            )


def warnings_since(orthanc: OrthancPeer, offset: int) -> list[str]:
    return log_warnings(orthanc.log_text()[offset:])


def own_results_ignored(node: Node, results: list[dict]) -> list[str]:
    """The node's log lines saying a result came back to it (none when nothing loops)."""
    text = node.log_text()
    return [
        r["SOPInstanceUID"] for r in results if f"C-STORE of {r['SOPInstanceUID']} from" in text
    ]


@pytest.mark.slow
def test_rest_store_to_the_node_returns_results_into_the_study(node: Node, tmp_path: Path) -> None:
    files, _, unit_id, study_uid = synthetic(tmp_path / "study", seed=31)
    with node.orthanc(tmp_path / "orthanc") as orthanc:
        ids = upload(orthanc, files)
        offset = len(orthanc.log_text())
        job = orthanc.post("/modalities/molsub/store", {"Resources": ids, "Synchronous": True})
        assert job is not None
        results = wait_for_results(node, orthanc, unit_id, study_uid)
        wait_until_jobs_done(orthanc)
        time.sleep(1.0)
        assert_same_study(orthanc, results, files[0])
        assert warnings_since(orthanc, offset) == []


@pytest.mark.slow
def test_per_instance_lua_routes_inputs_and_never_the_results(node: Node, tmp_path: Path) -> None:
    files, _, unit_id, study_uid = synthetic(tmp_path / "study", seed=32)
    with node.orthanc(tmp_path / "orthanc", lua_scripts=[ROUTE_LUA]) as orthanc:
        offset = len(orthanc.log_text())
        upload(orthanc, files)  # the Lua script does the rest
        results = wait_for_results(node, orthanc, unit_id, study_uid)
        time.sleep(SETTLE_S)
        jobs = wait_until_jobs_done(orthanc)
        assert len(jobs) == 3 and all(j["State"] == "Success" for j in jobs), jobs  # MG, MG, SEG
        assert_same_study(orthanc, results, files[0])
        assert warnings_since(orthanc, offset) == []
    assert own_results_ignored(node, results) == []
    assert node.log_text().count(f"unit {unit_id} enqueued (") == 1


@pytest.mark.slow
def test_hardened_shipped_config_with_stable_study_lua(node: Node, tmp_path: Path) -> None:
    """deploy/orthanc/orthanc.json as shipped (its password replaced): the stable-study rule
    routes once, and fires again after the results came without sending anything."""
    files, _, unit_id, study_uid = synthetic(tmp_path / "study", seed=33)
    password = secrets.token_urlsafe(12)
    with node.orthanc(
        tmp_path / "orthanc",
        base_config=SHIPPED_CONFIG,
        lua_scripts=[STABLE_LUA],
        stable_age_s=STABLE_AGE_S,
        extra={"RegisteredUsers": {"molsub-admin": password}},
    ) as orthanc:
        config = json.loads(orthanc.config_path.read_text())  # type: ignore[union-attr]
        assert config["DicomAlwaysAllowStore"] is False and config["DicomCheckModalityHost"] is True
        assert orthanc.auth == ("molsub-admin", password)
        offset = len(orthanc.log_text())
        upload(orthanc, files)
        results = wait_for_results(node, orthanc, unit_id, study_uid)
        time.sleep(STABLE_AGE_S + SETTLE_S)  # the study is stable again: the rule ran twice
        jobs = wait_until_jobs_done(orthanc)
        assert len(jobs) == 1 and jobs[0]["State"] == "Success", jobs  # one routing, ever
        assert_same_study(orthanc, results, files[0])
        routed = [
            i["ID"]
            for i in orthanc.get(f"/studies/{orthanc.study_ids(study_uid)[0]}/instances")
            if "MolsubRouted" in orthanc.get(f"/instances/{i['ID']}/metadata")
        ]
        assert len(routed) == 3  # the two MG and the input SEG, not the results
        changes = orthanc.get("/changes?limit=10000")["Changes"]
        stable = [c for c in changes if c["ChangeType"] == "StableStudy"]
        assert len(stable) >= 2, changes  # it did fire again once the results had come
        assert warnings_since(orthanc, offset) == []
    assert own_results_ignored(node, results) == []
    assert node.log_text().count(f"unit {unit_id} enqueued (") == 1


@pytest.mark.slow
def test_hardened_shipped_config_with_per_instance_lua_and_a_real_siemens_image(
    node: Node, tmp_path: Path, samples_dir: Path
) -> None:
    """A public Siemens Mammomat image (JPEG Lossless) with a SEG built here, through the
    shipped hardened config and per-instance Lua."""
    source = samples_dir / "mg" / "OutOfBoundsOverlay.dcm"
    mg = pydicom.dcmread(source)
    shape = (int(mg.Rows), int(mg.Columns))
    seg = make_seg([mg], [disk_mask(shape, (shape[0] // 2, shape[1] // 2), 40)])
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    with node.orthanc(
        tmp_path / "orthanc",
        base_config=SHIPPED_CONFIG,
        lua_scripts=[ROUTE_LUA],
        extra={"RegisteredUsers": {"molsub-admin": secrets.token_urlsafe(12)}},
    ) as orthanc:
        offset = len(orthanc.log_text())
        upload(orthanc, [source, seg_path])
        results = wait_for_results(
            node, orthanc, str(seg.SOPInstanceUID), str(mg.StudyInstanceUID), images=1
        )
        time.sleep(SETTLE_S)
        jobs = wait_until_jobs_done(orthanc)
        assert len(jobs) == 2 and all(j["State"] == "Success" for j in jobs), jobs
        assert_same_study(orthanc, results, source)
        assert warnings_since(orthanc, offset) == []
    assert own_results_ignored(node, results) == []


@pytest.mark.slow
def test_hardened_orthanc_that_does_not_know_the_node_rejects_it(
    node: Node, tmp_path: Path
) -> None:
    files, _, unit_id, _ = synthetic(tmp_path / "study", seed=34)
    with node.orthanc(tmp_path / "orthanc", hardened=True, modalities={}) as orthanc:
        sent = storescu(node.port, files)  # straight to the node: Orthanc cannot route to it
        assert sent.returncode == 0, sent.stderr

        def ended() -> dict | None:
            unit = node.unit(unit_id)
            return unit if unit and unit["state"] in ("done", "failed") else None

        unit = wait_for(ended, RESULTS_TIMEOUT_S, f"unit {unit_id} to end", 2.0)
        assert orthanc.get("/instances") == []
        log = orthanc.log_text()
    assert unit["state"] == "failed", unit
    reason = unit["reason"] or ""
    assert "rejected" in reason and f"ORTHANC@127.0.0.1:{orthanc.dicom_port}" in reason, reason
    assert "calling AE title not recognised" in reason, reason
    # Orthanc says why, as a warning: that is the one case where its log should have one.
    assert f'Modality "{NODE_AET}" is not listed in the "DicomModalities"' in log
    assert f"Rejected association for remote AET {NODE_AET} on IP 127.0.0.1" in log


def test_shipped_config_parses_and_names_the_node_and_the_script() -> None:
    config = read_orthanc_json(SHIPPED_CONFIG)
    molsub = config["DicomModalities"]["molsub"]
    assert (molsub["AET"], molsub["Port"], molsub["AllowStore"]) == (NODE_AET, 11112, True)
    assert config["DicomAlwaysAllowStore"] is False and config["DicomCheckModalityHost"] is True
    assert any(p.endswith("libOrthancDicomWeb.so") for p in config["Plugins"])
    assert [Path(p).name for p in config["LuaScripts"]] == [ROUTE_LUA.name]
    assert "MolsubRouted" in config["UserMetadata"]
    for script in (ROUTE_LUA, STABLE_LUA):
        text = script.read_text()
        assert f"'{MANUFACTURER}'" in text and f"'{NODE_AET}'" in text
