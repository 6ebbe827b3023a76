"""OHIF's prebuilt viewer (npm @ohif/app, fetched by scripts/fetch-viewer) served on one origin
with a proxy to an Orthanc's DICOMweb, and a headless Chromium that opens a study in it.

OHIF is the viewer users open our results in, so tests/test_ohif_viewer.py checks that it lists
and draws the SR's measurements, renders the SCs and loads the heatmap SEG. The viewer and
playwright-core live in a cache outside the repository (never committed); the browser is
Debian's chromium (nothing downloaded). Same origin (``/dicom-web`` proxied) because OHIF then
needs no CORS, and Orthanc builds its BulkDataURIs from the forwarded Host, so those stay on
the viewer's origin too.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from molsub.launch import free_port

REPO = Path(__file__).resolve().parents[1]
FETCH_SCRIPT = REPO / "scripts" / "fetch-viewer"
OPEN_STUDY_SCRIPT = REPO / "tests" / "ohif" / "open_study.mjs"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DICOMWEB_PREFIX = "/dicom-web"
CHUNK = 64 * 1024
# Headers the proxy passes on to Orthanc (and back): what DICOMweb negotiates with.
FORWARD_REQUEST = ("accept", "content-type", "content-length")
FORWARD_RESPONSE = ("content-type", "content-length", "content-encoding", "etag", "last-modified")


def _pinned(name: str) -> str:
    """A version pinned in scripts/fetch-viewer: one place says which versions the test uses."""
    match = re.search(rf"^{name}=(\S+)$", FETCH_SCRIPT.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"{FETCH_SCRIPT} pins no {name}")
    return match.group(1)


OHIF_VERSION = _pinned("OHIF_VERSION")
PLAYWRIGHT_VERSION = _pinned("PLAYWRIGHT_VERSION")


def cache_root() -> Path:
    """Where scripts/fetch-viewer puts the viewer (MOLSUB_CACHE, default ~/.cache/molsub)."""
    return Path(os.environ.get("MOLSUB_CACHE") or Path.home() / ".cache" / "molsub")


REQUIRE_VIEWER_ENV = "MOLSUB_REQUIRE_VIEWER"  # set by .ci/run: a missing tool fails, not skips
T = TypeVar("T")


@dataclass(frozen=True)
class BrowserTools:
    """What a headless-browser test runs: playwright-core (cached), Debian's chromium, node."""

    playwright: Path  # the folder holding node_modules/playwright-core
    chromium: str
    node: str

    def env(self) -> dict[str, str]:
        """The environment our .mjs scripts read their tools from."""
        modules = self.playwright / "node_modules"
        return {
            **os.environ,
            "NODE_PATH": str(modules),
            "PLAYWRIGHT_CORE": str(modules / "playwright-core" / "index.mjs"),
            "CHROMIUM": self.chromium,
        }


@dataclass(frozen=True)
class ViewerTools(BrowserTools):
    """The browser tools and OHIF's dist/."""

    dist: Path = Path()


FETCH = f"run scripts/fetch-viewer (npm pack @ohif/app@{OHIF_VERSION}, playwright-core)"


def find_browser_tools() -> tuple[BrowserTools | None, str]:
    """The cached playwright-core, chromium and node, or None and why not (with the fix)."""
    playwright = cache_root() / "playwright" / PLAYWRIGHT_VERSION
    if not (playwright / "node_modules" / "playwright-core" / "index.mjs").is_file():
        return None, f"playwright-core {PLAYWRIGHT_VERSION} not cached in {playwright}: {FETCH}"
    chromium = next((c for c in CHROMIUM_CANDIDATES if os.access(c, os.X_OK)), None)
    if chromium is None:
        return None, "Debian's chromium not installed (apt-get install chromium)"
    node = shutil.which("node")
    if node is None:
        return None, "node not installed (apt-get install nodejs npm)"
    return BrowserTools(playwright, chromium, node), ""


def find_viewer_tools() -> tuple[ViewerTools | None, str]:
    """The cached tools, or None and why not (with the command that fixes it)."""
    dist = cache_root() / "ohif" / OHIF_VERSION / "package" / "dist"
    if not (dist / "index.html").is_file():
        return None, f"OHIF {OHIF_VERSION} viewer not cached at {dist}: {FETCH}"
    browser, why = find_browser_tools()
    if browser is None:
        return None, why
    return ViewerTools(browser.playwright, browser.chromium, browser.node, dist), ""


def found_or_skip(found: T | None, why: str) -> T:
    """A browser test's tools, or a skip saying why; a failure under MOLSUB_REQUIRE_VIEWER=1."""
    if found is None:
        message = f"{why}; skipped unless {REQUIRE_VIEWER_ENV}=1"
        if os.environ.get(REQUIRE_VIEWER_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def app_config(data_source_name: str = "molsub") -> str:
    """OHIF's app-config.js for us: one DICOMweb source on the same origin, no dialogs."""
    root = DICOMWEB_PREFIX  # same origin: OHIF resolves it against the page
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},
        "disableConfirmationPrompts": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumberOfWebWorkers": 2,
        "defaultDataSourceName": data_source_name,
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": data_source_name,
                "configuration": {
                    "friendlyName": "Orthanc through the test's proxy",
                    "name": "orthanc",
                    "wadoUriRoot": root,
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "qidoSupportsIncludeField": False,
                    "supportsReject": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "omitQuotationForMultipartRequest": True,
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                },
            }
        ],
    }
    body = json.dumps(config, indent=2)
    return f"/** molsub test config for OHIF {OHIF_VERSION} */\nwindow.config = {body};\n"


class _ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dist: Path, dicomweb: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = dist.resolve()
        target = urlsplit(dicomweb.rstrip("/"))
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.upstream_root = target.path  # e.g. /dicom-web
        self.config = app_config().encode()
        self.log: list[str] = []  # "METHOD path -> status": what the viewer asked for


class _Handler(BaseHTTPRequestHandler):
    server: _ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        """Quiet: the requests go to server.log, for the test's failure message."""

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        path = urlsplit(self.path).path
        if path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/"):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, self.server.config, "application/javascript")
        else:
            self._static(path)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.server.log.append(f"{self.command} {self.path} -> {status}")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._isolation_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _isolation_headers(self) -> None:
        # Cross-origin isolated, as OHIF's own dev server: Cornerstone then may use
        # SharedArrayBuffer. Everything is same-origin, so nothing is blocked by it.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")

    def _static(self, path: str) -> None:
        dist = self.server.dist
        file = (dist / path.lstrip("/")).resolve()
        if not file.is_relative_to(dist) or not file.is_file():
            if Path(path).suffix:  # a missing asset stays missing (a 404 the test sees)
                self._send(404, b"not found", "text/plain")
                return
            file = dist / "index.html"  # the SPA's own routes (/viewer, /segmentation, ...)
        kind = "application/wasm" if file.suffix == ".wasm" else mimetypes.guess_type(file)[0]
        self._send(200, file.read_bytes(), kind or "application/octet-stream")

    def _proxy(self) -> None:
        """Forward to Orthanc's DICOMweb and stream the answer back unchanged."""
        url = urlsplit(self.path)
        target = self.server.upstream_root + url.path[len(DICOMWEB_PREFIX) :]
        if url.query:
            target += "?" + url.query
        headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARD_REQUEST}
        # Orthanc writes BulkDataURIs with the Host it was asked on: keep them on our origin.
        host = self.headers.get("Host", "")
        headers["Host"] = host
        headers["Forwarded"] = f"host={host};proto=http"
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.request(self.command, target, body=body, headers=headers)
            answer = upstream.getresponse()
            self.server.log.append(f"{self.command} {self.path} -> {answer.status} (Orthanc)")
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() in FORWARD_RESPONSE:
                    self.send_header(name, value)
            chunked = answer.getheader("Content-Length") is None
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self._isolation_headers()
            self.end_headers()
            if self.command == "HEAD":
                return
            while data := answer.read(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            upstream.close()


@contextmanager
def serve_viewer(dist: Path, dicomweb: str) -> Iterator[tuple[str, list[str]]]:
    """Serve OHIF's ``dist`` and proxy ``/dicom-web`` to ``dicomweb`` (Orthanc's DICOMweb root
    URL) on 127.0.0.1:<free port>; yields (the viewer's base URL, the request log)."""
    server = _ViewerServer(free_port(), dist, dicomweb)
    thread = threading.Thread(target=server.serve_forever, name="ohif-viewer", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def open_study(
    tools: ViewerTools,
    base_url: str,
    study_uid: str,
    out_dir: Path,
    *,
    steps: str = "all",
    seg: str = ".",
    timeout_s: float = 240,
) -> dict[str, Any]:
    """Run tests/ohif/open_study.mjs: opens the study, saves screenshots in ``out_dir`` and
    returns what it saw (its JSON: console errors, measurement panel text, pixel checks).
    ``steps``: "all" or some of "sr,sc,seg"; ``seg``: a regex the SEG thumbnails to load match."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = tools.env()
    command = [
        tools.node,
        str(OPEN_STUDY_SCRIPT),
        "--base",
        base_url,
        "--study",
        study_uid,
        "--out",
        str(out_dir),
        "--steps",
        steps,
        "--seg",
        seg,
        "--timeout-ms",
        str(int(timeout_s * 1000) - 15000),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
    (out_dir / "open_study.stderr.txt").write_text(done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"open_study.mjs exited {done.returncode}: {done.stderr[-4000:]}{done.stdout[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    (out_dir / "open_study.json").write_text(json.dumps(result, indent=2))
    return result
