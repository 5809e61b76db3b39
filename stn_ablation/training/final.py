"""What a finished run is evaluated on after training: the test accuracy of each class, the robustness sweeps and
the transformer's theta statistics. The tracked run logs it; a study re-evaluates a reused run's sweeps with it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from stn_ablation.config import RobustnessConfig, TrainConfig
from stn_ablation.data.datasets import DataSplits
from stn_ablation.device import autocast_dtype, eval_batch_size
from stn_ablation.training.evaluate import score
from stn_ablation.training.robustness import sweep_accuracy, theta_stats


@dataclass(frozen=True)
class FinalEvaluation:
    per_class_test_acc: dict[str, float]  # class name -> test accuracy
    metrics: dict[str, float]  # robust/* (the sweeps) and theta/* (an STN's transforms of the test images)


def evaluation_settings(data: DataSplits, cfg: TrainConfig, precision: str) -> tuple[torch.dtype | None, int]:
    """The autocast dtype and batch size every evaluation of a run uses, on the device its data is on."""
    device = data.test_x.device
    return autocast_dtype(device, precision), eval_batch_size(device, cfg.eval_batch_size)


def final_evaluation(model: nn.Module, cfg: TrainConfig, data: DataSplits, robustness: RobustnessConfig,
                     precision: str) -> FinalEvaluation:
    amp, batch = evaluation_settings(data, cfg, precision)
    test = score(model, data.test_x, data.test_y, data.num_classes, batch, amp)
    return FinalEvaluation(dict(zip(data.classes, test.per_class())),
                           {**robustness_sweeps(model, cfg, data, robustness, precision),
                            **theta_stats(model, data.test_x, batch)})


def robustness_sweeps(model: nn.Module, cfg: TrainConfig, data: DataSplits, robustness: RobustnessConfig,
                      precision: str) -> dict[str, float]:
    """The robustness sweeps' accuracies (`robust/*`) of a trained model: after training, and when a study reuses
    a run whose sweeps were another study's."""
    amp, batch = evaluation_settings(data, cfg, precision)
    return sweep_accuracy(model, data.test_x, data.test_y, robustness, batch, amp)
