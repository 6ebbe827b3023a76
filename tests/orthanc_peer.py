"""A real Orthanc (Debian's package) as a PACS peer for tests and benches.

Each ``running_orthanc`` writes its own config (free ports, storage and index under a work
folder), starts ``Orthanc --logfile=... config.json``, waits (bounded) for ``/system`` and stops
it on the way out. REST answers on 127.0.0.1 only (RemoteAccessAllowed false); Orthanc 1.10 has
no option to bind its DICOM port to loopback, so that port listens on every interface of the
test machine for the test's duration.

Without Orthanc a test that asks for one is skipped with a message naming the package, unless
MOLSUB_REQUIRE_ORTHANC=1 (CI), which makes it fail: a CI run never passes by skipping.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from molsub.launch import free_port, stop_process, wait_for

__all__ = [
    "DICOMWEB_PLUGIN",
    "ORTHANC_AET",
    "REQUIRE_ORTHANC_ENV",
    "OrthancPeer",
    "log_warnings",
    "orthanc_available",
    "orthanc_binary",
    "read_orthanc_json",
    "require_orthanc",
    "running_orthanc",
]

REQUIRE_ORTHANC_ENV = "MOLSUB_REQUIRE_ORTHANC"
ORTHANC_AET = "ORTHANC"
DICOMWEB_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/plugins/libOrthancDicomWeb.so"),
)
DICOMWEB_PLUGIN = next((p for p in DICOMWEB_PLUGIN_CANDIDATES if p.is_file()), None)
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
# What Orthanc's hardening page (Orthanc Book, "Securing Orthanc") sets for the DICOM side:
# only known modalities may store or echo, their IP address is checked, the called AET too;
# no Lua over REST, no writes to the file system over REST.
HARDENED = {
    "DicomAlwaysAllowStore": False,
    "DicomAlwaysAllowEcho": False,
    "DicomAlwaysAllowFind": False,
    "DicomAlwaysAllowFindWorklist": False,
    "DicomAlwaysAllowGet": False,
    "DicomAlwaysAllowMove": False,
    "DicomCheckModalityHost": True,
    "DicomCheckCalledAet": True,
    "ExecuteLuaEnabled": False,
    "RestApiWriteToFileSystemEnabled": False,
}
# glog's line prefix: severity letter, then MMDD and a time (I0512 10:00:00.123456 file:line] ...)
_GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+")


def orthanc_binary() -> str | None:
    """The Orthanc executable, or None when the package is not installed."""
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None
    )


def orthanc_available() -> bool:
    """Orthanc and its DICOMweb plugin are installed (packages orthanc, orthanc-dicomweb)."""
    return orthanc_binary() is not None and DICOMWEB_PLUGIN is not None


def require_orthanc() -> None:
    """Skip the calling test without Orthanc, or fail it when MOLSUB_REQUIRE_ORTHANC=1."""
    if orthanc_available():
        return
    import pytest

    message = (
        "Orthanc not found: install the Debian packages orthanc and orthanc-dicomweb "
        f"(scripts/setup does); skipped without them unless {REQUIRE_ORTHANC_ENV}=1"
    )
    if os.environ.get(REQUIRE_ORTHANC_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def read_orthanc_json(path: Path) -> dict[str, Any]:
    """An Orthanc configuration file as a dict: Orthanc allows // and /* */ comments, which
    json does not, so they are dropped (never inside strings, e.g. "http://...")."""
    text, i = path.read_text(), 0
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return json.loads("".join(out))


def log_warnings(text: str) -> list[str]:
    """Orthanc's warning and error lines (glog W, E and F) in ``text``."""
    return [line for line in text.splitlines() if (m := _GLOG.match(line)) and m[1] in "WEF"]


@dataclass(frozen=True)
class OrthancPeer:
    """A running Orthanc: its REST URL, ports, AE title and log; small REST helpers."""

    url: str  # "http://127.0.0.1:<http_port>"
    http_port: int
    dicom_port: int
    aet: str  # Orthanc's AE title, e.g. "ORTHANC"
    log_path: Path
    auth: tuple[str, str] | None = None  # HTTP basic credentials when authentication is on
    config_path: Path | None = None

    def _request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> Any:  # noqa: ANN401 - JSON of any shape
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                data = answer.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise RuntimeError(f"Orthanc {method} {path}: HTTP {error.code}: {detail}") from error
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data

    def get(self, path: str) -> Any:  # noqa: ANN401 - JSON of any shape
        """GET ``path`` (e.g. "/system"); JSON decoded, else the raw bytes."""
        return self._request("GET", path)

    def post(
        self, path: str, body: bytes | str | dict, content_type: str = "application/json"
    ) -> Any:  # noqa: ANN401 - JSON of any shape
        """POST ``body`` (a dict is sent as JSON, a str as UTF-8) to ``path``."""
        if isinstance(body, dict):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        return self._request("POST", path, data, content_type)

    def put(self, path: str, body: bytes | str, content_type: str = "text/plain") -> Any:  # noqa: ANN401
        data = body.encode() if isinstance(body, str) else body
        return self._request("PUT", path, data, content_type)

    def upload(self, path: Path) -> dict:
        """POST /instances with one DICOM file: Orthanc's answer (ID, ParentStudy, Status)."""
        answer = self.post("/instances", path.read_bytes(), "application/dicom")
        assert isinstance(answer, dict), answer
        return answer

    def study_ids(self, study_uid: str) -> list[str]:
        """Orthanc's IDs of the studies with this StudyInstanceUID (one, or none yet)."""
        found = self.post(
            "/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}
        )
        return list(found or [])

    def study_instances(self, study_uid: str) -> list[dict]:
        """Simplified tags of every instance of the study (by StudyInstanceUID)."""
        tags = []
        for study in self.study_ids(study_uid):
            for instance in self.get(f"/studies/{study}/instances"):
                tags.append(self.get(f"/instances/{instance['ID']}/simplified-tags"))
        return tags

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _modality_entry(aet: str, host: str, port: int, hardened: bool) -> list | dict:
    """A DicomModalities entry; hardened: only C-ECHO and C-STORE from that AE at that IP."""
    if not hardened:
        return [aet, host, port]
    return {
        "AET": aet,
        "Host": host,
        "Port": port,
        "AllowEcho": True,
        "AllowStore": True,
        "AllowFind": False,
        "AllowMove": False,
        "AllowGet": False,
        "AllowFindWorklist": False,
        "AllowStorageCommitment": False,
    }


@contextmanager
def running_orthanc(
    workdir: Path,
    *,
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    lua_scripts: Sequence[Path] = (),
    hardened: bool = False,
    dicomweb: bool = True,
    extra: dict | None = None,
    base_config: Path | None = None,
    http_port: int | None = None,
    dicom_port: int | None = None,
    stable_age_s: int = 3,
    verbose: bool = False,
) -> Iterator[OrthancPeer]:
    """Orthanc on loopback with its own storage, config and log under ``workdir``.

    ``modalities``: name -> (AET, host, port). ``base_config``: an Orthanc config file (e.g.
    deploy/orthanc/orthanc.json) whose keys are kept except the ones a test must own (ports,
    folders, modalities, Lua scripts); ``extra`` then overrides anything. Ports may be chosen
    beforehand (``free_port``) when the node must know them before Orthanc starts.
    """
    require_orthanc()
    binary = orthanc_binary()
    assert binary is not None
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    dicom_port = dicom_port or free_port()
    config: dict[str, Any] = read_orthanc_json(base_config) if base_config else {}
    config.update(
        {
            "Name": f"molsub-test-{http_port}",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "RemoteAccessAllowed": False,
            "LuaScripts": [str(Path(p).resolve()) for p in lua_scripts],
            "StableAge": stable_age_s,
            "SaveJobs": False,
        }
    )
    config.setdefault("DicomAet", ORTHANC_AET)
    config.setdefault("AuthenticationEnabled", False)
    if base_config is None:
        config["DicomModalities"] = {}
    if modalities:
        is_hardened = hardened or config.get("DicomAlwaysAllowStore") is False
        config["DicomModalities"] = {
            name: _modality_entry(aet, host, port, is_hardened)
            for name, (aet, host, port) in modalities.items()
        }
    if hardened:
        config.update(HARDENED)
    plugins = [str(DICOMWEB_PLUGIN)] if dicomweb and DICOMWEB_PLUGIN else []
    config["Plugins"] = plugins
    if dicomweb:
        config.setdefault("DicomWeb", {})
        config["DicomWeb"].update({"Enable": True, "Root": "/dicom-web/"})
    else:
        config.pop("DicomWeb", None)
    config.update(extra or {})
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    auth = None
    if config.get("AuthenticationEnabled") and config.get("RegisteredUsers"):
        user, password = next(iter(config["RegisteredUsers"].items()))
        auth = (str(user), str(password))
    peer = OrthancPeer(
        url=f"http://127.0.0.1:{http_port}",
        http_port=http_port,
        dicom_port=dicom_port,
        aet=str(config["DicomAet"]),
        log_path=log_path,
        auth=auth,
        config_path=config_path,
    )
    argv = [binary, f"--logfile={log_path}", *(["--verbose"] if verbose else []), str(config_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def answering() -> bool:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                tail = peer.log_text()[-3000:]
                raise RuntimeError(f"Orthanc exited with {proc.returncode}: {err[-2000:]}\n{tail}")
            try:
                return bool(peer.get("/system"))
            except (OSError, RuntimeError):
                return False

        wait_for(answering, START_TIMEOUT_S, f"Orthanc answering on port {http_port}", 0.2)
        yield peer
    finally:
        stop_process(proc, timeout_s=STOP_TIMEOUT_S)
        if proc.stderr is not None:
            proc.stderr.close()


def wait_until_jobs_done(peer: OrthancPeer, timeout_s: float = 120) -> list[dict]:
    """Every Orthanc job finished (Success or Failure); their descriptions."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [peer.get(f"/jobs/{j}") for j in peer.get("/jobs")]
        if all(j["State"] in ("Success", "Failure") for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            raise TimeoutError(f"Orthanc jobs still running after {timeout_s:.0f} s: {jobs}")
        time.sleep(0.3)
