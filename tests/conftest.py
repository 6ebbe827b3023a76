"""Shared fixtures: where the public samples live (../shared/samples beside the clone)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.fail(
            f"public DICOM samples not found at {SAMPLES} (CI clones with shared/ beside it)"
        )
    return SAMPLES
