"""`stn-ablate` command line: argparse subcommands. Heavy imports (torch, mlflow, optuna) happen inside the
handlers, so `stn-ablate list --help` starts fast and a typo fails before anything loads."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from stn_ablation.config import AUGMENTATIONS, DATASETS, PRECISIONS, REFERENCE_AUGMENTATIONS
from stn_ablation.errors import UsageError
from stn_ablation.plugins import load_plugins
from stn_ablation.reporting.report import FORMATS


DESCRIPTION = """Does a spatial transformer help this classifier, and when? Ablations of STN variants against
their no-STN twins: Optuna runs the studies, MLflow tracks every run, `report` writes the answer."""
EPILOG = """everyday use:
  stn-ablate list                            variants and studies
  stn-ablate run --study baseline_vs_stn     run (or resume) a study
  stn-ablate ui --study baseline_vs_stn      the MLflow UI on the same store
  stn-ablate report --study baseline_vs_stn  reports/baseline_vs_stn/README.md and figures
`stn-ablate COMMAND --help` lists a command's options."""

DEVICE_HELP = ("auto (a GPU if any, then mps, then the CPU), cpu, cuda, cuda:N (one GPU by index) or mps; "
               "default auto")
DETERMINISTIC_HELP = """deterministic kernels only (torch.use_deterministic_algorithms, no cuDNN autotuning),
recorded as the run tag deterministic=true. On the CPU runs are bit-identical without it. On CUDA, without it two
runs of one command, or a run and its resumed self, differ in the last bits (cuDNN picks kernels by timing them);
with it, the same command on the same GPU model, driver and PyTorch repeats bit for bit, resumes included, except
an STN's grid_sample backward, which has no deterministic CUDA kernel (PyTorch warns). Slower on CUDA"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stn-ablate", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="state folder (MLflow store, Optuna storage, checkpoints); "
                                       "default $STN_ABLATE_HOME or ./.stn-ablate")
    common.add_argument("--tracking-uri", help="MLflow tracking URI; default: sqlite store in the state folder")
    common.add_argument("--server-patience", type=float, default=600.0, metavar="SECONDS",
                        help="how long a call to an MLflow tracking server waits out an outage, retrying, before the "
                             "worker stops in one line (its trial resumes on the next run); default 600")

    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--epochs", type=int, help="epochs per run (default 50)")
    training.add_argument("--subset", type=int, help="train on the first N images of a fixed shuffle")
    training.add_argument("--device", default="auto", help=DEVICE_HELP)
    training.add_argument("--precision", default="auto", choices=PRECISIONS,
                          help="autocast precision; auto = bf16 on GPUs and CPUs with native bf16, fp16 on older "
                               "GPUs, else fp32")
    training.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    training.add_argument("--data-root", help="torchvision data root; default $STN_ABLATE_DATA or a cache folder")

    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (from the current folder or the path): it registers your "
                             "classifiers; repeatable. Installed packages' stn_ablation.variants entry points load "
                             "by themselves")

    sub.add_parser("list", parents=[plugin], help="list model variants and studies")

    p = sub.add_parser("train", parents=[common, training, plugin], help="train one variant as one MLflow run")
    p.add_argument("--variant", required=True, help="registry name, see `stn-ablate list`")
    p.add_argument("--dataset", metavar="DATASET",
                   help=f"one of {', '.join(DATASETS)}, or your own: folder:DIR (an ImageFolder tree) or npz:FILE")
    p.add_argument("--image-size", type=int, help="your own data: resize every image to N x N pixels")
    p.add_argument("--val-size", type=int, help="validation images held out of the training set (default 5000)")
    p.add_argument("--aug", choices=AUGMENTATIONS)
    p.add_argument("--distort", action="store_true",
                   help="train on randomly rotated/zoomed/shifted images: the same as --aug affine")
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--loc-lr-mult", type=float,
                   help="localization-net learning rate as a multiple of --lr (default 0.1)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--frozen", help="a <twin>+frozen variant's fixed transform, e.g. attention:1.63,0,0")

    p = sub.add_parser("run", parents=[common, training, plugin],
                       help="run (or resume) a study: its trials as MLflow runs")
    p.add_argument("--study", required=True, help="a name from `stn-ablate list` or a path to a .toml file")
    p.add_argument("--storage", help="Optuna storage: postgresql://... to share a study between machines, "
                                     "sqlite:///FILE, or a .journal file; default: a journal in the state folder")
    p.add_argument("--n-trials", type=int, help="tuning: total trials; grid: only the first N cells")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine, sharing the study; CPU threads are split between them, "
                        "and with --device auto or cuda each gets its own GPU, round-robin")
    p.add_argument("--share-gpus", action="store_true", help="allow more --workers than visible GPUs")

    p = sub.add_parser("report", parents=[common, plugin], help="write a study's report from its MLflow runs")
    p.add_argument("--study", required=True, help="study name (its MLflow experiment) or its .toml file")
    p.add_argument("--out", help="output folder; default reports/STUDY")
    p.add_argument("--format", default="md", choices=FORMATS, help="format of the tables")
    p.add_argument("--runs", help="write the report from this runs file (reports/STUDY/runs.jsonl) instead of the "
                   "MLflow store")
    p.add_argument("--numerics", help="report only the runs of one device/precision, e.g. cpu/bfloat16 (a study "
                                      "whose runs mix them is refused otherwise)")

    p = sub.add_parser("export", parents=[common], help="write a study's run records (runs file) from its MLflow runs")
    p.add_argument("--study", required=True, help="study name (its MLflow experiment)")
    p.add_argument("--out", help="runs file to write; default reports/STUDY/runs.jsonl")

    p = sub.add_parser("import", parents=[common], help="put the runs of runs files into the MLflow store")
    p.add_argument("files", nargs="+", metavar="RUNS_FILE", help="e.g. reports/STUDY/runs.jsonl")

    p = sub.add_parser("bench", parents=[plugin],
                       help="training/evaluation throughput of the trainer vs a tutorial-style pipeline")
    p.add_argument("--variant", action="append", help="variant to measure (repeatable); default: all four")
    p.add_argument("--aug", default="standard", choices=REFERENCE_AUGMENTATIONS)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--seconds", type=float, default=20.0, help="measuring time per pipeline and variant")
    p.add_argument("--real-data", action="store_true", help="real CIFAR-10 instead of synthetic CIFAR-shaped data")
    p.add_argument("--data-root", help="torchvision data root for --real-data")
    p.add_argument("--workers", action="store_true", help="also measure trials/hour with 1 vs 2 worker processes")

    p = sub.add_parser("ui", parents=[common], help="start the MLflow UI on the suite's tracking store")
    p.add_argument("--study", help="print the URL of this study's experiment")
    p.add_argument("--port", type=int, default=5000)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Expected failures (bad input, missing data, unreachable store) print one line and exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(argv)
    args.argv = argv
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one progress line per trial is ours
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its loggers' level when imported
    logging.basicConfig(level=logging.INFO, format="stn-ablate: %(message)s", stream=sys.stderr)
    for noisy in ("alembic", "mlflow", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler = {"list": cmd_list, "train": cmd_train, "run": cmd_run, "report": cmd_report, "export": cmd_export,
               "import": cmd_import, "bench": cmd_bench, "ui": cmd_ui}[args.command]
    try:
        load_plugins(getattr(args, "plugin", []), Path.cwd(), "--plugin")
        return handler(args) or 0
    except KeyboardInterrupt:
        print("stn-ablate: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except UsageError as e:
        print(f"stn-ablate: error: {e}", file=sys.stderr)
        return 2


def cmd_list(args: argparse.Namespace) -> None:
    from stn_ablation.models.registry import create_model, get_variant, list_variants
    from stn_ablation.study.spec import list_studies, load_spec
    from stn_ablation.transforms import FAMILIES

    names = list_variants()  # sorted: a classifier's derived variants (+frozen, +stn, ...) follow it
    width = max(map(len, names))
    print(f"{'variant':<{width}} {'params':>8}  description")
    for name in names:
        n = sum(p.numel() for p in create_model(name).parameters())
        variant = get_variant(name)
        plugin = "" if variant.origin.startswith("stn_ablation.") else f" [plugin {variant.origin}]"
        print(f"{name:<{width}} {n:>8,}  {variant.description}{plugin}")
    print(f"\n{'transform':<14} {'params':>8}  what an STN's localization net regresses: `transform` in a study's "
          "[train] or [grid]")
    for family in FAMILIES.values():
        print(f"{family.name:<14} {family.n_params:>8}")
    print(f"\n{'study':<16} {'trials':>6}  description")
    for name in list_studies():
        spec = load_spec(name)
        print(f"{name:<16} {spec.n_trials:>6}  {spec.description.splitlines()[0]}")


def cmd_run(args: argparse.Namespace) -> None:
    from stn_ablation.device import select_device, worker_devices
    from stn_ablation.paths import StateHome
    from stn_ablation.study.worker import Worker, summarize
    from stn_ablation.study.spec import load_spec
    from stn_ablation.tracking.tracker import Tracker

    spec = load_spec(args.study, epochs=args.epochs, subset=args.subset, n_trials=args.n_trials)
    home = StateHome.resolve(args.home)
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    device = select_device(args.device)  # a bad or absent device fails here, before any worker starts
    if args.workers > 1:
        _run_workers(args.argv, worker_devices(args.device, args.workers, args.share_gpus))
    tracker = Tracker(args.tracking_uri or home.tracking_uri, home.artifact_root, args.server_patience)
    worker = Worker(spec, home, tracker, device, data_root=args.data_root, storage_url=args.storage,
                    precision=args.precision, deterministic=args.deterministic)
    study = worker.run()
    print(summarize(study, spec))


def _run_workers(argv: list[str], devices: list[str]) -> None:
    """Start one single-worker copy of this command on each of `devices` (device.worker_devices), each with an
    equal share of the CPU threads, and wait. They coordinate through the study's storage; the caller then prints
    the summary."""
    import subprocess

    threads = max(1, (os.cpu_count() or 1) // len(devices))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    workers = []
    for number, device in enumerate(devices, 1):
        logging.getLogger(__name__).info("worker %d of %d on --device %s", number, len(devices), device)
        single = [*argv, "--workers", "1", "--device", device]  # argparse keeps the last value
        workers.append(subprocess.Popen([sys.executable, "-m", "stn_ablation.cli", *single], env=env))
    codes = [w.wait() for w in workers]
    if any(codes):
        raise UsageError(f"worker exit codes {codes}; re-run the same command to resume what they left")


def cmd_report(args: argparse.Namespace) -> None:
    from stn_ablation.reporting.records import read_file, read_study
    from stn_ablation.reporting.report import write_report

    out = Path(args.out) if args.out else None
    if args.study.endswith(".toml"):  # a study file: its runs are filed under its name
        from stn_ablation.study.spec import load_spec

        args.study = load_spec(args.study).name
    if args.runs:
        path = write_report(read_file(Path(args.runs), args.study), out, args.format, args.numerics)
    else:
        tracker = _tracker(args)
        path = write_report(read_study(tracker, args.study), out, args.format, args.numerics, tracker)
    print(f"report written to {path}")


def cmd_export(args: argparse.Namespace) -> None:
    from stn_ablation.reporting.records import FILE_NAME, read_study, write_file
    from stn_ablation.reporting.report import REPO

    records = read_study(_tracker(args), args.study)
    path = write_file(records, Path(args.out) if args.out else REPO / "reports" / args.study / FILE_NAME)
    print(f"{1 + len(records.children)} runs of study {args.study} written to {path}")


def cmd_import(args: argparse.Namespace) -> None:
    from stn_ablation.reporting.records import import_records, read_file

    files = {name: read_file(Path(name)) for name in args.files}  # every file is checked before the store is touched
    tracker = _tracker(args)
    for name, records in files.items():
        imported, present = import_records(tracker, records)
        print(f"{name}: {imported} runs imported, {present} already in {tracker.uri}")


def _tracker(args: argparse.Namespace):
    """The MLflow store of --tracking-uri, or of the state folder; checked before anything is read or written."""
    from stn_ablation.paths import StateHome
    from stn_ablation.tracking.tracker import Tracker

    home = StateHome.resolve(args.home)
    tracker = Tracker(args.tracking_uri or home.tracking_uri, home.artifact_root, args.server_patience)
    tracker.check()
    return tracker


def cmd_bench(args: argparse.Namespace) -> None:
    from stn_ablation.bench.throughput import run_bench
    from stn_ablation.device import select_device

    print(run_bench(variants=args.variant or ["tutorial_stn", "tutorial_cnn", "loc3_stn", "loc3_cnn"],
                    aug=args.aug, batch_size=args.batch_size, device=select_device(args.device),
                    precision=args.precision, seconds=args.seconds, real_data=args.real_data,
                    data_root=args.data_root, workers=args.workers))


def cmd_ui(args: argparse.Namespace) -> None:
    import subprocess

    from stn_ablation.paths import StateHome
    from stn_ablation.tracking.server import server_command
    from stn_ablation.tracking.tracker import Tracker

    home = StateHome.resolve(args.home)
    uri = args.tracking_uri or home.tracking_uri
    url = f"http://127.0.0.1:{args.port}"
    if args.study:
        tracker = Tracker(uri, home.artifact_root)
        tracker.check()
        found = tracker.find_experiment(args.study)
        if found is None:
            raise UsageError(f"no runs of study {args.study!r} in {uri} yet; run `stn-ablate run --study "
                             f"{args.study}` first")
        url += ui_path(found.experiment_id)
    print(f"MLflow UI for {uri}: {url}  (Ctrl-C stops it)", flush=True)
    command, env = server_command("--backend-store-uri", uri, "--default-artifact-root", home.artifact_root.as_uri(),
                                  "--host", "127.0.0.1", "--port", str(args.port))
    server = subprocess.Popen(command, env=env, start_new_session=True)
    _stop_group_on_exit(server)


def ui_path(experiment_id: str) -> str:
    """The UI's page of an experiment's runs table. MLflow 3.17 ignores the experiment-kind tag and opens a bare
    experiment URL on its GenAI overview; the runs view and the workflow type in the URL skip it."""
    return f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _stop_group_on_exit(server) -> None:
    """Wait for `server`, and stop its whole process group (the MLflow server and its web workers) when it ends or
    this process gets Ctrl-C or SIGTERM: a UI left serving after `ui` has gone would hold its port."""
    import signal
    import subprocess
    import time

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        server.wait()
    except KeyboardInterrupt:
        print("stopping the MLflow UI", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for sig in (signal.SIGTERM, signal.SIGKILL):  # politely, then for good
            deadline = time.monotonic() + 10
            try:
                os.killpg(server.pid, sig)
                while time.monotonic() < deadline:
                    os.killpg(server.pid, 0)  # raises once no process of the group is left
                    try:
                        server.wait(timeout=0.1)
                    except subprocess.TimeoutExpired:
                        pass
            except ProcessLookupError:
                return


def cmd_train(args: argparse.Namespace) -> None:
    from stn_ablation.config import TrainConfig
    from stn_ablation.data.datasets import load_dataset, prepare
    from stn_ablation.device import select_device
    from stn_ablation.paths import StateHome
    from stn_ablation.models.registry import get_variant
    from stn_ablation.tracking.run import TrackedRun, run_tracked
    from stn_ablation.tracking.tracker import Tracker

    if args.distort and args.aug not in (None, "affine"):
        raise UsageError(f"--distort means --aug affine; drop one of --distort and --aug {args.aug}")
    cfg = TrainConfig().with_overrides(
        variant=args.variant, dataset=args.dataset, aug="affine" if args.distort else args.aug, epochs=args.epochs,
        seed=args.seed, lr=args.lr, loc_lr_mult=args.loc_lr_mult, batch_size=args.batch_size, subset=args.subset,
        frozen=args.frozen, image_size=args.image_size, val_size=args.val_size)
    get_variant(cfg.variant)
    home = StateHome.resolve(args.home)
    device = select_device(args.device)
    data = prepare(load_dataset(cfg.dataset, args.data_root, image_size=cfg.image_size), device,
                   val_size=cfg.val_size, subset=cfg.subset)
    tracker = Tracker(args.tracking_uri or home.tracking_uri, home.artifact_root, args.server_patience)
    tracker.check()
    experiment = tracker.experiment("train")
    key = f"train-{cfg.digest()}"
    checkpoint = home.checkpoint(key)
    run = TrackedRun(cfg, experiment, key, run_name=f"{cfg.variant}-s{cfg.seed}-{cfg.aug}", checkpoint=checkpoint,
                     precision=args.precision, deterministic=args.deterministic)
    run_id, result = run_tracked(run, data, device, tracker)
    checkpoint.unlink(missing_ok=True)  # the run is complete in MLflow; the same command trains afresh
    last = result.history[-1] if result.history else None
    print(f"{cfg.variant} {cfg.dataset} aug={cfg.aug} seed={cfg.seed}: {result.status}"
          + (f" ({result.reason})" if result.reason else "")
          + (f", test accuracy {last.test_acc:.4f} after {last.epoch} epochs, "
             f"{sum(s.seconds for s in result.history):.0f}s" if last else "")
          + f", mlflow run {run_id}")


if __name__ == "__main__":
    sys.exit(main())
