"""Fast stand-ins for the model stages, for the worker tests only (SYNTHETIC outputs).

The worker tests exercise queues, messages, processes, retries and DICOM delivery; running
four DenseNets per test would only slow them down. ``pipeline(kinds, config)`` builds a
worker.pipeline.Pipeline whose chosen stages are stand-ins: "prepare" (crops without
model.preprocess), "infer" (a predictor without torch), "results" (minimal SR / SC / SEG
objects with deterministic UIDs, without worker.results). A worker subprocess started with
``-A tests.worker_standins:app`` uses those named in $MOLSUB_TEST_STANDINS and builds its app
from $MOLSUB_CONFIG.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from common.errors import InputError
from common.settings import NodeConfig
from model.bundle_info import BundleInfo
from model.roi import RoiCrop, RoiPrediction, SquareBox
from model.tasks import TASKS
from worker.pipeline import BundleModel, Pipeline, PreparedUnit, header_only
from worker.pipeline import prepare as real_prepare
from worker.pipeline import results as real_results
from worker.results.result_set import ResultSet

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def bundle_info() -> BundleInfo:
    return BundleInfo(
        name="standin",
        version="0.0.0",
        profile="default",
        input_size=32,
        bound_size=4,
        untrained=True,
        tasks={name: tuple(spec.class_names) for name, spec in TASKS.items()},
        weights_sha256={name: hashlib.sha256(name.encode()).hexdigest() for name in TASKS},
        provenance={"note": "SYNTHETIC stand-in for worker tests"},
    )


def make_crop(source_uid: str, segment: int = 1, size: int = 24, seed: int = 0) -> RoiCrop:
    rng = np.random.default_rng(seed)
    return RoiCrop(
        segment_number=segment,
        segment_label=f"Lesion {segment}",
        source_sop_instance_uid=source_uid,
        source_frame_number=1,
        image_shape=(256, 200),
        box=SquareBox(top=10, left=-3, size=size),
        network_input=rng.standard_normal((32, 32)).astype(np.float32),
        display=rng.integers(0, 256, (size, size), dtype=np.uint8),
        mask=rng.random((size, size)) > 0.5,
    )


def prepare_unit(seg: Dataset, images: Mapping[str, Dataset], info: BundleInfo) -> PreparedUnit:
    """One crop per referenced image, as the real prepare would (no pixels of seg read)."""
    uids = [
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    ]
    missing = [uid for uid in uids if uid not in images]
    if missing:
        raise InputError(
            str(seg.SOPInstanceUID), f"references image {missing[0]} which was not received"
        )
    rois = [make_crop(uid, seed=i) for i, uid in enumerate(uids)]
    return PreparedUnit(
        seg=header_only(seg), sources=[header_only(images[u]) for u in uids], rois=rois
    )


# A worker started with this set fails its infer stage: "permanent" (unusable input) or
# "transient" (a RuntimeError, as a lost GPU gives), for the failure-path tests.
INFER_FAILS_ENV = "MOLSUB_TEST_INFER_FAILS"


class StandinPredictor:
    def predict(self, crops: Sequence[RoiCrop]) -> list[RoiPrediction]:
        failure = os.environ.get(INFER_FAILS_ENV, "")
        if failure == "permanent":
            raise InputError(crops[0].source_sop_instance_uid, "stand-in: network input unusable")
        if failure == "transient":
            raise RuntimeError("stand-in: CUDA out of memory")
        out = []
        for crop in crops:
            level = float(np.clip(crop.network_input.mean() + 0.5, 0.05, 0.95))
            probs = {
                name: np.full(
                    len(spec.class_names),
                    (1 - level) / max(len(spec.class_names) - 1, 1),
                    np.float32,
                )
                for name, spec in TASKS.items()
            }
            for p in probs.values():
                p[-1] = level
            cam = np.linspace(0, 1, crop.box.size**2, dtype=np.float32).reshape(crop.box.size, -1)
            out.append(RoiPrediction(probabilities=probs, cam=cam, extra={"standin": True}))
        return out


def predictor_for(config: object = None) -> tuple[StandinPredictor, BundleInfo]:
    return StandinPredictor(), bundle_info()


def build_objects(
    unit: PreparedUnit, predictions: Sequence[RoiPrediction], info: BundleInfo
) -> ResultSet:
    """One SR, one SC per ROI, one SEG: header-only objects with deterministic UIDs."""
    seg_uid = str(unit.seg.SOPInstanceUID)
    return ResultSet(
        sr=_object(SR_CLASS, "SR", seg_uid, info.digest, "sr", unit),
        secondary_captures=[
            _object(SC_CLASS, "OT", seg_uid, info.digest, f"sc{i}", unit)
            for i, _ in enumerate(predictions, start=1)
        ],
        heatmap_segs=[_object(SEG_CLASS, "SEG", seg_uid, info.digest, "seg", unit)],
    )


def derived_uid(*parts: str) -> str:
    return "2.25." + str(int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:30], 16))


def _object(
    sop_class: str, modality: str, seg_uid: str, digest: str, role: str, unit: PreparedUnit
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = derived_uid(seg_uid, digest, role)
    ds.StudyInstanceUID = unit.seg.StudyInstanceUID
    ds.SeriesInstanceUID = derived_uid(seg_uid, digest, role, "series")
    ds.PatientID = unit.seg.PatientID
    ds.Modality = modality
    ds.SeriesDescription = "SYNTHETIC stand-in result, RESEARCH USE ONLY"
    return ds


@dataclass(frozen=True)
class StandinModel:
    """The bundle's description and predictor: stand-ins for the kinds chosen, else the
    configured bundle's."""

    real: BundleModel
    standin_info: bool
    standin_predictor: bool

    def info(self) -> BundleInfo:
        return bundle_info() if self.standin_info else self.real.info()

    def predictor(self) -> tuple[StandinPredictor, BundleInfo]:
        return predictor_for() if self.standin_predictor else self.real.predictor()


KINDS = ("prepare", "infer", "results")


def pipeline(kinds: Iterable[str], config: NodeConfig) -> Pipeline:
    """The node's pipeline with the chosen stages replaced by the stand-ins above."""
    chosen = set(kinds)
    unknown = chosen - set(KINDS)
    if unknown:
        raise ValueError(f"unknown stand-in kinds {sorted(unknown)}; known: {KINDS}")
    real = BundleModel(config.model.bundle, config.model.device)
    return Pipeline(
        model=StandinModel(real, "prepare" in chosen, "infer" in chosen),
        prepare_stage=prepare_unit if "prepare" in chosen else real_prepare,
        results_stage=build_objects if "results" in chosen else real_results,
    )


def load_test_config() -> NodeConfig:
    from molsub.config import load_config

    return load_config(Path(os.environ["MOLSUB_CONFIG"]))


_app = None


def __getattr__(name: str) -> object:
    global _app
    if name == "app":
        if _app is None:
            from worker.queue.app import make_celery_app

            kinds = [k for k in os.environ.get("MOLSUB_TEST_STANDINS", "").split(",") if k]
            config = load_test_config()
            _app = make_celery_app(config, pipeline=pipeline(kinds, config))
        return _app
    raise AttributeError(name)
