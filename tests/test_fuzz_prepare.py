"""Fuzzing prepare: units whose objects pass the SCP's structural checks but cannot be used (SEGs
pointing at nothing or at another grid, empty segments, compressed pixel data that does not
decode, window / LUT / rescale headers that make no sense), made from the real samples.

Each goes through the call the prepare worker makes (read_unit_files, then Pipeline.prepare) and
through the node's Celery chain (eager, real prepare, stand-in infer and results): the broken
ones fail with InputError, never another exception, and their unit ends ``failed`` with
``prepare: <reason>`` and nothing delivered; no crop is ever made with a non-finite value.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import event, given
from pydicom.dataset import Dataset

from common.errors import InputError
from common.progress import FailureKind, ProgressFiles
from common.units import UnitState
from scp.spool import read_object_info
from tests import worker_standins
from tests.fuzz_cases import PrepareCase, prepare_cases, suite_settings
from tests.fuzz_node import eager_app
from worker.pipeline import BundleModel, Pipeline, PreparedUnit, read_unit_files
from worker.queue.app import enqueue_unit

EXAMPLES = int(os.environ.get("MOLSUB_FUZZ_EXAMPLES", "40"))
# Header values that may be nonsense without making the image unusable: prepare may fall back
# (the stored range) and succeed, but never with a non-finite crop.
MAY_SUCCEED = {"window", "voi-lut", "rescale"}


def write_unit(spool: Path, case: PrepareCase) -> tuple[str, Path, list[Path]]:
    """The case's objects in the spool as the SCP lays them out; each passes its checks."""
    paths = []
    for data in (case.seg, *case.images):
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        path = spool / "studies" / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        read_object_info(path, min_image_side=1)  # the SCP would have taken it
        paths.append(path)
    seg_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SOPInstanceUID)
    return seg_uid, paths[0], paths[1:]


def prepared_by_the_worker(unit: tuple[str, Path, list[Path]]) -> PreparedUnit:
    """What worker.queue.handlers.StageHandlers.prepare calls, with the stand-in bundle info."""
    unit_id, seg_path, image_paths = unit
    seg, images = read_unit_files(unit_id, seg_path, image_paths)
    model = worker_standins.StandinModel(
        real=BundleModel(None), standin_info=True, standin_predictor=True
    )
    return Pipeline(model).prepare(seg, images)


def all_finite(unit: PreparedUnit) -> bool:
    return all(
        np.isfinite(roi.network_input).all() and np.isfinite(roi.display).all() for roi in unit.rois
    )


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, Path, Path]]:
    yield eager_app(tmp_path_factory.mktemp("fuzz-prepare"))


def test_broken_units_fail_in_prepare_with_input_error_and_end_failed(
    chain: tuple[object, Path, Path], samples_dir: Path
) -> None:
    app, spool, out = chain
    progress = ProgressFiles(spool)

    @suite_settings(EXAMPLES)
    @given(case=prepare_cases(samples_dir))
    def prepared(case: PrepareCase) -> None:
        event(case.mutation)
        shutil.rmtree(spool / "studies", ignore_errors=True)
        unit = write_unit(spool, case)
        unit_id = unit[0]
        try:
            made = prepared_by_the_worker(unit)
        except InputError:
            made = None
        # Any other exception type propagates: a crash, which hypothesis reports.
        if case.mutation not in MAY_SUCCEED:
            assert made is None, f"{case.mutation}: {len(made.rois)} crop(s) from a broken unit"
        elif made is not None:
            assert all_finite(made), f"{case.mutation}: a non-finite crop"
        # The same unit through the node's chain ends final, with the reason when it failed.
        for stale in (spool / "results" / unit_id, out / unit_id):  # an earlier example's
            shutil.rmtree(stale, ignore_errors=True)
        enqueue_unit(app, unit_id, unit[1], unit[2])
        state = progress.read(unit_id)
        assert state is not None and state.final, state
        if made is None:
            assert state.state is UnitState.FAILED and state.failure is FailureKind.PERMANENT
            assert state.reason.startswith("prepare: "), state.reason
            assert not (out / unit_id).exists()
        else:
            assert state.state is UnitState.DONE, state

    prepared()


# -- what the fuzzing found, pinned (model/preprocess/intensity.py) ---------------------------


def _lut_item(descriptor: list[int] | int, data: list[int] | None) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", descriptor)
    if data is not None:
        item.add_new("LUTData", "US", data)
    return item


@pytest.mark.parametrize(
    "item",
    [
        _lut_item([4096, 0, 12], None),  # no LUT Data: was KeyError
        _lut_item([4096, 0], [0, 1]),  # two-value descriptor: was ValueError (unpack)
        _lut_item(4096, [0, 1]),  # one value: was TypeError
        _lut_item([2, 0, 12], []),  # empty data: was IndexError
    ],
)
def test_a_malformed_voi_lut_falls_back_to_the_stored_range(item: Dataset) -> None:
    from model.preprocess.intensity import to_display_range
    from tests.factories import make_mg

    mg = make_mg(rows=16, cols=12)
    mg.VOILUTSequence = [item]
    out = to_display_range(mg, mg.pixel_array)
    assert np.isfinite(out).all() and out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("centre,width", [("nan", "100"), ("100", "nan"), ("inf", "inf")])
def test_a_non_finite_window_falls_back_to_the_stored_range(centre: str, width: str) -> None:
    from model.preprocess.intensity import to_display_range
    from tests.factories import make_mg

    mg = make_mg(rows=16, cols=12)
    mg.WindowCenter, mg.WindowWidth = centre, width
    out = to_display_range(mg, mg.pixel_array)
    assert np.isfinite(out).all() and out.max() == 1.0


@pytest.mark.parametrize("slope,intercept", [("nan", "0"), ("inf", "0"), ("1", "nan")])
def test_a_non_finite_rescale_is_an_input_error(slope: str, intercept: str) -> None:
    from model.preprocess.intensity import to_display_range
    from tests.factories import make_mg

    mg = make_mg(rows=16, cols=12)
    mg.RescaleSlope, mg.RescaleIntercept = slope, intercept
    with pytest.raises(InputError, match="not finite|non-finite"):
        to_display_range(mg, mg.pixel_array)
