"""Real DICOM peers for tests: dcmtk's storescu, echoscu and storescp run as subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pydicom

from molsub.launch import free_port, wait_for

__all__ = ["SCU_AET", "echoscu", "free_port", "received_uids", "start_storescp", "storescu"]

SCU_AET = "TESTSCU"


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    called_aet: str = "MOLSUB",
    calling_aet: str = SCU_AET,
    options: Sequence[str] = ("-R",),
    timeout_s: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association; ``-R``: propose only the files' SOP classes."""
    cmd = ["storescu", "-aet", calling_aet, "-aec", called_aet, *options, "127.0.0.1", str(port)]
    cmd += [str(f) for f in files]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def echoscu(
    port: int, *, called_aet: str = "MOLSUB", calling_aet: str = SCU_AET, timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    cmd = ["echoscu", "-v", "-aet", calling_aet, "-aec", called_aet, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)


def start_storescp(
    folder: Path, port: int, *, aet: str = "DEST", log: Path | None = None, timeout_s: float = 30
) -> subprocess.Popen[bytes]:
    """dcmtk's storescp as a PACS, returned once it answers C-ECHO (the caller stops it).

    Files are named by SOP Instance UID, so an object sent again overwrites its file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["storescp", "-v", "-aet", aet, "-od", str(folder), "-uf", str(port)]
    if log is None:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    wait_for(
        lambda: (
            proc.poll() is not None or echoscu(port, called_aet=aet, timeout_s=10).returncode == 0
        ),
        timeout_s,
        f"storescp answering C-ECHO on port {port}",
        every_s=0.3,
    )
    if proc.poll() is not None:
        raise RuntimeError(f"storescp on port {port} exited with {proc.returncode}")
    return proc


def received_uids(folder: Path) -> set[str]:
    """SOP Instance UIDs of the files a storescp (or a folder destination) holds."""
    return {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir() if p.is_file()}
