"""The facts of docs/conformance.md that live in code, generated from the code.

The conformance statement is written by hand, except for blocks between
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``, which this module fills in:

- what the SCP negotiates is measured, not copied: a real ``scp.server.NodeSCP`` is started on
  loopback in a temporary spool and asked for every SOP class the node knows with every transfer
  syntax pydicom knows (once with the default ``[inputs]``, once with every input accepted);
- what the node proposes as SCU is measured too: ``store_scu`` (the delivery code) sends a stand-in
  object of each result SOP class to a recording SCP, which notes the presentation contexts;
- the codes come from ``worker/results/codes.py`` (and the module-level codes of ``sr.py``),
  the ``[inputs]`` table from ``common.settings.InputSettings`` and ``NodeSCP.policies``.

``python -m molsub.conformance`` rewrites the blocks in docs/conformance.md in place;
``--check`` only compares (exit 1 on drift), as tests/test_conformance.py does.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import logging
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, AllTransferSyntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

import common.sop_classes as sop_classes
import worker.results.codes as codes_module
import worker.results.sr as sr_module
import worker.results.sr_groups as sr_groups_module
from common.settings import (
    CONTENT_POLICIES,
    Destination,
    InputPolicy,
    InputSettings,
    NodeSettings,
)
from common.units import Unit
from scp import server
from scp.server import NodeSCP
from worker.delivery.targets import dicom as dicom_target

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"
REGENERATE = ".venv/bin/python -m molsub.conformance"
LOOPBACK = "127.0.0.1"
PROBE_AE = "CONFORMANCE"

# The result objects and the transfer syntax each is written in (highdicom's default for its
# IOD: the builders in worker/results/ pass none). tests/test_show.py checks this against the
# objects `molsub predict` writes, so a change there fails until this and the document follow.
RESULT_OBJECTS: dict[str, tuple[str, str]] = {
    sop_classes.COMPREHENSIVE_3D_SR: ("SR, TID 1500 (one per input SEG)", ExplicitVRLittleEndian),
    sop_classes.SECONDARY_CAPTURE: ("Grad-CAM picture (one per ROI)", ImplicitVRLittleEndian),
    sop_classes.SEGMENTATION: (
        "FRACTIONAL heatmap SEG (one per source image)",
        ExplicitVRLittleEndian,
    ),
}

# When the SCP answers each status it can return (scp/server.py); a status constant missing here
# fails the generator, so a new one cannot go undocumented.
STATUS_WHEN = {
    0x0000: "the object is fsynced in the spool and recorded in the state database; also an "
    "object whose [inputs] policy is `ignore` (not stored)",
    0xA700: "the spool write or the state database failed (disk full, I/O error), or the spool "
    "filesystem has less free space than `[node] min_free_mb` (Error Comment `spool filesystem "
    "below its free-space watermark`, answered before anything is stored); nothing is kept",
    0xC000: "the dataset does not parse to its end (Error Comment `parse: ...`), or the object "
    "cannot be used (no or invalid UIDs, an image smaller than `min_image_side`), its [inputs] "
    "policy is `fail` (by default: a SEG that is not a lesion outline), or it is of a class "
    "negotiated only for the node's own results and is not one; the Error Comment says which",
    0xC001: "`truncated`: an element (Pixel Data, a fragment) ends past the end of the object",
    0xC002: "`pixel-data`: an MG image or SEG without (integer) Pixel Data, or with an empty one",
    0xC003: "`pixel-length`: native Pixel Data whose length is not Rows x Columns x Samples x "
    "Bits Allocated x frames",
    0xC004: "`fragments`: encapsulated Pixel Data whose items are malformed (not items, odd "
    "lengths, fewer fragments than frames, a bad Basic Offset Table), or native data in a "
    "compressed syntax (and the reverse)",
    0xC005: "`geometry`: Rows/Columns outside 1..12288, Samples per Pixel not 1, Bits Allocated "
    "not 8/16 (MG) or 1/8/16 (SEG), Bits Stored or High Bit inconsistent, an MG of more than "
    "one frame",
    0xC006: "`seg-grid`: a SEG whose per-frame functional groups are not one per frame, each "
    "naming a segment it describes",
}

# What each [inputs] key that is not one SOP class's policy is about (NodeSCP.policies names the
# SOP class ones); a new key missing here fails the generator.
INPUT_KEYS = {
    "seg_images_missing": "a SEG whose images have not all arrived `study_timeout_s` after the "
    "last one",
    "own_results": "the node's own SR, SC and heatmap SEG routed back (told by device UID, "
    "manufacturer and SOP class, `common/inputs.py`)",
    "non_lesion_seg": "a SEG that is FRACTIONAL or has a segment that is not a lesion (segmented "
    "property category and type, `common/inputs.py`)",
    "min_image_side": "MG images with fewer rows or columns than this many pixels: refused "
    "(0xC000)",
}

# What each attribute of codes.py is used for in the SR (unknown names get their own name).
CODE_ROLES = {
    "BREAST": "value of Finding Site (with a Laterality modifier)",
    "TRIPLE_NEGATIVE_BREAST_CANCER": "value of a call: Triple-negative (five-class and TN tasks)",
    "HER2_POSITIVE_BREAST_CANCER": "value of a call: HER2-positive (HER2 task)",
    "HER2_NEGATIVE_BREAST_CANCER": "value of a call: HER2-negative (HER2 task)",
    "ILLUSTRATION_OF_ROI": "concept name (IMAGE) of a ROI's Secondary Capture",
    "GRADCAM": "concept name (IMAGE) of a ROI's heatmap segment; the heatmap SEG's segmented "
    "property type",
    "LATERALITY": "value of Image Laterality and of the Finding Site's Laterality",
    "TASK_CONCEPTS": "concept name of a task's call (CODE)",
    "CLASS_CODES": "value of a task's call (CODE)",
    "PROBABILITY_CODES": "concept name of a class probability (NUM, unit UCUM 1)",
    "INTENDED_USE": "concept name (CODE, document statement)",
    "RESEARCH_USE_ONLY": "value of Intended use",
    "MODEL_STATUS": "concept name (CODE): untrained or synthetic-trained model",
    "UNTRAINED_MODEL": "value of Model status",
    "SYNTHETIC_TRAINED_MODEL": "value of Model status",
    "VIEW_FUSION": "concept name (CODE) that marks a lesion's fused group",
    "MEAN_OF_VIEWS": "value of View fusion",
}


# --- the SCP, measured ------------------------------------------------------------------------


def _never_enqueue(unit: Unit) -> None:
    """The probe stores nothing, so no unit ever becomes ready."""
    raise AssertionError(f"conformance probe: unexpected unit {unit}")


@contextmanager
def _quiet() -> Iterator[None]:
    """pynetdicom and the SCP log every association; the probe makes dozens."""
    loggers = [logging.getLogger(name) for name in ("pynetdicom", "scp")]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before, strict=True):
            lg.setLevel(level)


@contextmanager
def _running_scp(inputs: InputSettings) -> Iterator[NodeSCP]:
    with tempfile.TemporaryDirectory(prefix="molsub-conformance-") as tmp:
        settings = NodeSettings(host=LOOPBACK, port=0, spool_dir=Path(tmp) / "spool")
        scp = NodeSCP(settings, _never_enqueue, inputs=inputs, poll_s=0.05)
        with _quiet(), scp:
            yield scp


def known_sop_classes() -> list[str]:
    """Verification and every SOP class named in common/sop_classes.py, in that order."""
    found = [str(Verification)]
    for name in sop_classes.__all__:
        value = getattr(sop_classes, name)
        if isinstance(value, str) and value not in found:
            found.append(str(value))
    return found


def known_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom knows: what the probes offer."""
    return [str(s) for s in AllTransferSyntaxes]


def _accepted_syntaxes(scp: NodeSCP, sop_class: str, syntaxes: list[str]) -> list[str]:
    """The transfer syntaxes the SCP accepts for ``sop_class``: one context per syntax."""
    ae = AE(ae_title=PROBE_AE)
    for syntax in syntaxes:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(LOOPBACK, scp.port, ae_title=scp.settings.ae_title)
    if not assoc.is_established:
        return []
    accepted = {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    assoc.release()
    return [s for s in syntaxes if s in accepted]


@dataclass(frozen=True)
class ScpFacts:
    """What the SCP negotiates with the default [inputs] and with every input accepted."""

    by_default: dict[str, list[str]]  # SOP class -> accepted transfer syntaxes
    when_enabled: dict[str, list[str]]
    policies: dict[str, tuple[str, InputPolicy]]  # SOP class -> ([inputs] key, default)
    own_results_only: frozenset[str]  # negotiated only to ignore the node's own results
    ae_title: str
    port: int
    max_associations: int
    max_associations_per_aet: int
    max_pdu: int
    acse_timeout: float | None
    dimse_timeout: float | None
    network_timeout: float | None
    implementation_uid: str
    implementation_version: str


def _all_inputs_accepted() -> InputSettings:
    """Every InputPolicy field set to ``ignore``: negotiated, whatever the node then does."""
    changes = {
        f.name: InputPolicy.IGNORE
        for f in dataclasses.fields(InputSettings)
        if isinstance(getattr(InputSettings(), f.name), InputPolicy)
    }
    return dataclasses.replace(InputSettings(), **changes)


def _negotiated(scp: NodeSCP) -> dict[str, list[str]]:
    """SOP class -> the transfer syntaxes accepted for it (classes with none left out)."""
    syntaxes = known_transfer_syntaxes()
    found = {sop: _accepted_syntaxes(scp, sop, syntaxes) for sop in known_sop_classes()}
    return {sop: accepted for sop, accepted in found.items() if accepted}


def probe_scp() -> ScpFacts:
    with _running_scp(InputSettings()) as scp:
        by_default, policies, ae = _negotiated(scp), dict(scp.policies), scp.ae
        own_only = scp.own_results_only
    with _running_scp(_all_inputs_accepted()) as scp:
        when_enabled = _negotiated(scp)
    defaults = NodeSettings()
    return ScpFacts(
        by_default=by_default,
        when_enabled=when_enabled,
        policies=policies,
        own_results_only=own_only,
        ae_title=defaults.ae_title,
        port=defaults.port,
        max_associations=defaults.max_associations,  # the gate's; pynetdicom's caps threads
        max_associations_per_aet=defaults.max_associations_per_aet,
        max_pdu=ae.maximum_pdu_size,
        acse_timeout=ae.acse_timeout,
        dimse_timeout=ae.dimse_timeout,
        network_timeout=ae.network_timeout,
        implementation_uid=str(ae.implementation_class_uid),
        implementation_version=str(ae.implementation_version_name),
    )


# --- the SCU, measured ------------------------------------------------------------------------


@dataclass(frozen=True)
class ScuFacts:
    contexts: list[tuple[str, list[str]]]  # proposed (SOP class, transfer syntaxes), in order
    calling_ae: str
    max_pdu: int
    implementation_uid: str
    implementation_version: str


def _stand_in(folder: Path, sop_class: str, syntax: str) -> Path:
    """A header-only object of ``sop_class`` in ``syntax``: all store_scu looks at."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def probe_scu() -> ScuFacts:
    """Send one stand-in of each result SOP class with the delivery code; note its proposal."""
    seen: list[ScuFacts] = []

    def on_store(event: evt.Event) -> int:
        requestor = event.assoc.requestor
        if not seen:
            contexts = [
                (str(cx.abstract_syntax), [str(s) for s in cx.transfer_syntax])
                for cx in requestor.requested_contexts
            ]
            seen.append(
                ScuFacts(
                    contexts=contexts,
                    calling_ae=requestor.ae_title,
                    max_pdu=int(requestor.maximum_length),
                    implementation_uid=str(requestor.implementation_class_uid),
                    implementation_version=str(requestor.implementation_version_name),
                )
            )
        return 0x0000

    recorder = AE(ae_title="RECORDER")
    for sop_class in RESULT_OBJECTS:
        recorder.add_supported_context(sop_class, known_transfer_syntaxes())
    with _quiet(), tempfile.TemporaryDirectory(prefix="molsub-conformance-") as tmp:
        listening = recorder.start_server(
            (LOOPBACK, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        try:
            port = int(listening.server_address[1])
            paths = [
                _stand_in(Path(tmp), sop, syntax) for sop, (_, syntax) in RESULT_OBJECTS.items()
            ]
            target = Destination(name="probe", ae_title="RECORDER", host=LOOPBACK, port=port)
            dicom_target.store_scu(target, paths, calling_ae=NodeSettings().ae_title)
        finally:
            listening.shutdown()
    if not seen:
        raise RuntimeError("conformance probe: store_scu sent nothing")
    return seen[0]


# --- the blocks -------------------------------------------------------------------------------


def _name(uid: str) -> str:
    return UID(uid).name


def _syntax_list(syntaxes: list[str]) -> str:
    return "<br>".join(f"{_name(s)} `{s}`" for s in syntaxes)


def _scp_role(scp: ScpFacts, sop: str) -> str:
    if sop in scp.own_results_only:
        return "Own results only"
    if sop in scp.by_default:
        return "Yes"
    return "Option ([inputs])" if sop in scp.when_enabled else "No"


def block_overview(scp: ScpFacts, scu: ScuFacts) -> str:
    rows = ["| SOP Class | UID | SCU | SCP |", "|---|---|---|---|"]
    proposed = {sop for sop, _ in scu.contexts}
    for sop in [*known_sop_classes(), *sorted(proposed - set(known_sop_classes()))]:
        as_scp, as_scu = _scp_role(scp, sop), "Yes" if sop in proposed else "No"
        if as_scp != "No" or as_scu != "No":
            rows.append(f"| {_name(sop)} | `{sop}` | {as_scu} | {as_scp} |")
    return "\n".join(rows)


def block_scp_sop_classes(scp: ScpFacts) -> str:
    rows = [
        "| SOP Class | UID | as SCP, default configuration | [inputs] key (default) |",
        "|---|---|---|---|",
    ]
    for sop in known_sop_classes():
        if sop not in scp.when_enabled:
            continue
        settings = []
        if sop in scp.policies:
            key, policy = scp.policies[sop]
            settings.append(f"`{key}` (`{policy}`)")
        if sop in scp.own_results_only:
            settings.append("`own_results` (`ignore`): negotiated for the node's own results")
        setting = "; ".join(settings) or "always accepted"
        rows.append(f"| {_name(sop)} | `{sop}` | {_scp_role(scp, sop)} | {setting} |")
    return "\n".join(rows)


def block_scp_transfer_syntaxes(scp: ScpFacts) -> str:
    groups: dict[tuple[str, ...], list[str]] = {}
    for sop, syntaxes in scp.when_enabled.items():
        groups.setdefault(tuple(syntaxes), []).append(sop)
    out = []
    for syntaxes, sops in groups.items():
        out.append("Abstract syntaxes: " + ", ".join(_name(s) for s in sops) + ".")
        out.append("")
        out.append("| Transfer Syntax | UID | Role | Extended Negotiation |")
        out.append("|---|---|---|---|")
        out.extend(f"| {_name(s)} | `{s}` | SCP | None |" for s in syntaxes)
        out.append("")
    return "\n".join(out).rstrip()


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:g} s"


def block_scp_association(scp: ScpFacts) -> str:
    return "\n".join(
        [
            "| Parameter | Value |",
            "|---|---|",
            f"| AE title (default, `[node] ae_title`) | `{scp.ae_title}` |",
            f"| Port (default, `[node] port`) | {scp.port} |",
            f"| Maximum number of simultaneous associations (`[node] max_associations`) | "
            f"{scp.max_associations} |",
            f"| ... from one calling AE title (`[node] max_associations_per_aet`) | "
            f"{scp.max_associations_per_aet} |",
            f"| Maximum PDU size received | {scp.max_pdu} bytes |",
            f"| ACSE / DIMSE / network timeout | {_seconds(scp.acse_timeout)} / "
            f"{_seconds(scp.dimse_timeout)} / {_seconds(scp.network_timeout)} |",
            f"| Implementation Class UID | `{scp.implementation_uid}` |",
            f"| Implementation Version Name | `{scp.implementation_version}` |",
        ]
    )


def block_scp_status() -> str:
    constants = sorted(
        {v for k, v in vars(server).items() if k.startswith("STATUS_") and isinstance(v, int)}
    )
    missing = [f"0x{c:04X}" for c in constants if c not in STATUS_WHEN]
    if missing:
        raise ValueError(f"scp/server.py returns {missing}: say when in conformance.STATUS_WHEN")
    rows = ["| Status | Category | Meaning (PS3.4) | Returned when |", "|---|---|---|---|"]
    for code in constants:
        category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS[code]
        rows.append(f"| 0x{code:04X} | {category} | {meaning or '-'} | {STATUS_WHEN[code]} |")
    return "\n".join(rows)


def block_scu(scu: ScuFacts) -> str:
    rows = [
        "| SOP Class | UID | written in | Transfer Syntaxes proposed (one context) |",
        "|---|---|---|---|",
    ]
    for sop, syntaxes in scu.contexts:
        written = RESULT_OBJECTS[sop][1] if sop in RESULT_OBJECTS else ""
        rows.append(
            f"| {_name(sop)} | `{sop}` | {_name(written) if written else '-'} | "
            f"{_syntax_list(syntaxes)} |"
        )
    rows += [
        "",
        "| Parameter | Value |",
        "|---|---|",
        f"| Calling AE title (default, `[node] ae_title`) | `{scu.calling_ae}` |",
        *(
            f"| `[[destinations]] {f.name}` (default) | {f.default:g} s |"
            for f in dataclasses.fields(Destination)
            if f.name.endswith("timeout_s") and isinstance(f.default, int | float)
        ),
        f"| Maximum PDU size received | {scu.max_pdu} bytes |",
        f"| Implementation Class UID | `{scu.implementation_uid}` |",
        f"| Implementation Version Name | `{scu.implementation_version}` |",
    ]
    return "\n".join(rows)


def block_scu_status() -> str:
    """The C-STORE responses the delivery code counts as stored; any other is a failure."""
    rows = ["| Status | Category | Meaning (PS3.4) | Behaviour |", "|---|---|---|---|"]
    for code in sorted(dicom_target.STORED_STATUSES):
        category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS[code]
        rows.append(f"| 0x{code:04X} | {category} | {meaning or '-'} | stored |")
    rows.append("| any other | | | failed delivery: retried, then `failed` |")
    return "\n".join(rows)


def block_result_objects() -> str:
    rows = ["| Object | SOP Class | UID | Transfer Syntax written |", "|---|---|---|---|"]
    for sop, (what, syntax) in RESULT_OBJECTS.items():
        rows.append(f"| {what} | {_name(sop)} | `{sop}` | {_name(syntax)} `{syntax}` |")
    return "\n".join(rows)


def _module_codes(module: object) -> Iterator[tuple[str, Code]]:
    """(attribute name, code) for every Code at module level, also inside dicts and tuples."""
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if isinstance(value, Code):
            yield name, value
        elif isinstance(value, dict):
            for item in value.values():
                # A class's codes are a tuple (and so, for isinstance, is a Code).
                items = (item,) if isinstance(item, Code) else item
                if not isinstance(items, tuple):
                    continue
                yield from ((name, c) for c in items if isinstance(c, Code))


def used_codes() -> dict[tuple[str, str], tuple[Code, str]]:
    """(scheme, value) -> (code, role) for the codes the result builders name themselves."""
    found: dict[tuple[str, str], tuple[Code, str]] = {}
    for module in (codes_module, sr_module, sr_groups_module):
        for name, code in _module_codes(module):
            key = (code.scheme_designator, code.value)
            found.setdefault(key, (code, CODE_ROLES.get(name, f"`{name}`")))
    return found


def block_private_codes() -> str:
    item = codes_module.coding_scheme_identification()
    rows = [
        "| Coding Scheme Designator | Name | Version | Responsible Organization |",
        "|---|---|---|---|",
        f"| `{item.CodingSchemeDesignator}` | {item.CodingSchemeName} | "
        f"{item.CodingSchemeVersion} | {item.CodingSchemeResponsibleOrganization} |",
        "",
        "| Code Value | Code Meaning | Used as |",
        "|---|---|---|",
    ]
    private = [
        (code, role)
        for (scheme, _), (code, role) in used_codes().items()
        if scheme == codes_module.SCHEME
    ]
    for code, role in sorted(private, key=lambda cr: cr[0].value):
        rows.append(f"| `{code.value}` | {code.meaning} | {role} |")
    return "\n".join(rows)


def block_standard_codes() -> str:
    rows = ["| Scheme | Code Value | Code Meaning | Named in the code as |", "|---|---|---|---|"]
    standard = [
        (code, role)
        for (scheme, _), (code, role) in used_codes().items()
        if scheme != codes_module.SCHEME
    ]
    for code, role in sorted(standard, key=lambda cr: (cr[0].scheme_designator, cr[0].value)):
        rows.append(f"| {code.scheme_designator} | `{code.value}` | {code.meaning} | {role} |")
    return "\n".join(rows)


def _allowed_values(key: str, value: object) -> str:
    if not isinstance(value, StrEnum):
        return f"a number (default {value})" if isinstance(value, int | float) else "-"
    # Kinds told apart by content cannot be refused at negotiation (common/settings.py).
    restricted = CONTENT_POLICIES.get(key)
    return ", ".join(f"`{v}`" for v in (restricted or type(value)))


def block_inputs(scp: ScpFacts) -> str:
    by_key: dict[str, list[str]] = {}
    for sop, (key, _) in scp.policies.items():
        by_key.setdefault(key, []).append(sop)
    unknown = [
        f.name
        for f in dataclasses.fields(InputSettings)
        if f.name not in by_key and f.name not in INPUT_KEYS
    ]
    if unknown:
        raise ValueError(f"[inputs] {unknown}: say what they are about in conformance.INPUT_KEYS")
    rows = ["| [inputs] key | Objects | Default | Values |", "|---|---|---|---|"]
    defaults = InputSettings()
    for f in dataclasses.fields(InputSettings):
        value = getattr(defaults, f.name)
        objects = (
            ", ".join(f"{_name(s)} `{s}`" for s in by_key[f.name])
            if f.name in by_key
            else INPUT_KEYS[f.name]
        )
        rows.append(f"| `{f.name}` | {objects} | `{value}` | {_allowed_values(f.name, value)} |")
    return "\n".join(rows)


def blocks() -> dict[str, Callable[[], str]]:
    """Every generated block by name; the probes run once, when the first block needs them."""
    scp, scu = functools.cache(probe_scp), functools.cache(probe_scu)
    return {
        "overview": lambda: block_overview(scp(), scu()),
        "scp-sop-classes": lambda: block_scp_sop_classes(scp()),
        "scp-transfer-syntaxes": lambda: block_scp_transfer_syntaxes(scp()),
        "scp-association": lambda: block_scp_association(scp()),
        "scp-status": block_scp_status,
        "scu": lambda: block_scu(scu()),
        "scu-status": block_scu_status,
        "result-objects": block_result_objects,
        "private-codes": block_private_codes,
        "standard-codes": block_standard_codes,
        "inputs": lambda: block_inputs(scp()),
    }


MARKER = re.compile(
    r"(?P<open><!-- generated:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- /generated:(?P=name) -->)",
    re.S,
)


def render(text: str) -> str:
    """``text`` with every generated block filled in from the code; each block must be there."""
    makers = blocks()
    names = [m.group("name") for m in MARKER.finditer(text)]
    unknown = sorted(set(names) - set(makers))
    missing = sorted(set(makers) - set(names))
    if unknown or missing:
        raise ValueError(f"conformance.md blocks: unknown {unknown}, missing {missing}")

    def fill(match: re.Match[str]) -> str:
        body = makers[match.group("name")]().rstrip("\n")
        return f"{match.group('open')}{body}\n{match.group('close')}"

    return MARKER.sub(fill, text)


def drift(path: Path = DOC) -> str:
    """A unified diff of the document against what the code says; empty when they agree."""
    current = path.read_text(encoding="utf-8")
    wanted = render(current)
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            fromfile=f"{path.name} (as written)",
            tofile=f"{path.name} (from the code)",
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m molsub.conformance",
        description="Fill in the generated blocks of docs/conformance.md from the code.",
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    parser.add_argument("--path", type=Path, default=DOC)
    args = parser.parse_args(argv)
    diff = drift(args.path)
    if args.check:
        if diff:
            sys.stdout.write(diff)
            print(f"{args.path} drifted from the code; regenerate with: {REGENERATE}")
            return 1
        print(f"{args.path} agrees with the code")
        return 0
    if diff:
        args.path.write_text(render(args.path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"{args.path}: generated blocks updated")
    else:
        print(f"{args.path}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
