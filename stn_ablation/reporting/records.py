"""A study's runs as plain records, and the runs file that carries them beside its report
(`reports/<study>/runs.jsonl`): evidence that outlives the MLflow store that made it.

One JSON object a line, parent run first: params, tags, latest metrics, every metric's history, dataset inputs,
and for the runs whose transformer picture the report shows, that picture. `pandas.read_json(path, lines=True)`
reads it. The report is always rendered from these records, whether they were read from MLflow or from the file,
so a report regenerated from its runs file alone is byte-identical to the one its store gave."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from stn_ablation.errors import UsageError
from stn_ablation.reporting.results import Study, numerics, picture_runs, run_of, study_from_records

FORMAT = "stn-ablate-runs"
VERSION = 1  # of the file format; a reader refuses a newer one
FILE_NAME = "runs.jsonl"
IMPORTED_TAG = "stn.imported_from"  # on a run made by `import`: the id of the run it was made from
REUSED_TAG = "stn.reused_from"  # on a study's child that took another run's result instead of training
REUSED_STUDY_TAG = "stn.reused_from_study"
STUDY_FILE_TAG = "stn.study_file"  # on the parent run of a study that is not shipped: its file, as --study named it


class RecordsError(UsageError):
    """A runs file that cannot be read as the study's records."""


@dataclass
class StudyRecords:
    """The records of one study version: its parent run and every child under it, and where each lives in the store
    they were read from (none for records read from a file)."""

    name: str
    parent: dict
    children: list[dict]
    store_ids: dict[str, str]  # record id -> run id in the store

    def study(self, only: str | None = None) -> Study:
        return study_from_records(self.name, self.parent, self.children, only)


# -- from MLflow ---------------------------------------------------------------------------------------------------

def record_of(tracker, run) -> dict:
    """One MLflow run as a record. Its id is the run's own, or for an imported run the id of the run it was made
    from, so that a report reads the same ids whichever store its runs came through; its data's source is the
    data folder's name."""
    record = tracker.read_run(run)
    record["id"] = record["tags"].get(IMPORTED_TAG) or record["store_id"]
    for dataset in record["inputs"]:
        dataset["source"] = _folder_name(dataset["source"])
    return record


def _folder_name(source: str) -> str:
    """A dataset input's source with only the data folder's name (`{"uri": "cifar-10-batches-py"}`): where the
    machine that ran keeps its data is no part of the evidence, and a runs file is committed."""
    try:
        uri = json.loads(source)["uri"]
    except (ValueError, KeyError, TypeError):
        return source
    return json.dumps({"uri": Path(uri).name})


def read_study(tracker, name: str, pictures: bool = True) -> StudyRecords:
    """The newest version of study `name` in the store: its parent run and children, with (`pictures`) the
    transformer pictures the report shows; UsageError when the study was never run."""
    experiment = tracker.find_experiment(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        raise UsageError(f"no runs of study {name!r} in {tracker.uri}; run `stn-ablate run --study {name}` first")
    parents = sorted(tracker.search_runs(experiment.experiment_id, "tags.phase = 'study'"),
                     key=lambda r: (r.info.start_time, r.info.run_id), reverse=True)
    if not parents:
        raise UsageError(f"experiment {name!r} holds no study run; run `stn-ablate run --study {name}` first")
    parent = record_of(tracker, parents[0])
    parent["older_versions"] = [[p.data.tags.get(IMPORTED_TAG) or p.info.run_id, p.data.tags.get("study_digest", "?")]
                                for p in parents[1:]]
    children = [record_of(tracker, r) for r in tracker.search_runs(
        experiment.experiment_id, f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")]
    records = StudyRecords(name, parent, children, {r["id"]: r["store_id"] for r in [parent, *children]})
    if pictures:
        _add_pictures(tracker, records)
    return records


def last_picture(tracker, run_id: str) -> dict[str, bytes]:
    """{artifact path: PNG bytes} of the run's last-epoch transformer picture; empty for a run without one."""
    names = sorted(p for p in tracker.list_artifacts(run_id, "stn") if p.endswith(".png"))
    return {names[-1]: tracker.read_artifact(run_id, names[-1])} if names else {}


def _add_pictures(tracker, records: StudyRecords) -> None:
    """Each child whose transformer picture the report shows gets it, as {artifact path: base64 PNG}: for each
    device/precision of the runs, as the report shows one at a time."""
    by_id = {r["id"]: r for r in records.children}
    for group in sorted({numerics(run_of(r)) for r in records.children}):
        for run in picture_runs(records.study(only=group)):
            store_id = records.store_ids[run.id]
            by_id[run.id]["pictures"] = {path: base64.b64encode(content).decode("ascii")
                                         for path, content in last_picture(tracker, store_id).items()}


# -- the runs file -------------------------------------------------------------------------------------------------

def write_file(records: StudyRecords, path: Path) -> Path:
    """The records as JSON lines, parent first, children by start time: a diff of two exports reads run by run."""
    children = sorted(records.children, key=lambda r: (r["start"] or 0, r["id"]))
    lines = [_line(records.name, "parent", records.parent, experiment=records.name, children=len(children),
                   older_versions=records.parent.get("older_versions", []))]
    lines += [_line(records.name, "child", r, pictures=r.get("pictures", {})) for r in children]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
    return path


def _line(study: str, role: str, record: dict, **extra) -> dict:
    fields = ("id", "name", "status", "start", "end", "tags", "params", "metrics", "history", "inputs")
    return {"format": FORMAT, "version": VERSION, "study": study, "role": role,
            **{k: record[k] for k in fields}, **extra}


def read_file(path: Path, study: str | None = None) -> StudyRecords:
    """The records in runs file `path`; RecordsError, in one line, for a missing, truncated or damaged file, one
    of a newer format, or one of another study than `study`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RecordsError(f"cannot read runs file {path} ({e.strerror or e}); export one with `stn-ablate export "
                           f"--study {study or 'STUDY'}`") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            raise RecordsError(f"{path}: line {number} is not a complete record (the file is truncated or damaged); "
                               "export it again from its MLflow store") from None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("format") != FORMAT:
        raise RecordsError(f"{path} is not an stn-ablate runs file (its first line has no \"format\": \"{FORMAT}\")")
    head = lines[0]
    if not isinstance(head.get("version"), int) or head["version"] > VERSION:
        raise RecordsError(f"{path} was written in runs-file format {head.get('version')!r}, newer than the "
                           f"{VERSION} this stn-ablate reads; upgrade stn-ablate to read it")
    if head.get("role") != "parent":
        raise RecordsError(f"{path}: its first record is not the study's parent run; export it again")
    if study is not None and head.get("study") != study:
        raise RecordsError(f"{path} holds the runs of study {head.get('study')!r}, not {study!r}; pass the runs "
                           f"file of {study!r} (reports/{study}/{FILE_NAME})")
    children = lines[1:]
    if len(children) != head.get("children") or any(c.get("role") != "child" for c in children):
        raise RecordsError(f"{path}: {len(children)} child runs where its parent record says {head.get('children')}"
                           " (the file is truncated or damaged); export it again from its MLflow store")
    return StudyRecords(head["study"], head, children, {})


def import_records(tracker, records: StudyRecords) -> tuple[int, int]:
    """Put the records of a runs file into the store, under their study's experiment and parent run, as
    (imported, already there): a run that is in the store already, imported or its own, is not written twice."""
    experiment = tracker.experiment(records.name)
    present = {r.data.tags.get(IMPORTED_TAG) or r.info.run_id: r.info.run_id
               for r in tracker.search_runs(experiment, "")}
    imported = 0
    parent_id = present.get(records.parent["id"])
    if parent_id is None:
        parent_id = tracker.write_run(experiment, records.parent, tags={IMPORTED_TAG: records.parent["id"]},
                                      files={})
        imported += 1
    for child in records.children:
        if child["id"] in present:
            continue
        files = {name: base64.b64decode(content) for name, content in child.get("pictures", {}).items()}
        tracker.write_run(experiment, child, tags={IMPORTED_TAG: child["id"]}, files=files, parent_run_id=parent_id)
        imported += 1
    return imported, 1 + len(records.children) - imported
