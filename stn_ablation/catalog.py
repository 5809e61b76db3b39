"""Every dataset the suite trains on, each defined once and torch-free: its name, the title a report gives it, its
shape, the per-channel mean and std it is normalized with, whether a mirror keeps its classes, where its files lie,
and, for a set generated from a release (data/distorted.py), the base, the warp family and the settings. The data
package loads and generates from these facts; the report names and describes sets from them without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

GENERATION_VERSION = 2  # of data/distorted.py: part of a generated set's cache file name and record (2: P redraws
# blank views); bump it when a generated set's bytes change, and say why in CHOICES


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str  # how a report names it
    channels: int
    side: int  # pixels per side (a generated set's canvas)
    mean: tuple[float, ...]  # per-channel mean on [0, 1]: published for a release, measured for a generated set
    std: tuple[float, ...]
    mirror_symmetric: bool  # horizontal flips keep the class (true for objects, false for digits)
    folder: str  # its folder under the data root
    layout: str  # what a user must put there, for error messages
    base: str | None = None  # a generated set: the release it is generated from
    family: str | None = None  # a generated set: the transforms family that samples it
    settings: dict = field(default_factory=dict)  # a generated set: its distribution, as recorded

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.side, self.side


def _generated(name: str, title: str, base: str, side: int, family: str, mean: tuple[float, ...],
               std: tuple[float, ...], settings: dict) -> Dataset:
    release = CATALOG[base]
    return Dataset(name, title, release.channels, side, mean, std, release.mirror_symmetric, "distorted",
                   f"{name}-v{GENERATION_VERSION}.pt, generated there from {base} (stn_ablation/data/distorted.py)",
                   base, family, settings)


_RTS = {"rotation_deg": [-45.0, 45.0], "scale": [0.7, 1.2],
        "position": "uniform, keeping the nonzero pixels' box inside the canvas"}
CATALOG: dict[str, Dataset] = {d.name: d for d in (
    Dataset("cifar10", "CIFAR-10", 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
            "cifar-10-batches-py",
            "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} "
            "(the 'python version' from the CIFAR site)"),
    Dataset("mnist", "MNIST", 1, 28, (0.1307,), (0.3081,), False,
            "MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed idx files)"),
)}
# the generated sets; mean and std of their generated training images (GENERATION_VERSION 2)
CATALOG.update({d.name: d for d in (
    _generated("mnist_r", "MNIST R", "mnist", 28, "rts", (0.1306,), (0.2898,), {"rotation_deg": [-90.0, 90.0]}),
    _generated("mnist_rts", "MNIST RTS", "mnist", 42, "rts", (0.0536,), (0.1960,), _RTS),
    _generated("mnist_p", "MNIST P", "mnist", 28, "projective", (0.0916,), (0.2494,),
               {"scale": [0.75, 1.0], "corner_offset_sd_px": 5.0}),
    _generated("mnist_e", "MNIST E", "mnist", 28, "tps", (0.1001,), (0.2590,),
               {"scale": [0.75, 1.0], "control_points": "4x4", "control_offset_sd_px": 1.5}),
    _generated("cifar10_rts", "CIFAR-10 RTS", "cifar10", 48, "rts", (0.4908, 0.4823, 0.4468), (0.1524, 0.1502, 0.1620),
               _RTS),
)})
NAMES = tuple(CATALOG)
GENERATED_SETS = tuple(name for name, d in CATALOG.items() if d.base)


# A user's own data set is named by its kind and path instead: "folder:DIR", an ImageFolder tree, or "npz:FILE";
# data/own.py loads it and measures what the catalog states for these (its channels, side, mean and std).
OWN_KINDS = ("folder", "npz")
OWN_PROVENANCE = "own data"  # its runs' data_provenance: there is no release to check it against
IMAGE_WIDTH_TAG = "image_width"  # a run's tag: its images' width in pixels, which the catalog cannot state for own data


def own_data(name: str) -> tuple[str, str] | None:
    """(kind, path) of a user's own data set ("folder:DIR" or "npz:FILE"); None for any other name."""
    kind, colon, path = name.partition(":")
    return (kind, path) if colon and kind in OWN_KINDS and path else None


def title(name: str) -> str:
    """How a report calls a dataset (MNIST RTS for mnist_rts); its identifier where the catalog has no such set."""
    return CATALOG[name].title if name in CATALOG else name


# What we chose where the paper is not certain: (the generated sets it concerns, the choice). A report on these sets
# prints the choices that concern them; bump GENERATION_VERSION when one changes.
RTS_SETS = ("mnist_rts", "cifar10_rts")
CHOICES: tuple[tuple[tuple[str, ...], str], ...] = (  # (the sets it concerns, the choice)
    (("mnist_r", "mnist_p", "mnist_e"),
     "Canvas: R, P and E stay 28 x 28 (MNIST's own frame; its 20 x 20 digit box, rotated by up to 45 degrees, spans "
     "28.3 px, so only stroke ends reaching the box's corners can leave the frame). Only RTS is enlarged."),
    (GENERATED_SETS,
     "Sampling: bilinear (`grid_sample`, align_corners=False), rounded to uint8. Fill: MNIST's background, 0; for "
     "CIFAR-10 the training set's mean colour, not black: after normalization it is 0, the value the suite's "
     "augmentations and a transformer's own `grid_sample` put outside an image, so the canvas border is no cue that "
     "a model with or without a transformer sees differently, and no black frame marks the object's position and "
     "rotation for free."),
    (("mnist_r", *RTS_SETS),
     "Rotation, scale and position are about the image centre; a positive angle turns the content counter-clockwise "
     "on screen (transforms.rts_theta); scale > 1 enlarges the content."),
    (RTS_SETS,
     "RTS \"random position\": the translation is uniform over the range that keeps the transformed bounding box of "
     "the image's nonzero pixels (for CIFAR-10, in practice the whole frame) inside the canvas, per axis; where the "
     "box is larger than the canvas (CIFAR-10 at large scale and angle) that range is empty and the image is centred "
     "on that axis. Every MNIST digit fits (a 20 px box spans at most 34 px at 45 degrees and scale 1.2)."),
    (("mnist_p",),
     "P: the forward map is exact: after scaling, the frame's four outer corners (not the pixel centres) move by the "
     "offsets, and the sampling homography is solved from those four correspondences. Since version 2 the four offsets "
     "are drawn again where the frame would not show one unfolded view with the digit in it: where the homography's "
     "w is not positive over the whole frame (the plane folds through infinity inside it, as in the 0.3% of draws "
     "whose moved corners make no convex quad) or the input's centre falls outside the frame. That is about 4% of "
     "draws; left alone they make the image blank or nearly so (version 1: 25 of the 10,000 test images blank)."),
    (("mnist_e",),
     "E: the offsets are applied in the sampling direction: output control point k samples the input at "
     "(P_k + n_k) / s. The inverse of a thin-plate spline is no spline, and for symmetric normal offsets the two "
     "directions give the same distribution to first order."),
    (GENERATED_SETS,
     "Determinism: same bytes for the same seed, torch version and CPU; a CPU with other vector instructions may "
     "round a few pixels differently, which the record's `digest` shows."),
)
