"""The PyTorch tutorial's way to feed and train a CIFAR-10 model, kept only as the baseline `bench` measures the
trainer against: PIL images through `transforms.Compose`, a multi-process `DataLoader`, a per-batch loop that
reads the loss back every step, fp32 and the default NCHW layout (the tutorial uses no autocast). Nothing else in
the suite uses it; it is written the tutorial's way on purpose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from stn_ablation.config import REFERENCE_AUGMENTATIONS
from stn_ablation.device import usable_cores
from stn_ablation.errors import ConfigError

TUTORIAL_BATCH = 64  # images per step, the tutorial's DataLoader batch size
TUTORIAL_WORKERS = 4  # DataLoader worker processes in the tutorial; see loader_workers
TUTORIAL_LR = 0.01  # plain SGD learning rate per step, as in the tutorial


class PILImages(Dataset):
    """uint8 images served one PIL image at a time through `transform`, as torchvision's CIFAR10 serves them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: transforms.Compose):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # N x H x W x C uint8, CIFAR10.data's layout
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def tutorial_transform(aug: str, mean: tuple[float, ...], std: tuple[float, ...]) -> transforms.Compose:
    """The tutorial's Compose: "standard" adds the 4-pixel random crop and the flip in front of ToTensor+Normalize."""
    if aug not in REFERENCE_AUGMENTATIONS:
        raise ConfigError(f"the reference pipeline has no {aug!r} augmentation; use none or standard")
    augmentation = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    return transforms.Compose([*(augmentation if aug == "standard" else []), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])


def tutorial_loader(images: torch.Tensor, labels: torch.Tensor, aug: str, mean: tuple[float, ...],
                    std: tuple[float, ...], *, train: bool) -> DataLoader:
    """A DataLoader over uint8 N x C x H x W `images` (on the CPU): shuffled with augmentation for training,
    plain ToTensor+Normalize in order for evaluation."""
    transform = tutorial_transform(aug if train else "none", mean, std)
    return DataLoader(PILImages(images, labels, transform), batch_size=TUTORIAL_BATCH, shuffle=train,
                      num_workers=loader_workers())


def loader_workers() -> int:
    """The tutorial's 4 DataLoader workers, but no more than the cores this process may run on: 2 on the 2-core
    machine of the README's numbers. Decoding and transforming images is CPU work, so workers beyond the cores
    cannot feed batches faster; they only take turns with the training loop on the same cores."""
    return min(TUTORIAL_WORKERS, usable_cores())


def tutorial_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=TUTORIAL_LR)


@dataclass(frozen=True)
class Timed:
    images: int  # images processed
    seconds: float  # wall time from the first batch's arrival to the end of the last processed batch

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def train_for(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device,
              seconds: float, max_batches: int | None = None) -> Timed:
    """The tutorial's training loop over (at most) one pass of `loader`, stopped after the batch that crosses
    `seconds`. The clock starts when the first batch arrives: worker start-up is not charged to the reference, so
    the comparison can only favour it."""
    model.train()
    running_loss, images, start = 0.0, 0, None
    for i, (x, y) in enumerate(loader):
        start = start if start is not None else time.perf_counter()
        x, y = x.to(device), y.to(device)  # B x C x H x W, B
        optimizer.zero_grad()
        output = model(x)  # B x num_classes
        loss = F.cross_entropy(output, y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # the tutorial's per-step read-back: a host sync every step
        images += len(y)
        if time.perf_counter() - start >= seconds or (max_batches is not None and i + 1 >= max_batches):
            break
    return Timed(images, time.perf_counter() - start if start is not None else 0.0)


@torch.no_grad()
def evaluate_for(model: nn.Module, loader: DataLoader, device: torch.device, seconds: float,
                 max_batches: int | None = None) -> Timed:
    """The tutorial's test loop (summed loss and correct count read back every batch), timed like `train_for`."""
    model.eval()
    test_loss, correct, images, start = 0.0, 0, 0, None
    for i, (x, y) in enumerate(loader):
        start = start if start is not None else time.perf_counter()
        x, y = x.to(device), y.to(device)
        output = model(x)  # B x num_classes
        test_loss += F.cross_entropy(output, y, reduction="sum").item()
        correct += (output.argmax(1) == y).sum().item()
        images += len(y)
        if time.perf_counter() - start >= seconds or (max_batches is not None and i + 1 >= max_batches):
            break
    return Timed(images, time.perf_counter() - start if start is not None else 0.0)
