"""How long run records take: import and export of a 48-run study, and the reuse lookup on a store of a few hundred
runs. The runs are the committed `reports/quick/runs.jsonl` records with each history stretched to 50 epochs (the
shape of a 50-epoch study's runs), given new ids and identities: their numbers are not results, only their size is.

    python scripts/bench_records.py [--runs 48] [--stores 8]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from stn_ablation.tracking.identity import IDENTITY_TAG
from stn_ablation.reporting.records import StudyRecords, import_records, read_file, read_study, write_file
from stn_ablation.tracking.tracker import Tracker

QUICK = Path(__file__).resolve().parent.parent / "reports" / "quick" / "runs.jsonl"


def study_of(template: StudyRecords, name: str, runs: int, epochs: int) -> StudyRecords:
    """`runs` children shaped like `template`'s, each history `epochs` points long, with fresh ids and identities."""
    children = []
    for i in range(runs):
        child = copy.deepcopy(template.children[i % len(template.children)])
        child["id"] = uuid.uuid4().hex
        child["tags"] = {**child["tags"], IDENTITY_TAG: uuid.uuid4().hex[:24], "study": name}
        child["history"] = {k: [[e, v[-1][1], v[-1][2] + e] for e in range(1, epochs + 1)] if len(v) > 1 else v
                            for k, v in child["history"].items()}
        children.append(child)
    parent = {**copy.deepcopy(template.parent), "id": uuid.uuid4().hex, "study": name, "children": runs}
    parent["tags"] = {**parent["tags"], "study": name}
    return StudyRecords(name, parent, children, {})


def seconds(work) -> tuple[float, object]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--stores", type=int, default=8, help="studies of --runs runs each in the lookup store")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    template = read_file(QUICK)
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", Path(tmp, "artifacts"))
        study = study_of(template, "bench", args.runs, args.epochs)
        imported, _ = seconds(lambda: import_records(tracker, study))
        exported, records = seconds(lambda: write_file(read_study(tracker, "bench"), Path(tmp, "runs.jsonl")))
        size = Path(tmp, "runs.jsonl").stat().st_size
        print(f"{args.runs} runs x {args.epochs} epochs: import {imported:.2f} s, export {exported:.2f} s "
              f"({size / 1e6:.2f} MB with the template's transformer pictures)")
        for n in range(1, args.stores):
            import_records(tracker, study_of(template, f"bench{n}", args.runs, args.epochs))
        total = args.runs * args.stores + args.stores
        identities = [c["tags"][IDENTITY_TAG] for c in study.children]
        times = [seconds(lambda: tracker.find_finished(IDENTITY_TAG, i))[0] for i in identities]
        misses = [seconds(lambda: tracker.find_finished(IDENTITY_TAG, uuid.uuid4().hex[:24]))[0] for _ in identities]
        print(f"reuse lookup in a store of {total} runs: found {1e3 * statistics.median(times):.1f} ms, "
              f"not found {1e3 * statistics.median(misses):.1f} ms (median of {len(times)})")


if __name__ == "__main__":
    main()
