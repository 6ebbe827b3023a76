"""Reading an SR dataset by its content items, for tests: independent of highdicom's parser."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset


def walk(item: Dataset) -> Iterator[Dataset]:
    for child in item.get("ContentSequence", []):
        yield child
        yield from walk(child)


def concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)


def value_code(item: Dataset) -> tuple[str, str]:
    code = item.ConceptCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue)
