"""docs/conformance.md says what the code does: its generated blocks are regenerated from the code
(a real SCP negotiated with, the real delivery code recorded) and compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.sop_classes import MG_FOR_PRESENTATION, SEGMENTATION
from molsub import conformance
from scp.server import TRANSFER_SYNTAXES
from worker.results.codes import CLASS_CODES, PROBABILITY_CODES, SCHEME, TASK_CONCEPTS


@pytest.fixture(scope="module")
def document() -> str:
    return conformance.DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def scp_facts() -> conformance.ScpFacts:
    return conformance.probe_scp()


def test_the_statement_agrees_with_the_code() -> None:
    diff = conformance.drift()
    assert not diff, (
        "docs/conformance.md drifted from the code; regenerate it with "
        f"`{conformance.REGENERATE}` and review the change:\n{diff[:6000]}"
    )


def test_the_scp_accepts_its_inputs_in_every_transfer_syntax_it_lists(
    scp_facts: conformance.ScpFacts,
) -> None:
    # The probe measures negotiation; the node's own list must be what it measured.
    for sop_class in (MG_FOR_PRESENTATION, SEGMENTATION):
        assert scp_facts.by_default[sop_class] == sorted(
            map(str, TRANSFER_SYNTAXES), key=conformance.known_transfer_syntaxes().index
        )


def test_the_statement_lists_every_private_code_and_the_scheme(document: str) -> None:
    assert f"`{SCHEME}`" in document
    private = [
        *TASK_CONCEPTS.values(),
        *(c for cs in CLASS_CODES.values() for c in cs),
        *(c for cs in PROBABILITY_CODES.values() for c in cs),
    ]
    for code in private:
        assert f"| `{code.value}` | {code.meaning} |" in document


def test_a_changed_document_is_reported_with_the_command(tmp_path: Path, document: str) -> None:
    stale = tmp_path / "conformance.md"
    row = "| Implicit VR Little Endian | `1.2.840.10008.1.2` | SCP | None |"
    assert row in document
    stale.write_text(document.replace(row, ""))
    assert conformance.drift(stale)
    assert conformance.main(["--check", "--path", str(stale)]) == 1
    assert conformance.main(["--path", str(stale)]) == 0
    assert stale.read_text() == document


def test_a_document_without_a_block_is_refused(document: str) -> None:
    start = document.index("<!-- generated:inputs -->")
    end = document.index("<!-- /generated:inputs -->") + len("<!-- /generated:inputs -->")
    with pytest.raises(ValueError, match="missing.*inputs"):
        conformance.render(document[:start] + document[end:])
