"""Everything MLflow: the only module that imports it. Runs are addressed by id through `MlflowClient`, never
through mlflow's global active run, so that trials in several processes can nest under one parent run. A tracking
server's outage is waited out (`_Patient`), so a worker neither loses a metric nor logs one twice."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import os
import re
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stn_ablation.errors import UsageError
from stn_ablation.faults import fault_point
from stn_ablation.locks import file_lock

SYSTEM_METRICS_SECONDS = 10  # sampling interval of MLflow's system metrics monitor
SERVER_PATIENCE = 600.0  # seconds a call to a tracking server waits out an outage before the worker gives up
MODEL_NAME = "model"  # the logged model's name: `runs:/<run id>/model` finds it
log = logging.getLogger(__name__)
KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's UI: a training experiment, not GenAI
KEY_TAG = "stn.key"  # identifies one unit of work (a config, a study cell) across re-runs of the same command
PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class DatasetRecord:
    """One split a run reads, as MLflow's dataset input records it."""

    name: str  # e.g. "cifar10-train"
    context: str  # train | validation | test
    digest: str  # of the split's images and labels
    source: str  # where the data was loaded from
    rows: int
    official: bool  # md5s equal the official release's


class TrackingError(UsageError):
    """The tracking store cannot be reached or written."""


class Tracker:
    """A handle on one MLflow tracking store (sqlite file or server) and where its artifacts go: `artifact_root`
    for a database; a server keeps them itself, so that every worker and the UI read them through it."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None, patience: float = SERVER_PATIENCE):
        self.uri = tracking_uri
        self.artifact_root = None if tracking_uri.startswith(("http://", "https://")) else artifact_root
        try:
            if tracking_uri.startswith("sqlite:///"):  # a new sqlite store creates its tables: one worker at a time
                database = Path(tracking_uri.removeprefix("sqlite:///"))
                with file_lock(Path(f"{database}.lock")):
                    if artifact_root is not None and not database.exists():
                        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

                        # its Default experiment keeps artifacts in the state folder, not in the working directory
                        SqlAlchemyStore(tracking_uri, (artifact_root / "Default").as_uri())
                    self.client = MlflowClient(tracking_uri)
                    self.client.search_experiments(max_results=1)
            elif tracking_uri.startswith(("http://", "https://")):
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # _Patient retries, and says so
                self.client = _Patient(MlflowClient(tracking_uri), tracking_uri, patience)
            else:
                self.client = MlflowClient(tracking_uri)
        except Exception as e:
            raise TrackingError(f"cannot open MLflow tracking store {tracking_uri} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]}); pass another --tracking-uri or --home") from None

    def check(self) -> None:
        """Fail now, with one line, if the store cannot be reached: not after an hour of training. A server is
        asked for its health page with a short timeout first: MLflow's own client retries for minutes."""
        try:
            if self.uri.startswith(("http://", "https://")):
                urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=10).close()
            getattr(self.client, "impatient", self.client).search_experiments(max_results=1)
        except Exception as e:
            raise TrackingError(f"MLflow tracking store {self.uri} is unreachable ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]}); start the server or pass another "
                                "--tracking-uri") from None

    def experiment(self, name: str, description: str = "") -> str:
        """Id of experiment `name`, created if absent; safe when several processes race to create it. It is
        tagged as a model-training experiment, and `description` is its note (the UI's "Description")."""
        found = self.client.get_experiment_by_name(name)
        tags = {**KIND, **({"mlflow.note.content": description} if description else {})}
        if found is None:
            location = (self.artifact_root / name).as_uri() if self.artifact_root else None
            try:
                experiment_id = self.client.create_experiment(name, artifact_location=location, tags=tags)
            except MlflowException:
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found is not None:
            experiment_id = found.experiment_id
            for k, v in tags.items():  # an experiment made by an older version lacks them
                if found.tags.get(k) != v:
                    self.client.set_experiment_tag(experiment_id, k, v)
        return experiment_id

    def find_experiment(self, name: str):
        """Experiment `name` as MLflow has it (a deleted one too: see its lifecycle_stage), or None; never creates
        one."""
        return self.client.get_experiment_by_name(name)

    def search_runs(self, experiment_id: str, filter_string: str) -> list:
        """Every run of the experiment that matches `filter_string`, through all pages of the search."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every value of metric `key` the run logged, in the store's order."""
        return self.client.get_metric_history(run_id, key)

    def find_run(self, experiment_id: str, key: str):
        """The newest run tagged with `key`, or None."""
        runs = self.client.search_runs([experiment_id], f"tags.`{KEY_TAG}` = '{key}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def open_run(self, experiment_id: str, key: str, name: str, *, tags: dict[str, str],
                 params: dict[str, Any], parent_run_id: str | None = None, reuse_finished: bool = False) -> str:
        """Id of the run for `key`: an unfinished one is reopened (its metrics continue), otherwise a new run is
        created with `tags` and `params`. With `reuse_finished`, a finished run is returned as it is."""
        run = self.find_run(experiment_id, key)
        if run is not None and (run.info.status != "FINISHED" or reuse_finished):
            if run.info.status != "FINISHED":
                self.set_status(run.info.run_id, "RUNNING")
            return run.info.run_id
        all_tags = {**tags, KEY_TAG: key, **git_tags()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
        return run.info.run_id

    def logged_epochs(self, run_id: str) -> int:
        """The last epoch whose metrics are in the store (0 if none)."""
        return max((m.step for m in self.metric_history(run_id, "train_loss")), default=0)

    def log_epochs(self, run_id: str, history: Iterable[Any]) -> None:
        """Log per-epoch statistics with step = epoch; epochs already in the store are skipped, so replaying a
        resumed run's history never duplicates a step and fills any gap a kill left."""
        done = self.logged_epochs(run_id)
        metrics = []
        for stats in history:
            if stats.epoch <= done:
                continue
            for name, value in asdict(stats).items():
                if name != "epoch" and math.isfinite(value):
                    metrics.append(Metric(_metric_name(name), value, _now_ms(), stats.epoch))
        for batch in _batches(metrics):
            fault_point("mlflow")
            self.client.log_batch(run_id, metrics=batch)

    def log_metrics(self, run_id: str, values: dict[str, float], step: int = 0, model_id: str | None = None) -> None:
        """Each value at `step`; with `model_id`, also as a metric of that logged model (its page and the
        experiment's Models tab show it)."""
        now = _now_ms()
        for batch in _batches([Metric(k, float(v), now, step, model_id=model_id) for k, v in values.items()]):
            self.client.log_batch(run_id, metrics=batch)

    def log_metrics_once(self, run_id: str, values: dict[str, float], step: int = 0,
                         model_id: str | None = None) -> None:
        """Log each metric unless it already has a value at `step`: finishing a run twice (a worker killed after
        its final metrics, then re-run) leaves one value per key and step."""
        present = self.client.get_run(run_id).data.metrics
        logged = {k for k in values if k in present
                  and any(m.step == step for m in self.metric_history(run_id, k))}
        self.log_metrics(run_id, {k: v for k, v in values.items() if k not in logged}, step, model_id)

    def log_datasets(self, run_id: str, datasets: Iterable[DatasetRecord]) -> None:
        """The data a run read, as MLflow dataset inputs (the run page's "Datasets" column); logged once per run."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if self.client.get_run(run_id).inputs.dataset_inputs:
            return
        self.client.log_inputs(run_id, [
            DatasetInput(Dataset(d.name, d.digest, "local", json.dumps({"uri": d.source}),
                                 profile=json.dumps({"num_rows": d.rows, "official_release": d.official})),
                         [InputTag("mlflow.data.context", d.context)])
            for d in datasets])

    def log_model(self, run_id: str, model, example, step: int = 0) -> str:
        """The trained model as an MLflow 3 logged model of the run (the runs table's Models column, the
        experiment's Models tab); its id. Saved as a `torch.export` program (pt2) with a signature and an input
        example, so `mlflow.pytorch.load_model("runs:/<id>/model")` returns it with torch alone, no stn-ablation
        (on the CPU, taking normalized images like `example`). A run finished twice keeps its one model."""
        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import infer_signature

        experiment_id = self.client.get_run(run_id).info.experiment_id
        found = [m for m in self.client.search_logged_models([experiment_id], f"source_run_id = '{run_id}'")
                 if m.name == MODEL_NAME]
        if found and found[0].status == LoggedModelStatus.READY:
            return found[0].model_id
        logged = found[0] if found else self.client.create_logged_model(
            experiment_id, MODEL_NAME, source_run_id=run_id, model_type="pytorch",
            tags={"mlflow.modelFlavor": "pytorch", "serialization_format": "pt2"})
        model, example = copy.deepcopy(model).cpu().eval(), example.float().cpu()  # loadable on any machine
        with torch.no_grad():
            x, y = example.numpy(), model(example).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pytorch.save_model(model, f"{tmp}/model", signature=infer_signature(x, y), input_example=x,
                                      serialization_format="pt2",
                                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            self.client.log_model_artifacts(logged.model_id, f"{tmp}/model")
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
        return logged.model_id

    def load_model(self, run_id: str):
        """The model the run logged, on the CPU, or None when it has none (or it cannot be read): a logged model
        (a torch.export program) or, from runs logged before those, the pickled module under its `model/`
        artifacts. Both carry the trained weights under the module's own parameter names."""
        import mlflow.artifacts
        import mlflow.pytorch

        with tempfile.TemporaryDirectory() as tmp:
            try:  # not through runs:/, whose lookup of a logged model ignores a tracking URI passed to it
                outputs = self.client.get_run(run_id).outputs
                if outputs and outputs.model_outputs:
                    location = self.client.get_logged_model(outputs.model_outputs[-1].model_id).artifact_location
                    local = mlflow.artifacts.download_artifacts(location, dst_path=tmp, tracking_uri=self.uri)
                else:
                    local = self.download_artifact(run_id, MODEL_NAME, tmp)
                return mlflow.pytorch.load_model(local, map_location="cpu")
            except (MlflowException, OSError):
                return None

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, resumed: bool) -> Iterator[None]:
        """MLflow's CPU, memory (and GPU, where there is one) sampling while the block runs, as `system/*`
        metrics of `run_id`; a resumed run continues its step count. MLflow's monitor stops at a server outage: the
        rest of that run has no system metrics (they describe the machine, not the result)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_SECONDS, resume_logging=resumed,
                                       tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            try:
                monitor.collect_metrics()  # a last sample, so a run shorter than the interval has one too
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
            except Exception as e:  # a server that stayed away: the error that ends the run is the tracker's
                if not _unreachable(e):
                    raise

    def find_finished(self, tag: str, value: str) -> list:
        """Every finished run of any active experiment whose tag `tag` is `value`, newest first."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        runs, token = [], None
        while experiments:
            page = self.client.search_runs(experiments, f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
                                           order_by=["attributes.start_time DESC"], max_results=1000,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
        return runs

    def get_run(self, run_id: str):
        """The run as MLflow has it, or None when the store has no such run (or it was deleted)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def read_run(self, run) -> dict[str, Any]:
        """Run `run` (from `search_runs` or `get_run`) as plain data: what `write_run` needs to make it again. Every
        metric's history ([step, value, timestamp] points), but for MLflow's system metrics, of which only the latest
        value is kept: they describe the machine, not the result."""
        history = {key: [[m.step, m.value, m.timestamp] for m in
                         sorted(self.metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))]
                   for key in sorted(run.data.metrics) if not key.startswith("system/")}
        inputs = [{"name": d.dataset.name, "digest": d.dataset.digest, "source_type": d.dataset.source_type,
                   "source": d.dataset.source, "profile": d.dataset.profile,
                   "tags": {t.key: t.value for t in d.tags}} for d in run.inputs.dataset_inputs]
        return {"store_id": run.info.run_id, "name": run.info.run_name or "", "status": run.info.status,
                "start": run.info.start_time, "end": run.info.end_time, "tags": dict(sorted(run.data.tags.items())),
                "params": dict(sorted(run.data.params.items())), "metrics": dict(sorted(run.data.metrics.items())),
                "history": history, "inputs": inputs}

    def write_run(self, experiment_id: str, record: dict[str, Any], *, tags: dict[str, str],
                  files: dict[str, bytes], parent_run_id: str | None = None) -> str:
        """Create a run from `read_run`'s data with `tags` on top, under `parent_run_id`, with its start and end
        times, status, metric histories, dataset inputs and the artifact `files` (path -> bytes); its new id."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        # the record's own name (`run_name`) wins over its old mlflow.runName tag: a reused run is copied under the
        # new cell's name, which a later version of the naming scheme may spell differently
        all_tags = {k: v for k, v in record["tags"].items() if k not in (PARENT_TAG, "mlflow.runName")} | tags
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run_id = self.client.create_run(experiment_id, start_time=record["start"], run_name=record["name"],
                                        tags=all_tags).info.run_id
        params = [Param(k, v) for k, v in record["params"].items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit for params
            self.client.log_batch(run_id, params=params[i:i + 100])
        points = [Metric(k, v, t, s) for k, history in record["history"].items() for s, v, t in history]
        points += [Metric(k, v, record["start"] or 0, 0) for k, v in record["metrics"].items()
                   if k not in record["history"]]
        for batch in _batches(points):
            self.client.log_batch(run_id, metrics=batch)
        if record["inputs"]:
            self.client.log_inputs(run_id, [
                DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], profile=d["profile"]),
                             [InputTag(k, v) for k, v in d["tags"].items()]) for d in record["inputs"]])
        with tempfile.TemporaryDirectory() as tmp:
            for path, content in files.items():
                local = Path(tmp, path)
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(content)
                self.client.log_artifact(run_id, str(local), str(Path(path).parent) if "/" in path else None)
        self.client.set_terminated(run_id, record["status"], end_time=record["end"])
        return run_id

    def read_artifact(self, run_id: str, path: str) -> bytes:
        """The bytes of artifact `path` of the run."""
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.download_artifact(run_id, path, tmp)).read_bytes()

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dict(self, run_id: str, value: dict, path: str) -> None:
        self.client.log_text(run_id, json.dumps(value, indent=2, sort_keys=True), path)

    def log_figure(self, run_id: str, figure, path: str) -> None:
        self.client.log_figure(run_id, figure, path)

    def log_artifact(self, run_id: str, local_path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_path), artifact_path)

    def list_artifacts(self, run_id: str, folder: str | None = None) -> list[str]:
        """Paths of the run's artifacts directly in `folder` (default: at the top)."""
        return [f.path for f in self.client.list_artifacts(run_id, folder)]

    def has_artifact(self, run_id: str, path: str) -> bool:
        return path in self.list_artifacts(run_id)

    def download_artifact(self, run_id: str, path: str, destination: str) -> str:
        """Copy artifact `path` of the run into folder `destination`; the local file's path."""
        return self.client.download_artifacts(run_id, path, destination)

    def set_status(self, run_id: str, status: str) -> None:
        """Only MLflow's status of the run (RUNNING, FAILED, ...), not the suite's status tags: for a run that is
        reopened, or (a study's parent) left incomplete while other workers may still add to it."""
        self.client.update_run(run_id, status=status)

    def set_aside(self, run_id: str, key: str, reason: str) -> None:
        """Close `key`'s unfinished run as failed for `reason` and untie it from the key, so that the key's next
        `open_run` creates a new run instead of reopening this one."""
        self.set_tags(run_id, {KEY_TAG: f"{key}#set-aside"})
        self.end_run(run_id, "failed", reason)

    def end_run(self, run_id: str, status: str, reason: str = "") -> None:
        """Close a run. `status` is the suite's (finished, diverged, pruned, failed); MLflow's own status is
        FINISHED only for finished runs, so that no other run ever looks successful in the UI."""
        self.set_tags(run_id, {"status": status, "status_reason": reason[:4000]})
        mlflow_status = {"finished": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(run_id, RunStatus.to_string(getattr(RunStatus, mlflow_status)))


class _Patient:
    """An `MlflowClient` of a tracking server whose calls wait out an outage: a call that cannot reach the server
    is retried after 1, 2, 4, ... 30 s (one line each), for up to `patience` seconds, then fails in one line. A
    retried call sends the same metrics with the same timestamps, which the server stores once."""

    def __init__(self, client: MlflowClient, uri: str, patience: float):
        self.impatient, self.uri, self.patience = client, uri, patience

    def __getattr__(self, name: str):
        attr = getattr(self.impatient, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            started, wait = time.monotonic(), 1.0
            while True:
                try:
                    result = attr(*args, **kwargs)
                except Exception as e:
                    if not _unreachable(e):
                        raise
                    waited = time.monotonic() - started
                    why = f"{type(e).__name__}: {_first_line(e)}"
                    if waited + wait > self.patience:
                        raise TrackingError(f"MLflow server {self.uri} unreachable for {waited:.0f} s ({name}: "
                                            f"{why}); start it and re-run the same command: unfinished trials "
                                            "resume from their checkpoints") from None
                    log.warning("MLflow server %s unreachable (%s); retrying in %.0f s, %.0f s waited of %.0f",
                                self.uri, name, wait, waited, self.patience)
                    time.sleep(wait)
                    wait = min(2 * wait, 30.0)
                    continue
                if wait > 1.0:
                    log.warning("MLflow server %s is back after %.0f s; %s went through", self.uri,
                                time.monotonic() - started, name)
                return result
        return call


def _unreachable(error: Exception) -> bool:
    """Whether `error` says the server could not be reached or could not answer (connection refused or reset, a
    timeout, a 5xx), rather than that it rejected the request."""
    import requests

    if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    message = str(error)
    return isinstance(error, MlflowException) and message.startswith("API request to") and (
        "failed with exception" in message or "error code 5" in message)


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:160] if str(error) else ""


def _batches(metrics: list[Metric], size: int = 1000) -> Iterator[list[Metric]]:
    """`metrics` in slices of MLflow's batch limit."""
    for i in range(0, len(metrics), size):
        yield metrics[i:i + size]


def metric_key(text: str) -> str:
    """`text` as an MLflow metric key, whose characters are letters, digits and `_-. :/`: any other (a derived
    variant's `+`, a character of a user's class name) becomes `-`."""
    return re.sub(r"[^\w\-. :/]", "-", text)


def _metric_name(field: str) -> str:
    return {"seconds": "epoch_seconds"}.get(field, field)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def git_tags() -> dict[str, str]:
    """Commit and dirty flag of the code that ran, so every number traces back to a source tree."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower() if commit else "unknown"}
