"""Training: the one trainer, its evaluation and the robustness sweeps."""

from stn_ablation.training.train import EpochStats, Hooks, StopRun, TrainResult, train

__all__ = ["EpochStats", "Hooks", "StopRun", "TrainResult", "train"]
