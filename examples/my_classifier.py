"""Your own classifier, made known to stn-ablate: a small residual CNN, registered by one decorator. The registry
builds its STN variants (`small_resnet+stn`, `small_resnet+stn_loc3`) and its frozen control from it; nothing else
in this file knows about spatial transformers. Used as a plugin: `plugins = ["my_classifier"]` in a study file
beside it, or `stn-ablate list --plugin my_classifier` from this folder."""

import torch.nn as nn

import stn_ablation


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with a skip connection (a 1x1 conv where the width or the stride changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return (self.body(x) + self.skip(x)).relu()


class SmallResNet(nn.Module):
    """A stem conv, three residual stages (16, 32, 64 channels; the last two halve the size), global average
    pooling and a linear layer: any image size, any number of channels and classes."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            ResidualBlock(16, 16), ResidualBlock(16, 32, stride=2), ResidualBlock(32, 64, stride=2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.features(x))  # B x num_classes


@stn_ablation.register_classifier("small_resnet")
def small_resnet(in_shape, num_classes):
    """A small residual CNN (3 stages, 16-64 channels), the example's own classifier."""
    return SmallResNet(in_shape[0], num_classes)
