"""Orthanc auto-routing to the node: upload of a study to all its results in Orthanc.

One node (`molsub serve`, embedded workers, UNTRAINED bundle, destination Orthanc by DICOM)
and, per routing rule, a fresh Orthanc started from deploy/orthanc/orthanc.json (hardened, as
shipped; only ports, folders and the password replaced) with one of the shipped Lua scripts:

- per-instance: deploy/orthanc/molsub-route.lua (OnStoredInstance, one job per MG and SEG);
- stable-study: deploy/orthanc/molsub-route-stable.lua (OnStableStudy, after StableAge s).

Each SYNTHETIC study (CC + MLO, 1280 x 1024, and a lesion SEG) is uploaded over REST. t0 is
just before the first upload; t1 is when Orthanc's study holds the SR, both SCs and both
heatmap SEGs (polled every 0.25 s). A warm-up study runs first through the per-instance rule
(model load, first imports) and is not counted. The stable-study time is about the
per-instance time plus StableAge; the ratio stable / per-instance says what that costs.

    python bench/orthanc_routing.py [--studies 2] [--stable-age 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.orthanc_peer

from common.settings import (  # noqa: E402
    Destination,
    ModelSettings,
    NodeConfig,
    NodeSettings,
)
from model.bundle import init_untrained  # noqa: E402
from molsub.launch import free_port, running_node, wait_for, write_config  # noqa: E402
from molsub.synth import write_synthetic_studies  # noqa: E402
from tests.orthanc_peer import OrthancPeer, orthanc_available, running_orthanc  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "orthanc"
RULES = {
    "per-instance": DEPLOY / "molsub-route.lua",
    "stable-study": DEPLOY / "molsub-route-stable.lua",
}
RESULT_CLASSES = sorted(
    ["1.2.840.10008.5.1.4.1.1.88.34"]
    + ["1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.66.4"] * 2
)
MANUFACTURER = "molsub-node open-source project"
TIMEOUT_S = 900.0


def results_present(orthanc: OrthancPeer, study_uid: str) -> bool:
    """Orthanc's study holds the SR, both SCs and both heatmap SEGs (by class and maker)."""
    found = [
        t["SOPClassUID"]
        for t in orthanc.study_instances(study_uid)
        if t.get("Manufacturer") == MANUFACTURER
    ]
    return sorted(found) == RESULT_CLASSES


@contextmanager
def node(work: Path, orthanc_dicom: int) -> Iterator[int]:
    """The node, its destination Orthanc at ``orthanc_dicom``; yields the node's DICOM port."""
    bundle = work / "bundle"
    init_untrained(bundle)
    config = write_config(
        NodeConfig(
            node=NodeSettings(allowed_calling_aets=("ORTHANC",), spool_dir=work / "spool"),
            model=ModelSettings(bundle=bundle, device="cpu"),
            destinations=(
                Destination("orthanc", ae_title="ORTHANC", host="127.0.0.1", port=orthanc_dicom),
            ),
        ),
        work / "node.toml",
    )
    with running_node(config, work / "node.log", env=dict(os.environ)) as (_, listening):
        yield listening.port


def route_one(orthanc: OrthancPeer, files: list[Path], study_uid: str) -> float:
    """Seconds from the first upload to all results in Orthanc."""
    t0 = time.monotonic()
    for path in files:
        orthanc.upload(path)
    wait_for(
        lambda: results_present(orthanc, study_uid), TIMEOUT_S, f"results of {study_uid}", 0.25
    )
    return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2, help="counted studies per rule")
    parser.add_argument("--stable-age", type=int, default=60, help="Orthanc StableAge, s")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    if not orthanc_available():
        print("Orthanc (packages orthanc, orthanc-dicomweb) is not installed", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="molsub-orthanc-bench-"))
    studies = write_synthetic_studies(work / "studies", patients=1 + 2 * args.studies, seed=77)
    http, dicom = free_port(), free_port()
    times: dict[str, list[float]] = {rule: [] for rule in RULES}
    with node(work / "node", dicom) as node_port:
        for index, (rule, script) in enumerate(RULES.items()):
            with running_orthanc(
                work / f"orthanc-{rule}",
                base_config=DEPLOY / "orthanc.json",
                lua_scripts=[script],
                modalities={"molsub": ("MOLSUB", "127.0.0.1", node_port)},
                http_port=http,
                dicom_port=dicom,
                stable_age_s=args.stable_age,
                extra={"RegisteredUsers": {"bench": "bench"}},
            ) as orthanc:
                if index == 0:
                    warm = studies[0]
                    seconds = route_one(orthanc, [*warm.paths], warm.study_uid)
                    print(f"warm-up ({rule}): {seconds:.1f} s (not counted)", flush=True)
                start = 1 + index * args.studies
                for study in studies[start : start + args.studies]:
                    seconds = route_one(orthanc, [*study.paths], study.study_uid)
                    times[rule].append(seconds)
                    print(f"{rule}: {seconds:.1f} s", flush=True)
    per, stable = (statistics.median(times[r]) for r in RULES)
    print(f"\nStableAge {args.stable_age} s, {args.studies} studies per rule, median:")
    for label, rule, median in (
        ("per-instance", "per-instance", per),
        ("stable-study", "stable-study", stable),
    ):
        runs = ", ".join(f"{t:.1f}" for t in times[rule])
        print(f"  {label} Lua:  {median:.1f} s  ({runs})")
    print(f"  ratio stable / per-instance: {stable / per:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
