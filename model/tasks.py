"""The four prediction tasks of the paper and the class order of this product's networks.

Binary tasks put the condition the task is named after at index 1 so that "probability of
the positive class" is always ``probs[..., 1]``. The authors' checkpoints use other orders;
``model.reference_import`` maps them onto these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


LUMINAL = TaskSpec("luminal", "Luminal vs non-Luminal", ("non-Luminal", "Luminal"))
HER2 = TaskSpec("her2", "HER2-positive vs HER2-negative", ("HER2-negative", "HER2-positive"))
TN = TaskSpec("tn", "Triple-negative vs not", ("not triple-negative", "triple-negative"))
SUBTYPE5 = TaskSpec(
    "subtype5",
    "Five molecular subtypes",
    ("Luminal A", "Luminal B", "HER2+/HR+", "HER2+/HR-", "Triple-negative"),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in (LUMINAL, HER2, TN, SUBTYPE5)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)

# Index of each five-class subtype in SUBTYPE5.class_names, used to derive labels of the
# binary tasks from a five-class label (Luminal = LumA|LumB, HER2+ = HER2+/HR+|HER2+/HR-).
SUBTYPE_TO_BINARY: dict[int, dict[str, int]] = {
    0: {"luminal": 1, "her2": 0, "tn": 0},
    1: {"luminal": 1, "her2": 0, "tn": 0},
    2: {"luminal": 0, "her2": 1, "tn": 0},
    3: {"luminal": 0, "her2": 1, "tn": 0},
    4: {"luminal": 0, "her2": 0, "tn": 1},
}
