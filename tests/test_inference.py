"""Predictor: the optimised path equals plain eager fp32, and Grad-CAM maps are well formed.

Networks are randomly initialised (seeded); the crops are built by hand in numpy, so these tests
need no DICOM and no weights. Each DenseNet forward costs ~90 ms on CPU, so ROIs are few and the
expensive predictions are shared through module fixtures.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch.nn import functional as F

from common.errors import InputError
from model.bundle import LoadedBundle
from model.inference import MAX_CAM_SIDE, Predictor
from model.network import DEFAULT_GRADCAM_LAYER, build_densenet121_cbam
from model.roi import RoiCrop, RoiPrediction, SquareBox
from model.tasks import TASK_NAMES, TASKS
from tests.factories import disk_mask

INPUT_SIDE = 224
BOX_SIDES = (150, 301, 97, 224, 180, 412, 64)  # odd, even, smaller and larger than the input
ATOL = 1e-5
A_3X3_CONV = "features.denseblock1.0.denselayer1.conv2.weight"  # [32, 128, 3, 3]
EAGER_ROIS = 3
LOGIT_SCALE = 1000.0


def make_crop(index: int, box_side: int) -> RoiCrop:
    """A bright noisy disk at a position that depends on ``index``, as a preprocessed crop."""
    rng = np.random.default_rng(index)
    center = (40 + 23 * index % 150, 180 - 31 * index % 140)
    lesion = disk_mask((INPUT_SIDE, INPUT_SIDE), center, 25 + 3 * index).astype(np.float32)
    network_input = (rng.normal(0.0, 0.3, (INPUT_SIDE, INPUT_SIDE)) + 2.0 * lesion).astype(
        np.float32
    )
    display = np.zeros((box_side, box_side), np.uint8)
    return RoiCrop(
        segment_number=index + 1,
        segment_label=f"lesion {index + 1}",
        source_sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{index + 1}",
        source_frame_number=1,
        image_shape=(4096, 3328),
        box=SquareBox(top=10 * index, left=20 * index, size=box_side),
        network_input=network_input,
        display=display,
        mask=np.zeros((box_side, box_side), bool),
    )


@pytest.fixture(scope="module")
def crops() -> list[RoiCrop]:
    return [make_crop(i, side) for i, side in enumerate(BOX_SIDES)]


def build_network(num_classes: int) -> nn.Module:
    """Random init gives logits of ~1e-3, so every softmax is ~uniform and any two paths agree
    to 1e-5; a larger head spreads the logits to O(1) so that the comparisons can fail."""
    network = build_densenet121_cbam(num_classes)
    with torch.no_grad():
        network.classifier.weight.mul_(LOGIT_SCALE)
    return network


@pytest.fixture(scope="module")
def networks() -> dict[str, nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return {name: build_network(TASKS[name].num_classes) for name in TASK_NAMES}


@pytest.fixture(scope="module")
def reference_networks(networks: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Untouched contiguous copies, taken before any Predictor converts the originals."""
    return {name: copy.deepcopy(net).eval() for name, net in networks.items()}


@pytest.fixture(scope="module")
def predictor(
    networks: dict[str, nn.Module], reference_networks: dict[str, nn.Module]
) -> Predictor:
    """Converts ``networks`` in place (channels_last), hence after ``reference_networks``."""
    return Predictor(networks, batch_size=16)


@pytest.fixture(scope="module")
def predictions(predictor: Predictor, crops: list[RoiCrop]) -> list[RoiPrediction]:
    return predictor.predict(crops)


@pytest.fixture(scope="module")
def eager(
    reference_networks: dict[str, nn.Module], crops: list[RoiCrop]
) -> list[dict[str, torch.Tensor]]:
    """Plain eager fp32, contiguous, one ROI at a time, no_grad: what the optimisations must
    reproduce (for the first few crops)."""
    results = []
    for crop in crops[:EAGER_ROIS]:
        tensor = torch.from_numpy(crop.network_input.copy())[None, None]
        assert tensor.is_contiguous()
        with torch.no_grad():
            results.append(
                {name: F.softmax(net(tensor), dim=1)[0] for name, net in reference_networks.items()}
            )
    return results


def subtype5_only(networks: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """One network is enough where only batching or Grad-CAM is under test (a quarter the cost)."""
    return {"subtype5": networks["subtype5"]}


def test_probabilities_have_task_order_shapes_and_sum_to_one(
    crops: list[RoiCrop], predictions: list[RoiPrediction]
) -> None:
    assert len(predictions) == len(crops)
    for prediction in predictions:
        assert tuple(prediction.probabilities) == TASK_NAMES
        for task, probs in prediction.probabilities.items():
            assert probs.shape == (TASKS[task].num_classes,)
            assert probs.dtype == np.float32
            assert np.all(probs >= 0.0) and np.all(np.isfinite(probs))
            assert abs(float(probs.sum()) - 1.0) < ATOL


def test_optimised_path_equals_plain_eager_contiguous_forward(
    predictor: Predictor,
    reference_networks: dict[str, nn.Module],
    eager: list[dict[str, torch.Tensor]],
    predictions: list[RoiPrediction],
) -> None:
    # The predictor really runs the optimised path: its weights are channels_last.
    weight = predictor.networks["subtype5"].get_parameter(A_3X3_CONV)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    assert reference_networks["subtype5"].get_parameter(A_3X3_CONV).is_contiguous()
    # The outputs differ between crops by far more than the tolerance, so the check can fail.
    spread = np.ptp([p.probabilities["subtype5"] for p in predictions], axis=0).max()
    assert spread > 100 * ATOL
    for prediction, expected in zip(predictions[:EAGER_ROIS], eager, strict=True):
        for task in TASK_NAMES:
            actual = torch.from_numpy(prediction.probabilities[task])
            torch.testing.assert_close(actual, expected[task], atol=ATOL, rtol=0)


def test_probabilities_of_a_batch_equal_eager_one_at_a_time(
    predictor: Predictor, eager: list[dict[str, torch.Tensor]], crops: list[RoiCrop]
) -> None:
    batch = torch.from_numpy(np.stack([c.network_input for c in crops[:EAGER_ROIS]]))[:, None]
    probs = predictor.probabilities(batch)
    assert list(probs) == list(TASK_NAMES)
    for i, expected in enumerate(eager):
        for task in TASK_NAMES:
            assert probs[task].shape == (EAGER_ROIS, TASKS[task].num_classes)
            torch.testing.assert_close(
                torch.from_numpy(probs[task][i]), expected[task], atol=ATOL, rtol=0
            )


def test_batch_size_three_equals_batch_size_sixteen(
    networks: dict[str, nn.Module], crops: list[RoiCrop], predictions: list[RoiPrediction]
) -> None:
    assert len(crops) == 7
    small_batches = Predictor(subtype5_only(networks), batch_size=3).predict(crops)
    assert len(small_batches) == len(predictions)
    for small, large in zip(small_batches, predictions, strict=True):
        assert list(small.probabilities) == ["subtype5"]
        for task in small.probabilities:
            torch.testing.assert_close(
                torch.from_numpy(small.probabilities[task]),
                torch.from_numpy(large.probabilities[task]),
                atol=ATOL,
                rtol=0,
            )
        torch.testing.assert_close(
            torch.from_numpy(small.cam), torch.from_numpy(large.cam), atol=1e-4, rtol=0
        )


def test_cam_has_native_size_range_zero_to_one_and_is_not_constant(
    crops: list[RoiCrop], predictions: list[RoiPrediction]
) -> None:
    for crop, prediction in zip(crops, predictions, strict=True):
        cam = prediction.cam
        assert cam.shape == (crop.box.size, crop.box.size)
        assert cam.dtype == np.float32
        assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
        assert float(cam.max() - cam.min()) > 0.2, "CAM is (nearly) constant"
        assert prediction.cam_target_layer == DEFAULT_GRADCAM_LAYER


def test_different_inputs_give_different_cams_and_same_input_the_same(
    predictor: Predictor, crops: list[RoiCrop], predictions: list[RoiPrediction]
) -> None:
    """Rows 0 and 2 are the same input: same map wherever it sits in the batch, and the map
    ``predict`` gave it for its predicted class (its box is 224, so no resizing)."""
    same_size = crops[3]
    assert same_size.box.size == INPUT_SIDE
    inputs = [same_size.network_input, crops[1].network_input, same_size.network_input]
    batch = torch.from_numpy(np.stack(inputs))[:, None]
    predicted = predictions[3].predicted_index("subtype5")
    with torch.no_grad():  # a caller's no_grad must not break Grad-CAM
        cams = predictor.gradcam(batch, [predicted] * 3)
    network = predictor.networks["subtype5"]
    assert all(p.requires_grad for p in network.parameters()), "weights left frozen"
    assert all(p.grad is None for p in network.parameters()), "weight gradients computed"
    assert cams.shape == (3, INPUT_SIDE, INPUT_SIDE)
    assert float(cams[0].max() - cams[0].min()) > 0.2
    np.testing.assert_allclose(cams[0], cams[2], atol=1e-5)
    np.testing.assert_allclose(cams[0], predictions[3].cam, atol=1e-4)
    assert float(np.abs(cams[0] - cams[1]).mean()) > 0.05


def stock_gradcam(network: nn.Module, inputs: np.ndarray, targets: list[int]) -> np.ndarray:
    """pytorch-grad-cam used as documented: full graph, weight gradients and all."""
    with GradCAM(model=network, target_layers=[network.features.denseblock4]) as cam:
        maps = cam(
            input_tensor=torch.from_numpy(inputs)[:, None],
            targets=[ClassifierOutputTarget(i) for i in targets],
        )
    network.zero_grad(set_to_none=True)
    return maps


def test_gradcam_equals_stock_gradcam(
    predictor: Predictor,
    reference_networks: dict[str, nn.Module],
    crops: list[RoiCrop],
    predictions: list[RoiPrediction],
) -> None:
    """The Predictor freezes the weights and cuts the graph at the target layer: on a network
    of the same memory layout the maps equal stock Grad-CAM's. Against the contiguous network
    they agree to display precision only: the layout changes the summation order and a CAM
    (a ReLU of a 1024-channel weighted sum, rescaled to its maximum) amplifies the rounding."""
    inputs = np.stack([c.network_input for c in crops[:2]])
    targets = [p.predicted_index("subtype5") for p in predictions[:2]]
    actual = predictor.gradcam(torch.from_numpy(inputs)[:, None], targets)
    contiguous = reference_networks["subtype5"]
    same_layout = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    np.testing.assert_allclose(actual, stock_gradcam(same_layout, inputs, targets), atol=1e-5)
    np.testing.assert_allclose(actual, stock_gradcam(contiguous, inputs, targets), atol=2e-3)


def test_gradcam_leaves_no_weight_gradients_and_works_under_inference_mode(
    predictor: Predictor, crops: list[RoiCrop]
) -> None:
    network = predictor.networks["subtype5"]
    with torch.inference_mode():
        batch = torch.from_numpy(crops[0].network_input.copy())[None, None]
        cams = predictor.gradcam(batch, [1])
    assert cams.shape == (1, INPUT_SIDE, INPUT_SIDE)
    assert all(p.requires_grad for p in network.parameters())
    assert all(p.grad is None for p in network.parameters())


def test_another_configured_layer_works(
    networks: dict[str, nn.Module], crops: list[RoiCrop], predictions: list[RoiPrediction]
) -> None:
    layer = "features.denseblock3"
    block3 = Predictor(subtype5_only(networks), gradcam_layer=layer).predict(crops[:2])
    for crop, prediction, default in zip(crops[:2], block3, predictions[:2], strict=True):
        assert prediction.cam_target_layer == layer
        assert prediction.cam.shape == (crop.box.size, crop.box.size)
        assert float(prediction.cam.min()) >= 0.0 and float(prediction.cam.max()) <= 1.0
        assert float(prediction.cam.max() - prediction.cam.min()) > 0.2
        # block 3 (14x14 at 224) gives another map than block 4 (7x7)
        assert float(np.abs(prediction.cam - default.cam).mean()) > 0.01
        np.testing.assert_allclose(
            prediction.probabilities["subtype5"], default.probabilities["subtype5"], atol=ATOL
        )


def test_unknown_layer_or_task_is_a_value_error_naming_it(
    networks: dict[str, nn.Module],
) -> None:
    with pytest.raises(ValueError, match="features.denseblock9"):
        Predictor(networks, gradcam_layer="features.denseblock9")
    with pytest.raises(ValueError, match="'five'"):
        Predictor(networks, gradcam_task="five")
    with pytest.raises(ValueError, match="batch_size"):
        Predictor(networks, batch_size=0)


def test_gradcam_needs_one_class_per_input(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="2 class indices for a batch of 1"):
        predictor.gradcam(torch.zeros(1, 1, INPUT_SIDE, INPUT_SIDE), [0, 1])


def test_amp_is_off_on_cpu(networks: dict[str, nn.Module]) -> None:
    """bf16 autocast is for CUDA only; on CPU the fp32 results must stay exact."""
    assert Predictor(subtype5_only(networks), amp=True).amp is False


def test_no_crops_give_no_predictions(predictor: Predictor) -> None:
    assert predictor.predict([]) == []


def test_huge_box_gets_a_cam_at_the_display_size(networks: dict[str, nn.Module]) -> None:
    crop = make_crop(3, MAX_CAM_SIDE + 952)
    crop.display = np.zeros((1024, 1024), np.uint8)
    crop.mask = np.zeros((1024, 1024), bool)
    (prediction,) = Predictor(subtype5_only(networks)).predict([crop])
    assert prediction.cam.shape == (1024, 1024)


def test_from_bundle_takes_any_object_with_networks(
    networks: dict[str, nn.Module], crops: list[RoiCrop], predictions: list[RoiPrediction]
) -> None:
    # Duck-typed on LoadedBundle.networks; a real bundle's load is tested in test_bundle.py.
    assert "networks" in {f.name for f in dataclasses.fields(LoadedBundle)}
    bundle = SimpleNamespace(networks=subtype5_only(networks))
    predictor = Predictor.from_bundle(bundle, batch_size=2, gradcam_layer="features.denseblock3")
    assert predictor.batch_size == 2
    assert predictor.gradcam_layer == "features.denseblock3"
    (prediction,) = predictor.predict(crops[:1])
    np.testing.assert_allclose(
        prediction.probabilities["subtype5"], predictions[0].probabilities["subtype5"], atol=ATOL
    )
    assert prediction.cam.shape == (crops[0].box.size,) * 2
    with pytest.raises(TypeError, match="networks"):
        Predictor.from_bundle(SimpleNamespace(path="bundle"))


def test_unusable_network_input_is_an_input_error_naming_the_image(
    predictor: Predictor, crops: list[RoiCrop]
) -> None:
    bad_inputs = {
        "2-D": np.zeros((1, INPUT_SIDE, INPUT_SIDE), np.float32),
        "differs": np.zeros((INPUT_SIDE, INPUT_SIDE + 1), np.float32),
        "NaN": np.full((INPUT_SIDE, INPUT_SIDE), np.nan, np.float32),
    }
    for reason, network_input in bad_inputs.items():
        bad = dataclasses.replace(crops[2], network_input=network_input)
        with pytest.raises(InputError, match=reason) as raised:
            predictor.predict([crops[0], bad])
        assert raised.value.uid == crops[2].source_sop_instance_uid
        assert "segment 3" in raised.value.reason
