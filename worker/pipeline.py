"""The one place the stages of a unit are chained: read -> prepare -> infer -> results.

prepare: reads DICOM (pixels), decodes and crops -> PreparedUnit (crops + header-only datasets).
infer:   the model only (GPU queue in production) -> RoiPredictions.
results: the SR, Secondary Captures and heatmap SEGs, from headers, crops and predictions.

``Pipeline.run`` chains all three in one process (``molsub predict``, the benches); the Celery
tasks (worker/queue) run one stage each, through the same Pipeline. Nothing here touches the
network, a broker or a config file: a Pipeline is handed its model source, and tests hand it
stand-in stages instead of patching modules.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from common.errors import BundleError, InputError
from common.progress import FailureKind
from common.seg_refs import referenced_image_uids
from common.settings import ResultsSettings
from model.bundle_info import BundleInfo, read_bundle_info
from model.roi import RoiCrop, RoiPrediction
from worker.results.result_set import ResultSet

log = logging.getLogger(__name__)

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Retrying cannot help: unusable input, a bad or missing bundle, and the deterministic errors of
# building results from that input. Anything else (OSError, MemoryError, a lost connection, a
# CUDA out-of-memory RuntimeError) may pass.
PERMANENT_ERRORS = (
    InputError,
    BundleError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
)


def failure_kind(exc: BaseException) -> FailureKind:
    """Whether a stage's exception ends the unit at once or is worth retrying."""
    return FailureKind.PERMANENT if isinstance(exc, PERMANENT_ERRORS) else FailureKind.TRANSIENT


@dataclass
class PreparedUnit:
    """What infer and results need, with no pixel data of the source objects left in it."""

    seg: Dataset
    sources: list[Dataset]
    rois: list[RoiCrop]


class RoiPredictor(Protocol):
    """What infer needs of a model: model.inference.Predictor, or a test's stand-in."""

    def predict(self, crops: Sequence[RoiCrop]) -> list[RoiPrediction]: ...


class ModelSource(Protocol):
    """Where a pipeline gets the bundle's description and its loaded predictor."""

    def info(self) -> BundleInfo: ...

    def predictor(self) -> tuple[RoiPredictor, BundleInfo]: ...


PrepareStage = Callable[[Dataset, Mapping[str, Dataset], BundleInfo], PreparedUnit]
ResultsStage = Callable[[PreparedUnit, Sequence[RoiPrediction], BundleInfo], ResultSet]


def header_only(ds: Dataset) -> Dataset:
    """A copy without pixel data: what results need of an image, small enough for a message."""
    out = Dataset()
    out.file_meta = copy.deepcopy(getattr(ds, "file_meta", Dataset()))
    for elem in ds:
        if elem.keyword not in PIXEL_KEYWORDS:
            out.add(copy.deepcopy(elem))
    return out


def read_unit_files(
    unit_id: str, seg_path: str | Path, image_paths: Sequence[str | Path]
) -> tuple[Dataset, dict[str, Dataset]]:
    """The SEG and its MG images from the spool, images keyed by SOP Instance UID."""
    seg = _read(unit_id, seg_path)
    images: dict[str, Dataset] = {}
    for path in image_paths:
        ds = _read(unit_id, path)
        images[str(ds.SOPInstanceUID)] = ds
    return seg, images


def _read(unit_id: str, path: str | Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise InputError(unit_id, f"spool file {path} is not readable DICOM: {exc}") from exc


def prepare(seg: Dataset, images: Mapping[str, Dataset], info: BundleInfo) -> PreparedUnit:
    """Decode and crop every ROI of one SEG as the bundle's preprocessing says; keep only the
    headers of the images it references."""
    from model.preprocess import extract_rois

    rois = extract_rois(
        seg,
        images,
        profile=info.profile,
        bound_size=info.bound_size,
        input_size=info.input_size,
    )
    sources = [header_only(images[uid]) for uid in referenced_image_uids(seg)]
    return PreparedUnit(seg=header_only(seg), sources=sources, rois=rois)


def results(
    unit: PreparedUnit,
    predictions: Sequence[RoiPrediction],
    info: BundleInfo,
    settings: ResultsSettings | None = None,
) -> ResultSet:
    """SR, Secondary Captures and heatmap SEGs for one unit ([results] ``settings``)."""
    from worker.results.build import build_results

    return build_results(unit.seg, unit.sources, unit.rois, list(predictions), info, settings)


def results_stage(settings: ResultsSettings) -> ResultsStage:
    """The results stage handed the node's [results] settings."""
    return functools.partial(results, settings=settings)


@dataclass(frozen=True)
class BundleModel:
    """The configured model bundle, read and loaded once per process (on first use)."""

    bundle: Path | None
    device: str | None = None  # None: CUDA when this process has it, else the CPU

    def path(self) -> Path:
        if self.bundle is None:
            raise BundleError("no model bundle configured ([model] bundle / MOLSUB_MODEL_BUNDLE)")
        return Path(self.bundle)

    def info(self) -> BundleInfo:
        return _bundle_info(self.path())

    def predictor(self) -> tuple[RoiPredictor, BundleInfo]:
        return _loaded_predictor(self.path(), self.resolved_device())

    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def _bundle_info(path: Path) -> BundleInfo:
    return read_bundle_info(path)


@functools.cache
def _loaded_predictor(path: Path, device: str) -> tuple[RoiPredictor, BundleInfo]:
    from model.bundle import load_bundle
    from model.inference import Predictor

    bundle = load_bundle(path, device=device)
    log.info("model bundle %s loaded on %s", bundle.info.digest[:16], device)
    return Predictor.from_bundle(bundle, device=device), bundle.info


@dataclass(frozen=True)
class UnitOutput:
    """Everything one unit produced, in one process (``Pipeline.run``)."""

    unit: PreparedUnit
    predictions: list[RoiPrediction]
    info: BundleInfo
    results: ResultSet


@dataclass(frozen=True)
class Pipeline:
    """The stages of a unit with what they need; ``prepare_stage`` and ``results_stage`` are
    the real ones unless a test hands in stand-ins."""

    model: ModelSource
    prepare_stage: PrepareStage = field(default=prepare)
    results_stage: ResultsStage = field(default=results)

    def prepare(self, seg: Dataset, images: Mapping[str, Dataset]) -> PreparedUnit:
        """Crops of every segment; a SEG without one fails here, not later in the results."""
        unit = self.prepare_stage(seg, images, self.model.info())
        if not unit.rois:
            raise InputError(
                str(seg.get("SOPInstanceUID", "")),
                "SEG has no segment to measure (empty SegmentSequence)",
            )
        return unit

    def infer(self, unit: PreparedUnit) -> tuple[list[RoiPrediction], BundleInfo]:
        """Every task network and Grad-CAM on the unit's crops, and the bundle that ran."""
        predictor, info = self.model.predictor()
        return predictor.predict(unit.rois), info

    def results(
        self, unit: PreparedUnit, predictions: Sequence[RoiPrediction], info: BundleInfo
    ) -> ResultSet:
        return self.results_stage(unit, predictions, info)

    def run(self, seg: Dataset, images: Mapping[str, Dataset]) -> UnitOutput:
        """prepare -> infer -> results for one SEG, in this process."""
        unit = self.prepare(seg, images)
        predictions, info = self.infer(unit)
        return UnitOutput(unit, predictions, info, self.results(unit, predictions, info))
