"""End-to-end latency of the node: last C-STORE of a study -> SR and SCs at the destination.

Each SYNTHETIC study has four MG images (both breasts, CC and MLO; 1280x1024 to keep a 2-core
run short) and one SEG over the lesion in one breast (2 ROIs). storescu sends the images, then
the SEG, in one association; t0 is when storescu returns (last C-STORE acknowledged), t1 when
dcmtk's storescp (the PACS) has written the SR and both SCs. Modes: embedded (`molsub serve`
with local workers, filesystem broker) and Redis (`molsub serve --no-workers` + separate
`molsub worker` processes). Reference, in the same run: the same stages called in-process with
the model loaded (read files -> prepare -> infer -> build objects), i.e. the pure compute; the
ratio says what the node's queues, processes and DIMSE add.

    python bench/e2e.py [--studies 10] [--modes embedded,redis]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.bundle import init_untrained, load_bundle  # noqa: E402
from model.inference import Predictor  # noqa: E402
from molsub.synth import build_lesion_seg, build_mg, render_views, synthetic_uid  # noqa: E402
from tests.redis_server import free_port, redis_server  # noqa: E402
from worker.results import build_results  # noqa: E402
from worker.stages import infer, prepare  # noqa: E402

SR, SC = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
ROWS, COLS = 1280, 1024


def make_study(folder: Path, index: int) -> tuple[list[Path], Path, str]:
    """Four MG images and one SEG (lesion in the left breast): (images, seg, study UID)."""
    rng = np.random.default_rng(index)
    study = synthetic_uid(1000, index, "study")
    series = synthetic_uid(1000, index, "series")
    images, datasets, masks = [], [], []
    for lat in ("L", "R"):
        views = render_views(index % 5, rng, laterality=lat, rows=ROWS, cols=COLS)
        for view in ("CC", "MLO"):
            ds = build_mg(
                views.images[view],
                laterality=lat,
                view=view,
                study_uid=study,
                series_uid=series,
                sop_instance_uid=synthetic_uid(1000, index, lat + view),
                patient_id=f"SYNTH-E2E-{index:03d}",
            )
            path = folder / f"{index:03d}_{lat}_{view}.dcm"
            ds.save_as(path, enforce_file_format=True)
            images.append(path)
            if lat == "L":
                datasets.append(ds)
                masks.append(views.masks[view])
    seg = build_lesion_seg(datasets, masks, seg_uid=synthetic_uid(1000, index, "seg"))
    seg_path = folder / f"{index:03d}_SEG.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    return images, seg_path, study


def config_text(tmp: Path, bundle: Path, dest_port: int, broker_url: str) -> str:
    return (
        f'[node]\nae_title = "MOLSUB"\nspool_dir = "{tmp / "spool"}"\n'
        f'[model]\nbundle = "{bundle}"\ndevice = "cpu"\n[queue]\nbroker_url = "{broker_url}"\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
        f"port = {dest_port}\n"
    )


def arrived(folder: Path, study_uid: str) -> bool:
    kinds: dict[str, int] = {}
    for path in folder.glob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - storescp may still be writing it
            continue
        if ds.StudyInstanceUID == study_uid:
            kinds[str(ds.SOPClassUID)] = kinds.get(str(ds.SOPClassUID), 0) + 1
    return kinds.get(SR, 0) >= 1 and kinds.get(SC, 0) >= 2


def run_mode(mode: str, studies: list, bundle: Path, tmp: Path) -> list[float]:  # noqa: ANN001
    """Latencies (s) of studies[1:] (studies[0] warms up: model load, first import)."""
    dest_port, pacs = free_port(), tmp / f"pacs-{mode}"
    pacs.mkdir()
    procs: list[subprocess.Popen] = []
    log = (tmp / f"{mode}.log").open("ab")
    try:
        procs.append(
            subprocess.Popen(
                ["storescp", "-aet", "PACS", "-od", str(pacs), "-uf", str(dest_port)],
                stderr=log,
                stdout=log,
            )
        )
        broker = ""
        if mode == "redis":
            redis_ctx = redis_server(tmp / "redis")
            broker = redis_ctx.__enter__()
        config = tmp / f"{mode}.toml"
        (tmp / "spool").mkdir(exist_ok=True)
        config.write_text(config_text(tmp / mode, bundle, dest_port, broker))
        serve = [
            sys.executable,
            "-m",
            "molsub.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
        ]
        if mode == "redis":
            serve.append("--no-workers")
            for queues in ("prepare,deliver", "infer"):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "molsub.cli",
                            "worker",
                            "--config",
                            str(config),
                            "--queues",
                            queues,
                        ],
                        stdout=log,
                        stderr=log,
                    )
                )
        node = subprocess.Popen(serve, stdout=subprocess.PIPE, stderr=log, text=True)
        procs.append(node)
        port = int(node.stdout.readline().split()[1].rsplit(":", 1)[1])
        latencies = []
        for images, seg, study_uid in studies:
            subprocess.run(
                [
                    "storescu",
                    "-R",
                    "-aec",
                    "MOLSUB",
                    "127.0.0.1",
                    str(port),
                    *map(str, images),
                    str(seg),
                ],
                check=True,
                capture_output=True,
            )
            t0 = time.perf_counter()
            while not arrived(pacs, study_uid):
                if time.perf_counter() - t0 > 600:
                    raise TimeoutError(f"{mode}: no results for {study_uid}")
                time.sleep(0.05)
            latencies.append(time.perf_counter() - t0)
        return latencies[1:]
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=120)
        if mode == "redis":
            redis_ctx.__exit__(None, None, None)
        log.close()


def in_process(studies: list, bundle: Path) -> list[float]:  # noqa: ANN001
    loaded = load_bundle(bundle)
    predictor = Predictor.from_bundle(loaded)
    info = loaded.info
    times = []
    for images, seg_path, _ in studies:
        t0 = time.perf_counter()
        seg = pydicom.dcmread(seg_path)
        mgs = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, images)}
        unit = prepare(
            seg, mgs, profile=info.profile, bound_size=info.bound_size, input_size=info.input_size
        )
        build_results(unit.seg, unit.sources, unit.rois, infer(unit, predictor), info)
        times.append(time.perf_counter() - t0)
    return times[1:]


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10, help="measured studies (plus 1 warm-up)")
    parser.add_argument("--modes", default="embedded,redis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        bundle = tmp / "bundle"
        init_untrained(bundle)
        (tmp / "studies").mkdir()
        studies = [make_study(tmp / "studies", i) for i in range(args.studies + 1)]
        print(
            f"{args.studies} SYNTHETIC studies (+1 warm-up): 4 MG {COLS}x{ROWS} + SEG "
            f"(2 ROIs); UNTRAINED bundle; load average {os.getloadavg()[0]:.2f}"
        )
        rows = {"in-process stages (reference)": in_process(studies, bundle)}
        for mode in args.modes.split(","):
            rows[f"node, {mode} broker"] = run_mode(mode, studies, bundle, tmp)
    reference = statistics.median(rows["in-process stages (reference)"])
    print(f"{'path':32s} {'n':>3s} {'p50 s':>7s} {'p95 s':>7s} {'p50 / reference':>16s}")
    for label, values in rows.items():
        p50 = statistics.median(values)
        print(f"{label:32s} {len(values):3d} {p50:7.2f} {p95(values):7.2f} {p50 / reference:16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
