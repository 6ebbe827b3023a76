"""The status page and its actions over the real Starlette app (molsub/web), without a network:
starlette's TestClient over create_app with a NodeView on a real StateDB in tmp_path, a
prometheus registry holding the node's gauges, a bundle.json and a folder destination.

What an admin relies on: the units of the last 24 hours newest first with their reasons, the
state filter, no patient data unless asked for (and then escaped), the model and the gauges as
/metrics has them, and actions that are refused without the token and do what they say with it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from prometheus_client import CollectorRegistry, Gauge
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from starlette.testclient import TestClient

from common.progress import FailureKind, ProgressFiles
from common.settings import Destination, HttpSettings, ModelSettings, NodeConfig, NodeSettings
from common.spool_layout import SpoolLayout
from common.units import UnitState
from molsub.web.app import create_app
from molsub.web.view import Check, NodeView, Readiness
from scp.spool import SEGMENTATION, ObjectInfo
from scp.state import StateDB
from tests.factories import MG_FOR_PRESENTATION
from tests.header_cases import CASES, build_case
from worker.delivery.store import DestinationState, ResultStore

TOKEN = "s3cret-token-for-tests-0123456789"
HOUR = 3600.0
FAILED_REASON = "permanent: SEG frame 2 refers to <img src=x> & no image of the unit"
PATIENT_ID = "Jürgen<b>42</b>"
ACCESSION = "王&<i>7"


@dataclass
class Node:
    client: TestClient
    db: StateDB
    spool: Path
    out: Path
    uids: dict[str, str]
    woken: list[bool] = field(default_factory=list)
    delivered: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    delivered_event: threading.Event = field(default_factory=threading.Event)


def _uid(name: str) -> str:
    return generate_uid(entropy_srcs=["status-page", name])


def _add_unit(
    db: StateDB, spool: Path, name: str, created: float, end: UnitState | None, detail: str = ""
) -> str:
    """A unit whose SEG arrived at ``created``, its image a second later; then the stages
    (when ``end`` is done or failed) with stamps a few seconds apart."""
    seg_uid, mg_uid, study = _uid(name), _uid(name + "-mg"), _uid(name + "-study")
    folder = SpoolLayout.at(spool).studies / study
    db.record_instance(
        ObjectInfo(seg_uid, SEGMENTATION, study, (mg_uid,)), folder / f"{seg_uid}.dcm", created
    )
    if end is None:
        return seg_uid
    db.record_instance(
        ObjectInfo(mg_uid, MG_FOR_PRESENTATION, study), folder / "mg.dcm", created + 1
    )
    db.mark_enqueued(seg_uid, now=created + 2)
    db.set_state(seg_uid, UnitState.PREPARED, now=created + 4)
    if end is UnitState.FAILED:
        db.set_state(seg_uid, UnitState.FAILED, detail, now=created + 5)
        return seg_uid
    db.set_state(seg_uid, UnitState.INFERRED, now=created + 7)
    db.set_state(seg_uid, UnitState.DONE, now=created + 10)
    return seg_uid


def _bundle(path: Path) -> Path:
    path.mkdir()
    doc = {
        "format_version": 1,
        "name": "status-test",
        "version": "1.2.3",
        "untrained": False,
        "provenance": {
            "training_data_synthetic": True,
            "test_metrics": {
                "luminal": {"auc": 0.8123, "auc_ci95": [0.7, 0.9], "n": 40, "accuracy": 0.75}
            },
        },
        "preprocessing": {"profile": "default", "input_size": 224, "bound_size": 0},
        "tasks": {
            "luminal": {
                "classes": ["non-Luminal", "Luminal"],
                "weights": "luminal.pt",
                "sha256": "ab" * 32,
            }
        },
    }
    (path / "bundle.json").write_text(json.dumps(doc))
    return path  # no weights file: the page never hashes them


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    depth = Gauge("molsub_queue_depth", "", ["queue"], registry=registry)
    depth.labels("prepare").set(3)
    depth.labels("infer").set(1)
    # deliver left out: the page says n/a rather than inventing a value
    Gauge("molsub_spool_free_bytes", "", registry=registry).set(40 * 2**30)
    Gauge("molsub_spool_size_bytes", "", registry=registry).set(100 * 2**30)
    Gauge("molsub_spool_min_free_bytes", "", registry=registry).set(1 * 2**30)
    return registry


def _result(unit_id: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ds.SOPInstanceUID = _uid(unit_id + "-sr")
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _make_node(tmp_path: Path, **http: object) -> Iterator[Node]:
    spool = tmp_path / "spool"
    spool.mkdir(parents=True)
    out = tmp_path / "out"
    config = NodeConfig(
        node=NodeSettings(spool_dir=spool),
        model=ModelSettings(bundle=_bundle(tmp_path / "bundle")),
        http=HttpSettings(port=0, **http),  # type: ignore[arg-type]
        destinations=(Destination(name="archive", folder=out),),
    )
    db = StateDB(SpoolLayout.at(spool).state_db)
    now = time.time()
    uids = {
        "old": _add_unit(db, spool, "old", now - 25 * HOUR, UnitState.DONE),
        "done": _add_unit(db, spool, "done", now - 3 * HOUR, UnitState.DONE),
        "failed": _add_unit(db, spool, "failed", now - 2 * HOUR, UnitState.FAILED, FAILED_REASON),
        "waiting": _add_unit(db, spool, "waiting", now - 1 * HOUR, None),
    }
    store = ResultStore(SpoolLayout.at(spool).results)
    store.record(uids["done"], [_result(uids["done"])], ["archive"])
    node = Node(client=None, db=db, spool=spool, out=out, uids=uids)  # type: ignore[arg-type]

    def delivered(unit_id: str, outcome: Mapping[str, str]) -> None:
        node.delivered.append((unit_id, dict(outcome)))
        node.delivered_event.set()

    view = NodeView(
        config=config,
        db=db,
        registry=_registry(),
        readiness=lambda: Readiness({"scp": Check(True)}),
        wake_dispatcher=lambda: node.woken.append(True),
        delivered=delivered,
    )
    with TestClient(create_app(view)) as client:
        node.client = client
        yield node
    db.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield from _make_node(tmp_path, token=TOKEN)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Node]:
    yield from _make_node(tmp_path)


def _rows(html: str) -> list[tuple[str, str]]:
    """(unit UID, state) of each unit row, in page order."""
    return re.findall(r'<tr class="unit [^"]*" data-unit="([^"]+)" data-state="([^"]+)"', html)


def test_page_lists_the_window_newest_first_with_reasons_and_timings(node: Node) -> None:
    answer = node.client.get("/")
    assert answer.status_code == 200
    html = answer.text
    u = node.uids
    assert _rows(html) == [
        (u["waiting"], "waiting"),
        (u["failed"], "failed"),
        (u["done"], "done"),
    ]  # the unit of 25 hours ago is outside the window
    assert u["old"] not in html
    # The reason is shown, escaped: text, never markup.
    assert "SEG frame 2 refers to &lt;img src=x&gt; &amp; no image of the unit" in html
    assert "<img src=x>" not in html
    # Timings per stage of the done unit: receive->ready 1 s, prepare 2, infer 3, deliver 3,
    # total 10 s.
    done_row = html.split(f'data-unit="{u["done"]}"', 1)[1].split("</tr>", 1)[0]
    assert [c for c in re.findall(r'<td class="num">([^<]*)</td>', done_row)][1:] == [
        "1.0 s",
        "2.0 s",
        "3.0 s",
        "3.0 s",
        "10.0 s",
    ]
    assert "research use only" in html.lower()
    # Counts per state of the window in the filter links.
    assert ">failed (1)<" in html and ">done (1)<" in html and ">all (3)<" in html


def test_model_gauges_and_destinations_as_metrics_and_status_json_say(node: Node) -> None:
    store = ResultStore(SpoolLayout.at(node.spool).results)
    store.update_destination(node.uids["done"], "archive", DestinationState.SENT)
    failed = node.uids["failed"]
    store.record(failed, [_result(failed)], ["archive"])
    store.update_destination(failed, "archive", DestinationState.PENDING, error="refused <0xA700>")
    store.mark_failed(failed, ["archive"])
    html = node.client.get("/").text
    assert "status-test" in html and "1.2.3" in html and "ab" * 8 not in html  # digest, not sha
    assert "on SYNTHETIC data" in html
    assert "test AUC 0.812 (95% CI 0.700-0.900, n=40), ACC 0.750" in html
    assert 'data-queue="prepare">3<' in html and 'data-queue="infer">1<' in html
    assert 'data-queue="deliver">n/a<' in html  # not in the registry: not invented
    assert "60.0 GiB used of 100.0 GiB (60%)" in html and "watermark 1.0 GiB free" in html
    assert "below the watermark" not in html
    dest = html.split('id="destinations"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<td>([^<]*)", dest)
    assert cells[:2] == ["archive", "folder"]
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert stamp.fullmatch(cells[2]) and stamp.fullmatch(cells[3]), cells
    assert "refused &lt;0xA700&gt;" in dest
    # A unit whose delivery failed for good has results: it may be resent.
    assert f'data-action="resend" data-unit="{failed}"' in html


def test_filter_by_state_and_the_fragment(node: Node) -> None:
    html = node.client.get("/?state=failed").text
    assert _rows(html) == [(node.uids["failed"], "failed")]
    assert 'class="filter active" data-state="failed"' in html
    fragment = node.client.get("/fragment?state=done")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and 'id="updated"' in fragment.text
    assert _rows(fragment.text) == [(node.uids["done"], "done")]
    assert node.client.get("/?state=bogus").status_code == 400


def test_api_units_is_json_for_scripts(node: Node) -> None:
    units = node.client.get("/api/units").json()
    assert [u["unit_id"] for u in units] == [
        node.uids["waiting"],
        node.uids["failed"],
        node.uids["done"],
    ]
    failed = node.client.get("/api/units?state=failed").json()
    assert [u["reason"] for u in failed] == [FAILED_REASON]
    seconds = failed[0]["seconds"]
    assert (
        seconds["prepare"] == 2.0
        and seconds["infer"] is None
        and seconds["total"] == pytest.approx(5.0)
    )
    assert len(node.client.get("/api/units?hours=26").json()) == 4
    assert node.client.get("/api/units?hours=-1").status_code == 400


def test_security_headers_and_static_files(node: Node) -> None:
    for path in ("/", "/fragment", "/api/units", "/static/status.js", "/static/status.css"):
        answer = node.client.get(path)
        assert answer.status_code == 200, path
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
    html = node.client.get("/").text
    # No inline script or style: the CSP would block them.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "<style" not in html and " style=" not in html


def test_no_patient_data_unless_asked_then_escaped(tmp_path: Path, samples_dir: Path) -> None:
    """A real sample's header (the GE Senographe, as tests/header_cases.py varies it) with a
    non-ASCII, markup-like PatientID and AccessionNumber, spooled as the unit's SEG."""
    case = next(c for c in CASES if c.name == "pn-non-ascii-latin1")
    _, seg = build_case(case, samples_dir, 0)
    seg.SpecificCharacterSet = "ISO_IR 192"
    seg.PatientID, seg.AccessionNumber = PATIENT_ID, ACCESSION
    for show in (False, True):
        root = tmp_path / str(show)
        nodes = _make_node(root, token=TOKEN, show_patient_ids=show)
        node = next(nodes)
        try:
            unit = node.db.get_unit(node.uids["failed"])
            assert unit is not None and unit.seg_path is not None
            unit.seg_path.parent.mkdir(parents=True, exist_ok=True)
            seg.save_as(unit.seg_path, enforce_file_format=True)
            assert pydicom.dcmread(unit.seg_path).PatientID == PATIENT_ID
            html = node.client.get("/").text
            escaped = ("Jürgen&lt;b&gt;42&lt;/b&gt;", "王&amp;&lt;i&gt;7")
            if show:
                assert all(text in html for text in escaped), html
                assert "<b>42</b>" not in html and "<i>7" not in html
                assert ">PatientID<" in html
            else:
                assert not any(text in html for text in escaped)
                assert "Jürgen" not in html and "王" not in html and "PatientID<" not in html
                assert "No patient data" in html
            api = node.client.get("/api/units").text
            assert "Jürgen" not in api and "\\u738b" not in api
        finally:
            nodes.close()


def test_actions_are_refused_without_a_configured_token(read_only: Node) -> None:
    html = read_only.client.get("/").text
    assert "Read-only: no [http] token configured" in html
    assert 'data-action="retry"' not in html and 'type="password"' not in html
    for action in ("retry", "resend"):
        answer = read_only.client.post(
            f"/api/units/{read_only.uids['failed']}/{action}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 403
        assert answer.json() == {"error": "read-only: no [http] token configured"}
    assert read_only.db.get_unit(read_only.uids["failed"]).state is UnitState.FAILED  # type: ignore[union-attr]


def test_token_file_first_line_enables_the_actions(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\nignored second line\n")
    nodes = _make_node(tmp_path / "n", token_file=token_file)
    node = next(nodes)
    try:
        url = f"/api/units/{node.uids['failed']}/retry"
        assert node.client.post(url, headers={"Authorization": "Bearer ignored"}).status_code == 401
        ok = node.client.post(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, ok.text
    finally:
        nodes.close()


def test_retry_needs_the_token_and_makes_the_unit_ready(node: Node) -> None:
    failed = node.uids["failed"]
    progress = ProgressFiles(node.spool)
    progress.advance(failed, UnitState.FAILED, reason="old", failure=FailureKind.PERMANENT)
    assert progress.path(failed).is_file()
    html = node.client.get("/").text
    assert f'data-action="retry" data-unit="{failed}"' in html
    assert f'data-action="resend" data-unit="{node.uids["done"]}"' in html
    url = f"/api/units/{failed}/retry"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        answer = node.client.post(url, headers=headers)
        assert answer.status_code == 401 and "error" in answer.json()
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert node.db.get_unit(failed).state is UnitState.FAILED  # type: ignore[union-attr]
    assert not node.woken
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = node.client.post(url, headers=auth)
    assert answer.status_code == 200 and answer.json()["state"] == "ready"
    unit = node.db.get_unit(failed)
    assert unit is not None and unit.state is UnitState.READY and unit.detail == ""
    assert not progress.path(failed).exists()
    assert node.woken == [True]
    again = node.client.post(url, headers=auth)
    assert again.status_code == 409 and "only failed or timed-out" in again.json()["error"]
    done = node.client.post(f"/api/units/{node.uids['done']}/retry", headers=auth)
    assert done.status_code == 409
    assert node.client.post("/api/units/1.2.3.999/retry", headers=auth).status_code == 404
    forged = node.client.post("/api/units/1.2%0Aforged%20line/retry", headers=auth)
    assert forged.status_code == 404 and forged.json() == {"error": "no such unit"}
    assert node.client.get(url).status_code == 405


def test_resend_returns_at_once_and_delivers_again(node: Node) -> None:
    done = node.uids["done"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert node.client.post(f"/api/units/{done}/resend").status_code == 401
    answer = node.client.post(f"/api/units/{done}/resend", headers=auth)
    assert answer.status_code == 202, answer.text
    assert node.delivered_event.wait(30), "the resend never reported its outcome"
    assert node.delivered == [(done, {"archive": "sent"})]
    sent = node.out / done / f"{_uid(done + '-sr')}.dcm"
    assert sent.is_file()
    status = ResultStore(SpoolLayout.at(node.spool).results).status(done)
    assert status["destinations"]["archive"]["state"] == "sent"
    # The failed unit never got as far as results: nothing to resend.
    refused = node.client.post(f"/api/units/{node.uids['failed']}/resend", headers=auth)
    assert refused.status_code == 409 and "no result objects" in refused.json()["error"]
    assert node.client.post("/api/units/1.2.3.999/resend", headers=auth).status_code == 404
