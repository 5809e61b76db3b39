"""The report's comparisons: each STN against its twin and its frozen control, each augmentation against none,
paired by seed, Holm-corrected across the report; and what each one concludes (its verdict, its agreement with a
published difference). Tables and sentences read them; the parent run's summary metrics come from them too."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from stn_ablation.reporting.published import published_error
from stn_ablation.reporting.results import Study
from stn_ablation.reporting.stats import ALPHA, NO_SPREAD, PairedTest, holm, paired_t


@dataclass(frozen=True)
class Comparison:
    """Treatment cell `a` minus control cell `b` (each (variant, aug)) on final test accuracy, paired by seed, on
    one dataset."""

    label: str
    setting: str
    a: tuple[str, str]
    b: tuple[str, str]
    seeds: list[int]
    test: PairedTest
    holm_p: float | None = None
    dataset: str = ""
    control: str = "twin"  # what `b` is: the STN's twin, its frozen-transform control, or (aug) no augmentation

    @property
    def of_transformer(self) -> bool:
        """An STN against its twin (rather than against its frozen control, or an augmentation against none)."""
        return self.control == "twin"


def comparisons(study: Study) -> list[Comparison]:
    """On each dataset: each STN (each of its transforms) vs its no-STN twin (same augmentation), then each
    augmentation vs none (same model), paired by seed; Holm's correction across all of them."""
    found: list[Comparison] = []
    for dataset, part in study.per_dataset():
        cells = dict(part.cells())

        def pair(label: str, setting: str, a: tuple[str, str], b: tuple[str, str], control: str) -> None:
            if a in cells and b in cells:
                acc_a, acc_b = ({r.seed: r.metrics["final_test_acc"] for r in cells[c]} for c in (a, b))
                seeds = sorted(set(acc_a) & set(acc_b))
                found.append(Comparison(label, setting, a, b, seeds,
                                        paired_t([acc_a[s] for s in seeds], [acc_b[s] for s in seeds]),
                                        dataset=dataset, control=control))

        for model in part.models:
            twin = next((r.tags.get("twin") for r in part.runs if r.model == model and r.stn), None)
            frozen = next((r.model for r in part.runs if twin and r.tags.get("frozen_of") == model.split("/")[0]),
                          None)
            for aug in part.augs if twin else ():
                pair(f"{model} − {twin}", f"aug {aug}", (model, aug), (twin, aug), "twin")
                if frozen:
                    pair(f"{model} − {frozen}", f"aug {aug}", (model, aug), (frozen, aug), "frozen")
        for model in part.models:
            for aug in part.augs:
                if aug != "none":
                    pair(f"{aug} − none", model, (model, aug), (model, "none"), "aug")
    adjusted = holm([c.test.p_value for c in found])
    return [dataclasses.replace(c, holm_p=p) for c, p in zip(found, adjusted)]


def published_difference(c: Comparison) -> float | None:
    """The paper's error of `c.a` minus that of `c.b` on `c.dataset`, in points; None unless it states both (and the
    comparison is without augmentation, as the paper trained)."""
    a, b = (published_error(c.dataset, *cell) for cell in (c.a, c.b))
    return None if a is None or b is None else round(a - b, 6)


def sign(x: float) -> int | None:
    """+1, -1, or 0 within float rounding of zero (NO_SPREAD: one test image is 1e-4 of an accuracy); None for NaN
    (no shared seed, or a NaN accuracy). Zero has no sign: it neither agrees nor disagrees with a published one."""
    if math.isnan(x):
        return None
    return 0 if abs(x) <= NO_SPREAD else 1 if x > 0 else -1


def agreement(c: Comparison, published: float | None) -> str:
    if published is None:
        return "—"
    if not c.test.tested:
        return "no test"
    significant = c.holm_p < ALPHA
    if published == 0:
        return "paper: no difference" + (", ours differs" if significant else "")
    if sign(c.test.diff.mean) == 0:
        return "ours: no difference, no sign"
    same = sign(-c.test.diff.mean) == sign(published)
    return {(True, True): "agrees", (True, False): "same sign, not significant",
            (False, True): "contradicts", (False, False): "opposite sign, not significant"}[same, significant]


def has_nan(c: Comparison) -> bool:
    """Whether an accuracy of `c` is NaN (a run that logged one): its mean difference and p are NaN, not numbers."""
    return c.test.n > 0 and math.isnan(c.test.diff.mean)


def verdict(c: Comparison) -> str:
    if not c.test.tested:
        n = c.test.n
        why = "no shared seed" if n == 0 else "n < 2" if n < 2 else "a NaN accuracy" if has_nan(c) else "no spread"
        return f"no test ({why})"
    return ("significant" if c.holm_p < ALPHA else "not significant") + (", underpowered" * c.test.underpowered)
