"""A user's own data set as a RawDataset: an ImageFolder tree (`folder:DIR`, a class per folder, named by it) or an
.npz file of uint8 images and integer labels (`npz:FILE`, Keras's names: x_train, y_train, x_test, y_test, and
optionally `classes`). Any number of classes and channels, one square size (the images' own, or `image_size`);
its mean and std are measured on its training images, as the catalog states them for the releases."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stn_ablation.catalog import OWN_PROVENANCE, Dataset, own_data
from stn_ablation.data.releases import DataError, RawDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
TEST_FRACTION = 0.2  # held out as the test split when the data has none (no test/ folder, no x_test)
ORDER_SEED = 20150605  # the fixed shuffle of each split (and of the held-out test images): any prefix mixes classes


def load_own(name: str, image_size: int | None = None) -> RawDataset:
    """Own data set `name` ("folder:DIR" or "npz:FILE", a relative path from the current folder), resized to
    `image_size` a side where given; cached per process by its resolved path."""
    kind, path = own_data(name)
    return _load(name, kind, Path(path).expanduser().resolve(), image_size)


@functools.lru_cache(maxsize=4)
def _load(name: str, kind: str, path: Path, image_size: int | None) -> RawDataset:
    splits, classes = (_read_tree if kind == "folder" else _read_npz)(name, path)
    if "test" not in splits:
        x, y = splits.pop("train")
        order = _order(len(y))
        n_test = max(1, round(TEST_FRACTION * len(y)))
        splits = {"train": ([x[i] for i in order[n_test:]], y[order[n_test:]]),
                  "test": ([x[i] for i in order[:n_test]], y[order[:n_test]])}
    (train_x, train_y), (test_x, test_y) = (_one_size(name, *splits[s], image_size) for s in ("train", "test"))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{name}: training images are {_shape(train_x)} but test images {_shape(test_x)}: set "
                        "image_size to give them one size")
    scaled = train_x.float().div_(255)
    mean, std = scaled.mean((0, 2, 3)), scaled.std((0, 2, 3), unbiased=False)
    channels, side = train_x.shape[1], train_x.shape[2]
    spec = Dataset(name, name, channels, side, tuple(round(v, 4) for v in mean.tolist()),
                   tuple(round(max(v, 1e-3), 4) for v in std.tolist()), False, str(path), _LAYOUT[kind])
    return RawDataset(name, train_x, train_y, test_x, test_y, classes, OWN_PROVENANCE, str(path), spec=spec)


_LAYOUT = {"folder": "DIR/<class>/<image>.png (or DIR/train/<class>/... and DIR/test/<class>/...)",
           "npz": "x_train (uint8, N x H x W or N x H x W x C), y_train (integers from 0), optionally x_test, y_test "
                  "and classes (names)"}


def _order(n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(ORDER_SEED))


def _shape(x: torch.Tensor) -> str:
    return " x ".join(map(str, x.shape[1:]))


def _read_tree(name: str, root: Path) -> tuple[dict, tuple[str, ...]]:
    """{split: (images C x H x W, labels)} of an ImageFolder tree, with test/ beside train/ where both exist."""
    if not root.is_dir():
        raise DataError(f"{name}: no folder {root}; make it an ImageFolder tree: {_LAYOUT['folder']}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        (train, classes), (test, test_classes) = _read_classes(name, root / "train"), _read_classes(name, root / "test")
        if classes != test_classes:
            raise DataError(f"{name}: train/ has classes {', '.join(classes)} but test/ has "
                            f"{', '.join(test_classes)}: give both the same class folders")
        return {"train": train, "test": test}, classes
    images, classes = _read_classes(name, root)
    return {"train": images}, classes


def _read_classes(name: str, folder: Path) -> tuple[tuple[list[torch.Tensor], torch.Tensor], tuple[str, ...]]:
    from PIL import Image

    classes = tuple(sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise DataError(f"{name}: no class folders in {folder}: put each class's images in {folder}/<class>/")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(f for f in (folder / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{name}: class folder {folder / cls} has no images ({', '.join(IMAGE_SUFFIXES)}): add "
                            "some or remove the folder")
        files += found
        labels += [label] * len(found)
    modes = set()
    for f in files:  # the headers first: a tree of grey images keeps one channel, any other is read as RGB
        with Image.open(f) as im:
            modes.add(im.mode)
    mode = "L" if modes <= {"1", "L"} else "RGB"
    images = []
    for f in files:
        with Image.open(f) as im:
            pixels = np.array(im.convert(mode))  # a writable copy for torch
        images.append(torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1))  # C x H x W
    return (images, torch.tensor(labels)), classes


def _read_npz(name: str, path: Path) -> tuple[dict, tuple[str, ...]]:
    """{split: (images N x C x H x W, labels)} of an .npz file, checked: uint8 images, labels in range."""
    if not path.is_file():
        raise DataError(f"{name}: no file {path}; write one with numpy.savez: {_LAYOUT['npz']}")
    with np.load(path, allow_pickle=False) as npz:
        arrays = dict(npz)
    if "x_train" not in arrays or "y_train" not in arrays or ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{name}: holds {', '.join(arrays) or 'nothing'}; it needs {_LAYOUT['npz']}")
    names = tuple(str(c) for c in arrays["classes"]) if "classes" in arrays else None
    splits = {}
    for split in ("train", "test"):
        if f"x_{split}" not in arrays:
            continue
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise DataError(f"{name}: x_{split} is {x.dtype} of shape {x.shape}; it must be uint8 images, N x H x W "
                            "or N x H x W x C")
        if not len(x):
            raise DataError(f"{name}: x_{split} holds no images; drop x_{split} and y_{split} or fill them")
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise DataError(f"{name}: y_{split} is {y.dtype} of shape {y.shape}; it must be {len(x)} integer labels")
        x = torch.from_numpy(x if x.ndim == 4 else x[..., None]).permute(0, 3, 1, 2).contiguous()
        splits[split] = (x, torch.from_numpy(y.astype(np.int64)))
    labels = torch.cat([y for _, y in splits.values()])
    n_classes = len(names) if names is not None else int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= n_classes:
        raise DataError(f"{name}: labels out of range ({int(labels.min())} to {int(labels.max())}); they must lie in "
                        f"0 to {n_classes - 1}" + (f", one per name in classes ({n_classes})" if names else ""))
    return splits, names or tuple(str(k) for k in range(n_classes))


def _one_size(name: str, images, labels: torch.Tensor, image_size: int | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N x C x S x S uint8, labels) in the fixed shuffled order: resized to `image_size` where given (bilinear,
    antialiased), else the images' own size, which must be one square size."""
    sizes = sorted({tuple(x.shape[-2:]) for x in images})
    if image_size is None and (len(sizes) > 1 or sizes[0][0] != sizes[0][1]):
        shown = ", ".join(f"{w}x{h}" for h, w in sizes[:3]) + (", ..." if len(sizes) > 3 else "")  # width x height
        raise DataError(f"{name}: images are not one square size ({shown}): set image_size (a study's [train], or "
                        "--image-size) to resize them all")
    order = _order(len(labels))
    x = torch.stack([images[i] for i in order]) if image_size is None else torch.stack(
        [_resize(images[i], image_size) for i in order])
    return x, labels[order]


def _resize(image: torch.Tensor, side: int) -> torch.Tensor:
    if image.shape[-2:] == (side, side):
        return image
    out = F.interpolate(image[None].float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)
