"""Study files -> Optuna studies -> tracked trainer runs.

A worker (one `stn-ablate run` process) claims trials one at a time under the storage lock: grid cells are
enqueued once and popped once, so any number of workers on any number of machines run each cell exactly once.
A trial whose worker died is failed and re-queued; its re-run resumes the same checkpoint in the same MLflow run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from stn_ablation.checkpoint import CheckpointError
from stn_ablation.config import FROZEN_LEARNED, TrainConfig
from stn_ablation.data.datasets import DataError, DataSplits, load_dataset, prepare
from stn_ablation.device import autocast_dtype, precision_name
from stn_ablation.faults import fault_point
from stn_ablation.models.registry import build_model, get_variant
from stn_ablation.paths import StateFolderError, StateHome
from stn_ablation.reporting.records import IMPORTED_TAG, REUSED_STUDY_TAG, REUSED_TAG, STUDY_FILE_TAG, last_picture
from stn_ablation.study.owners import Heartbeat, owner_alive, this_owner
from stn_ablation.study.spec import StudySpec
from stn_ablation.study.storage import StorageError, open_storage
from stn_ablation.study.summary import study_summary
from stn_ablation.tracking.identity import IDENTITY_TAG, run_identity
from stn_ablation.tracking.run import ROBUSTNESS_TAG, TrackedRun, robustness_tag, run_tracked
from stn_ablation.tracking.tracker import KEY_TAG, PARENT_TAG, Tracker, TrackingError
from stn_ablation.training.final import robustness_sweeps
from stn_ablation.training.train import EpochStats, Hooks, StopRun, TrainResult

log = logging.getLogger(__name__)

RESULT_STATUSES = ("finished", "diverged", "pruned")  # a cell with one of these is done; "failed" is re-run
REPLICATE = "seed"  # a grid's replicate axis: a trial's user attribute, not a parameter Optuna's importance ranks


@dataclass
class Worker:
    """Runs trials of one study until none is left."""

    spec: StudySpec
    home: StateHome
    tracker: Tracker
    device: torch.device
    data_root: str | None = None
    storage_url: str | None = None
    precision: str = "auto"
    deterministic: bool = False
    owner: str = field(default_factory=this_owner)
    _failed_here: set[str] = field(default_factory=set)
    _data: dict[tuple, DataSplits] = field(default_factory=dict)

    def run(self) -> optuna.Study:
        """Run trials until none is left. Losing the Optuna database mid-study is one line, not a traceback:
        the trial in flight stays resumable and the same command continues once the database is back."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return self._run()
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            raise StorageError(f"lost the Optuna storage during study {self.spec.name} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:160]}); re-run the same command when it is back") from None

    def _run(self) -> optuna.Study:
        spec = self.spec
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.tracker.check()
        self._check_data()
        self.storage, self.lock = open_storage(self.storage_url, self.home, spec.storage_name)
        with self.lock():
            self.study = optuna.create_study(
                study_name=spec.storage_name, storage=self.storage, direction="maximize", load_if_exists=True,
                sampler=_sampler(spec, 0), pruner=_pruner(spec))
            self.study_id = self.storage.get_study_id_from_name(spec.storage_name)
            self.study.set_metric_names([spec.metric])
            self.experiment = self.tracker.experiment(spec.name, spec.description)
            self.parent = self._open_parent()
            self.study.set_user_attr("mlflow_experiment_id", self.experiment)
            self.study.set_user_attr("mlflow_parent_run_id", self.parent)
            self.study.set_user_attr("mlflow_tracking_uri", self.tracker.uri)
        while (claimed := self._claim()) is not None:
            try:
                self._run_trial(*claimed)
            except Exception as e:  # a trial this worker stops on is failed, not left running (kill leaves it)
                self._fail_if_running(claimed[0], e)
                raise
            fault_point("between_trials")
        self._close_parent()
        return self.study

    # -- claiming -------------------------------------------------------------------------------------------

    def _claim(self) -> tuple[optuna.Trial, dict[str, Any]] | None:
        """Under the lock: fail trials whose worker is gone, queue what is missing, pop one trial and draw its
        parameters. Drawing under the lock, from a sampler seeded by the trial's number, means two workers never
        propose from the same state, and a study run by one process in one go is reproducible."""
        with self.lock():
            trials = self.study.get_trials(deepcopy=False)
            self._fail_orphans(trials)
            trials = self.study.get_trials(deepcopy=False)
            has_waiting = any(t.state == TrialState.WAITING for t in trials)
            if self.spec.grid:
                busy = {t.user_attrs.get("cell") for t in trials
                        if t.state in (TrialState.WAITING, TrialState.RUNNING)
                        or t.user_attrs.get("status") in RESULT_STATUSES}
                for cell in self.spec.cells():
                    key = cell_key(cell)
                    if key not in busy and key not in self._failed_here:
                        self.study.enqueue_trial({k: v for k, v in cell.items() if k != REPLICATE},
                                                 user_attrs={"cell": key})
                        has_waiting = True
            else:
                counted = [t for t in trials if t.state != TrialState.FAIL
                           or t.user_attrs.get("status") in RESULT_STATUSES]
                has_waiting = has_waiting or len(counted) < self.spec.n_trials
            if not has_waiting:
                return None
            self.study.sampler = _sampler(self.spec, len(trials))
            trial = self.study.ask()
            trial.set_user_attr("owner", self.owner)
            trial.set_user_attr("heartbeat", time.time())
            return trial, self._suggest(trial)

    def _fail_orphans(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        """Running trials whose worker is gone become failed; a tuning trial's parameters are queued again."""
        for t in trials:
            if t.state != TrialState.RUNNING or owner_alive(t.user_attrs.get("owner"), t.user_attrs.get("heartbeat")):
                continue
            trial_id = self._id_of(t.number)
            self.storage.set_trial_user_attr(trial_id, "status", "failed")
            self.storage.set_trial_user_attr(trial_id, "reason", f"worker {t.user_attrs.get('owner')} is gone")
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            log.info("trial %d lost its worker; queued again", t.number)
            if self.spec.search:  # the retry continues the same run and checkpoint: it has the same origin
                self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, "origin": _origin(t)})

    def _id_of(self, number: int) -> int:
        """The storage's id of trial `number`. Another worker's trial (an orphan) has no `optuna.Trial` here, and a
        heartbeat thread should not share the main thread's: both are written through the storage, which
        addresses trials by id."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    # -- running --------------------------------------------------------------------------------------------

    def _run_trial(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        spec = self.spec
        cfg = spec.config(params)
        frozen_source = {}
        if get_variant(cfg.variant).controls and cfg.frozen == FROZEN_LEARNED:
            learned = self._learned_transform(cfg)
            if learned is None:
                cell = trial.user_attrs.get("cell", cfg.variant)
                self._failed_here.add(cell)
                reason = (f"no finished {get_variant(cfg.variant).controls} run of this cell yet: its learned "
                          "transform sets this control's; re-run the same command once it has finished")
                self._end(trial, TrialState.FAIL, "failed", reason, None)
                log.warning("trial %d (%s): %s", trial.number, cell, reason)
                return
            cfg, frozen_source = learned
        # A grid cell is its config; a tuning trial is itself (two trials may draw the same parameters) or, for a
        # retry after a lost worker, the trial it continues.
        key = f"{spec.storage_name}:{cfg.digest()}" if spec.grid else f"{spec.storage_name}:trial-{_origin(trial)}"
        trial.set_user_attr("origin", _origin(trial))
        cell = trial.user_attrs.get("cell") or key
        index = _cell_index(spec, params, trial)
        trial_id = self._id_of(trial.number)
        beat = Heartbeat(lambda: self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time()))
        checkpoint = self.home.checkpoint(key.replace(":", "-"))
        label = cell_label(cfg, "dataset" in spec.grid)
        run = TrackedRun(
            cfg, self.experiment, key,
            run_name="-".join(label) + (f"-t{trial.number}" if spec.search else ""),
            checkpoint=checkpoint, parent_run_id=self.parent, reuse_finished=True, robustness=spec.robustness,
            precision=self.precision, deterministic=self.deterministic,
            progress_label=f"{spec.name} [{index}/{spec.n_trials}] {'/'.join(label)} on {self.device}",
            tags={"study": spec.name, "study_digest": spec.digest, "phase": spec.phase, "trial": str(trial.number),
                  "cell": cell, "study_file_sha256": spec.file_sha256, **frozen_source})
        if spec.grid and self._reuse(trial, run):
            checkpoint.unlink(missing_ok=True)
            return
        with beat:
            try:
                _, result = run_tracked(
                    run, self._splits(cfg), self.device, self.tracker,
                    hooks=[_optuna_hooks(trial, spec.metric, prune=bool(spec.search) and spec.pruner != "none")],
                    on_open=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
            except StopRun as e:
                self._end(trial, TrialState.PRUNED, "pruned", str(e), None)
                checkpoint.unlink(missing_ok=True)
                return
            except Exception as e:
                self._failed_here.add(cell)
                self._end(trial, TrialState.FAIL, "failed", f"{type(e).__name__}: {e}", None)
                if isinstance(e, (CheckpointError, StateFolderError, DataError, TrackingError)):
                    raise  # the next trial would fail the same way: stop with the one-line error
                log.error("trial %d (%s) failed: %s: %s", trial.number, cell, type(e).__name__, e)
                return
        value = _value(result, spec.metric)
        state = TrialState.COMPLETE if result.status == "finished" and value is not None else TrialState.FAIL
        self._end(trial, state, result.status, result.reason, value, test_acc=result.test_acc)
        checkpoint.unlink(missing_ok=True)

    def _fail_if_running(self, trial: optuna.Trial, error: Exception) -> None:
        """End `trial` as failed with `error` as its reason, unless it has ended already or the storage is gone
        too: the worker stops, and the next run queues the cell again."""
        try:
            if self.storage.get_trial(self._id_of(trial.number)).state == TrialState.RUNNING:
                self._end(trial, TrialState.FAIL, "failed", f"{type(error).__name__}: {error}", None)
        except Exception:  # the storage's own outage: the next run's orphan check fails the trial
            log.warning("trial %d left running: the Optuna storage is unreachable too", trial.number)

    def _learned_transform(self, cfg: TrainConfig) -> tuple[TrainConfig, dict[str, str]] | None:
        """A frozen control's "learned" transform, resolved before training so that its run records the numbers:
        the isotropic scale and shift (attention family) averaged over this study's finished runs of the STN it
        controls in the same cell (dataset, augmentation, transform family), and a tag naming them; None while
        there are none."""
        stn = get_variant(cfg.variant).controls
        runs = self.tracker.search_runs(self.experiment, (
            f"tags.`{PARENT_TAG}` = '{self.parent}' and tags.variant = '{stn}' and tags.status = 'finished' and "
            f"tags.augmentation = '{cfg.aug}' and tags.dataset = '{cfg.dataset}' and "
            f"params.transform = '{cfg.transform}'"))
        parts = ("scale", "tx", "ty")
        runs = [r for r in runs if all(f"theta/{p}_mean" in r.data.metrics for p in parts)]
        if not runs:
            return None
        mean = [sum(r.data.metrics[f"theta/{p}_mean"] for r in runs) / len(runs) for p in parts]
        source = (f"mean learned scale and shift of {len(runs)} {stn}/{cfg.transform} runs: "
                  + ", ".join(sorted(r.info.run_id for r in runs)))
        return cfg.with_overrides(frozen="attention:" + ",".join(f"{v:.4f}" for v in mean)), {"frozen_source": source}

    def _reuse(self, trial: optuna.Trial, run: TrackedRun) -> bool:
        """Take the result of a finished run with the cell's identity (identity.py), from any study or version,
        instead of training: the cell's own run if the store has it (imported, or finished by a worker that died
        before telling Optuna), else a copy of another study's under this study's parent. False if there is none."""
        data = self._splits(run.cfg)
        identity = run_identity(run.cfg, data, self.device.type,
                                precision_name(autocast_dtype(self.device, self.precision)))
        found = self.tracker.find_finished(IDENTITY_TAG, identity)
        own = [r for r in found if r.data.tags.get(KEY_TAG) == run.key and r.data.tags.get(PARENT_TAG) == self.parent]
        if own:
            record, run_id = self.tracker.read_run(own[0]), own[0].info.run_id
            source = record["tags"].get(REUSED_TAG, run_id)
        else:
            for candidate in sorted(found, key=lambda r: REUSED_TAG in r.data.tags):  # originals first, newest first
                copied = self._copy(candidate, run, data)
                if copied is not None:
                    record, run_id = copied
                    source = candidate.info.run_id
                    break
            else:
                return False
        log.info("trial %d (%s): reused run %s, no training", trial.number, run.tags["cell"], source)
        for step, value, _ in record["history"].get(self.spec.metric, []):
            trial.report(value, step)
        trial.set_user_attr("mlflow_run_id", run_id)
        trial.set_user_attr("reused_from", source)
        self._end(trial, TrialState.COMPLETE, "finished", "", record["metrics"][f"final_{self.spec.metric}"],
                  test_acc=record["metrics"].get("final_test_acc"))
        return True

    def _copy(self, source, run: TrackedRun, data: DataSplits) -> tuple[dict, str] | None:
        """A child of this study's parent holding `source`'s result: its params, metrics and histories, dataset
        inputs and last transformer picture, tagged with where it came from (the model stays in the source). A study
        whose robustness sweeps differ re-evaluates the source's logged model; without one, None (the cell trains)."""
        record = self.tracker.read_run(source)
        sweeps_tag = robustness_tag(run.robustness)
        sweeps = {}
        if record["tags"].get(ROBUSTNESS_TAG) != sweeps_tag:
            logged = self.tracker.load_model(source.info.run_id)
            if logged is None:
                return None
            model = build_model(run.cfg, data.in_shape, data.num_classes)  # the trainer's module, whatever form
            model.load_state_dict(logged.state_dict())  # the model was logged in (an exported program or pickled)
            sweeps = robustness_sweeps(model.to(self.device), run.cfg, data, run.robustness, self.precision)
            for values in (record["metrics"], record["history"]):
                for key in [k for k in values if k.startswith("robust/")]:
                    del values[key]
        files = last_picture(self.tracker, source.info.run_id)
        study = record["tags"].get("study", "train")
        record["tags"] = {k: v for k, v in record["tags"].items() if k not in (IMPORTED_TAG, "mlflow.note.content")}
        run_id = self.tracker.write_run(
            self.experiment, {**record, "name": run.run_name}, files=files, parent_run_id=self.parent,
            tags={**run.tags, KEY_TAG: run.key, REUSED_TAG: source.info.run_id, REUSED_STUDY_TAG: study,
                  ROBUSTNESS_TAG: sweeps_tag,
                  "mlflow.note.content": f"Reused: the result of run {source.info.run_id} of study {study}, which "
                                         "trained the same config on the same data and numerics; its model is there."})
        if sweeps:
            self.tracker.log_metrics(run_id, sweeps)
            record["metrics"].update(sweeps)
        return record, run_id

    def _end(self, trial, state, status, reason, value, **attrs) -> None:
        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        for k, v in attrs.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                trial.set_user_attr(k, v)
        self.study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)

    def _suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        if self.spec.grid:  # the cell's own axes (a variant without a transformer has no transform); its seed is
            # the cell's, never suggested (trials queued by older versions have it as a parameter too)
            cell = next(c for c in self.spec.cells() if cell_key(c) == trial.user_attrs["cell"])
            for axis, value in cell.items():
                if axis == REPLICATE:
                    trial.set_user_attr(axis, value)
                else:
                    trial.suggest_categorical(axis, self.spec.grid[axis])
            return dict(cell)
        params = {}
        for p in self.spec.search:
            if p.kind == "float":
                params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
            elif p.kind == "int":
                params[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log)
            else:
                params[p.name] = trial.suggest_categorical(p.name, p.choices)
        return params

    def _check_data(self) -> None:
        """Load every dataset the study trains on, and prepare the first: missing or broken data fails here, in
        one line, before any trial is created; a study over MNIST sets never needs CIFAR-10."""
        self._splits(self.spec.config(self.spec.cells()[0]))
        for name in self.spec.datasets:  # the first one's load is the cached one _splits just made
            load_dataset(name, self.data_root, image_size=self.spec.base.image_size)

    def _splits(self, cfg: TrainConfig) -> DataSplits:
        """Data on the device, prepared once per process for each (dataset, image size, validation size, subset)."""
        key = (cfg.dataset, cfg.image_size, cfg.val_size, cfg.subset)
        if key not in self._data:
            self._data.clear()  # one copy on the device at a time
            self._data[key] = prepare(load_dataset(cfg.dataset, self.data_root, image_size=cfg.image_size), self.device,
                                      val_size=cfg.val_size, subset=cfg.subset)
        return self._data[key]

    # -- the parent run -------------------------------------------------------------------------------------

    def _open_parent(self) -> str:
        spec = self.spec
        run_id = self.tracker.open_run(
            self.experiment, f"study:{spec.storage_name}", spec.storage_name, reuse_finished=True,
            tags={"study": spec.name, "study_digest": spec.digest, "phase": "study", "optuna_study": spec.storage_name,
                  "study_file_sha256": spec.file_sha256, "mlflow.note.content": spec.description,
                  **({STUDY_FILE_TAG: spec.argument} if spec.argument != spec.name else {})},
            params={"n_trials": spec.n_trials, "sampler": spec.sampler, "pruner": spec.pruner, "metric": spec.metric,
                    **{f"grid.{k}": ",".join(map(str, v)) for k, v in spec.grid.items()},
                    **{f"base.{k}": v for k, v in spec.base.as_dict().items()}})
        if not self.tracker.has_artifact(run_id, spec.path.name):
            self.tracker.log_artifact(run_id, spec.path)
            self.tracker.log_dict(run_id, spec.base.as_dict(), "resolved_base_config.json")
        self.tracker.set_status(run_id, "RUNNING")
        return run_id

    def _close_parent(self) -> None:
        """The parent finishes when every trial of the study has ended; other workers may still be running."""
        with self.lock():
            trials = self.study.get_trials(deepcopy=False)
            if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
                return
            ended = {t.user_attrs.get("cell") for t in trials if t.user_attrs.get("status") in RESULT_STATUSES}
            complete = all(cell_key(c) in ended for c in self.spec.cells()) if self.spec.grid else \
                len([t for t in trials if t.user_attrs.get("status") in RESULT_STATUSES]) >= self.spec.n_trials
            self.tracker.log_metrics(self.parent, study_summary(self.tracker, self.spec, trials), step=len(trials))
            if complete:
                self.tracker.end_run(self.parent, "finished")
            else:
                self.tracker.set_status(self.parent, "FAILED")


def cell_key(cell: dict[str, Any]) -> str:
    return "/".join(f"{k}={v}" for k, v in cell.items())


def cell_label(cfg: TrainConfig, dataset: bool = False) -> tuple[str, ...]:
    """What names a trial for a reader: variant, seed, augmentation, then its transform family if it has a
    transformer and its dataset when the study varies it (e.g. tutorial_stn, s0, none, affine). The cell reads in
    the first 20 characters, where MLflow's runs table cuts a run's name."""
    transform = (cfg.transform,) if get_variant(cfg.variant).has_transformer else ()
    return (cfg.variant, f"s{cfg.seed}", cfg.aug, *transform, *((cfg.dataset,) if dataset else ()))


def summarize(study: optuna.Study, spec: StudySpec) -> str:
    """One line per trial: cell, status, the study's metric (the Optuna value), test accuracy and whether the cell
    trained or reused a finished run (its id); then counts by status."""
    lines, counts = [], {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        status = t.user_attrs.get("status", t.state.name.lower())
        counts[status] = counts.get(status, 0) + 1
        name = t.user_attrs.get("cell") or ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                       for k, v in t.params.items())
        value = f"{spec.metric} {t.value:.4f}" if t.value is not None and spec.metric != "test_acc" else ""
        test = f"test_acc {t.user_attrs['test_acc']:.4f}" if "test_acc" in t.user_attrs else ""
        how = f"reused {t.user_attrs['reused_from']}" if "reused_from" in t.user_attrs else \
            "trained" if status in RESULT_STATUSES else ""
        lines.append(f"  #{t.number:<3} {name:<48} {status:<9} {value:<15} {test:<16} {how}".rstrip())
    total = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f"study {spec.name} ({spec.storage_name}): {total}\n" + "\n".join(lines)


def _cell_index(spec: StudySpec, params: dict[str, Any], trial: optuna.Trial) -> int:
    if spec.grid:
        return spec.cells().index(params) + 1
    return trial.number + 1


def _value(result: TrainResult, metric: str) -> float | None:
    if not result.history:
        return None
    value = getattr(result.history[-1], metric)
    return None if math.isnan(value) else value


def _optuna_hooks(trial: optuna.Trial, metric: str, prune: bool) -> Hooks:
    """The trial's side of the trainer's events: a resumed trial re-reports the epochs its checkpoint holds (never
    pruning on them), then each new epoch is reported and, with `prune`, may stop the run."""
    replay = _reporting_hook(trial, metric, prune=False)

    def start(resumed: list[EpochStats]) -> None:
        for stats in resumed:
            replay(stats, None)
    return Hooks(on_start=start, on_epoch=_reporting_hook(trial, metric, prune))


def _reporting_hook(trial: optuna.Trial, metric: str, prune: bool):
    """Report the study's metric each epoch (Optuna's intermediate values, its dashboard's curves); with `prune`,
    stop the run when the pruner says so."""

    def hook(stats, model) -> None:
        value = getattr(stats, metric)
        if not math.isnan(value):
            trial.report(value, stats.epoch)
        if prune and trial.should_prune():
            raise StopRun(f"pruned at epoch {stats.epoch}: {metric} {value:.4f} is below the pruner's bar")
    return hook


def _origin(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The number of the trial whose run and checkpoint this trial continues: its own, or its retried trial's."""
    return trial.user_attrs.get("origin", trial.number)


SAMPLER_SEED = 0  # a study's n-th trial is drawn from a sampler seeded SAMPLER_SEED + n


def _sampler(spec: StudySpec, trial_number: int) -> optuna.samplers.BaseSampler:
    seed = SAMPLER_SEED + trial_number
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, spec.n_trials // 3)))


def _pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, spec.base.epochs // 5))
    return optuna.pruners.NopPruner()
