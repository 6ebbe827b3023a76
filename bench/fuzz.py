"""Fuzz the node at length: N malformed objects (tests/fuzz_cases.py, made from the public
samples in ../shared/samples) through a real NodeSCP on loopback, then M broken units through the
prepare stage, each bounded in count and time. Prints counts per outcome; exits 1 when an object
was accepted that the independent judge finds malformed, when anything crashed, or when a unit
was left without a final state.

    .venv/bin/python bench/fuzz.py                      # 500 objects, 100 units, 10 min at most
    .venv/bin/python bench/fuzz.py --n 2000 --max-seconds 1800 --seed 7
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from common.errors import InputError  # noqa: E402
from tests.conftest import SAMPLES  # noqa: E402
from tests.fuzz_cases import (  # noqa: E402
    MG_LITTLE,
    SEG_LITTLE,
    Case,
    PrepareCase,
    bases,
    prepare_cases,
    store_cases,
)
from tests.fuzz_node import (  # noqa: E402
    ACCEPTED_CORRUPT,
    FINAL_STATES,
    eager_app,
    fuzz_node,
)

SETTINGS = {
    "deadline": None,
    "database": None,
    "phases": [Phase.generate],
    "suppress_health_check": list(HealthCheck),
}


def run_store(n: int, until: float, work: Path, rng_seed: int, save: Path | None) -> int:
    outcomes: Counter[str] = Counter()
    by_mutation: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    start = time.monotonic()
    with fuzz_node(work) as node:
        # The real MG and the SEG over it first, unmutated: SEGs fuzzed later (references
        # untouched) then make units with that image, which run through prepare.
        for name in (MG_LITTLE, SEG_LITTLE):
            outcomes[node.send(Case(name, "none", bases(SAMPLES)[name].data), work)[0]] += 1

        @seed(rng_seed)
        @settings(max_examples=n, **SETTINGS)
        @given(case=store_cases(SAMPLES))
        def one(case: Case) -> None:
            if time.monotonic() > until:
                outcomes["not run (time bound)"] += 1
                return
            try:
                outcome, defect = node.send(case, work)
            except Exception as exc:  # noqa: BLE001 - counted: a crash of the exchange
                outcome, defect = f"crash: {type(exc).__name__}", None
            outcomes[outcome] += 1
            by_mutation[(case.mutation.split("=")[0], outcome)] += 1
            if outcome == ACCEPTED_CORRUPT or outcome.startswith("crash"):
                problems.append(f"{case!r}: {outcome} ({defect})")
                if save is not None:  # to reproduce: send the file, e.g. with dcmtk's storescu
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"{case.mutation}-{len(problems)}.dcm").write_bytes(case.data)
            if not node.echo():
                outcomes["crash: C-ECHO not answered"] += 1
                problems.append(f"{case!r}: no C-ECHO afterwards")
            bad = node.spool_defects()
            if bad:
                problems.append(f"{case!r}: malformed in the spool: {bad[:3]}")

        one()
        sent = sum(v for k, v in outcomes.items() if not k.startswith("not run"))
        seconds = time.monotonic() - start
        units = node.wait_units_final(timeout_s=60)
        not_final = [u for u in units if u.state not in FINAL_STATES]
    print(f"\nC-STORE path: {sent} objects in {seconds:.1f} s ({sent / seconds:.1f}/s)")
    print(f"{'outcome':<58}{'count':>7}")
    for outcome, count in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{outcome:<58}{count:>7}")
    print(f"{'accepted-but-corrupt (must be 0)':<58}{outcomes[ACCEPTED_CORRUPT]:>7}")
    crashes = sum(v for k, v in outcomes.items() if k.startswith("crash"))
    print(f"{'crashes (must be 0)':<58}{crashes:>7}")
    states = Counter(str(u.state) for u in units)
    print(f"units made: {len(units)} ({', '.join(f'{s} {c}' for s, c in sorted(states.items()))})")
    print(f"{'units without a final state (must be 0)':<58}{len(not_final):>7}")
    print("\nper mutation:")
    for (mutation, outcome), count in sorted(by_mutation.items()):
        print(f"  {mutation:<40}{outcome:<38}{count:>6}")
    for line in problems[:20]:
        print("PROBLEM", line)
    return len(problems) + len(not_final)


def run_prepare(n: int, until: float, work: Path, rng_seed: int) -> int:
    from tests.test_fuzz_prepare import all_finite, prepared_by_the_worker, write_unit
    from worker.queue.app import enqueue_unit

    app, spool, out = eager_app(work / "prepare")
    from common.progress import ProgressFiles

    progress = ProgressFiles(spool)
    outcomes: Counter[tuple[str, str, str]] = Counter()
    problems: list[str] = []
    start = time.monotonic()

    @seed(rng_seed)
    @settings(max_examples=n, **SETTINGS)
    @given(case=prepare_cases(SAMPLES))
    def one(case: PrepareCase) -> None:
        import shutil

        if time.monotonic() > until:
            outcomes[("not run (time bound)", "", "")] += 1
            return
        shutil.rmtree(spool / "studies", ignore_errors=True)
        unit = write_unit(spool, case)
        try:
            made = prepared_by_the_worker(unit)
            result = "crops" if all_finite(made) else "NON-FINITE crop"
        except InputError:
            result = "InputError"
        except Exception as exc:  # noqa: BLE001 - counted: a crash
            result = f"crash: {type(exc).__name__}"
        for stale in (spool / "results" / unit[0], out / unit[0]):
            shutil.rmtree(stale, ignore_errors=True)
        enqueue_unit(app, unit[0], unit[1], unit[2])
        state = progress.read(unit[0])
        final = str(state.state) if state is not None and state.final else "NOT FINAL"
        outcomes[(case.mutation, result, final)] += 1
        if result != "InputError" and (result != "crops" or case.mutation not in _MAY_SUCCEED):
            problems.append(f"{case!r}: {result}")
        if final == "NOT FINAL":
            problems.append(f"{case!r}: unit not final")

    one()
    ran = sum(v for k, v in outcomes.items() if not k[0].startswith("not run"))
    seconds = time.monotonic() - start
    print(f"\nprepare: {ran} units in {seconds:.1f} s")
    print(f"{'mutation':<24}{'prepare':<22}{'unit':<12}{'count':>6}")
    for (mutation, result, final), count in sorted(outcomes.items()):
        print(f"{mutation:<24}{result:<22}{final:<12}{count:>6}")
    crashes = sum(v for k, v in outcomes.items() if k[1].startswith("crash"))
    print(f"{'crashes (must be 0)':<58}{crashes:>6}")
    for line in problems[:20]:
        print("PROBLEM", line)
    return len(problems)


_MAY_SUCCEED = {"window", "voi-lut", "rescale"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="objects through the SCP")
    parser.add_argument("--prepare-n", type=int, default=100, help="units through prepare")
    parser.add_argument("--max-seconds", type=float, default=600, help="bound on the whole run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, help="write accepted-corrupt objects here")
    args = parser.parse_args()
    if not SAMPLES.is_dir():
        parser.error(f"the public samples are not at {SAMPLES}")
    logging.disable(logging.CRITICAL)  # a refusal or failure is logged per object: counts say it
    warnings.simplefilter("ignore")
    deadline = time.monotonic() + args.max_seconds
    # Most of the time bound to the C-STORE path; prepare gets the rest (at least a fifth).
    store_until = time.monotonic() + args.max_seconds * 0.8
    with tempfile.TemporaryDirectory() as tmp:
        failures = run_store(args.n, store_until, Path(tmp), args.seed, args.save)
        failures += run_prepare(args.prepare_n, deadline, Path(tmp), args.seed)
    print(f"\n{'FAILED' if failures else 'OK'}: {failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
