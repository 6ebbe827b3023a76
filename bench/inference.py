"""How much the Predictor's optimised path saves over plain eager PyTorch, on synthetic crops.

    python bench/inference.py [--rois N] [--batch B] [--threads T] [--device cpu|cuda]

Both paths run the same four randomly initialised task networks over the same SYNTHETIC
224x224 inputs in one process, so the speed-up and the probability difference are measured
side by side: (a) the reference is plain eager fp32, contiguous, one ROI at a time under
``torch.no_grad``; (b) the optimised path is ``Predictor.probabilities`` (channels_last,
``inference_mode``, batches). Grad-CAM, which needs gradients, is timed on its own, as the
Predictor runs it (weights frozen, graph cut at the target layer) and as stock pytorch-grad-cam
runs it on the contiguous network. On CUDA, the Predictor's ``amp=True`` (bf16 autocast) and
the same path under fp16 autocast are extra rows. Timings: warm-up passes, then
the median of repeated passes over all ROIs, reported as milliseconds per ROI for all four
networks together.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch.nn import functional as F

from model.inference import Predictor
from model.network import DEFAULT_GRADCAM_LAYER, build_densenet121_cbam
from model.tasks import TASK_NAMES, TASKS

INPUT_SIDE = 224
# Random init gives logits of ~1e-3, so every softmax is ~uniform and any two paths agree
# trivially; a larger head spreads the logits to O(1) so that the difference check means something.
LOGIT_SCALE = 1000.0
Probabilities = dict[str, np.ndarray]


@dataclass
class Row:
    label: str
    ms_per_roi: float
    fastest_ms_per_roi: float
    max_abs_diff: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rois", type=int, default=16, help="synthetic ROIs per pass (16)")
    parser.add_argument("--batch", type=int, default=16, help="optimised path's batch size (16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; median (3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first (1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rois < 1 or args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--rois, --batch and --repeats must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    return args


def synthetic_inputs(count: int, seed: int) -> np.ndarray:
    """N x 224 x 224 float32: noise plus one bright disk per crop, roughly normalised."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[:INPUT_SIDE, :INPUT_SIDE]
    crops = rng.normal(0.0, 0.3, (count, INPUT_SIDE, INPUT_SIDE)).astype(np.float32)
    for crop in crops:
        cy, cx = rng.integers(50, INPUT_SIDE - 50, size=2)
        radius = rng.integers(15, 45)
        crop[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] += 2.0
    return crops


def build_networks(seed: int) -> dict[str, nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        networks = {name: build_densenet121_cbam(TASKS[name].num_classes) for name in TASK_NAMES}
    with torch.no_grad():
        for network in networks.values():
            network.classifier.weight.mul_(LOGIT_SCALE)
    return networks


def reference_pass(
    networks: dict[str, nn.Module], inputs: np.ndarray, device: torch.device
) -> Probabilities:
    """Plain eager fp32, contiguous, one ROI at a time, no_grad."""
    rows: dict[str, list[np.ndarray]] = {name: [] for name in networks}
    with torch.no_grad():
        for crop in inputs:
            tensor = torch.from_numpy(crop)[None, None].to(device)
            for name, network in networks.items():
                rows[name].append(F.softmax(network(tensor), dim=1).cpu().numpy()[0])
    return {name: np.stack(values) for name, values in rows.items()}


def optimised_pass(predictor: Predictor, inputs: np.ndarray) -> Probabilities:
    """The Predictor's path: channels_last, inference_mode, batches of ``batch_size``."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in predictor.networks}
    for start in range(0, len(inputs), predictor.batch_size):
        batch = torch.from_numpy(inputs[start : start + predictor.batch_size])[:, None]
        for name, values in predictor.probabilities(batch).items():
            chunks[name].append(values)
    return {name: np.concatenate(values) for name, values in chunks.items()}


def fp16_pass(predictor: Predictor, inputs: np.ndarray) -> Probabilities:
    """The Predictor's path by hand under fp16 autocast (the Predictor offers bf16 only)."""
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in predictor.networks}
    for start in range(0, len(inputs), predictor.batch_size):
        batch = torch.from_numpy(inputs[start : start + predictor.batch_size])[:, None]
        batch = batch.to(predictor.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            for name, network in predictor.networks.items():
                logits = network(batch).float()
                chunks[name].append(F.softmax(logits, dim=1).cpu().numpy())
    return {name: np.concatenate(values) for name, values in chunks.items()}


def gradcam_pass(predictor: Predictor, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    maps = []
    for start in range(0, len(inputs), predictor.batch_size):
        stop = start + predictor.batch_size
        batch = torch.from_numpy(inputs[start:stop])[:, None]
        maps.append(predictor.gradcam(batch, [int(i) for i in targets[start:stop]]))
    return np.concatenate(maps)


def stock_gradcam_pass(
    network: nn.Module,
    inputs: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """pytorch-grad-cam as documented: full graph including weight gradients."""
    maps = []
    layer = network.get_submodule(DEFAULT_GRADCAM_LAYER)
    for start in range(0, len(inputs), batch_size):
        stop = start + batch_size
        batch = torch.from_numpy(inputs[start:stop])[:, None].to(device)
        with GradCAM(model=network, target_layers=[layer]) as cam:
            chunk_targets = [ClassifierOutputTarget(int(i)) for i in targets[start:stop]]
            maps.append(cam(input_tensor=batch, targets=chunk_targets))
    network.zero_grad(set_to_none=True)
    return np.concatenate(maps)


def time_per_roi(run: Callable[[], object], rois: int, warmup: int, repeats: int) -> tuple:
    """(median, fastest) milliseconds per ROI over ``repeats`` passes, after ``warmup``."""
    for _ in range(warmup):
        run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()  # every path ends in a device-to-host copy, which synchronises CUDA
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds) / rois, 1000 * min(seconds) / rois


def max_abs_diff(a: Probabilities, b: Probabilities) -> float:
    return max(float(np.abs(a[name] - b[name]).max()) for name in a)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    networks = build_networks(args.seed)
    # The reference keeps its own contiguous copies: the Predictor converts in place.
    reference = {name: copy.deepcopy(net).eval().to(device) for name, net in networks.items()}
    predictor = Predictor(networks, device=device, batch_size=args.batch)
    inputs = synthetic_inputs(args.rois, args.seed)

    def timed(run: Callable[[], object]) -> tuple:
        return time_per_roi(run, args.rois, args.warmup, args.repeats)

    expected = reference_pass(reference, inputs, device)
    rows = [
        Row(
            "(a) reference: eager fp32, contiguous, 1 ROI, no_grad",
            *timed(lambda: reference_pass(reference, inputs, device)),
            0.0,
        ),
    ]
    optimised = optimised_pass(predictor, inputs)
    rows.append(
        Row(
            f"(b) optimised: channels_last, inference_mode, batch {args.batch}",
            *timed(lambda: optimised_pass(predictor, inputs)),
            max_abs_diff(optimised, expected),
        )
    )
    if device.type == "cuda":
        amp = Predictor(predictor.networks, device=device, batch_size=args.batch, amp=True)
        rows.append(
            Row(
                "(c) optimised + Predictor(amp=True): bf16 autocast",
                *timed(lambda: optimised_pass(amp, inputs)),
                max_abs_diff(optimised_pass(amp, inputs), expected),
            )
        )
        rows.append(
            Row(
                "(d) optimised + fp16 autocast (by hand)",
                *timed(lambda: fp16_pass(predictor, inputs)),
                max_abs_diff(fp16_pass(predictor, inputs), expected),
            )
        )
    targets = optimised[predictor.gradcam_task].argmax(axis=1)
    stock_network = reference[predictor.gradcam_task]
    stock_maps = stock_gradcam_pass(stock_network, inputs, targets, args.batch, device)
    cam_rows = [
        Row(
            f"Grad-CAM stock pytorch-grad-cam, contiguous, batch {args.batch}",
            *timed(lambda: stock_gradcam_pass(stock_network, inputs, targets, args.batch, device)),
            0.0,
        ),
        Row(
            f"Grad-CAM Predictor (frozen weights, cut graph), batch {args.batch}",
            *timed(lambda: gradcam_pass(predictor, inputs, targets)),
            float(np.abs(gradcam_pass(predictor, inputs, targets) - stock_maps).max()),
        ),
    ]
    spread = max(float(np.ptp(values, axis=0).max()) for values in expected.values())
    print_report(args, device, rows, cam_rows, spread)


def print_table(title: str, rows: list[Row]) -> None:
    header = f"{title:<66} {'ms/ROI':>8} {'fastest':>8} {'speed-up':>9} {'max|d|':>9}"
    print(header)
    print("-" * len(header))
    base = rows[0].ms_per_roi
    for row in rows:
        diff = f"{row.max_abs_diff:9.1e}" if row.max_abs_diff is not None else f"{'':>9}"
        print(
            f"{row.label:<66} {row.ms_per_roi:8.1f} {row.fastest_ms_per_roi:8.1f} "
            f"{base / row.ms_per_roi:8.2f}x {diff}"
        )
    print()


def print_report(
    args: argparse.Namespace,
    device: torch.device,
    rows: list[Row],
    cam_rows: list[Row],
    spread: float,
) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"SYNTHETIC inputs: {args.rois} random {INPUT_SIDE}x{INPUT_SIDE} crops (noise + disk), "
        "randomly initialised networks (heads scaled to O(1) logits): timing only, "
        "no patient data, no trained weights."
    )
    print(
        f"device {device.type} ({name}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, warm-up {args.warmup}, median of {args.repeats}, "
        f"load average {os.getloadavg()[0]:.1f} (CPU timings are only meaningful near idle)\n"
    )
    print_table(f"probabilities, all four networks ({', '.join(TASK_NAMES)})", rows)
    print_table(f"Grad-CAM ({DEFAULT_GRADCAM_LAYER}), one network, max|d| of maps", cam_rows)
    base = rows[0].ms_per_roi
    print(
        f"speed-up reference/optimised: {base / rows[1].ms_per_roi:.2f}x; "
        f"max |probability difference|: {rows[1].max_abs_diff:.1e} "
        f"(probabilities spread over ROIs by up to {spread:.2f}, so the check can fail)"
    )
    print(
        "Predictor.predict costs about the optimised row plus the Predictor Grad-CAM row per "
        "ROI (plus resizing each map to its ROI's native size)."
    )


if __name__ == "__main__":
    main()
