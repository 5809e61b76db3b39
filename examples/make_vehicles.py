"""Writes the worked example's data set: an ImageFolder tree of a few hundred CIFAR-10 images of vehicles
(airplane, automobile, ship, truck), as PNG files under train/<class>/ and test/<class>/, the layout your own
images would have. It reads CIFAR-10 from $STN_ABLATE_DATA (or --data-root), downloading it where it is absent.

    python examples/make_vehicles.py              # writes examples/data/vehicles/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from stn_ablation.data.datasets import load_dataset

CLASSES = ("airplane", "automobile", "ship", "truck")


def write_tree(out: Path, data_root: str | None = None, train: int = 80, test: int = 25) -> Path:
    """The first `train` training and `test` test images of each class of CLASSES, as out/{train,test}/<class>/."""
    raw = load_dataset("cifar10", data_root)
    for split, x, y, n in (("train", raw.train_x, raw.train_y, train), ("test", raw.test_x, raw.test_y, test)):
        for cls in CLASSES:
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            picked = (y == raw.classes.index(cls)).nonzero().flatten()[:n]
            for i in picked.tolist():
                Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / "vehicles"))
    parser.add_argument("--data-root", help="torchvision data root; default $STN_ABLATE_DATA or a cache folder")
    args = parser.parse_args()
    print(f"wrote {write_tree(Path(args.out), args.data_root)}")
