"""The sentences that say what a report's numbers mean: each comparison's effect, what carries a transformer's
effect (its frozen control), signs against the paper's and across datasets, the learned transforms in words, a
tuning study's best trial. Pure functions of comparisons and a loaded study: the same runs give the same words."""

from __future__ import annotations

from typing import Any

from stn_ablation.catalog import title
from stn_ablation.reporting.comparisons import Comparison, has_nan, published_difference, sign
from stn_ablation.reporting.numbers import pct, pvalue
from stn_ablation.reporting.results import Run, Study, objective
from stn_ablation.reporting.stats import ALPHA, LEVEL, UNDERPOWERED


AUG_WORDS = {"none": "no augmentation", "standard": "crop+flip", "affine": "rotate/zoom/shift+flip"}


def published_claim_sentence(found: list[Comparison]) -> str | None:
    """How often ours has the published sign (the STN paper: every ST-CNN below its CNN on every distortion), and
    how often significantly; None where no comparison has a published difference."""
    cited = [(c, p) for c in found if c.of_transformer and (p := published_difference(c)) is not None and p != 0]
    if not cited:
        return None
    same = [c for c, p in cited if sign(-c.test.diff.mean) == sign(p)]
    agree = [c for c in same if c.test.tested and c.holm_p < ALPHA]
    against = [c for c, p in cited if sign(-c.test.diff.mean) == -sign(p) and c.test.tested and c.holm_p < ALPHA]
    zero = [c for c, _ in cited if sign(c.test.diff.mean) == 0]
    n = max(c.test.n for c, _ in cited)
    text = (f"Of the {len(cited)} transformer-vs-twin comparisons the paper also reports, ours has the paper's "
            f"sign in {len(same)}, significantly (Holm p < {ALPHA}) in {len(agree)}; {len(against)} "
            f"significantly contradict{'s' * (len(against) == 1)} it.")
    if zero:
        text += f" In {len(zero)} ours is 0, which has no sign: it neither agrees nor disagrees."
    if n < UNDERPOWERED:
        text += (f" With {n} seeds per cell (fewer than {UNDERPOWERED}) a difference of a few tenths of a point "
                 "is rarely significant: a same-sign, not significant row is not evidence against the paper.")
    return text


def sign_sentences(found: list[Comparison], study: Study) -> list[str]:
    """For each transformer comparison run on more than one dataset: its error difference on each, and whether
    the sign changes between them (the question a clean-vs-distorted study asks)."""
    sentences = []
    for label, setting in dict.fromkeys((c.label, c.setting) for c in found if c.of_transformer):
        on = [c for d in study.datasets for c in found
              if (c.label, c.setting, c.dataset) == (label, setting, d) and sign(c.test.diff.mean) is not None]
        if len(on) < 2:
            continue
        signs = {sign(c.test.diff.mean) for c in on if c.test.tested and c.holm_p < ALPHA}
        points = {sign(c.test.diff.mean) for c in on}
        each = ", ".join(f"{-100 * c.test.diff.mean:+.2f} on {title(c.dataset)}"
                         + (" (significant)" if c.test.tested and c.holm_p < ALPHA else "") for c in on)
        zero = ", ".join(title(c.dataset) for c in on if sign(c.test.diff.mean) == 0)
        verdict = ("the sign changes, significantly on both sides" if len(signs) == 2 else
                   "the point estimates change sign" if {-1, 1} <= points else
                   "the sign is the same on every dataset" if not zero else
                   f"it is 0 on {zero}, which has no sign" + ("; the sign is the same on the others" * (points != {0})))
        sentences.append(f"**{label}, {setting}**: error difference in points {each}: {verdict}.")
    return sentences


def effect_sentence(c: Comparison) -> str:
    """What a reader can do with one comparison, in words."""
    d, n = c.test.diff, c.test.n
    same_aug = c.a[1] == c.b[1]
    a, b = (c.a[0], c.b[0]) if same_aug else (AUG_WORDS.get(c.a[1], c.a[1]), AUG_WORDS["none"])
    where = f"with {AUG_WORDS.get(c.a[1], c.a[1])}" if same_aug else f"for {c.a[0]}"
    head = f"**{a} vs {b}, {where}** ({n} paired seed{'s' * (n != 1)})"
    if has_nan(c):
        return f"{head}: an accuracy is NaN, so the difference is undefined and no test is possible."
    if not c.test.tested:
        why = ("the two cells share no seed, so no test is possible" if n == 0 else "no test is possible" if n < 2
               else "every seed gives the same difference: there is no spread to test")
        return f"{head}: {why}; run at least {UNDERPOWERED} seeds per cell before drawing any conclusion."
    effect = (f"{100 * d.mean:+.2f} points ({LEVEL:.0%} CI {100 * d.low:+.2f} to {100 * d.high:+.2f}, "
              f"Holm p = {pvalue(c.holm_p)})")
    if c.holm_p < ALPHA:
        better = d.mean > 0
        text = f"{a} minus {b} is {effect}: {'prefer ' + a if better else b + ' is the better choice'} here"
        if c.test.underpowered:
            text += (f"; but with {n} seeds (fewer than {UNDERPOWERED}) the test is underpowered: confirm with more "
                     "seeds before relying on it")
    else:
        text = (f"{a} minus {b} is {effect}, not distinguishable from seed-to-seed noise; differences up to "
                f"{100 * max(abs(d.low), abs(d.high)):.1f} points either way are not ruled out")
        if c.test.underpowered:
            text += (f". With {n} seeds (fewer than {UNDERPOWERED}) the test is underpowered: add seeds before "
                     "concluding")
    return f"{head}: {text}."


def control_sentence(found: list[Comparison], c: Comparison) -> str | None:
    """For an STN against its frozen-transform control `c`: which of the two, the learned transformer or one fixed
    transform of the view, carries the STN's difference from its twin. None without the matching STN − twin test."""
    twin = next((t for t in found if t.of_transformer and (t.dataset, t.a) == (c.dataset, c.a)), None)
    if twin is None or not (twin.test.tested and c.test.tested):
        return None

    def said(t: Comparison) -> str:
        return f"{100 * t.test.diff.mean:+.2f} points (Holm p = {pvalue(t.holm_p)})"
    head = (f"**What carries the transformer's effect, {c.a[0]} with {AUG_WORDS.get(c.a[1], c.a[1])}**: it differs "
            f"from its twin by {said(twin)} and from its frozen control, the twin behind the STN's mean learned "
            f"transform held fixed, by {said(c)}")
    if c.holm_p < ALPHA and c.test.diff.mean > 0:
        verdict = "the learned, per-image transform adds to what one fixed transform gives"
    elif twin.holm_p < ALPHA and twin.test.diff.mean > 0:
        verdict = ("the fixed transform alone accounts for it as far as these seeds tell: the learned one adds "
                   "nothing measurable over it")
    else:
        verdict = "neither difference is significant after Holm's correction: these seeds cannot say"
    return f"{head}: {verdict}."


def frozen_sentences(study: Study) -> list[str]:
    """Which fixed transform each frozen control's runs trained behind, and where it came from."""
    said = []
    for (model, aug), runs in study.cells():
        if not runs[0].tags.get("frozen_of"):
            continue
        for spec, source in sorted({(r.params.get("frozen", "?"), r.tags.get("frozen_source", "")) for r in runs}):
            origin, _, ids = source.partition(": ")
            short = ", ".join(i[:8] for i in ids.split(", ")) if ids else ""
            said.append(f"**{model}, {AUG_WORDS.get(aug, aug)}**: `{spec}`"
                        + (f", the {origin} ({short})" if origin else ", as the study file sets it")
                        + f"; runs {', '.join(r.short for r in runs)}.")
    return said


def theta_sentence(row: dict[str, Any], width: int | None) -> str:
    """What one row of the transform table means, in words, in its family's terms: scale and rotation where the
    family has them, perspective for projective, control-point displacement and mean offset for tps, and the
    shift of its view for the others: in pixels of an image `width` wide, in half-widths where that is unknown."""
    half, unit = (width / 2, "pixels") if width else (1, "half-widths")
    parts = []
    if (s := row.get("scale_mean")) is not None:
        rot = row["rotation_deg_mean"]
        parts.append(f"zooms in (scale {s:.2f}: it looks at about the central {s:.0%} of the image's width)"
                     if s < 0.97 else f"zooms out (scale {s:.2f}: it also sees the zero padding beyond the borders)"
                     if s > 1.03 else f"keeps the scale ({s:.2f})")
        parts.append(f"rotates by {rot:+.1f}°" if abs(rot) >= 3 else f"hardly rotates ({rot:+.1f}°)")
    if (px := row.get("px_mean")) is not None:
        parts.append(f"tilts its view in perspective by ({px:+.3f}, {row['py_mean']:+.3f}) (x, y; 0 for an affine "
                     "map)")
    digits = 1 if width else 3
    shift = f"({row['tx_mean'] * half:+.{digits}f}, {row['ty_mean'] * half:+.{digits}f}) {unit} (x, y)"
    if (moved := row.get("displacement_mean")) is not None:  # tps: tx, ty are the control points' mean offset
        parts += [f"moves its control points by {moved * half:.{digits}f} {unit} on average",
                  f"offsets them by {shift} in the mean (a mean of offsets, not a translation of its view)"]
    else:
        parts.append(f"shifts its view by {shift}")
    dist = row["identity_dist_mean"]
    close = " It stays close to the identity: the transformer barely transforms." if dist < 0.05 else ""
    return (f"**{row['variant']}, {AUG_WORDS.get(row['aug'], row['aug'])}**: on average the transformer "
            f"{', '.join(parts[:-1])} and {parts[-1]}; distance from the identity {dist:.3f}.{close}")


def best_trial_sentence(best: Run, finished: int) -> str:
    """What a tuning study's best trial (of `finished` finished trials) shows, and why its test accuracy is not yet
    an estimate."""
    return (f"Trial {best.trial} (run `{best.id}`) reached the highest validation accuracy after its last epoch "
            f"(the value Optuna maximized), {pct(objective(best))}, of {finished} finished trials. "
            f"Its test accuracy, {pct(best.metrics.get('final_test_acc'))}, is "
            f"optimistic because it was picked as the best of {finished}: it is an estimate only after this "
            "config is confirmed with fresh seeds (put the values below in a grid study's `[train]` table with, "
            "e.g., `seed = [1, 2, 3, 4, 5]`).")
