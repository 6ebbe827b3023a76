"""One MG image in every transfer syntax a mammography unit sends: same pixels, same predictions.

Each image is written once as uncompressed Explicit VR Little Endian (the base), then transcoded
here with the tools a site's PACS or router would use: dcmtk (dcmconv, dcmcjpeg, dcmcjpls,
dcmcrle), and for JPEG 2000 gdcm (through python-gdcm, the encoder `gdcmconv --j2k --lossless`
calls; Debian's dcmtk has no JPEG 2000 encoder) and pydicom's OpenJPEG encoder. Each variant is
read back from its file as the node reads a spool file and must give the base's stored pixels
exactly, and the same crops and predictions through the node's prepare and infer stages
(an UNTRAINED bundle: the numbers mean nothing, only their equality is tested).

Images: the real Siemens Mammomat sample (sent as JPEG Lossless SV1; decoded once for the
reference, which dcmtk's own decoder must agree with) and a SYNTHETIC 12-bit MG.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_encoder

from model.bundle import init_untrained
from model.preprocess import decode_frame
from model.roi import RoiCrop, RoiPrediction
from tests.factories import disk_mask, make_mg, make_seg
from tests.header_cases import SIEMENS, lesion_mask
from worker.pipeline import BundleModel, Pipeline

ATOL = 1e-6
TOOL_TIMEOUT_S = 120


def run_tool(tool: str, *args: object) -> None:
    """Run a dcmtk command; a missing tool fails the test and names the Debian package."""
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} not found: install the Debian package dcmtk (apt-get install dcmtk)")
    proc = subprocess.run(
        [tool, *map(str, args)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )
    if proc.returncode != 0:
        raise AssertionError(f"{tool} {args} failed ({proc.returncode}):\n{proc.stderr}")


def gdcm_jpeg2000_lossless(src: Path, dst: Path) -> None:
    """What `gdcmconv --j2k --lossless` does, through gdcm's Python binding."""
    try:
        import gdcm
    except ImportError:
        pytest.fail("python-gdcm is not installed (pip package python-gdcm, a project dependency)")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read(), f"gdcm cannot read {src}"
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEG2000Lossless))
    change.SetInput(reader.GetImage())
    assert change.Change(), "gdcm could not encode JPEG 2000 lossless"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), f"gdcm could not write {dst}"


def openjpeg_jpeg2000_lossless(src: Path, dst: Path) -> None:
    """pydicom's encoder (pylibjpeg-openjpeg), keeping the SOP Instance UID as a lossless
    transcoder does (pydicom makes a new one unless told not to)."""
    encoder = get_encoder(uid.JPEG2000Lossless)
    if not encoder.is_available:
        pytest.fail(
            f"no JPEG 2000 encoder for pydicom ({encoder.missing_dependencies}): "
            "install the pip package pylibjpeg-openjpeg"
        )
    ds = pydicom.dcmread(src)
    ds.compress(uid.JPEG2000Lossless, generate_instance_uid=False)
    ds.save_as(dst, enforce_file_format=True)


def dcmtk(tool: str, *options: str) -> Callable[[Path, Path], None]:
    def produce(src: Path, dst: Path) -> None:
        run_tool(tool, *options, src, dst)

    return produce


@dataclass(frozen=True)
class Variant:
    syntax: uid.UID
    produce: Callable[[Path, Path], None]


VARIANTS: dict[str, Variant] = {
    "explicit-vr-le": Variant(uid.ExplicitVRLittleEndian, dcmtk("dcmconv", "+te")),
    "implicit-vr-le": Variant(uid.ImplicitVRLittleEndian, dcmtk("dcmconv", "+ti")),
    "jpeg2000-lossless-gdcm": Variant(uid.JPEG2000Lossless, gdcm_jpeg2000_lossless),
    "jpeg2000-lossless-openjpeg": Variant(uid.JPEG2000Lossless, openjpeg_jpeg2000_lossless),
    # +e1: process 14, selection value 1 (with the true-lossless codec, dcmcjpeg's default).
    "jpeg-lossless-sv1": Variant(uid.JPEGLosslessSV1, dcmtk("dcmcjpeg", "+e1", "+tl")),
    "jpeg-ls-lossless": Variant(uid.JPEGLSLossless, dcmtk("dcmcjpls", "+el")),
    "rle-lossless": Variant(uid.RLELossless, dcmtk("dcmcrle")),
}


# -- what the encoders really wrote ---------------------------------------------------------


def marker_segments(stream: bytes, start: int, stop: int) -> dict[int, bytes]:
    """JPEG / JPEG-LS / JPEG 2000 main-header markers (the first of each) and their payloads,
    from offset ``start`` up to the marker ``stop`` (SOS, or SOT in JPEG 2000) included."""
    segments: dict[int, bytes] = {}
    i = start
    while i + 4 <= len(stream):
        assert stream[i] == 0xFF, f"no marker at offset {i}"
        marker = int.from_bytes(stream[i : i + 2], "big")
        length = int.from_bytes(stream[i + 2 : i + 4], "big")
        segments.setdefault(marker, stream[i + 4 : i + 2 + length])
        if marker == stop:
            return segments
        i += 2 + length
    raise AssertionError(f"marker {stop:04X} not found")


def check_codestream(syntax: uid.UID, ds: Dataset) -> None:
    """The single frame is encoded as the syntax says, and losslessly."""
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    if syntax == uid.JPEGLosslessSV1:
        assert frame[:2] == b"\xff\xd8"
        seg = marker_segments(frame, 2, 0xFFDA)
        assert 0xFFC3 in seg, "not a lossless (SOF3) JPEG frame"
        sos = seg[0xFFDA]
        ns = sos[0]
        predictor, point_transform = sos[1 + 2 * ns], sos[3 + 2 * ns] & 0x0F
        assert (predictor, point_transform) == (1, 0), "not selection value 1 without transform"
    elif syntax == uid.JPEGLSLossless:
        assert frame[:2] == b"\xff\xd8"
        seg = marker_segments(frame, 2, 0xFFDA)
        assert 0xFFF7 in seg, "not a JPEG-LS (SOF55) frame"
        sos = seg[0xFFDA]
        assert sos[1 + 2 * sos[0]] == 0, "NEAR is not 0: near-lossless, not lossless"
    elif syntax == uid.JPEG2000Lossless:
        assert frame[:4] == b"\xff\x4f\xff\x51", "not a raw JPEG 2000 codestream (SOC, SIZ)"
        seg = marker_segments(frame, 2, 0xFF90)
        assert seg[0xFF52][9] == 1, "COD: not the reversible 5/3 wavelet"
        assert seg[0xFF5C][0] & 0x1F == 0, "QCD: quantised, not lossless"
    elif syntax == uid.RLELossless:
        header = np.frombuffer(frame[:64], dtype="<u4")
        assert header[0] == ds.BitsAllocated // 8, "RLE: not one segment per byte of a sample"
    else:
        raise AssertionError(f"no codestream check for {syntax.name}")


# -- the images -----------------------------------------------------------------------------


@dataclass
class Source:
    """An image's base file, its reference pixels, its SEG, and the base's crops and
    predictions through the node's stages."""

    name: str
    base: Path
    pixels: np.ndarray
    seg: Dataset
    crops: list[RoiCrop]
    predictions: list[RoiPrediction]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    bundle = tmp_path_factory.mktemp("bundle") / "untrained"
    init_untrained(bundle, seed=11)
    return Pipeline(BundleModel(bundle, "cpu"))


def run_stages(
    pipeline: Pipeline, seg: Dataset, mg: Dataset
) -> tuple[list[RoiCrop], list[RoiPrediction]]:
    """The node's prepare and infer stages for one SEG over one image."""
    unit = pipeline.prepare(seg, {str(mg.SOPInstanceUID): mg})
    predictions, _ = pipeline.infer(unit)
    return unit.rois, predictions


def siemens_base(samples: Path, folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The vendor's JPEG Lossless image decoded once and written uncompressed."""
    original = samples / SIEMENS
    ds = pydicom.dcmread(original)
    assert ds.file_meta.TransferSyntaxUID == uid.JPEGLosslessSV1
    pixels = ds.pixel_array.copy()
    # dcmtk's decoder must agree, or the reference itself would be in doubt.
    run_tool("dcmdjpeg", original, folder / "dcmdjpeg.dcm")
    np.testing.assert_array_equal(pydicom.dcmread(folder / "dcmdjpeg.dcm").pixel_array, pixels)
    ds.decompress(generate_instance_uid=False)
    base = folder / "base.dcm"
    ds.save_as(base, enforce_file_format=True)
    return base, pixels, lesion_mask(ds)


def synthetic_base(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A SYNTHETIC 12-bit MG over the full stored range, with a brighter "mass"."""
    rng = np.random.default_rng(21)
    yy, xx = np.mgrid[:320, :256]
    pixels = 900 + 5 * yy + 3 * xx + rng.normal(0, 60, yy.shape)
    mask = disk_mask(yy.shape, (170, 120), 22)
    pixels[mask] += 700
    pixels = pixels.clip(0, 4095).astype(np.uint16)
    pixels[0, 0], pixels[-1, -1] = 0, 4095
    base = folder / "base.dcm"
    make_mg(pixels, bits_stored=12).save_as(base, enforce_file_format=True)
    return base, pixels, mask


def make_source(name: str, pipeline: Pipeline, folder: Path, samples: Path | None) -> Source:
    if samples is not None:
        base, pixels, mask = siemens_base(samples, folder)
    else:
        base, pixels, mask = synthetic_base(folder)
    mg = pydicom.dcmread(base)
    assert mg.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(decode_frame(mg), pixels)
    seg = make_seg([mg], [mask])
    crops, predictions = run_stages(pipeline, seg, mg)
    assert len(crops) == len(predictions) == 1
    return Source(name, base, pixels, seg, crops, predictions)


@pytest.fixture(scope="module")
def siemens(
    samples_dir: Path, tmp_path_factory: pytest.TempPathFactory, pipeline: Pipeline
) -> Source:
    return make_source("siemens", pipeline, tmp_path_factory.mktemp("siemens"), samples_dir)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory, pipeline: Pipeline) -> Source:
    return make_source("synthetic", pipeline, tmp_path_factory.mktemp("synthetic"), None)


@pytest.fixture(
    scope="module",
    params=[pytest.param("siemens", marks=pytest.mark.samples), "synthetic"],
)
def source(request: pytest.FixtureRequest) -> Source:
    return request.getfixturevalue(request.param)


# -- the matrix -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_variant_decodes_and_predicts_as_the_base(
    variant: str, source: Source, pipeline: Pipeline, tmp_path: Path
) -> None:
    spec = VARIANTS[variant]
    path = tmp_path / f"{variant}.dcm"
    spec.produce(source.base, path)
    base = pydicom.dcmread(source.base)
    received = pydicom.dcmread(path)  # as the node reads a spool file

    # The transcoding really happened, losslessly, and the SEG still references the image.
    assert received.file_meta.TransferSyntaxUID == spec.syntax
    assert received.SOPInstanceUID == base.SOPInstanceUID
    assert received.get("LossyImageCompression", "00") == "00"
    if spec.syntax.is_encapsulated:
        assert received["PixelData"].is_undefined_length
        check_codestream(spec.syntax, received)
    else:
        assert received.original_encoding[0] is spec.syntax.is_implicit_VR

    pixels = decode_frame(received)
    assert pixels.dtype == source.pixels.dtype
    assert np.array_equal(pixels, source.pixels), f"{variant}: decoded pixels differ"

    crops, predictions = run_stages(pipeline, source.seg, received)
    assert len(crops) == len(predictions) == len(source.crops)
    for crop, ref in zip(crops, source.crops, strict=True):
        assert (crop.box, crop.image_shape) == (ref.box, ref.image_shape)
        assert np.array_equal(crop.network_input, ref.network_input)
        assert np.array_equal(crop.display, ref.display)
        assert np.array_equal(crop.mask, ref.mask)
    for pred, ref in zip(predictions, source.predictions, strict=True):
        assert pred.probabilities.keys() == ref.probabilities.keys()
        for task, probs in pred.probabilities.items():
            np.testing.assert_allclose(probs, ref.probabilities[task], rtol=0, atol=ATOL)
        np.testing.assert_allclose(pred.cam, ref.cam, rtol=0, atol=ATOL)


def test_vendor_original_predicts_as_its_uncompressed_base(
    siemens: Source, pipeline: Pipeline, samples_dir: Path
) -> None:
    """The Siemens file exactly as the unit sent it (its own JPEG Lossless encoder)."""
    original = pydicom.dcmread(samples_dir / SIEMENS)
    assert original.SOPInstanceUID == pydicom.dcmread(siemens.base).SOPInstanceUID
    assert np.array_equal(decode_frame(original), siemens.pixels)
    crops, predictions = run_stages(pipeline, siemens.seg, original)
    assert np.array_equal(crops[0].network_input, siemens.crops[0].network_input)
    assert np.array_equal(crops[0].display, siemens.crops[0].display)
    for task, probs in predictions[0].probabilities.items():
        ref = siemens.predictions[0].probabilities[task]
        np.testing.assert_allclose(probs, ref, rtol=0, atol=ATOL)
