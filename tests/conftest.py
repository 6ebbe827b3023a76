"""Shared fixtures: where the public samples live (../shared/samples beside the clone), and
NodeSCPs started for one test and stopped after it.

Tests that use the ``samples_dir`` fixture carry the ``samples`` marker. Without the folder they
are skipped with a message that says where it comes from; with MOLSUB_REQUIRE_SAMPLES=1 (CI sets
it) they fail instead, so a CI run never passes by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node_http import http_node  # noqa: F401 - the fixture, for every test module

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO.parent / "shared" / "samples"
REQUIRE_SAMPLES_ENV = "MOLSUB_REQUIRE_SAMPLES"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "samples_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.samples)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        message = (
            f"public DICOM samples not found at {SAMPLES}: clone the repository with the "
            "project's shared/ folder beside it (shared/samples/README.md lists the public "
            "files: fo-dicom, OpenREM, highdicom and pydicom test data)"
        )
        if os.environ.get(REQUIRE_SAMPLES_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return SAMPLES


@pytest.fixture
def running_scps() -> Iterator[Callable[..., Any]]:
    """``start(settings, enqueue=None, **NodeSCP keywords)``: a started NodeSCP (dispatcher
    polling every 0.05 s unless ``poll_s`` says otherwise); every one is stopped at teardown."""
    from scp.server import NodeSCP

    started: list[NodeSCP] = []

    def start(settings: Any, enqueue: Callable[..., None] | None = None, **kwargs: Any) -> NodeSCP:  # noqa: ANN401
        kwargs.setdefault("poll_s", 0.05)
        scp = NodeSCP(settings, enqueue or (lambda _unit: None), **kwargs)
        scp.start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()
