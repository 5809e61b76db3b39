"""Model code shared by every variant: classifiers, localization nets, the spatial transformer, and the one family
class that puts an optional transformer in front of a classifier."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from stn_ablation import transforms

Shape = tuple[int, int, int]  # C x H x W of one input image
INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # bytes per element -> integer dtype


def flat_features(module: nn.Module, in_shape: Shape) -> int:
    """Number of features `module` produces for one image of `in_shape`, found by a dry run in eval mode (no
    dropout, so no random numbers drawn), so the same layers build for 3x32x32 CIFAR and 1x28x28 MNIST."""
    training = module.training
    with torch.no_grad():
        out = module.eval()(torch.zeros(1, *in_shape))
    module.train(training)
    return out.flatten(1).shape[1]


class SpatialTransformer(nn.Module):
    """Localization net -> the parameters of a transformation family -> sampling grid -> `grid_sample`
    (Jaderberg et al., 2015). The family (transforms.FAMILIES: affine by default, as in the paper) decides how many
    parameters the regressor outputs and how they become a grid; `transforms.warp` samples, in fp32.

    The regressor's last layer starts at zero weight and the family's identity as bias, so at initialization the
    transformer returns its input unchanged and the classifier first learns on undistorted images.
    """

    def __init__(self, features: nn.Module, in_shape: Shape, hidden: int = 32, family: str = "affine"):
        super().__init__()
        self.family = transforms.family(family)
        self.features = features
        self.regressor = nn.Sequential(
            nn.Linear(flat_features(features, in_shape), hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, self.family.n_params),
        )
        nn.init.zeros_(self.regressor[-1].weight)
        with torch.no_grad():
            self.regressor[-1].bias.copy_(torch.tensor(self.family.identity))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The family's raw parameters, B x n (for affine: the 2 x 3 matrix, row-major, in `affine_grid`'s
        normalized [-1, 1] coordinates)."""
        return self.regressor(self.features(x).flatten(1))

    def warp(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return transforms.warp(x, theta, self.family)  # B x C x H x W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.warp(x, self.theta(x))

    def extra_repr(self) -> str:
        return f"family={self.family.name}"


class FixedTransform(nn.Module):
    """One transform, the same for every image and never learned, where a spatial transformer would be: the control
    that tells a learned transformer's effect from that of a fixed rescale or shift of the view."""

    def __init__(self, family: str, params: tuple[float, ...]):
        super().__init__()
        self.family = transforms.family(family)
        self.register_buffer("params", torch.tensor(params, dtype=torch.float32).view(1, -1))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed parameters for each image of `x`, B x n, as SpatialTransformer.theta gives its learned ones."""
        return self.params.expand(x.shape[0], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return transforms.warp(x, self.theta(x), self.family)

    def extra_repr(self) -> str:
        return f"family={self.family.name}, params={tuple(round(v, 4) for v in self.params[0].tolist())}"


class STNClassifier(nn.Module):
    """A classifier with an optional spatial transformer in front: the one family class of every variant.

    The classifier is built before the transformer, so an STN variant and its no-STN twin built after the same
    `torch.manual_seed` have bit-identical classifier weights: the ablation changes one thing only.
    """

    def __init__(self, classifier: nn.Module, transformer: nn.Module | None = None):
        super().__init__()
        self.classifier = classifier
        self.stn = transformer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stn is not None:
            x = self.stn(x)
        return self.classifier(x)  # B x num_classes logits


def tutorial_localization(in_channels: int) -> nn.Sequential:
    """The PyTorch STN tutorial's localization features (7x7 and 5x5 convs, each pooled)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=7), nn.MaxPool2d(2), nn.ReLU(True),  # B x 8 x 13 x 13 (CIFAR)
        nn.Conv2d(8, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(True),  # B x 10 x 4 x 4
    )


def loc3_localization(in_channels: int) -> nn.Sequential:
    """A deeper localization stem: two 3x3 convs before the tutorial's 7x7 (as in the 78.9% reference model)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, kernel_size=3), nn.Conv2d(8, 8, kernel_size=3),  # B x 8 x 28 x 28
        nn.Conv2d(8, 8, kernel_size=7), nn.MaxPool2d(2), nn.ReLU(True),  # B x 8 x 11 x 11
        nn.Conv2d(8, 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(True),  # B x 10 x 3 x 3
    )


LOCALIZATION_SIDE = 32  # pixels per side the tutorial's and loc3's localization nets were designed for (CIFAR-10)


def sized_localization(stem: Callable[[int], nn.Sequential], in_shape: Shape) -> nn.Sequential:
    """`stem`'s localization net (tutorial_localization, loc3_localization) for images of any size: it sees them
    average-pooled to 32 x 32, the size its layers were made for (a 32 x 32 input is left as it is), so it has the
    same layers for every input; the transform it regresses warps the full-size image."""
    resize = [] if in_shape[1:] == (LOCALIZATION_SIDE,) * 2 else [nn.AdaptiveAvgPool2d(LOCALIZATION_SIDE)]
    return nn.Sequential(*resize, *stem(in_shape[0]))  # B x C x 32 x 32 -> the stem's features


class TutorialCNN(nn.Module):
    """The PyTorch STN tutorial's classifier: two 5x5 convs, Dropout2d, two fully connected layers."""

    def __init__(self, in_shape: Shape, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], 10, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(True),  # B x 10 x 14 x 14
            nn.Conv2d(10, 20, kernel_size=5), nn.Dropout2d(), nn.MaxPool2d(2), nn.ReLU(True),  # B x 20 x 5 x 5
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat_features(self.features, in_shape), 50), nn.ReLU(True),
            nn.Dropout(), nn.Linear(50, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DilatedConv2d(nn.Conv2d):
    """A dilated convolution with "same" padding (dilation x (kernel // 2)). With stride equal to the dilation it
    runs as the undilated kernel over every d-th row and column, exactly the same sums and faster; otherwise, under
    CPU autocast, channels-first, because oneDNN's bf16 dilated kernel in channels_last returns wrong weight
    gradients (tests/test_registry.py checks it against fp32). The README's "Performance" has the measurements."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding != tuple(d * (k // 2) for d, k in zip(self.dilation, self.kernel_size)):
            raise ValueError(f"DilatedConv2d needs padding dilation * (kernel // 2), got {self.padding}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == self.dilation:
            every_dth = F.avg_pool2d(x, 1, self.stride)  # B x C_in x ceil(H / d) x ceil(W / d)
            return F.conv2d(every_dth, self.weight, self.bias, 1, tuple(k // 2 for k in self.kernel_size), 1,
                            self.groups)
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        out = self._conv_forward(x.contiguous(), self.weight.contiguous(), self.bias)  # B x C_out x H x W
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def keep_mask(n: int, p: float) -> torch.Tensor:
    """`n` booleans, each True with probability 1 - p rounded to a multiple of 2**-32, independently: a uniform 32-bit
    word from numpy's SFC64 per element, kept at or above the p-quantile, the generator seeded by one draw from
    torch's default generator so that seeds and checkpoints keep runs repeatable; cheaper than torch's draws."""
    seed = int(torch.randint(2**63 - 1, ()))
    words = np.random.SFC64(seed).random_raw((n + 1) // 2).view(np.int32)[:n]
    return torch.from_numpy(words >= -2**31 + round(p * 2**32))  # words are uniform on [-2**31, 2**31)


class Dropout(nn.Module):
    """Element-wise dropout with `nn.Dropout`'s inverted scaling and, on the CPU, a cheaper mask: `nn.Dropout` draws
    one Bernoulli number per element from a serial generator there, so the mask comes from `keep_mask` and its two
    values are built as integer bit patterns viewed as x's dtype. Other devices keep PyTorch's fused kernel."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))):
            x = x.contiguous()  # the mask is laid out like x's memory, which must be dense
        bits = INT_OF_SIZE[x.element_size()]  # an integer dtype as wide as x's
        scale_bits = int(torch.tensor(1 / (1 - self.p), dtype=x.dtype).view(bits))
        scale = keep_mask(x.numel(), self.p).to(bits).mul_(scale_bits).view(x.dtype)
        return x * scale.as_strided(x.shape, x.stride())  # the mask in x's memory layout

    def extra_repr(self) -> str:
        return f"p={self.p}"


def conv_bn(c_in: int, c_out: int, kernel: int = 3, *, stride: int = 1, dilation: int = 1, groups: int = 1,
            dropout: float = 0.0) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU -> optional dropout."""
    conv = DilatedConv2d if dilation > 1 else nn.Conv2d
    layers = [
        conv(c_in, c_out, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
             groups=groups, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    ]
    if dropout:
        layers.append(Dropout(dropout))
    return nn.Sequential(*layers)


class DilatedDepthwiseCNN(nn.Module):
    """The classifier of the published 78.9% CIFAR-10 STN ("DDilate"), layer for layer: 136,032 parameters of 3x3,
    1x1, depthwise, grouped and dilated convolutions without bias, each 3x3 conv followed by BatchNorm, ReLU and
    dropout, two stride-2 convs instead of pooling (32 -> 16 -> 8), and a 1x1 conv to the classes before global
    average pooling (no fully connected layer). Channels (and size) per 3x3 conv for a 3 x 32 x 32 input:

        3 -> 24, 24 -> 24 (32x32); 24 -> 24 stride 2 (16x16); 1x1, then 24 -> 24; 24 depthwise;
        24 -> 24 stride 2 in 12 groups (8x8); 1x1 to 48, then 48 -> 48; 48 depthwise;
        1x1 to 96, then 96 -> 96; 96 -> 96 in 12 groups; 1x1 to 10 classes, averaged over the 8x8 positions

    The published layer table gives every parameter count and output shape but neither the dilations nor the
    dropout rate. Both follow the public source of that model (class `CIFARModelDDilate`, which matches the table):
    dilation 2 on the two stride-2 convs, on the 48 -> 48 conv and on the 48-channel depthwise conv (with padding
    2, so every output shape is the table's), and dropout 0.1 after every BatchNorm-ReLU. The 1x1 conv before the
    24 -> 24, 48 -> 48 and 96 -> 96 3x3 convs has no normalization or activation after it, as in that source.
    The global average pool is adaptive, so the same layers build for MNIST's 1 x 28 x 28 (28 -> 14 -> 7)."""

    def __init__(self, in_shape: Shape, num_classes: int, dropout: float = 0.1):
        super().__init__()
        d = dropout
        pointwise = lambda c_in, c_out: nn.Conv2d(c_in, c_out, 1, bias=False)  # noqa: E731
        self.features = nn.Sequential(
            conv_bn(in_shape[0], 24, dropout=d), conv_bn(24, 24, dropout=d),  # B x 24 x 32 x 32
            conv_bn(24, 24, stride=2, dilation=2, dropout=d),  # B x 24 x 16 x 16
            pointwise(24, 24), conv_bn(24, 24, dropout=d),
            conv_bn(24, 24, groups=24, dropout=d),  # depthwise
            conv_bn(24, 24, stride=2, dilation=2, groups=12, dropout=d),  # B x 24 x 8 x 8
            pointwise(24, 48), conv_bn(48, 48, dilation=2, dropout=d),  # B x 48 x 8 x 8
            conv_bn(48, 48, dilation=2, groups=48, dropout=d),  # depthwise
            pointwise(48, 96), conv_bn(96, 96, dropout=d),  # B x 96 x 8 x 8
            conv_bn(96, 96, groups=12, dropout=d),
        )
        self.head = nn.Sequential(pointwise(96, num_classes), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # B x num_classes
