"""Deterministic UIDs: the same SEG through the same weights always gives the same objects.

So a re-run or a resend replaces the earlier objects in the PACS rather than duplicating them,
and another model (another weights digest) never collides with them.
"""

from __future__ import annotations

import hashlib

from pydicom.uid import UID


def derived_uid(seg_sop_instance_uid: str, bundle_digest: str, role: str) -> str:
    """``2.25.<decimal of 128 hash bits>`` (at most 44 characters, always a valid UID)."""
    text = f"molsub|{seg_sop_instance_uid}|{bundle_digest}|{role}".encode()
    value = int.from_bytes(hashlib.sha256(text).digest()[:16], "big")
    uid = UID(f"2.25.{value}")
    assert uid.is_valid
    return str(uid)


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
