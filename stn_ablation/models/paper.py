"""The STN paper's distorted-MNIST models (Jaderberg et al., 2015, section 4.1 and appendix A.1): the CNN and its
ST-CNN twin, for the `paper_mnist` study that sets our errors beside the paper's Table 1.

The paper gives the layers (conv 9x9, max-pool, conv 7x7, max-pool, a fully connected layer to the classes) but
not their filter counts in a form we could retrieve; 32 and 64 are what independent re-implementations of this
CNN use (found through code search, not authoritative) and sit inside the 32-64 range they quote: our choice. The
localization net is the paper's: a 2x max-pool downsampling, two 5x5 convs with 20 filters with a max-pool between
them, a 20-unit layer. Both build for the 1x28x28 (R, P, E) and 1x42x42 (RTS) inputs, and for 3x32x32."""

import torch.nn as nn

from stn_ablation.models.registry import register_variant
from stn_ablation.models.blocks import Shape, SpatialTransformer, STNClassifier, flat_features


class PaperCNN(nn.Module):
    """conv 9x9 (32) -> max-pool -> conv 7x7 (64) -> max-pool -> fully connected to the classes, ReLU after each
    pool. 28x28: 20 -> 10 -> 4 -> 2 pixels per side; 42x42: 34 -> 17 -> 11 -> 5."""

    def __init__(self, in_shape: Shape, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_shape[0], 32, kernel_size=9), nn.MaxPool2d(2), nn.ReLU(True),  # B x 32 x 10 x 10 (28)
            nn.Conv2d(32, 64, kernel_size=7), nn.MaxPool2d(2), nn.ReLU(True),  # B x 64 x 2 x 2 (28)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat_features(self.features, in_shape), num_classes))

    def forward(self, x):
        return self.head(self.features(x))  # B x num_classes


def paper_localization(in_channels: int) -> nn.Sequential:
    """The paper's localization features: 2x downsampled input, two 5x5 convs with 20 filters, a max-pool between.
    28x28: 14 -> 10 -> 5 -> 1 pixels per side; 42x42: 21 -> 17 -> 8 -> 4."""
    return nn.Sequential(
        nn.MaxPool2d(2),
        nn.Conv2d(in_channels, 20, kernel_size=5), nn.MaxPool2d(2), nn.ReLU(True),
        nn.Conv2d(20, 20, kernel_size=5), nn.ReLU(True),
    )


@register_variant("paper_stn", twin="paper_cnn")
def paper_stn(in_shape: Shape = (3, 32, 32), num_classes: int = 10, transform: str = "affine") -> STNClassifier:
    """The STN paper's ST-CNN for distorted MNIST: its localization net (20-unit layer) in front of paper_cnn."""
    return STNClassifier(PaperCNN(in_shape, num_classes),
                         SpatialTransformer(paper_localization(in_shape[0]), in_shape, hidden=20, family=transform))


@register_variant("paper_cnn")
def paper_cnn(in_shape: Shape = (3, 32, 32), num_classes: int = 10) -> STNClassifier:
    """The STN paper's distorted-MNIST CNN (conv 9x9, pool, conv 7x7, pool, fc): the no-STN twin of paper_stn."""
    return STNClassifier(PaperCNN(in_shape, num_classes))
