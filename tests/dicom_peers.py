"""Real DICOM peers for tests: dcmtk's storescu and echoscu run as subprocesses."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.redis_server import free_port

__all__ = ["SCU_AET", "echoscu", "free_port", "storescu"]

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
