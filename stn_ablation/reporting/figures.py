"""The report's pictures: curves and point plots drawn from a loaded study's numbers, and the STN before/after
grids copied from its runs' artifacts.

Bands and error bars are the same Student-t intervals as the report's tables (stats.mean_ci), never a bootstrap:
the pictures agree with the numbers beside them, and the same runs always draw the same bytes. Every figure is
closed once saved."""

from __future__ import annotations

import base64
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from stn_ablation.catalog import title
from stn_ablation.config import SWEEP_KINDS
from stn_ablation.reporting.published import published_error
from stn_ablation.reporting.results import Run, Study, picture_runs
from stn_ablation.reporting.stats import LEVEL, mean_ci

DPI = 110
LINESTYLES = {"none": "-", "standard": "--", "affine": ":"}  # augmentation -> line style
STYLE_WORDS = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
SWEEP_AXES = {"rotate": "rotation (degrees)", "scale": "zoom factor (> 1 enlarges)", "translate": "shift (pixels)"}


@dataclass(frozen=True)
class Line:
    """One line of a panel: a label, its style, and each run's {x: y} (a band needs two runs at an x)."""

    label: str
    color: str
    runs: Sequence[dict[float, float]]
    linestyle: str = "-"
    width: float = 1.6


@dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    lines: Sequence[Line]
    ylabel: str = "accuracy (%)"
    integer_x: bool = False  # epochs


# -- from a study to files -----------------------------------------------------------------------------------------

def _linestyle(aug: str) -> str:
    return LINESTYLES.get(aug, "-.")


def draw(study: Study, out: Path, tag: str = "") -> dict[str, str]:
    """The study's figures in `out`, as {file name: caption}; finished runs only (a tuning study: every trial).
    `tag` ends each file's name: one dataset's figures of a study over several (`_mnist_r`)."""
    if study.phase == "tune":
        return _trials(study, out)
    cells = study.cells()
    if not cells:
        return {}
    colors = palette(study.models)

    def lines(values: Callable[[Run], dict[float, float]]) -> list[Line]:
        return [Line(f"{v} / {a} (n={len(runs)})", colors[v], [values(r) for r in runs], _linestyle(a))
                for (v, a), runs in cells]

    drawn = {}
    panels = [Panel(f"{title} accuracy", "epoch", lines(lambda r, key=key: r.history.get(key, {})), integer_x=True)
              for key, title in (("val_acc", "validation"), ("test_acc", "test"))
              if any(r.history.get(key) for _, runs in cells for r in runs)]
    if panels:
        line_panels(panels, out / f"fig_curves{tag}.png")
        ran = {aug for (_, aug), _ in cells}
        styles = ", ".join(f"{STYLE_WORDS[_linestyle(a)]} {a}" for a in study.augs if a in ran)
        drawn[f"fig_curves{tag}.png"] = (f"Accuracy by epoch: mean over seeds, band = {LEVEL:.0%} Student-t CI (where "
                                         f"n >= 2). Colour: variant; line style: augmentation ({styles}).")
    point_plot([(v, a, [r.metrics["final_test_acc"] for r in runs]) for (v, a), runs in cells],
               out / f"fig_final{tag}.png", palette(study.augs))
    drawn[f"fig_final{tag}.png"] = (f"Final test accuracy: mean and {LEVEL:.0%} Student-t CI per variant and "
                              "augmentation; small dots are single seeds.")
    if any(k.startswith("robust/") for _, runs in cells for r in runs for k in r.metrics):
        line_panels([Panel(kind, SWEEP_AXES[kind], lines(lambda r, kind=kind: robust_points(r.metrics, kind)),
                           ylabel="test accuracy (%)") for kind in SWEEP_KINDS], out / f"fig_robustness{tag}.png")
        drawn[f"fig_robustness{tag}.png"] = (f"Test accuracy under distortion: mean over seeds, band = {LEVEL:.0%} "
                                       "Student-t CI. Zero distortion (scale 1) is the clean test subset.")
    return drawn


def draw_datasets(study: Study, out: Path) -> dict[str, str]:
    """For a study over several datasets: every model's test error on each, side by side, with a paper's error
    where published.py states one for a cell without augmentation."""
    cells = [(d, model, aug, runs) for d, part in study.per_dataset() for (model, aug), runs in part.cells()]
    several_augs = len({aug for _, _, aug, _ in cells}) > 1
    groups, references = [], {}
    for d, model, aug, runs in cells:
        key = (title(d), f"{model} / {aug}" if several_augs else model)
        groups.append((*key, [1 - r.metrics["final_test_acc"] for r in runs]))
        if (published := published_error(d, model, aug)) is not None:
            references[key] = published / 100
    if not groups:
        return {}
    point_plot(groups, out / "fig_datasets.png", palette(list(dict.fromkeys(h for _, h, _ in groups))),
               ylabel="test error (%)", legend="model", references=references)
    return {"fig_datasets.png": f"Test error per dataset and model: mean and {LEVEL:.0%} Student-t CI; small dots "
                                "are single seeds" + ("; crosses are the published errors." if references else ".")}


def robust_points(metrics: dict[str, float], kind: str) -> dict[float, float]:
    """{distortion: accuracy} from a run's `robust/<kind>/<value>` metrics (the sweep's mean left out)."""
    prefix = f"robust/{kind}/"
    return {float(k[len(prefix):]): v for k, v in metrics.items() if k.startswith(prefix) and not k.endswith("/mean")}


def _trials(study: Study, out: Path) -> dict[str, str]:
    ranked = sorted((r for r in study.runs if r.history.get("val_acc")),
                    key=lambda r: (-r.metrics.get("best_val_acc", max(r.history["val_acc"].values())), r.trial, r.id))
    if not ranked:
        return {}
    colors = palette([r.id for r in ranked])
    lines = [Line(f"#{r.trial} {r.status}", colors[r.id], [r.history["val_acc"]],
                  "-" if r.status == "finished" else ":", 2.6 if i == 0 else 1.0) for i, r in enumerate(ranked)]
    line_panels([Panel("validation accuracy per trial", "epoch", lines, integer_x=True)], out / "fig_trials.png")
    return {"fig_trials.png": "Validation accuracy of every trial by epoch, best trial first in the legend and "
                              "drawn thick; dotted: trials that did not finish (pruned, diverged, failed)."}


def write_stn_grids(study: Study, out: Path, tag: str = "") -> dict[str, str]:
    """The last-epoch before/after picture of one run per STN model x augmentation (results.picture_runs), written
    from the run's record into `out`, as {file name: caption}; `tag` as in `draw`."""
    pictures = {}
    for run in picture_runs(study):
        if not run.pictures:
            continue
        (name, content), = run.pictures.items()
        target = f"stn_{run.model.replace('/', '_')}_{run.aug}_s{run.seed}{tag}.png"
        (out / target).write_bytes(base64.b64decode(content))
        epoch = int("".join(c for c in Path(name).stem if c.isdigit()) or 0)
        pictures[target] = (f"{run.model}, augmentation {run.aug}, seed {run.seed}, epoch {epoch} (run {run.short}): "
                            "each row of test images is followed by the row of what the transformer makes of them.")
    return pictures


# -- drawing -------------------------------------------------------------------------------------------------------

def palette(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per name, colour-blind safe, in the order given."""
    import seaborn as sns

    colors = sns.color_palette("colorblind", 10).as_hex()
    return {name: colors[i % len(colors)] for i, name in enumerate(names)}


def line_panels(panels: Sequence[Panel], path: Path) -> Path:
    """Side-by-side panels; each line is the mean over its runs at every x, with a band where n >= 2."""
    from matplotlib.ticker import MaxNLocator

    with _figure(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False) as (fig, axes):
        for ax, panel in zip(axes[0], panels):
            for line in panel.lines:
                xs = sorted({x for run in line.runs for x in run})
                est = [mean_ci([run[x] for run in line.runs if x in run]) for x in xs]
                ax.plot(xs, [100 * e.mean for e in est], color=line.color, linestyle=line.linestyle,
                        linewidth=line.width, marker="o" if len(xs) <= 12 else None, markersize=3, label=line.label)
                band = [(x, e) for x, e in zip(xs, est) if e.half_width is not None]
                if band:  # clipped to the possible range: a t interval over two seeds can be very wide
                    ax.fill_between([x for x, _ in band], [max(0.0, 100 * e.low) for _, e in band],
                                    [min(100.0, 100 * e.high) for _, e in band], color=line.color, alpha=0.12,
                                    linewidth=0)
            ax.set_title(panel.title, fontsize=10)
            ax.set_xlabel(panel.xlabel)
            ax.set_ylabel(panel.ylabel)
            if panel.integer_x:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            axes[0][-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
                               frameon=False)
        return _save(fig, path)


def point_plot(groups: Sequence[tuple[str, str, Sequence[float]]], path: Path, colors: dict[str, str],
               ylabel: str = "final test accuracy (%)", legend: str = "augmentation",
               references: dict[tuple[str, str], float] | None = None) -> Path:
    """One point per (category, hue) with its interval, and each value as a small dot beside it.

    `groups` holds (category on the x axis, hue, values on [0, 1]) in drawing order; `references` a published
    value on [0, 1] per (category, hue), drawn as a cross beside its point."""
    categories = list(dict.fromkeys(c for c, _, _ in groups))
    hues = list(dict.fromkeys(h for _, h, _ in groups))
    step = 0.7 / len(hues)
    with _figure(figsize=(1.6 * len(categories) + 2.4, 3.6)) as (fig, ax):
        labelled = set()
        for category, hue, values in groups:
            x = categories.index(category) + (hues.index(hue) - (len(hues) - 1) / 2) * step
            est = mean_ci(values)
            ax.errorbar([x], [100 * est.mean], yerr=None if est.half_width is None else [[100 * est.half_width]] * 2,
                        fmt="o", color=colors[hue], capsize=4, markersize=6, label=None if hue in labelled else hue)
            labelled.add(hue)
            ax.scatter([x + step * 0.3] * len(values), [100 * v for v in values], s=10, color=colors[hue],
                       alpha=0.6, linewidths=0)
            if (reference := (references or {}).get((category, hue))) is not None:
                ax.scatter([x - step * 0.3], [100 * reference], marker="x", s=28, color=colors[hue])
                if "published" not in labelled:  # one grey legend entry for the crosses of every colour
                    ax.scatter([], [], marker="x", s=28, color="0.35", label="published")
                    labelled.add("published")
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlim(-0.6, len(categories) - 0.4)
        ax.grid(False, axis="x")
        ax.set_ylabel(ylabel)
        ax.legend(title=legend, fontsize=8, title_fontsize=8, frameon=False, loc="center left",
                  bbox_to_anchor=(1.0, 0.5))
        return _save(fig, path)


@contextmanager
def _figure(*args, **kwargs) -> Iterator[tuple]:
    """A new figure on the file-only Agg backend in the suite's one look (seaborn's whitegrid, applied to this
    figure only, never to the caller's global style), closed on the way out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    with plt.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85)}):
        fig, axes = plt.subplots(*args, **kwargs)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def _save(fig, path: Path) -> Path:
    """PNG without the software stamp, so the same numbers give the same bytes on any matplotlib."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path
