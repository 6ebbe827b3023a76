"""Messages between the Celery stages are plain JSON and lossless."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from pydicom.dataset import Dataset

from tests import worker_standins as standins
from tests.factories import disk_mask, make_mg, make_seg, roundtrip
from worker.pipeline import PreparedUnit, header_only
from worker.queue import messages


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        np.arange(10, dtype=">u2").reshape(2, 5),
        np.random.default_rng(1).random((5, 6)) > 0.5,
        np.arange(24, dtype=np.uint8).reshape(4, 6)[:, ::2],  # not C-contiguous
        np.zeros((0, 3), np.int64),
    ],
)
def test_array_roundtrip_is_exact(array: np.ndarray) -> None:
    encoded = json.loads(json.dumps(messages.encode_array(array)))
    decoded = messages.decode_array(encoded)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_object_arrays_refused() -> None:
    encoded = messages.encode_array(np.arange(3))
    encoded["dtype"] = "|O"
    with pytest.raises(ValueError, match="object arrays"):
        messages.decode_array(encoded)


def _unit() -> PreparedUnit:
    cc = make_mg(laterality="R", view="CC", seed=1)
    mlo = make_mg(laterality="R", view="MLO", study_uid=cc.StudyInstanceUID, seed=2)
    masks = [disk_mask((256, 200), (100, 90), 20), disk_mask((256, 200), (120, 80), 18)]
    seg = roundtrip(make_seg([cc, mlo], masks))
    return standins.prepare_unit(
        seg, {str(cc.SOPInstanceUID): cc, str(mlo.SOPInstanceUID): mlo}, standins.bundle_info()
    )


def _assert_same_dataset(a: Dataset, b: Dataset) -> None:
    assert [e.tag for e in a] == [e.tag for e in b]
    for elem in a:
        assert b[elem.tag].value == elem.value, elem.keyword
    assert a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID
    assert a.file_meta.MediaStorageSOPInstanceUID == b.file_meta.MediaStorageSOPInstanceUID


def test_prepared_unit_roundtrip_is_lossless_and_pure_json() -> None:
    unit = _unit()
    message = messages.prepared_message("unit-1", unit)
    wire = json.dumps(message)  # Celery's json serializer must take it as is
    decoded = messages.decode_value(json.loads(wire)["unit"])
    assert isinstance(decoded, PreparedUnit)
    _assert_same_dataset(unit.seg, decoded.seg)
    assert "PixelData" not in decoded.seg
    assert len(decoded.sources) == 2
    for src, got in zip(unit.sources, decoded.sources, strict=True):
        _assert_same_dataset(src, got)
        assert got.ViewCodeSequence[0].CodeValue == src.ViewCodeSequence[0].CodeValue
    assert len(decoded.rois) == len(unit.rois)
    for roi, got in zip(unit.rois, decoded.rois, strict=True):
        for field in dataclasses.fields(roi):
            want, have = getattr(roi, field.name), getattr(got, field.name)
            if isinstance(want, np.ndarray):
                assert have.dtype == want.dtype
                np.testing.assert_array_equal(have, want)
            else:
                assert have == want and type(have) is type(want), field.name
    # No spool paths travel past prepare.
    assert "/" not in json.dumps({k: v for k, v in message.items() if k != "unit"})


def test_arrays_and_headers_are_compressed() -> None:
    display = np.zeros((600, 600), np.uint8)
    display[200:400, 150:450] = 180  # a crop is mostly smooth; zlib must exploit that
    assert len(json.dumps(messages.encode_array(display))) < display.nbytes / 20
    header = header_only(make_mg())
    plain = len(json.dumps(header.to_json_dict()))
    assert len(json.dumps(messages.encode_dataset(header))) < plain


def test_pixel_data_never_goes_into_a_message() -> None:
    mg = make_mg()
    with pytest.raises(ValueError, match=str(mg.SOPInstanceUID)):
        messages.encode_dataset(mg)
    assert messages.decode_dataset(messages.encode_dataset(header_only(mg))).Rows == mg.Rows


def test_predictions_and_bundle_info_roundtrip() -> None:
    unit = _unit()
    predictor, info = standins.predictor_for(None)
    predictions = predictor.predict(unit.rois)
    predictions[0].extra = {"__type__": "user data", "scores": np.float32(0.25), "n": (1, 2)}
    prepared = messages.prepared_message("u", unit)
    message = json.loads(json.dumps(messages.inferred_message(prepared, predictions, info)))
    assert message["unit"] == prepared["unit"]  # passed through untouched
    got = [messages.decode_value(p) for p in message["predictions"]]
    for want, have in zip(predictions, got, strict=True):
        assert set(have.probabilities) == set(want.probabilities)
        for task, probs in want.probabilities.items():
            np.testing.assert_array_equal(have.probabilities[task], probs)
            assert have.probabilities[task].dtype == np.float32
        np.testing.assert_array_equal(have.cam, want.cam)
        assert have.cam_target_layer == want.cam_target_layer
    assert got[0].extra == {"__type__": "user data", "scores": 0.25, "n": (1, 2)}
    info_back = messages.decode_bundle_info(message["bundle_info"])
    assert info_back == info
    assert info_back.digest == info.digest and info_back.device_uid == info.device_uid


def test_unknown_types_refused() -> None:
    with pytest.raises(TypeError):
        messages.encode_value(object())
    with pytest.raises(ValueError, match="unknown value type"):
        messages.decode_value({"__type__": "os.system", "fields": {}})
    with pytest.raises(ValueError, match="version"):
        messages.check_version({"version": 99, "unit_id": "u"})
