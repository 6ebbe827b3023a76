"""The node's own result objects (SR, SCs, heatmap SEGs) built by the real worker.results, with
the stand-in bundle info (no torch), for the tests that route them back to the node."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from model.preprocess import extract_rois
from model.roi import RoiPrediction
from model.tasks import TASKS
from tests.factories import disk_mask, make_mg, make_seg, roundtrip
from tests.worker_standins import bundle_info
from worker.results.build import build_results


def node_results() -> tuple[list[Dataset], list[Dataset], Dataset]:
    """(the node's results as a PACS stores them, the MG images CC + MLO, the lesion SEG)."""
    cc = make_mg(view="CC", seed=1)
    mlo = make_mg(view="MLO", study_uid=cc.StudyInstanceUID, seed=2)
    mask = disk_mask((256, 200), (120, 90), 25)
    seg = roundtrip(make_seg([cc, mlo], [mask, mask]))
    rois = extract_rois(seg, {str(i.SOPInstanceUID): i for i in (cc, mlo)})
    predictions = [
        RoiPrediction(
            probabilities={t: np.full(s.num_classes, 1 / s.num_classes) for t, s in TASKS.items()},
            cam=np.full((roi.box.size, roi.box.size), 0.5, dtype=np.float32),
        )
        for roi in rois
    ]
    results = build_results(seg, [cc, mlo], rois, predictions, bundle_info())
    return [roundtrip(ds) for ds in results.all()], [cc, mlo], seg
