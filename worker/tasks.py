"""The bodies of the three Celery tasks, as plain functions of (config, message).

Kept free of Celery so they can be called and tested in-process; worker/celery_app.py wraps
them in tasks, routes them to their queues and adds the retry policy. The model bundle is
loaded lazily, once per worker process, and only by the stage that needs it: prepare reads the
bundle's preprocessing settings, infer loads the networks, deliver needs no bundle at all (the
bundle's description comes with the infer message).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from model.errors import BundleError, InputError
from molsub.config import NodeConfig
from worker import messages
from worker.delivery import deliver_recorded, result_root
from worker.result_store import ResultStore

log = logging.getLogger(__name__)

_cache_lock = threading.Lock()
_bundle_info_cache: dict[Path, Any] = {}
_predictor_cache: dict[tuple[Path, str], tuple[Any, Any]] = {}


def bundle_path(config: NodeConfig) -> Path:
    if config.model.bundle is None:
        raise BundleError("no model bundle configured ([model] bundle / MOLSUB_MODEL_BUNDLE)")
    return Path(config.model.bundle)


def inference_device(config: NodeConfig) -> str:
    """The configured device ([model] device, or $MOLSUB_MODEL_DEVICE through the config's
    environment overrides), else CUDA when this worker has one."""
    if config.model.device:
        return config.model.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bundle_info_for(config: NodeConfig) -> Any:
    """model.bundle.BundleInfo of the configured bundle (read and verified once per process)."""
    path = bundle_path(config)
    with _cache_lock:
        if path not in _bundle_info_cache:
            from model.bundle import read_bundle_info

            _bundle_info_cache[path] = read_bundle_info(path)
        return _bundle_info_cache[path]


def predictor_for(config: NodeConfig) -> tuple[Any, Any]:
    """(model.inference.Predictor, BundleInfo), loaded on first use in this process."""
    key = (bundle_path(config), inference_device(config))
    with _cache_lock:
        if key not in _predictor_cache:
            from model.bundle import load_bundle
            from model.inference import Predictor

            bundle = load_bundle(key[0], device=key[1])
            _predictor_cache[key] = (Predictor.from_bundle(bundle, device=key[1]), bundle.info)
            log.info("model bundle %s loaded on %s", bundle.info.digest[:16], key[1])
        return _predictor_cache[key]


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


def prepare_unit(seg: Dataset, images: Mapping[str, Dataset], info: Any) -> Any:
    """worker.stages.prepare with the bundle's preprocessing settings."""
    from worker.stages import prepare

    return prepare(
        seg,
        images,
        profile=info.profile,
        bound_size=info.bound_size,
        input_size=info.input_size,
    )


def build_objects(unit: Any, predictions: list[Any], info: Any) -> list[Dataset]:
    from worker.stages import deliver_objects

    return deliver_objects(unit, predictions, info)


def run_prepare(
    config: NodeConfig, unit_id: str, seg_path: str, image_paths: Sequence[str]
) -> dict[str, Any]:
    """Spool files -> prepare message (crops + header-only datasets; no paths beyond here)."""
    try:
        seg, images = read_unit_files(unit_id, seg_path, image_paths)
        unit = prepare_unit(seg, images, bundle_info_for(config))
    except InputError as exc:
        log.error("unit %s not processed: %s", unit_id, exc)
        ResultStore(result_root(config)).record_input_error(unit_id, str(exc))
        raise
    log.info("unit %s prepared: %d ROI(s)", unit_id, len(unit.rois))
    return messages.prepared_message(unit_id, unit)


def run_infer(config: NodeConfig, message: Mapping[str, Any]) -> dict[str, Any]:
    """prepare message -> deliver message (the same unit plus predictions and bundle info)."""
    messages.check_version(message)
    predictor, info = predictor_for(config)
    from worker.stages import infer

    unit = messages.decode_value(message["unit"])
    predictions = infer(unit, predictor)
    log.info("unit %s inferred: %d prediction(s)", message["unit_id"], len(predictions))
    return messages.inferred_message(message, predictions, info)


def run_deliver(
    config: NodeConfig, message: Mapping[str, Any], *, reuse_recorded: bool = False
) -> dict[str, str]:
    """Build the result objects, record them, then try every destination not yet sent.

    With ``reuse_recorded`` (a retry) objects already recorded on this host are sent as they
    are; a retry landing on another deliver host rebuilds them (same deterministic UIDs).
    Returns each tried destination's state (``sent`` / ``pending``).
    """
    messages.check_version(message)
    unit_id = str(message["unit_id"])
    store = ResultStore(result_root(config))
    if not (reuse_recorded and store.has_objects(unit_id)):
        unit = messages.decode_value(message["unit"])
        predictions = [messages.decode_value(p) for p in message["predictions"]]
        info = messages.decode_bundle_info(message["bundle_info"])
        objects = build_objects(unit, predictions, info)
        store.record(unit_id, objects, [d.name for d in config.destinations])
        log.info("unit %s: %d result objects recorded", unit_id, len(objects))
    if not config.destinations:
        log.warning("unit %s: no destinations configured; results only recorded", unit_id)
    return deliver_recorded(store, unit_id, config.destinations, calling_ae=config.node.ae_title)
