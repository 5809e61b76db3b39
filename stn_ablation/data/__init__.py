"""Data: the official releases, the generated sets made from them, the fixed split and the batch augmentations."""

from stn_ablation.data.datasets import DataError, DataSplits, RawDataset, load_dataset, prepare

__all__ = ["DataError", "DataSplits", "RawDataset", "load_dataset", "prepare"]
