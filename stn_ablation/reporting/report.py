"""Run records -> a study's report: `reports/<study>/README.md`, its figures, its runs file and (optionally) LaTeX
or CSV tables.

Reads run records only (records.py, from MLflow or from a runs file): never trains, never opens Optuna; this
module assembles the document and writes the files; the comparisons live in comparisons.py, the tables and the
sentences that read them in tables.py and sentences.py, the pictures in figures.py. Everything is sorted, so the same
runs always give the same bytes; the one date in the report is the newest run's end time, not the clock. Nothing
that did not finish is dropped without a line."""

from __future__ import annotations

import csv
import dataclasses
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from stn_ablation.catalog import (CATALOG, CHOICES, GENERATED_SETS, GENERATION_VERSION, IMAGE_WIDTH_TAG, OWN_PROVENANCE,
                                  title)
from stn_ablation.errors import UsageError
from stn_ablation.reporting.published import STN_PAPER_TRAINING, published_error
from stn_ablation.reporting.records import (FILE_NAME, REUSED_STUDY_TAG, REUSED_TAG, STUDY_FILE_TAG, StudyRecords,
                                           write_file)
from stn_ablation.reporting.comparisons import comparisons
from stn_ablation.reporting.results import Study, objective
from stn_ablation.reporting.sentences import (best_trial_sentence, control_sentence, effect_sentence, frozen_sentences,
                                           published_claim_sentence, sign_sentences, theta_sentence)
from stn_ablation.reporting.tables import (Table, best_config_table, class_table, effects_table, error_table,
                                        issues_table, main_table, robustness_table, theta_table,
                                        transformer_effects_table, trials_table)
from stn_ablation.reporting.stats import ALPHA, UNDERPOWERED

REPO = Path(__file__).resolve().parents[2]
FORMATS = ("md", "latex", "csv")
GENERATED = ("README.md", "tables.tex", "fig_*.png", "stn_*.png", "table_*.csv")  # what a re-run may replace


# -- writing -------------------------------------------------------------------------------------------------------

def write_report(records: StudyRecords, out: Path | None, fmt: str, only: str | None = None,
                 tracker=None) -> Path:
    """Write the report of the study in `records` into `out` (default reports/<study>), with the records as its
    runs file beside it, and return the README's path. `fmt`: md (README only), latex (+ tables.tex), csv (+ a CSV
    per table). `only`: report just the runs of one device/precision (see `results.numerics`). With `tracker`, the
    store the records were read from, the files are also logged to the study's parent run under `report/`."""
    from stn_ablation.reporting import figures

    if fmt not in FORMATS:
        raise UsageError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
    loaded = records.study(only)
    out = Path(out) if out is not None else REPO / "reports" / loaded.name
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create report folder {out} ({e.strerror or e}); pass --out DIR") from None
    for pattern in GENERATED:  # an earlier report's files, which this one may not write again
        for old in out.glob(pattern):
            old.unlink()
    parts = loaded.per_dataset()
    tags = {d: re.sub(r"[^\w.-]", "_", f"_{d}") if len(parts) > 1 else "" for d, _ in parts}  # own data's path
    pictures = {d: {**figures.write_stn_grids(part, out, tags[d]), **figures.draw(part, out, tags[d])}
                for d, part in parts}
    if len(parts) > 1 and loaded.phase == "grid":
        pictures[ACROSS] = figures.draw_datasets(loaded, out)
    text, tables = render(loaded, fmt, pictures)
    written = [out / "README.md", *(out / name for drawn in pictures.values() for name in drawn)]
    written[0].write_text(text, encoding="utf-8")
    if fmt == "latex":
        written.append(out / "tables.tex")
        written[-1].write_text("\n".join(_latex(t) for t in tables), encoding="utf-8")
    elif fmt == "csv":
        for table in tables:
            written.append(out / f"{table.name}.csv")
            _csv(table, written[-1])
    written.append(write_file(records, out / FILE_NAME))
    if tracker is not None:
        for path in sorted(written):
            tracker.log_artifact(records.store_ids[records.parent["id"]], path, "report")
    return written[0]


ACROSS = ""  # the pictures key of the figures that span a study's datasets


def render(study: Study, fmt: str, pictures: dict[str, dict[str, str]]) -> tuple[str, list[Table]]:
    """The README's markdown and the tables in it. `pictures`: per dataset (ACROSS for the figures that span
    them), {file name: caption} of the files beside it. A study over several datasets gets a section across them,
    then one section per dataset with the tables of a one-dataset study; a comparison never pools two datasets."""
    tables: list[Table] = []
    md = _header(study, fmt)
    parts = study.per_dataset()
    found = comparisons(study) if study.phase == "grid" else []

    def adder(dataset: str | None):
        """Adds a table under the section being written; one dataset's of several is named and titled for it."""
        def add(table: Table | None, note: str = "") -> None:
            if table is None:
                return
            if dataset is not None:
                table = dataclasses.replace(table, name=f"{table.name}_{dataset}",
                                            title=f"{table.title}, {title(dataset)}")
            tables.append(table)
            md.extend([f"**{table.title}.**" + (f" {note}" if note else ""), "", _markdown(table), ""])
        return add

    def shower(dataset: str):
        def show(prefix: str) -> None:
            md.extend(f"![{caption}]({name})\n\n*{caption}*\n" for name, caption in pictures.get(dataset, {}).items()
                      if name.startswith(prefix))
        return show

    md += ["## What a spatial transformer does", "", EXPLAINER, ""]
    _generated_data(study, md)
    if len(parts) == 1 or study.phase == "tune":
        add, show = adder(None), shower(parts[0][0])
        _transformer(study, md, add, show)
        if study.phase == "tune":
            _tuning(study, md, add)
            show("fig_trials")
        else:
            _grid(study, found, md, add, show)
    else:
        _across(study, found, md, adder(None), shower(ACROSS))
        for dataset, part in parts:
            add, show = adder(dataset), shower(dataset)
            md += [f"## {title(dataset)} (`{dataset}`)", "", "### What the transformer did", ""]
            _transformer(part, md, add, show)
            _grid(part, found, md, add, show, dataset)
    md += ["## Runs", "", "Every child run of this study version, with its full MLflow run id.", "",
           _markdown(Table("", "", ["run", "run id", "name", "trial", "status"],
                           [[r.short, r.id, r.name, str(r.trial), r.status] for r in study.runs], [])), ""]
    _reused(study, md)
    return "\n".join(md).rstrip() + "\n", tables


def _transformer(study: Study, md: list[str], add: Callable, show: Callable) -> None:
    """What the study's transformers learned: the transform table in each family's terms, and the pictures."""
    if not study.cells():
        md += ["No run has finished yet.", ""]
    elif not any(runs[0].stn for _, runs in study.cells()):
        md += ["No variant of this study with finished runs has a spatial transformer.", ""]
    elif (theta := theta_table(study)) is None:
        md += ["These runs logged no transform statistics (`theta/*` metrics); the pictures below show what the "
               "transformers learned.", ""]
    else:
        tps = any(row.get("displacement_mean") is not None for row in theta.data)
        add(theta, "tx and ty are in normalized units (1.0 = half the image width)"
            + ("; for tps they are the control points' mean offset, not a translation" if tps else "")
            + "; ‖θ−I‖ is the distance from the identity transform.")
        md += [f"- {theta_sentence(row, _image_width(study))}" for row in theta.data] + [""]
    if frozen := frozen_sentences(study):
        md += ["The frozen controls trained behind one fixed transform each (family: parameters), held for every "
               "image and never learned:", "", *(f"- {line}" for line in frozen), ""]
    show("stn_")


def _generated_data(study: Study, md: list[str]) -> None:
    """For runs on sets generated by distorted.py: each set's distribution, what we chose where the paper is not
    certain, and, beside a paper's numbers, how its training budget compares with ours."""
    versions = sorted({version for version, _ in _generations(study.runs)})
    generated = [d for d in study.datasets if d in GENERATED_SETS]
    if not versions or not generated:
        return
    md += ["## Generated data", "", f"Generated by `stn_ablation/data/distorted.py` version {', '.join(versions)} "
           "(each run's `data_generation_version` tag; its `data/generation.json` holds the full record), from "
           f"{title(CATALOG[generated[0]].base)}:", ""]
    for d in generated:
        spec = CATALOG[d]
        settings = ", ".join(f"{k} {v}" for k, v in spec.settings.items())
        md.append(f"- {title(d)}: {spec.side} x {spec.side} canvas, {spec.family} family, {settings}.")
    md += ["", "Where the paper is not certain, we chose:"
           + (f" (the choices of version {GENERATION_VERSION}, which differs from these runs')"
              if versions != [str(GENERATION_VERSION)] else ""), ""]
    md += [f"- {text}" for sets, text in CHOICES if set(sets) & set(generated)] + [""]
    if any(published_error(d, m, "none") is not None for d in generated for m in study.models):
        base = study.parent_params
        md += [f"The paper trained for {STN_PAPER_TRAINING}; these runs for {base.get('base.epochs', '?')} epochs at "
               f"batch {base.get('base.batch_size', '?')}, learning rate {base.get('base.lr', '?')} "
               f"({base.get('base.schedule', '?')} schedule), the localization net at "
               f"{base.get('base.loc_lr_mult', '?')}x that rate (the base config above).", ""]


def _across(study: Study, found: list, md: list[str], add: Callable, show: Callable) -> None:
    """The view across datasets: each model's error on each (beside a paper's where it states one) and the
    transformer's effect per dataset; the sections after it hold each dataset's own tables."""
    md += ["## Across datasets", "", "Each dataset is its own experiment: the same models, recipe and seeds, trained "
           "and tested on that dataset. Errors are 100 minus the final test accuracy.", ""]
    add(error_table(study))
    show("fig_datasets")
    if any(c.of_transformer for c in found):
        add(transformer_effects_table(found, study), "Ours vs paper: agrees = same sign and significant; a "
            "same-sign row that is not significant neither confirms nor refutes the paper.")
        claim = published_claim_sentence(found)
        md += ([claim, ""] if claim else []) + [f"- {s}" for s in sign_sentences(found, study)] + [""]


EXPLAINER = (
    "A spatial transformer (Jaderberg et al., 2015) is a small differentiable module in front of the classifier. Its "
    "*localization network* looks at the image and regresses the parameters θ of a transform family (six numbers, "
    "an affine matrix, in the paper and by default; fewer for translation, attention or rotation-scale-translation; "
    "a homography for projective; control-point offsets for a thin-plate spline); the *grid generator* turns θ into "
    "a sampling grid (for every output pixel, where to read in the input: θ maps output to input coordinates on "
    "[-1, 1]); the *sampler* reads the input there by bilinear interpolation. All three are "
    "differentiable, so the localization net learns from the classification loss alone, with no label saying where "
    "to look. If that helps, it learns to zoom, rotate or shift the object into a canonical view; if not, θ stays "
    "near the identity. A scale below 1 means the transformer zooms in. Here is what this study's transformers did.")


def _grid(study: Study, found: list, md: list[str], add: Callable, show: Callable, dataset: str | None = None
          ) -> None:
    """A grid study's results: accuracy, what is not counted, the effects `found` (the report's comparisons, Holm
    corrected together) and robustness; with `dataset`, one dataset's of a study over several, a level deeper."""
    level = "##" if dataset is None else "###"
    found_here = [c for c in found if dataset is None or c.dataset == dataset]
    md += [f"{level} Final test accuracy", ""]
    if study.counted:
        validated = any(r.history.get("val_acc") for r in study.runs)
        add(main_table(study), "Test accuracy after the last epoch; best epoch is by "
            + ("validation accuracy." if validated else "training accuracy: these runs had no validation split, "
               "and nothing was chosen by the test set."))
        show("fig_final")
        show("fig_curves")
        if (classes := class_table(study)) is not None:
            add(classes, "Each class's share of its test images classified correctly, from the evaluation that gives "
                "the final test accuracy.")
    else:
        md += ["No run has finished yet.", ""]
    issues = issues_table(study)
    md += [f"{level} Runs not counted", ""]
    if issues.rows:
        add(issues, "Missing cells, and runs that failed, diverged, were pruned or are still running.")
    else:
        md += [f"All {len(study.expected_cells())} expected grid cells finished; none failed, diverged or was "
               "pruned.", ""]
    md += [f"{level} Ablation effects", ""]
    if found_here:
        add(effects_table(found, dataset),
            f"Significant: Holm-corrected p < {ALPHA}. Underpowered: fewer than {UNDERPOWERED} paired seeds.")
        md += [f"- {effect_sentence(c)}" for c in found_here]
        md += [f"- {said}" for c in found_here if c.control == "frozen" and (said := control_sentence(found, c))]
        md += [""]
    else:
        md += ["No two cells to compare (an STN and its twin, or an augmentation and none, with finished runs).", ""]
    md += [f"{level} Robustness", ""]
    robust = robustness_table(study)
    if robust is None:
        md += ["These runs logged no robustness sweeps (`robust/*` metrics).", ""]
    else:
        add(robust, "Each sweep distorts the same test images for every model; the figure shows every point.")
        show("fig_robustness")


def _tuning(study: Study, md: list[str], add: Callable) -> None:
    md += ["## Trials", "", "A tuning study compares configurations, not seeds: no per-cell means or tests are "
           "computed. The parameter columns are those that differ from the study's base config.", ""]
    add(trials_table(study))
    finished = [r for r in study.runs if r.status == "finished" and objective(r) is not None]
    md += ["## Best trial", ""]
    if not finished:
        md += ["No trial has finished yet.", ""]
        return
    best = min(finished, key=lambda r: (-objective(r), r.trial, r.id))
    md += [best_trial_sentence(best, len(finished)), ""]
    add(best_config_table(best))


def _reused(study: Study, md: list[str]) -> None:
    """Which runs took a finished run's result instead of training (same config, data and numerics), and from
    where: each is one run of this study, counted once; its source belongs to another study or version."""
    reused = [r for r in study.runs if REUSED_TAG in r.tags]
    if reused:
        md += [f"{len(reused)} of these {_runs(len(study.runs))} did not train: each took the result of a finished "
               "run with the same config, data and numerics (`stn.identity`), copied with its metrics and histories; "
               "the source keeps the model.", "",
               _markdown(Table("", "", ["run", "name", "reused from run", "of study"],
                               [[r.short, r.name, f"`{r.tags[REUSED_TAG]}`", r.tags.get(REUSED_STUDY_TAG, "?")]
                                for r in reused], [])), ""]


def _header(study: Study, fmt: str) -> list[str]:
    tags, runs = study.parent_tags, study.runs
    everything = [tags] + [r.tags for r in runs]
    form = f" --format {fmt}" if fmt != "md" else ""
    named = tags.get(STUDY_FILE_TAG, study.name)  # what --study named it by
    command = f"stn-ablate run --study {named} && stn-ablate report --study {named}{form}"
    from_records = f"stn-ablate report --study {named} --runs reports/{study.name}/{FILE_NAME}{form}"
    # the newest child's end dates the runs: the parent closes again whenever `run` is re-run (say, on a store that
    # imported the runs file)
    ends = [r.end for r in runs if r.end] or [e for e in [study.parent_end] if e]
    date = (datetime.fromtimestamp(max(ends) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            + " (end of the newest run)") if ends else "no run has ended yet"
    data_line = _data_line(study)
    shape = (" x ".join(f"{len(study.grid[a])} {a}{'s' * (len(study.grid[a]) != 1)}" for a in study.grid)
             + f" = {sum(len(part.expected_cells()) for _, part in study.per_dataset())} grid cells") \
        if study.phase == "grid" else \
        f"tuning, {study.parent_params.get('n_trials', '?')} trials, sampler {study.parent_params.get('sampler', '?')}"
    commits = _counter((t.get("git_commit", "unknown"), t.get("git_dirty", "unknown")) for t in everything)
    git = [f"`{c}`{' with **uncommitted changes**' if d == 'true' else ''} ({_runs(n)})" for (c, d), n in commits]
    devices = _counter(f"{r.tags.get('device', '?')}, {r.tags.get('precision', '?')}"
                       + (f" on {r.tags['device_model']}" if "device_model" in r.tags else "") for r in runs)
    rows = [["study", f"{study.name}, version {tags.get('study_digest', '?')}: {shape}"],
            ["runs", ", ".join(f"{n} {s}" for s, n in _counter(r.status for r in runs)) or "none yet"],
            ["code", "; ".join(git)],
            ["study file sha256", "; ".join(f"`{h}` ({_runs(n)})" for h, n in
                                            _counter(t.get("study_file_sha256", "unknown") for t in everything))],
            ["device, precision", "; ".join(f"{d} ({_runs(n)})" for d, n in devices) or "—"],
            ["data", data_line],
            ["base config", ", ".join(f"{k[5:]}={v}" for k, v in sorted(study.parent_params.items())
                                      if k.startswith("base.") and k[5:] not in study.grid) or "—"],
            ["date", date]]
    md = [f"# Study `{study.name}`", "", tags.get("mlflow.note.content", "").strip(), "",
          "Regenerate this report with:", "", "```", command, "```", "",
          f"or, with no MLflow store, from the run records beside it (`{FILE_NAME}`: every run's params, tags, "
          "metrics and their histories; `stn-ablate import` puts them into a store):", "", "```", from_records, "```",
          "", f"Every number below was read from the MLflow runs of experiment `{study.name}`, parent run "
          f"`{study.parent_id}`. Tables cite run ids shortened to 8 characters; the last section lists them in full.",
          "", _markdown(Table("", "", ["", ""], rows, [])), ""]
    if study.older:
        md += [f"Older versions of this study (its file or overrides changed) exist in the same experiment and are "
               f"not reported: parent runs {', '.join(f'`{i[:8]}` (version {d})' for i, d in study.older)}.", ""]
    return md


def _image_width(study: Study) -> int | None:
    """The width in pixels of the study's (first) dataset's images: the catalog's, or for a user's own data the one
    its runs were tagged with; None where the runs do not say."""
    dataset = study.datasets[0]
    if dataset in CATALOG:
        return CATALOG[dataset].side
    widths = {r.tags[IMAGE_WIDTH_TAG] for r in study.runs if IMAGE_WIDTH_TAG in r.tags}
    return int(widths.pop()) if len(widths) == 1 else None


def _data_line(study: Study) -> str:
    """Which data the runs read: the release, or for a generated set (distorted.py) its version and seed and the
    release it was generated from; any copy that is not the official release is named, with its consequence."""
    runs = study.runs
    if not runs:
        return "—"
    names = ", ".join(title(d) for d in study.datasets)
    unofficial = sorted({r.tags["data_provenance"] for r in runs} - {"official", OWN_PROVENANCE})
    if not unofficial and OWN_PROVENANCE in {r.tags["data_provenance"] for r in runs}:
        return f"{names}: your own data (each run's dataset inputs hold its splits' content digests and source)"
    generated = _generations(runs)
    release = (f"**not the official release** ({'; '.join(unofficial)}): accuracies may not compare with published "
               "ones" if unofficial else "the official release (md5-checked)")
    if not generated:
        return f"{names}: {release}"
    how = "; ".join(f"version {v}, seed {s}" for v, s in generated)
    return (f"{names}, generated by `stn_ablation/data/distorted.py` ({how}; each run's `data/generation.json` holds "
            f"the full record) from {release}")


def _generations(runs: list) -> list[tuple[str, str]]:
    """(version, seed) of distorted.py that generated the runs' data, from their tags; empty for a release."""
    return sorted({(r.tags["data_generation_version"], r.tags.get("data_generation_seed", "?")) for r in runs
                   if "data_generation_version" in r.tags})


# -- formatting ----------------------------------------------------------------------------------------------------

def _markdown(table: Table) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|")
    return "\n".join(["| " + " | ".join(map(cell, table.headers)) + " |", "|" + "---|" * len(table.headers)]
                     + ["| " + " | ".join(map(cell, row)) + " |" for row in table.rows])


LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
         "±": r"\ensuremath{\pm}", "−": r"\ensuremath{-}", "–": "--", "—": "---", "°": r"\ensuremath{^\circ}",
         "θ": r"\ensuremath{\theta}", "‖": r"\ensuremath{\|}", "…": r"\ldots{}"}  # character -> LaTeX


def _latex(table: Table) -> str:
    def tex(s: str) -> str:
        return "".join(LATEX.get(ch, ch) for ch in str(s))

    return "\n".join([r"% needs \usepackage{booktabs}", r"\begin{table}[ht]", r"\centering\small",
                      f"\\caption{{{tex(table.title)}}}",
                      f"\\begin{{tabular}}{{{'l' * len(table.headers)}}}", r"\toprule",
                      " & ".join(map(tex, table.headers)) + r" \\", r"\midrule",
                      *(" & ".join(map(tex, row)) + r" \\" for row in table.rows),
                      r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def _csv(table: Table, path: Path) -> None:
    keys = list(dict.fromkeys(k for row in table.data for k in row))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in table.data)


def _counter(values) -> list[tuple[Any, int]]:
    """(value, count), most frequent first, ties by value: a stable order for header lines."""
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))


def _runs(n: int) -> str:
    return f"{n} run" + "s" * (n != 1)
