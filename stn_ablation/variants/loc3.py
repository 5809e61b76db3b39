"""A 3-conv localization net in front of a ~140k-parameter CIFAR CNN, and its no-STN twin."""

from stn_ablation.registry import register_variant
from stn_ablation.variants.blocks import CifarCNN, Shape, SpatialTransformer, STNClassifier, loc3_localization


@register_variant("loc3_stn", twin="loc3_cnn")
def loc3_stn(in_shape: Shape = (3, 32, 32), num_classes: int = 10) -> STNClassifier:
    """3-conv localization net in front of the BN/dilated/depthwise CIFAR CNN with a GAP head."""
    return STNClassifier(CifarCNN(in_shape, num_classes), SpatialTransformer(loc3_localization(in_shape[0]), in_shape))


@register_variant("loc3_cnn")
def loc3_cnn(in_shape: Shape = (3, 32, 32), num_classes: int = 10) -> STNClassifier:
    """The BN/dilated/depthwise CIFAR CNN alone: the no-STN twin of loc3_stn."""
    return STNClassifier(CifarCNN(in_shape, num_classes))
