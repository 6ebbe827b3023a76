"""Fuzzing the C-STORE path: malformed objects made from the real samples (tests/fuzz_cases.py),
sent undecoded to a real NodeSCP on loopback.

For every object: success only when the independent judge (pydicom parses every element, pixel
data the size its header claims) finds it well formed, otherwise a 0xC0xx failure naming a
check (never 0xA7xx, never pynetdicom's 0xC211); the node still answers C-ECHO; nothing
malformed is in the spool. At the end every unit the node made is final, and none that ended
``done`` was made from a malformed object.

Derandomized (the same examples in every run, CI included); MOLSUB_FUZZ_EXAMPLES raises the
count for a longer local run. bench/fuzz.py runs the same cases by the hundred.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from pydicom.uid import ImplicitVRLittleEndian

from scp.validate import Check
from tests.fuzz_cases import (
    CR_SEG,
    MG_LITTLE,
    SEG_LITTLE,
    Case,
    bases,
    store_cases,
    structural_defect,
    suite_settings,
    with_meta_syntax,
)
from tests.fuzz_node import (
    ACCEPTED_VALID,
    CONTEXT_REJECTED,
    FINAL_STATES,
    FuzzNode,
    fuzz_node,
)

EXAMPLES = int(os.environ.get("MOLSUB_FUZZ_EXAMPLES", "50"))
CHECK_STATUSES = {f"0x{c.status:04X} {c}" for c in Check}


def refused(outcome: str) -> bool:
    """A 0xC0xx answer: a structural check's (its name in the comment) or another InputError
    of the spool's (an invalid UID, a SOP class not taken), also 0xC000 with its reason."""
    return outcome in CHECK_STATUSES or outcome.startswith("0xC0")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    with fuzz_node(tmp_path_factory.mktemp("fuzz-node")) as running:
        yield running


def test_the_judge_takes_the_unmutated_bases(samples_dir: Path) -> None:
    """The bases themselves are well formed: every defect the judge finds is a mutation's."""
    assert {name: structural_defect(b.data) for name, b in bases(samples_dir).items()} == {
        name: None for name in bases(samples_dir)
    }


def test_fuzzed_objects_get_a_check_status_and_the_node_keeps_serving(
    node: FuzzNode, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("cases")
    seen: Counter[str] = Counter()
    # The real MG and the SEG over it, unmutated: one unit that must end done, and an image
    # that the fuzzed SEGs (their references untouched) make units with.
    for name in (MG_LITTLE, SEG_LITTLE):
        base = bases(samples_dir)[name]
        assert node.send(Case(name, "none", base.data), folder)[0] == ACCEPTED_VALID

    @suite_settings(EXAMPLES)
    @given(case=store_cases(samples_dir))
    def sent(case: Case) -> None:
        outcome, defect = node.send(case, folder)
        seen[outcome] += 1
        assert refused(outcome) or outcome in (ACCEPTED_VALID, CONTEXT_REJECTED), (outcome, defect)
        assert node.echo(), "the node no longer answers C-ECHO"
        assert node.spool_defects() == []

    sent()
    # Both ways are exercised: some refused with a check, some well formed and accepted.
    assert seen[ACCEPTED_VALID] and sum(n for o, n in seen.items() if o in CHECK_STATUSES)
    units = node.wait_units_final(timeout_s=30)
    assert [(u.unit_id, u.state) for u in units if u.state not in FINAL_STATES] == []
    assert any(u.state == "done" for u in units), [(u.state, u.detail) for u in units]
    for unit in units:
        if unit.state == "done":  # made from objects the judge takes, every one
            paths = [Path(p) for p in (unit.seg_path, *unit.image_paths) if p]
            assert [structural_defect(p.read_bytes()) for p in paths] == [None] * len(paths)


def test_explicit_data_under_implicit_syntax_is_refused(
    node: FuzzNode, samples_dir: Path, tmp_path: Path
) -> None:
    data = with_meta_syntax(bases(samples_dir)[MG_LITTLE].data, ImplicitVRLittleEndian)
    outcome, defect = node.send(Case(MG_LITTLE, "syntax-Implicit", data), tmp_path)
    assert defect is not None and defect.startswith("parse (pydicom guessed")
    assert outcome == "0xC000 parse"


def test_an_element_whose_vr_bytes_are_no_vr_is_refused(
    node: FuzzNode, samples_dir: Path, tmp_path: Path
) -> None:
    """Found by bench/fuzz.py (seed 0): the CR SEG's Series Instance UID element header
    overwritten, tag (0020,000E) -> (0020,900E) and VR "UI" -> b"\\x90I". pydicom re-reads it as
    UN after a failed VR lookup; the SCP must not take an object read by such a guess."""
    data = bases(samples_dir)[CR_SEG].data
    header = b"\x20\x00\x0e\x00UI"  # (0020,000E), Explicit VR Little Endian
    at = data.index(header)
    broken = data[:at] + b"\x20\x00\x0e\x90\x90I" + data[at + len(header) :]
    outcome, defect = node.send(Case(CR_SEG, "vr-garbage-series-uid", broken), tmp_path)
    assert defect is not None and defect.startswith("parse (pydicom guessed")
    assert outcome == "0xC000 parse"
