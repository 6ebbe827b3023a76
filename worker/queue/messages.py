"""Celery message bodies: plain JSON, no pickle, no file paths after the prepare stage.

infer and deliver may run on hosts that cannot see the spool, so a message carries everything
they need: header-only datasets as DICOM JSON and numpy arrays as dtype/shape/base64, both
zlib-compressed (crops and masks compress well; headers shrink about tenfold).

Values are encoded with a small tagged format (``{"__type__": ...}``) limited to the types of
the pipeline (ndarray, tuple, Dataset and the stage dataclasses), so decoding never
instantiates anything else.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset

from model.bundle_info import BundleInfo
from model.roi import RoiCrop, RoiPrediction, SquareBox
from worker.pipeline import PIXEL_KEYWORDS, PreparedUnit

log = logging.getLogger(__name__)

MESSAGE_VERSION = 1
T = TypeVar("T")
# What json.dumps takes and json.loads gives back.
JsonValue: TypeAlias = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
TYPE_KEY = "__type__"
ZLIB_LEVEL = 6


def _pack(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw, ZLIB_LEVEL)).decode("ascii")


def _unpack(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """dtype (with byte order), shape and the compressed C-order bytes: lossless."""
    contiguous = np.ascontiguousarray(array)
    return {
        TYPE_KEY: "ndarray",
        "dtype": contiguous.dtype.str,
        "shape": list(contiguous.shape),
        "data": _pack(contiguous.tobytes()),
    }


def decode_array(data: Mapping[str, Any]) -> np.ndarray:
    dtype = np.dtype(data["dtype"])
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted in messages")
    flat = np.frombuffer(_unpack(data["data"]), dtype=dtype)
    return flat.reshape(tuple(data["shape"])).copy()


def encode_dataset(ds: Dataset) -> dict[str, Any]:
    """A header-only dataset (and its file meta) as compressed DICOM JSON."""
    uid = str(ds.get("SOPInstanceUID", "")) or None
    if any(kw in ds for kw in PIXEL_KEYWORDS):
        raise ValueError(f"object {uid}: pixel data does not belong in a message (header only)")
    file_meta = getattr(ds, "file_meta", None)
    return {
        TYPE_KEY: "Dataset",
        "dicom_json": _pack(_to_json(ds, uid).encode("utf-8")),
        "file_meta_json": _pack(_to_json(file_meta, uid).encode("utf-8")) if file_meta else None,
    }


def _to_json(ds: Dataset, uid: str | None) -> str:
    try:
        return json.dumps(ds.to_json_dict())
    except (TypeError, ValueError) as exc:
        # A malformed value in some vendor attribute should not stop the unit: results only
        # need standard attributes, so drop what DICOM JSON cannot express and say so.
        log.warning("object %s: header attributes dropped from message: %s", uid, exc)
        return json.dumps(ds.to_json_dict(suppress_invalid_tags=True))


def decode_dataset(data: Mapping[str, Any]) -> Dataset:
    ds = Dataset.from_json(_unpack(data["dicom_json"]).decode("utf-8"))
    if data.get("file_meta_json"):
        meta = Dataset.from_json(_unpack(data["file_meta_json"]).decode("utf-8"))
        ds.file_meta = FileMetaDataset(meta)
    return ds


# The only classes a message may name (decoding instantiates nothing else).
_DATACLASS_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (SquareBox, RoiCrop, RoiPrediction, PreparedUnit)
}


def encode_value(value: object) -> JsonValue:
    """Any pipeline value to JSON-compatible data (see the module docstring)."""
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Dataset):
        return encode_dataset(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if name not in _DATACLASS_TYPES:
            raise TypeError(f"{name} cannot be sent in a message")
        fields = {f.name: encode_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {TYPE_KEY: name, "fields": fields}
    if isinstance(value, tuple):
        return {TYPE_KEY: "tuple", "items": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("only str keys can be sent in a message")
        items = {k: encode_value(v) for k, v in value.items()}
        return {TYPE_KEY: "dict", "items": items} if TYPE_KEY in value else items
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"{type(value).__name__} cannot be sent in a message")


def decode_value(data: JsonValue) -> object:
    if isinstance(data, list):
        return [decode_value(v) for v in data]
    if not isinstance(data, Mapping):
        return data
    kind = data.get(TYPE_KEY)
    if kind is None:
        return {k: decode_value(v) for k, v in data.items()}
    if kind == "ndarray":
        return decode_array(data)
    if kind == "Dataset":
        return decode_dataset(data)
    if kind == "tuple":
        return tuple(decode_value(v) for v in data["items"])
    if kind == "dict":
        return {k: decode_value(v) for k, v in data["items"].items()}
    if kind in _DATACLASS_TYPES:
        return _DATACLASS_TYPES[kind](**{k: decode_value(v) for k, v in data["fields"].items()})
    raise ValueError(f"unknown value type {kind!r} in message")


# --- the three stage messages -------------------------------------------------------------


def prepared_message(unit_id: str, unit: PreparedUnit) -> dict[str, Any]:
    """prepare -> infer: the unit's crops and headers (a worker.pipeline.PreparedUnit)."""
    return {"version": MESSAGE_VERSION, "unit_id": unit_id, "unit": encode_value(unit)}


def inferred_message(
    prepared: Mapping[str, Any], predictions: Sequence[RoiPrediction], bundle_info: BundleInfo
) -> dict[str, Any]:
    """infer -> deliver: the prepared unit passed through untouched, plus what the model said.

    The bundle's description travels too, so the results name exactly the weights that made
    the predictions even if the deliver host has another bundle (or none).
    """
    return {
        **prepared,
        "predictions": [encode_value(p) for p in predictions],
        "bundle_info": encode_bundle_info(bundle_info),
    }


def decode_unit(message: Mapping[str, Any]) -> PreparedUnit:
    """The prepared unit a prepare or infer message carries."""
    return _decoded_as(message["unit"], PreparedUnit, message)


def decode_predictions(message: Mapping[str, Any]) -> list[RoiPrediction]:
    """The predictions an infer message carries, in ROI order."""
    return [_decoded_as(p, RoiPrediction, message) for p in message["predictions"]]


def _decoded_as(data: JsonValue, cls: type[T], message: Mapping[str, Any]) -> T:
    value = decode_value(data)
    if not isinstance(value, cls):
        unit = message.get("unit_id")
        raise ValueError(f"unit {unit}: message holds {type(value).__name__}, not {cls.__name__}")
    return value


def encode_bundle_info(info: BundleInfo) -> dict[str, Any]:
    return {TYPE_KEY: "BundleInfo", "fields": encode_value(dataclasses.asdict(info))}


def decode_bundle_info(data: Mapping[str, Any]) -> BundleInfo:
    """Rebuild the BundleInfo (frozen dataclass); task class lists become tuples again."""
    return BundleInfo.from_dict(decode_value(data["fields"]))


def check_version(message: Mapping[str, Any]) -> None:
    version = message.get("version")
    if version != MESSAGE_VERSION:
        raise ValueError(
            f"unit {message.get('unit_id')}: message version {version} is not {MESSAGE_VERSION}"
        )
