"""The PyTorch spatial-transformer tutorial's model, adapted to any input shape, and its no-STN twin."""

from stn_ablation.models.registry import register_variant
from stn_ablation.models.blocks import Shape, SpatialTransformer, STNClassifier, TutorialCNN, tutorial_localization


@register_variant("tutorial_stn", twin="tutorial_cnn")
def tutorial_stn(in_shape: Shape = (3, 32, 32), num_classes: int = 10, transform: str = "affine") -> STNClassifier:
    """PyTorch STN tutorial: 2-conv localization net in front of the tutorial's 2-conv classifier."""
    return STNClassifier(TutorialCNN(in_shape, num_classes),
                         SpatialTransformer(tutorial_localization(in_shape[0]), in_shape, family=transform))


@register_variant("tutorial_cnn")
def tutorial_cnn(in_shape: Shape = (3, 32, 32), num_classes: int = 10) -> STNClassifier:
    """The tutorial's classifier alone: the no-STN twin of tutorial_stn."""
    return STNClassifier(TutorialCNN(in_shape, num_classes))
