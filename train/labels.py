"""The five-class molecular subtype of a row: named directly, or derived from ER, PR, HER2, Ki-67.

The paper classifies by the St. Gallen 2023 consensus without stating its cut-offs, so the
standard IHC surrogate definitions are used (docs/training-data.md states them exactly):
ER/PR positive at >= 1 % stained nuclei; HER2 positive = IHC 3+ or IHC 2+ with ISH amplification;
Ki-67 high at >= 20 %; Luminal A also needs PR >= 20 % (St. Gallen 2013 surrogate). Every cut is a
field of ``Thresholds``. An input that cannot be decided (HER2 2+ without ISH, "0.5" that may be a
fraction or a percentage) is an error, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TypeVar

from model.tasks import SUBTYPE5

MARKER_COLUMNS = ("er", "pr", "her2", "ki67")
# A record is read by its markers when it has these columns (Ki-67 is needed for some rows only).
REQUIRED_MARKER_COLUMNS = ("er", "pr", "her2")

_T = TypeVar("_T")


class LabelError(ValueError):
    """A label that cannot be read or decided; ``column`` names the input it came from."""

    def __init__(self, reason: str, column: str | None = None) -> None:
        self.reason = reason
        self.column = column
        super().__init__(reason)


class Subtype(IntEnum):
    """Index into ``model.tasks.SUBTYPE5.class_names`` (the networks' class order)."""

    LUMINAL_A = 0
    LUMINAL_B = 1
    HER2_HR_POSITIVE = 2
    HER2_HR_NEGATIVE = 3
    TRIPLE_NEGATIVE = 4

    @property
    def short_name(self) -> str:
        """The spelling a manifest is written with (LumA, LumB, HER2+/HR+, HER2+/HR-, TN)."""
        return SHORT_NAMES[self]

    @property
    def class_name(self) -> str:
        return SUBTYPE5.class_names[self]


SHORT_NAMES = ("LumA", "LumB", "HER2+/HR+", "HER2+/HR-", "TN")
_SPELLINGS: dict[str, Subtype] = {
    **{name.lower(): Subtype(i) for i, name in enumerate(SHORT_NAMES)},
    **{name.lower().replace(" ", ""): Subtype(i) for i, name in enumerate(SUBTYPE5.class_names)},
    "luminal-a": Subtype.LUMINAL_A,
    "luminal-b": Subtype.LUMINAL_B,
    "hr+/her2+": Subtype.HER2_HR_POSITIVE,
    "hr-/her2+": Subtype.HER2_HR_NEGATIVE,
    "tnbc": Subtype.TRIPLE_NEGATIVE,
    "triplenegative": Subtype.TRIPLE_NEGATIVE,
}


def parse_subtype(value: str) -> Subtype:
    """A subtype name in the manifest's or the model's spelling (case and spaces ignored)."""
    key = re.sub(r"[\s_]+", "", value).lower()
    if key not in _SPELLINGS:
        known = ", ".join((*SHORT_NAMES, *SUBTYPE5.class_names))
        raise LabelError(f"unknown subtype {value!r}; known: {known}", "subtype")
    return _SPELLINGS[key]


@dataclass(frozen=True)
class Thresholds:
    """Cut-offs in percent of stained tumour nuclei; ``pr_luminal_a=None`` drops the PR rule."""

    er_positive: float = 1.0
    pr_positive: float = 1.0
    ki67_high: float = 20.0
    pr_luminal_a: float | None = 20.0

    def __post_init__(self) -> None:
        for name in ("er_positive", "pr_positive", "ki67_high", "pr_luminal_a"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 100:
                raise ValueError(f"threshold {name} must be in (0, 100] percent, got {value}")


DEFAULT_THRESHOLDS = Thresholds()


# --------------------------------------------------------------------------------------------
# Percentages: an exact value or a bounded range ("<1%", "positive")


@dataclass(frozen=True)
class Percent:
    """A share of stained nuclei known to lie between ``low`` and ``high`` (percent).

    Only an open upper end matters to ">= cut" decisions ("<20%" is below a 20 % cut); an open
    lower end (">20%") decides the same as a closed one.
    """

    low: float
    high: float
    high_inclusive: bool = True

    def at_least(self, threshold: float) -> bool | None:
        """Whether the value is >= ``threshold``; None when the range straddles it."""
        if self.low >= threshold:
            return True
        if self.high < threshold or (self.high == threshold and not self.high_inclusive):
            return False
        return None


_NUMBER = re.compile(r"^(?P<op>[<>])?\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<pct>%)?$")


def parse_percent(
    value: str | float | None, marker: str, *, qualitative: Mapping[str, Percent] | None = None
) -> Percent | None:
    """A percentage 0-100 ("15", "15%", "0.5%", "<1%", ">30"); None when empty.

    A bare number strictly between 0 and 1 ("0.15") is refused: it may be a fraction (15 %) or
    a percentage (0.15 %). Below 1 % write the sign ("0.5%"). ``qualitative`` maps words
    ("positive", "low") to ranges.
    """
    if isinstance(value, bool):
        raise LabelError(f"{marker} {value!r} is not a percentage", marker)
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    words = qualitative or {}
    if text.lower() in words:
        return words[text.lower()]
    match = _NUMBER.match(text)
    if not match:
        accepted = "a percentage such as 15, 15% or <1%"
        if words:
            accepted += " or " + ", ".join(sorted(words))
        raise LabelError(f"{marker} {text!r} is not {accepted}", marker)
    number = float(match["num"])
    if number > 100:
        raise LabelError(f"{marker} {text!r} is above 100 %", marker)
    if 0 < number < 1 and not match["pct"]:
        raise LabelError(
            f"{marker} {text!r} is ambiguous: a fraction ({number * 100:g} %) or a percentage "
            f"({number:g} %)? Write percentages 0-100; below 1 % with the sign ({number:g}%)",
            marker,
        )
    if (match["op"], number) in (("<", 0.0), (">", 100.0)):
        raise LabelError(f"{marker} {text!r} is an empty range", marker)
    if match["op"] == "<":
        return Percent(0.0, number, high_inclusive=False)
    if match["op"] == ">":
        return Percent(number, 100.0)
    return Percent(number, number)


def _receptor_words(threshold: float) -> dict[str, Percent]:
    positive = Percent(threshold, 100.0)
    negative = Percent(0.0, threshold, high_inclusive=False)
    return {"positive": positive, "pos": positive, "+": positive,
            "negative": negative, "neg": negative, "-": negative}  # fmt: skip


def _ki67_words(threshold: float) -> dict[str, Percent]:
    return {"high": Percent(threshold, 100.0), "low": Percent(0.0, threshold, high_inclusive=False)}


# --------------------------------------------------------------------------------------------
# HER2


class Her2(Enum):
    NEGATIVE = "negative"
    POSITIVE = "positive"


_HER2_WORDS: dict[str, Her2] = {
    **dict.fromkeys(("0", "0+", "1+", "negative", "neg", "-", "false", "no"), Her2.NEGATIVE),
    **dict.fromkeys(("3+", "positive", "pos", "+", "true", "yes", "amplified"), Her2.POSITIVE),
    **dict.fromkeys(("notamplified", "non-amplified"), Her2.NEGATIVE),
}
_HER2_ISH = re.compile(r"^2\+[/(,;]?(?:ish|fish|cish|sish)(?P<sign>[+-]|pos|neg)\)?$")


def parse_her2(value: str | bool | None) -> Her2 | None:
    """HER2 status from an IHC score (0, 1+, 2+/ISH+, 3+), a word or a boolean; None if empty.

    IHC 2+ without an ISH result is equivocal and refused. A bare "1" is refused too: it may be
    a yes/no flag (positive) or the IHC score 1+ (negative).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return Her2.POSITIVE if value else Her2.NEGATIVE
    text = re.sub(r"\s+", "", str(value)).lower().replace("−", "-")
    if not text:
        return None
    if text in _HER2_WORDS:
        return _HER2_WORDS[text]
    ish = _HER2_ISH.match(text)
    if ish:
        return Her2.POSITIVE if ish["sign"] in ("+", "pos") else Her2.NEGATIVE
    if text in ("2+", "2"):
        raise LabelError(
            f"HER2 {value!r}: IHC 2+ is equivocal without an ISH result; write 2+/ISH+ or 2+/ISH-",
            "her2",
        )
    if text in ("1", "2", "3"):
        raise LabelError(
            f"HER2 {value!r} is ambiguous: an IHC score (write {text}+) or a yes/no flag "
            "(write positive or negative)?",
            "her2",
        )
    raise LabelError(
        f"HER2 {value!r} is not an IHC score (0, 1+, 2+/ISH+, 2+/ISH-, 3+), "
        "positive/negative or true/false",
        "her2",
    )


# --------------------------------------------------------------------------------------------
# The subtype


def subtype_from_markers(
    er: str | float | None,
    pr: str | float | None,
    her2: str | bool | None,
    ki67: str | float | None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Subtype:
    """The St. Gallen surrogate subtype (rule in the module docstring and docs/training-data.md).

    ER, PR and HER2 are always needed; Ki-67 only where it decides Luminal A from B.
    """
    t = thresholds
    er_pct = _required(parse_percent(er, "er", qualitative=_receptor_words(t.er_positive)), "er")
    pr_pct = _required(parse_percent(pr, "pr", qualitative=_receptor_words(t.pr_positive)), "pr")
    her2_status = _required(parse_her2(her2), "her2")
    er_pos, pr_pos = er_pct.at_least(t.er_positive), pr_pct.at_least(t.pr_positive)
    if er_pos or pr_pos:
        hormone_receptor = True
    elif er_pos is False and pr_pos is False:
        hormone_receptor = False
    else:
        undecided = "er" if er_pos is None else "pr"
        raise LabelError(f"{undecided} range does not decide positivity", undecided)
    if her2_status is Her2.POSITIVE:
        return Subtype.HER2_HR_POSITIVE if hormone_receptor else Subtype.HER2_HR_NEGATIVE
    if not hormone_receptor:
        return Subtype.TRIPLE_NEGATIVE
    ki67_pct = parse_percent(ki67, "ki67", qualitative=_ki67_words(t.ki67_high))
    return _luminal(er_pos, pr_pct, ki67_pct, t)


def _luminal(er_pos: bool | None, pr: Percent, ki67: Percent | None, t: Thresholds) -> Subtype:
    """Luminal A only when ER+, Ki-67 low and (if the rule is on) PR high; any opposite is B."""
    ki67_high = ki67.at_least(t.ki67_high) if ki67 is not None else None
    pr_high = pr.at_least(t.pr_luminal_a) if t.pr_luminal_a is not None else True
    if er_pos is False or ki67_high is True or pr_high is False:
        return Subtype.LUMINAL_B
    if ki67 is None:
        raise LabelError("ki67 is needed to tell Luminal A from B (HR+, HER2-)", "ki67")
    if ki67_high is None:
        raise LabelError(f"ki67 range does not decide the {t.ki67_high:g} % cut", "ki67")
    if pr_high is None:
        raise LabelError(
            f"pr must be a percentage to apply the Luminal A rule PR >= {t.pr_luminal_a:g} %", "pr"
        )
    if er_pos is None:
        raise LabelError("er range does not decide positivity", "er")
    return Subtype.LUMINAL_A


def _required(value: _T | None, column: str) -> _T:
    if value is None:
        raise LabelError(f"{column} is missing", column)
    return value


def label_from_record(
    record: Mapping[str, str | None], thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> Subtype:
    """The subtype of one CSV record: its ``subtype`` if given, else derived from the markers.

    The markers are read when the record has the columns er, pr and her2 (a lone ``her2``
    column, such as `molsub synth`'s binary task label, is not a marker set). When both are
    given the derived subtype must agree with the named one.
    """
    named_text = (record.get("subtype") or "").strip()
    named = parse_subtype(named_text) if named_text else None
    markers = {c: record.get(c) for c in MARKER_COLUMNS}
    has_markers = all(c in record for c in REQUIRED_MARKER_COLUMNS) and any(
        (v or "").strip() for v in markers.values()
    )
    if not has_markers:
        if named is None:
            raise LabelError("no subtype and no markers (er, pr, her2, ki67) given", "subtype")
        return named
    derived = subtype_from_markers(
        markers["er"], markers["pr"], markers["her2"], markers["ki67"], thresholds
    )
    if named is not None and named is not derived:
        raise LabelError(
            f"subtype {named.short_name} disagrees with the markers, which give "
            f"{derived.short_name}",
            "subtype",
        )
    return derived
