"""Batched inference of the task networks and Grad-CAM of the five-class prediction.

Pure: crops in, probabilities and heatmaps out; no DICOM, no files, no network. The optimised
path (channels_last, inference_mode, batching) is what ``bench/inference.py`` compares against
plain eager fp32 one ROI at a time; the outputs are the same to float tolerance.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch.nn import functional as F

from common.errors import InputError
from model.ensemble import member_modules
from model.network import DEFAULT_GRADCAM_LAYER
from model.preprocess.resize import resize_square
from model.preprocess.rois import MAX_DISPLAY_SIDE
from model.roi import RoiCrop, RoiPrediction

# A box wider than this gets its CAM at the display's side instead (see ``cam_side``): the
# preprocessing downsamples exactly those displays, so the two limits are one.
MAX_CAM_SIDE = MAX_DISPLAY_SIDE


def resolve_layer(network: nn.Module, dotted: str) -> nn.Module:
    """The module at a dotted path such as ``features.denseblock4``; ValueError names a bad one."""
    try:
        return network.get_submodule(dotted)
    except AttributeError as exc:
        raise ValueError(f"Grad-CAM target layer {dotted!r} does not exist in the network") from exc


class Predictor:
    """Runs every task network over batches of ROI crops, and Grad-CAM on one task's network.

    The networks are put in eval mode and moved/converted in place (no copy: four DenseNets are
    ~110 MB), so pass copies if the caller keeps training them. ``amp`` enables autocast
    (bfloat16) on CUDA only; off by default so that results equal plain fp32.
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        channels_last: bool = True,
        gradcam_layer: str = DEFAULT_GRADCAM_LAYER,
        gradcam_task: str | None = None,
        amp: bool = False,
    ) -> None:
        if not networks:
            raise ValueError("no task networks")
        if gradcam_task is None:
            # The five-class subtype when the bundle has it, else its first task.
            gradcam_task = "subtype5" if "subtype5" in networks else next(iter(networks))
        if gradcam_task not in networks:
            raise ValueError(f"Grad-CAM task {gradcam_task!r} is not among {sorted(networks)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.amp = amp and self.device.type == "cuda"
        self.networks = {
            name: net.eval().to(self.device, memory_format=self.memory_format)
            for name, net in networks.items()
        }
        self.gradcam_task = gradcam_task
        self.gradcam_layer = gradcam_layer
        # One target layer per member network (an ensemble's CAM is their mean).
        self._cam_layers = [
            resolve_layer(member, gradcam_layer)
            for member in member_modules(self.networks[gradcam_task])
        ]

    @classmethod
    def from_bundle(cls, bundle: object, **kwargs: object) -> Predictor:
        """From a ``model.bundle.LoadedBundle`` (anything with a ``networks`` mapping)."""
        networks = getattr(bundle, "networks", None)
        if not isinstance(networks, Mapping):
            raise TypeError(f"{type(bundle).__name__} has no 'networks' mapping of task networks")
        return cls(networks, **kwargs)  # type: ignore[arg-type]

    def probabilities(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Softmax of every task network for an N x 1 x H x W batch: float32 N x classes per
        task, in the order of ``networks`` (model.tasks order for a bundle)."""
        batch = batch.to(self.device).contiguous(memory_format=self.memory_format)
        out: dict[str, np.ndarray] = {}
        with torch.inference_mode(), self._autocast():
            for name, net in self.networks.items():
                out[name] = F.softmax(net(batch).float(), dim=1).cpu().numpy()
        return out

    def predict(self, crops: Sequence[RoiCrop]) -> list[RoiPrediction]:
        """Probabilities of every task and the Grad-CAM map of the predicted five-class subtype
        for each crop, in order. InputError names a crop whose ``network_input`` is unusable."""
        results: list[RoiPrediction] = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            batch = self._to_batch(chunk)
            probs = self.probabilities(batch)
            targets = [int(i) for i in probs[self.gradcam_task].argmax(axis=1)]
            cams = self.gradcam(batch, targets)
            for i, crop in enumerate(chunk):
                results.append(
                    RoiPrediction(
                        probabilities={task: p[i] for task, p in probs.items()},
                        cam=resize_cam(cams[i], cam_side(crop)),
                        cam_target_layer=self.gradcam_layer,
                    )
                )
        return results

    def gradcam(self, batch: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
        """Grad-CAM maps (N x H x W float32 in [0, 1], each scaled to its own maximum) of the
        given classes at the batch's H x W.

        Gradients are needed, so this runs outside inference_mode (even if the caller is in
        no_grad), with the network in eval mode. Only the layers after the target layer need a
        graph: the weights are frozen for the call and the target layer's output is made the
        autograd leaf, so the backward pass stops there (same CAM, a fraction of the cost).
        """
        if len(class_indices) != len(batch):
            raise ValueError(f"{len(class_indices)} class indices for a batch of {len(batch)}")
        network = self.networks[self.gradcam_task]
        batch = batch.to(self.device).contiguous(memory_format=self.memory_format)
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            _frozen(network),
            _grad_leaf_at(self._cam_layers),
            GradCAM(model=network, target_layers=self._cam_layers) as cam,
        ):
            maps = cam(
                input_tensor=batch.clone(),
                targets=[ClassifierOutputTarget(int(i)) for i in class_indices],
            )
        return np.clip(np.nan_to_num(maps.astype(np.float32, copy=False)), 0.0, 1.0)

    def _to_batch(self, crops: Sequence[RoiCrop]) -> torch.Tensor:
        shape = np.shape(crops[0].network_input)
        for crop in crops:
            _check_network_input(crop, shape)
        arrays = [np.asarray(c.network_input, dtype=np.float32) for c in crops]
        batch = torch.from_numpy(np.stack(arrays))[:, None]
        return batch.to(self.device).contiguous(memory_format=self.memory_format)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)


def cam_side(crop: RoiCrop) -> int:
    """The side of the CAM for a crop: the ROI's native square (``box.size``).

    A square wider than MAX_CAM_SIDE (a huge lesion) gets the display's side instead, which the
    preprocessing has already downsampled; consumers then scale by ``box.size / cam.shape[0]``.
    """
    return crop.box.size if crop.box.size <= MAX_CAM_SIDE else int(crop.display.shape[0])


def resize_cam(cam: np.ndarray, side: int) -> np.ndarray:
    """One square map resized like the crops (``resize_square``), kept in [0, 1], float32."""
    return np.clip(resize_square(cam, side), 0.0, 1.0)


def _check_network_input(crop: RoiCrop, shape: tuple[int, ...]) -> None:
    array = crop.network_input
    uid = crop.source_sop_instance_uid
    where = f"segment {crop.segment_number}"
    if not isinstance(array, np.ndarray) or array.ndim != 2 or min(array.shape) < 1:
        raise InputError(uid, f"{where}: network input must be a 2-D array, got {np.shape(array)}")
    if array.shape != shape:
        raise InputError(
            uid, f"{where}: network input {array.shape} differs from the batch's {shape}"
        )
    if not np.all(np.isfinite(array)):
        raise InputError(uid, f"{where}: network input has NaN or infinite values")


@contextmanager
def _frozen(network: nn.Module) -> Iterator[None]:
    """Turn off weight gradients for the duration (restored after): Grad-CAM needs none."""
    params = [p for p in network.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def _grad_leaf_at(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Make each layer's output a fresh autograd leaf. Registered before GradCAM's own hooks,
    they run first, so GradCAM records activations and gradients of these leaves."""

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        return output.detach().requires_grad_(True)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
