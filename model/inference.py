"""Batched inference of the four task networks and Grad-CAM of the five-class prediction.

Pure: crops in, probabilities and heatmaps out; no DICOM, no files, no network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch.nn import functional as F

from model.network import DEFAULT_GRADCAM_LAYER
from model.roi import RoiCrop, RoiPrediction

MAX_CAM_SIDE = 2048


def resolve_layer(network: nn.Module, dotted: str) -> nn.Module:
    """The module at a dotted path such as ``features.denseblock4``; ValueError names a bad one."""
    try:
        return network.get_submodule(dotted)
    except AttributeError as exc:
        raise ValueError(f"Grad-CAM target layer {dotted!r} does not exist in the network") from exc


class Predictor:
    """Runs every task network over batches of ROI crops; Grad-CAM on one task's network.

    The optimised path (channels_last, inference_mode, batching) is what ``bench/inference.py``
    compares against plain eager fp32; outputs are the same to float tolerance.
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        channels_last: bool = True,
        gradcam_layer: str = DEFAULT_GRADCAM_LAYER,
        gradcam_task: str = "subtype5",
    ) -> None:
        if gradcam_task not in networks:
            raise ValueError(f"Grad-CAM task {gradcam_task!r} is not among {sorted(networks)}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.networks = {
            name: net.eval().to(self.device, memory_format=self.memory_format)
            for name, net in networks.items()
        }
        self.gradcam_task = gradcam_task
        self.gradcam_layer = gradcam_layer
        self._cam_layer = resolve_layer(self.networks[gradcam_task], gradcam_layer)

    @classmethod
    def from_bundle(cls, bundle: object, **kwargs: object) -> Predictor:
        """From a ``model.bundle.LoadedBundle`` (anything with a ``networks`` mapping)."""
        return cls(bundle.networks, **kwargs)  # type: ignore[attr-defined, arg-type]

    def _to_batch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False))[:, None]
        return batch.to(self.device).contiguous(memory_format=self.memory_format)

    def probabilities(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """Softmax of every task network for an N x 1 x H x W batch, in model.tasks order."""
        batch = batch.to(self.device).contiguous(memory_format=self.memory_format)
        out: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for name, net in self.networks.items():
                out[name] = F.softmax(net(batch).float(), dim=1).cpu().numpy()
        return out

    def predict(self, crops: Sequence[RoiCrop]) -> list[RoiPrediction]:
        """Probabilities of every task and the Grad-CAM map for each crop, in order."""
        results: list[RoiPrediction] = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            batch = self._to_batch([c.network_input for c in chunk])
            probs = self.probabilities(batch)
            targets = [int(i) for i in probs[self.gradcam_task].argmax(axis=1)]
            cams = self.gradcam(batch, targets)
            for i, crop in enumerate(chunk):
                results.append(
                    RoiPrediction(
                        probabilities={task: p[i] for task, p in probs.items()},
                        cam=_to_native(cams[i], crop),
                        cam_target_layer=self.gradcam_layer,
                    )
                )
        return results

    def gradcam(self, batch: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
        """Grad-CAM maps (N x H x W, [0, 1]) of the given classes; needs gradients, so no
        inference_mode here, but the network stays in eval mode."""
        network = self.networks[self.gradcam_task]
        with GradCAM(model=network, target_layers=[self._cam_layer]) as cam:
            maps = cam(
                input_tensor=batch.clone().requires_grad_(True),
                targets=[ClassifierOutputTarget(i) for i in class_indices],
            )
        return np.clip(maps.astype(np.float32), 0.0, 1.0)


def _to_native(cam: np.ndarray, crop: RoiCrop) -> np.ndarray:
    """Resize a map at the network's input size onto the ROI's native square.

    A square larger than MAX_CAM_SIDE (a huge lesion) gets the display's size instead, which the
    preprocessing has already capped; consumers rescale by ``box.size / cam.shape[0]``.
    """
    side = crop.box.size if crop.box.size <= MAX_CAM_SIDE else crop.display.shape[0]
    tensor = torch.from_numpy(cam)[None, None]
    resized = F.interpolate(tensor, size=(side, side), mode="bilinear", align_corners=False)
    return resized[0, 0].clamp_(0.0, 1.0).numpy()
