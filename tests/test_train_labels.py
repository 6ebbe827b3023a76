"""Subtype labels: names in both spellings, and the St. Gallen surrogate from ER, PR, HER2, Ki-67
at its borders (exactly on each cut, just below it), with the undecidable inputs refused."""

from __future__ import annotations

import pytest

from model.tasks import SUBTYPE5
from train.labels import (
    Her2,
    LabelError,
    Subtype,
    Thresholds,
    label_from_record,
    parse_her2,
    parse_percent,
    parse_subtype,
    subtype_from_markers,
)

LUM_A, LUM_B = Subtype.LUMINAL_A, Subtype.LUMINAL_B
HER2_HR_POS, HER2_HR_NEG, TN = (
    Subtype.HER2_HR_POSITIVE,
    Subtype.HER2_HR_NEGATIVE,
    Subtype.TRIPLE_NEGATIVE,
)


def test_subtype_order_is_the_networks() -> None:
    assert [s.class_name for s in Subtype] == list(SUBTYPE5.class_names)
    assert [s.short_name for s in Subtype] == ["LumA", "LumB", "HER2+/HR+", "HER2+/HR-", "TN"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LumA", LUM_A),
        ("Luminal A", LUM_A),
        ("luminal a", LUM_A),
        ("LumB", LUM_B),
        ("Luminal B", LUM_B),
        ("HER2+/HR+", HER2_HR_POS),
        ("her2+/hr+", HER2_HR_POS),
        ("HER2+/HR-", HER2_HR_NEG),
        ("TN", TN),
        ("Triple-negative", TN),
        ("TNBC", TN),
    ],
)
def test_subtype_spellings(text: str, expected: Subtype) -> None:
    assert parse_subtype(text) is expected


@pytest.mark.parametrize("text", ["Luminal", "HER2+", "HER2-enriched", "basal", "5"])
def test_unknown_or_incomplete_subtype_is_refused(text: str) -> None:
    with pytest.raises(LabelError, match="unknown subtype") as caught:
        parse_subtype(text)
    assert caught.value.column == "subtype"
    assert "LumA" in str(caught.value) and "Luminal A" in str(caught.value)


# --------------------------------------------------------------------------------------------
# ER/PR positivity at 1 %


@pytest.mark.parametrize(
    ("er", "pr", "expected"),
    [
        ("1", "0", LUM_B),  # ER exactly 1 %: positive (PR 0 < 20 %: B)
        ("1%", "0", LUM_B),
        ("0.99%", "0", TN),  # just below 1 %: negative
        ("0", "1%", LUM_B),  # PR alone makes HR+; ER- is never Luminal A
        ("0", "0.99%", TN),
        ("<1%", "<1%", TN),
        ("0", "0", TN),
        ("negative", "negative", TN),
        ("positive", "0", LUM_B),
    ],
)
def test_hormone_receptor_cut(er: str, pr: str, expected: Subtype) -> None:
    assert subtype_from_markers(er, pr, "0", "5") is expected


@pytest.mark.parametrize(
    ("ki67", "expected"),
    [
        ("19.9", LUM_A),
        ("19.9%", LUM_A),
        ("20", LUM_B),  # exactly 20 %: high
        ("20%", LUM_B),
        ("<20%", LUM_A),
        (">20", LUM_B),
        ("low", LUM_A),
        ("high", LUM_B),
        ("0", LUM_A),
        ("100", LUM_B),
    ],
)
def test_ki67_cut_at_20_percent(ki67: str, expected: Subtype) -> None:
    assert subtype_from_markers("90", "50", "1+", ki67) is expected


@pytest.mark.parametrize(("pr", "expected"), [("20", LUM_A), ("19.9", LUM_B), ("20%", LUM_A)])
def test_luminal_a_needs_pr_at_least_20_percent(pr: str, expected: Subtype) -> None:
    assert subtype_from_markers("90", pr, "0", "10") is expected


def test_pr_rule_can_be_switched_off_and_thresholds_moved() -> None:
    assert subtype_from_markers("90", "5", "0", "10", Thresholds(pr_luminal_a=None)) is LUM_A
    assert subtype_from_markers("90", "50", "0", "15", Thresholds(ki67_high=14)) is LUM_B
    assert subtype_from_markers("90", "50", "0", "13.9", Thresholds(ki67_high=14)) is LUM_A
    assert subtype_from_markers("5", "5", "0", "", Thresholds(er_positive=10, pr_positive=10)) is TN


@pytest.mark.parametrize("value", [0, -1, 101])
def test_threshold_outside_0_100_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="ki67_high must be in"):
        Thresholds(ki67_high=value)


# --------------------------------------------------------------------------------------------
# HER2


@pytest.mark.parametrize(
    ("her2", "expected"),
    [
        ("0", Her2.NEGATIVE),
        ("1+", Her2.NEGATIVE),
        ("2+/ISH-", Her2.NEGATIVE),
        ("2+ (ISH-)", Her2.NEGATIVE),
        ("2+/FISH neg", Her2.NEGATIVE),
        ("2+/ISH+", Her2.POSITIVE),
        ("2+ ISH+", Her2.POSITIVE),
        ("2+/FISH+", Her2.POSITIVE),
        ("3+", Her2.POSITIVE),
        ("positive", Her2.POSITIVE),
        ("Negative", Her2.NEGATIVE),
        ("true", Her2.POSITIVE),
        ("false", Her2.NEGATIVE),
        (True, Her2.POSITIVE),
        (False, Her2.NEGATIVE),
        ("", None),
        (None, None),
    ],
)
def test_her2_status(her2: str | bool | None, expected: Her2 | None) -> None:
    assert parse_her2(her2) is expected


def test_her2_decides_the_her2_classes() -> None:
    assert subtype_from_markers("90", "50", "3+", "") is HER2_HR_POS
    assert subtype_from_markers("0", "0", "3+", "") is HER2_HR_NEG
    assert subtype_from_markers("0", "0", "2+/ISH+", "") is HER2_HR_NEG
    assert subtype_from_markers("0", "0", "2+/ISH-", "") is TN
    assert subtype_from_markers("0", "0", True, "") is HER2_HR_NEG


@pytest.mark.parametrize("her2", ["2+", "2+ ", "2"])
def test_her2_2plus_without_ish_is_an_error_not_a_guess(her2: str) -> None:
    with pytest.raises(LabelError, match="equivocal without an ISH result") as caught:
        subtype_from_markers("90", "50", her2, "10")
    assert caught.value.column == "her2"


@pytest.mark.parametrize("her2", ["1", "3"])
def test_bare_her2_digit_is_ambiguous(her2: str) -> None:
    with pytest.raises(LabelError, match="ambiguous: an IHC score") as caught:
        parse_her2(her2)
    assert caught.value.column == "her2"


def test_her2_nonsense_is_refused() -> None:
    with pytest.raises(LabelError, match="is not an IHC score"):
        parse_her2("maybe")


# --------------------------------------------------------------------------------------------
# Units of percentages


@pytest.mark.parametrize("value", ["0.15", "0.5", ".5", 0.15, "<0.5"])
def test_bare_fraction_is_ambiguous(value: str | float) -> None:
    with pytest.raises(LabelError, match="ambiguous: a fraction") as caught:
        parse_percent(value, "ki67")
    assert caught.value.column == "ki67"


def test_percentages_with_the_sign_and_whole_numbers() -> None:
    assert parse_percent("0.15%", "er").at_least(0.15) is True
    assert parse_percent("15", "er") == parse_percent("15%", "er") == parse_percent(15, "er")
    assert parse_percent(" 15 % ", "er").low == 15
    assert parse_percent("", "er") is None
    assert parse_percent(None, "er") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("101", "above 100"),
        ("15-20%", "not a percentage"),
        ("abc", "not a percentage"),
        ("<0", "empty range"),
        (">100", "empty range"),
        (True, "not a percentage"),
    ],
)
def test_bad_percentages_are_refused(value: str | bool, message: str) -> None:
    with pytest.raises(LabelError, match=message):
        parse_percent(value, "pr")


def test_range_that_straddles_a_cut_is_undecided() -> None:
    assert parse_percent("<30%", "ki67").at_least(20) is None
    with pytest.raises(LabelError, match="ki67 range does not decide") as caught:
        subtype_from_markers("90", "50", "0", "<30%")
    assert caught.value.column == "ki67"


def test_er_range_straddling_its_cut_with_pr_negative_is_undecided() -> None:
    with pytest.raises(LabelError, match="er range does not decide") as caught:
        subtype_from_markers("<5%", "0", "0", "10")
    assert caught.value.column == "er"


# --------------------------------------------------------------------------------------------
# Missing markers: only where they decide


@pytest.mark.parametrize("missing", ["er", "pr", "her2"])
def test_er_pr_her2_are_always_needed(missing: str) -> None:
    markers = {"er": "90", "pr": "50", "her2": "0", "ki67": "10", missing: ""}
    with pytest.raises(LabelError, match=f"{missing} is missing") as caught:
        subtype_from_markers(**markers)
    assert caught.value.column == missing


def test_ki67_needed_only_to_split_luminal_a_from_b() -> None:
    assert subtype_from_markers("90", "50", "3+", "") is HER2_HR_POS
    assert subtype_from_markers("0", "0", "0", "") is TN
    assert subtype_from_markers("90", "5", "0", "") is LUM_B  # PR < 20 %: B whatever Ki-67
    with pytest.raises(LabelError, match="ki67 is needed") as caught:
        subtype_from_markers("90", "50", "0", "")
    assert caught.value.column == "ki67"


def test_qualitative_pr_cannot_apply_the_20_percent_rule() -> None:
    with pytest.raises(LabelError, match="PR >= 20 %") as caught:
        subtype_from_markers("90", "positive", "0", "10")
    assert caught.value.column == "pr"
    assert subtype_from_markers("90", "positive", "0", "10", Thresholds(pr_luminal_a=None)) is (
        LUM_A
    )


# --------------------------------------------------------------------------------------------
# Records (a CSV row)


def test_record_by_name_or_markers() -> None:
    assert label_from_record({"subtype": "Luminal B"}) is LUM_B
    markers = {"er": "0", "pr": "0", "her2": "3+", "ki67": "40"}
    assert label_from_record(markers) is HER2_HR_NEG
    assert label_from_record({**markers, "subtype": "HER2+/HR-"}) is HER2_HR_NEG


def test_record_whose_name_and_markers_disagree_is_refused() -> None:
    record = {"subtype": "TN", "er": "0", "pr": "0", "her2": "3+", "ki67": "40"}
    with pytest.raises(LabelError, match="TN disagrees with the markers, which give HER2"):
        label_from_record(record)


def test_synth_labels_her2_column_is_not_a_marker_set() -> None:
    """`molsub synth`'s labels.csv has a binary her2 column beside subtype: subtype is used."""
    record = {"subtype": "HER2+/HR+", "her2": "1", "luminal": "0", "tn": "0"}
    assert label_from_record(record) is HER2_HR_POS


def test_record_without_any_label_is_refused() -> None:
    with pytest.raises(LabelError, match="no subtype and no markers") as caught:
        label_from_record({"subtype": "", "er": "", "pr": "", "her2": "", "ki67": ""})
    assert caught.value.column == "subtype"


def test_undecided_er_keeps_hr_positive_but_cannot_make_luminal_a() -> None:
    assert subtype_from_markers("<5%", "50", "3+", "") is HER2_HR_POS  # PR decides HR+
    assert subtype_from_markers("<5%", "50", "0", "30") is LUM_B  # Ki-67 high decides B
    with pytest.raises(LabelError, match="er range does not decide") as caught:
        subtype_from_markers("<5%", "50", "0", "10")
    assert caught.value.column == "er"
    with pytest.raises(LabelError, match="pr range does not decide") as caught:
        subtype_from_markers("0", "<5%", "0", "10")
    assert caught.value.column == "pr"
