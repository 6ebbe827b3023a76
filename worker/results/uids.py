"""Deterministic UIDs: the same SEG through the same weights always gives the same objects.

So a re-run or a resend replaces the earlier objects in the PACS rather than duplicating them,
and another model (another weights digest) never collides with them.
"""

from __future__ import annotations

from common.uids import hashed_uid


def derived_uid(seg_sop_instance_uid: str, bundle_digest: str, role: str) -> str:
    """The UID of one result object (or series) of one SEG through one set of weights."""
    return hashed_uid(f"molsub|{seg_sop_instance_uid}|{bundle_digest}|{role}")


class ResultUids:
    """The UIDs of everything built for one input SEG."""

    def __init__(self, seg_sop_instance_uid: str, bundle_digest: str) -> None:
        self.seg_uid = seg_sop_instance_uid
        self.digest = bundle_digest

    def __call__(self, role: str) -> str:
        return derived_uid(self.seg_uid, self.digest, role)

    @property
    def sr_series(self) -> str:
        return self("sr-series")

    @property
    def sr_instance(self) -> str:
        return self("sr")

    @property
    def sc_series(self) -> str:
        return self("sc-series")

    def sc_instance(self, roi_index: int) -> str:
        return self(f"sc/{roi_index}")

    @property
    def heatmap_series(self) -> str:
        return self("heatmap-seg-series")

    def heatmap_instance(self, source_uid: str) -> str:
        return self(f"heatmap-seg/{source_uid}")

    def tracking(self, roi_index: int) -> str:
        return self(f"tracking/{roi_index}")

    def fused_tracking(self, segment_number: int) -> str:
        """A lesion's fused group: one per segment, whatever the order of its ROIs."""
        return self(f"tracking/fused/segment-{segment_number}")
