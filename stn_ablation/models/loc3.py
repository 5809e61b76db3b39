"""The published 78.9% CIFAR-10 STN: a 3-conv localization net in front of a 136,032-parameter dilated/depthwise
CNN (blocks.DilatedDepthwiseCNN), and its no-STN twin."""

from stn_ablation.models.registry import register_variant
from stn_ablation.models.blocks import (DilatedDepthwiseCNN, Shape, SpatialTransformer, STNClassifier,
                                          loc3_localization)


@register_variant("loc3_stn", twin="loc3_cnn")
def loc3_stn(in_shape: Shape = (3, 32, 32), num_classes: int = 10, transform: str = "affine") -> STNClassifier:
    """The published 78.9% model: 3-conv localization net in front of the dilated/depthwise BN CNN with a GAP head.

    Dilation 2 on four of its 3x3 convs and dropout 0.1, as in that model's source (see DilatedDepthwiseCNN)."""
    return STNClassifier(DilatedDepthwiseCNN(in_shape, num_classes),
                         SpatialTransformer(loc3_localization(in_shape[0]), in_shape, family=transform))


@register_variant("loc3_cnn")
def loc3_cnn(in_shape: Shape = (3, 32, 32), num_classes: int = 10) -> STNClassifier:
    """The dilated/depthwise BN CNN alone: the no-STN twin of loc3_stn."""
    return STNClassifier(DilatedDepthwiseCNN(in_shape, num_classes))
