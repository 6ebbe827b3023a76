"""Run the real DICOM validators (dicom3tools' dciodvfy, PixelMed's DicomSRValidator)."""

from __future__ import annotations

import subprocess
from pathlib import Path

PIXELMED_JAR = "/usr/share/java/pixelmed.jar"


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for ``path`` (warnings are not failures)."""
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def pixelmed_sr_errors(path: Path) -> list[str]:
    """Error lines of PixelMed's SR template validator, with the XPath limits lifted."""
    cmd = [
        "java",
        "-Djdk.xml.xpathExprOpLimit=0",
        "-Djdk.xml.xpathExprGrpLimit=0",
        "-Djdk.xml.xpathTotalOpLimit=0",
        "-cp",
        PIXELMED_JAR,
        "com.pixelmed.validate.DicomSRValidator",
        str(path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    if "Exception" in out and "Found" not in out:
        return [f"validator crashed: {out[-2000:]}"]
    return [line for line in out.splitlines() if "Error" in line]
