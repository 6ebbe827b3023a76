"""The status page of a real node (`molsub serve`, tests/node_http.py: one unit done, one failed)
as an admin uses it: in headless Chromium (Debian's chromium, driven by playwright-core as the
OHIF test does) and its actions over plain HTTP.

The browser must show the failed unit with its reason, filter by state, refresh itself, refuse
Retry without the token and accept it with the token, with no console or page errors; its
screenshot is kept (MOLSUB_ARTIFACTS_DIR/status-page.png, else the test's tmp_path). Needs
playwright-core from scripts/fetch-viewer's cache, chromium and node; skipped without them unless
MOLSUB_REQUIRE_VIEWER=1 (.ci/run), which makes a missing piece a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.node_http import HttpNode
from tests.ohif_viewer import BrowserTools, find_browser_tools, found_or_skip

ARTIFACTS_ENV = "MOLSUB_ARTIFACTS_DIR"
CHECK_SCRIPT = Path(__file__).resolve().parent / "status_page" / "check_page.mjs"
BROWSER_TIMEOUT_S = 120
RESEND_TIMEOUT_S = 60
# The browser logs the refused retry's 401 itself ("Failed to load resource"): that answer is
# what the test asks for, so that one message, for that request only, is not a page error.
REFUSED_RETRY = re.compile(r"status of 401 \(Unauthorized\)")


@pytest.fixture(scope="module")
def browser() -> BrowserTools:
    return found_or_skip(*find_browser_tools())


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get(ARTIFACTS_ENV)
    out = Path(root) if root else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _post(node: HttpNode, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(node.base_url + path, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _unit(node: HttpNode, unit_id: str) -> dict[str, Any]:
    status, body, _ = node.get("/api/units?hours=48")
    assert status == 200, body
    return next(u for u in json.loads(body) if u["unit_id"] == unit_id)


def _deliveries_sent(node: HttpNode) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, text, _ = node.get("/metrics")
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "molsub_deliveries_total"
        and s.labels.get("destination") == "copy"
        and s.labels.get("outcome") == "sent"
    )


def test_actions_over_http_need_the_token(http_node: HttpNode) -> None:
    node = http_node
    for action, unit in (("retry", node.failed_unit), ("resend", node.done_unit)):
        for token in (None, "wrong-token"):
            status, body = _post(node, f"/api/units/{unit}/{action}", token)
            assert status == 401 and "error" in body, (action, token, status, body)
    assert _unit(node, node.failed_unit)["state"] == "failed"  # the refusals changed nothing
    status, body = _post(node, f"/api/units/{node.done_unit}/retry", node.token)
    assert status == 409 and "only failed or timed-out" in body["error"]
    assert _post(node, "/api/units/1.2.3.4.5/retry", node.token)[0] == 404

    # Resend: accepted at once; the folder gets the objects again and status.json says so.
    status_json = node.spool / "results" / node.done_unit / "status.json"
    before = json.loads(status_json.read_text())["destinations"]["copy"]
    sent_before = _deliveries_sent(node)
    copies = sorted((node.folder / node.done_unit).glob("*.dcm"))
    assert copies, f"nothing delivered to {node.folder}"
    inodes = {p.name: p.stat().st_ino for p in copies}
    asked = time.time()
    status, body = _post(node, f"/api/units/{node.done_unit}/resend", node.token)
    assert status == 202, body
    deadline = time.monotonic() + RESEND_TIMEOUT_S
    while time.monotonic() < deadline:
        entry = json.loads(status_json.read_text())["destinations"]["copy"]
        if entry["attempts"] > before["attempts"]:
            break
        time.sleep(0.2)
    assert entry["attempts"] == before["attempts"] + 1 and entry["state"] == "sent", entry
    # Written again (atomically: new files), not left as they were.
    again = {p.name: p.stat() for p in (node.folder / node.done_unit).glob("*.dcm")}
    assert set(again) == set(inodes)
    assert all(again[n].st_ino != inodes[n] and again[n].st_mtime >= asked - 1 for n in again)
    while time.monotonic() < deadline and _deliveries_sent(node) < sent_before + 1:
        time.sleep(0.2)
    assert _deliveries_sent(node) == sent_before + 1  # the resend is counted in /metrics
    assert f"unit {node.done_unit}: resent" in node.log.read_text(errors="replace")


def test_status_page_in_chromium(
    http_node: HttpNode, browser: BrowserTools, artifacts: Path
) -> None:
    node = http_node
    ready_before = _unit(node, node.failed_unit)["times"].get("ready")
    reason = _unit(node, node.failed_unit)["reason"]
    assert reason, "the failed unit has no reason to show"
    env = browser.env()
    command = [
        browser.node,
        str(CHECK_SCRIPT),
        "--base",
        node.base_url,
        "--failed",
        node.failed_unit,
        "--token",
        node.token,
        "--out",
        str(artifacts),
        "--timeout-ms",
        str((BROWSER_TIMEOUT_S - 20) * 1000),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S
    )
    (artifacts / "check_page.stderr.txt").write_text(done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    report = json.loads(lines[-1])
    (artifacts / "status-page.json").write_text(json.dumps(report, indent=1))
    print(f"status page screenshots: {', '.join(report['screenshots'])}")
    summary = json.dumps(report, indent=1)[:6000]
    assert not report.get("fatal") and not report["timeouts"], summary
    assert (artifacts / "status-page.png").stat().st_size > 10_000

    # The failed unit, with its reason as the node recorded it.
    assert report["failedRow"] == {"state": "failed", "reason": reason}, summary
    assert sorted(report["statesAll"]) == ["done", "failed"], summary
    assert "research use only" in report["ruo"].lower()
    # The filter: failed rows only, kept through the automatic refresh.
    assert "state=failed" in report["filteredUrl"]
    assert report["statesFiltered"] == ["failed"], summary
    assert report["updatedAfter"] != report["updatedBefore"] and report["refreshes"] >= 1
    assert report["statesAfterRefresh"] == ["failed"], summary
    # Retry: refused without the token, accepted with it.
    assert "refused (HTTP 401)" in report["withoutToken"], summary
    assert "accepted" in report["withToken"] and report["tokenKept"], summary
    ready_after = _unit(node, node.failed_unit)["times"].get("ready")
    assert ready_after and ready_after != ready_before  # made ready again, from the page

    errors = [
        f"console: {c['text']} ({c['location']})"
        for c in report["console"]
        if c["type"] == "error"
        and not (
            REFUSED_RETRY.search(c["text"])
            and c["location"].startswith(f"{node.base_url}/api/units/{node.failed_unit}/retry")
        )
    ]
    errors += [f"page error: {e}" for e in report["pageErrors"]]
    errors += [
        f"request: {r['url']} {r.get('status') or r.get('error')}" for r in report["failedRequests"]
    ]
    assert not errors, "\n".join(errors)
