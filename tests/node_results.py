"""The node's own result objects (SR, SCs, heatmap SEGs) built by the real worker.results, with
the stand-in bundle info (no torch), for the tests that route them back to the node or show them
in a viewer."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from common.settings import ResultsSettings
from model.preprocess import extract_rois
from model.roi import RoiCrop, RoiPrediction
from model.tasks import TASKS
from tests.factories import disk_mask, make_mg, make_seg, roundtrip
from tests.worker_standins import bundle_info
from worker.results.build import build_results


def _prediction(roi: RoiCrop, winner: int | None) -> RoiPrediction:
    """Uniform probabilities and a flat CAM; or, given ``winner``, that class of every task at
    0.8 + the rest shared, and a CAM hot (0.9) in the crop's middle half."""
    size = roi.box.size
    if winner is None:
        probabilities = {t: np.full(s.num_classes, 1 / s.num_classes) for t, s in TASKS.items()}
        return RoiPrediction(probabilities, np.full((size, size), 0.5, dtype=np.float32))
    probabilities = {
        t: np.eye(s.num_classes)[min(winner, s.num_classes - 1)] * 0.8 + 0.2 / s.num_classes
        for t, s in TASKS.items()
    }
    cam = np.zeros((size, size), dtype=np.float32)
    cam[size // 4 : -(size // 4), size // 4 : -(size // 4)] = 0.9
    return RoiPrediction(probabilities, cam)


def node_results(
    settings: ResultsSettings | None = None, winner: int | None = None
) -> tuple[list[Dataset], list[Dataset], Dataset]:
    """(the node's results as a PACS stores them, the MG images CC + MLO, the lesion SEG)."""
    cc = make_mg(view="CC", seed=1)
    mlo = make_mg(view="MLO", study_uid=cc.StudyInstanceUID, seed=2)
    mask = disk_mask((256, 200), (120, 90), 25)
    seg = roundtrip(make_seg([cc, mlo], [mask, mask]))
    rois = extract_rois(seg, {str(i.SOPInstanceUID): i for i in (cc, mlo)})
    predictions = [_prediction(roi, winner) for roi in rois]
    results = build_results(seg, [cc, mlo], rois, predictions, bundle_info(), settings=settings)
    return [roundtrip(ds) for ds in results.all()], [cc, mlo], seg
