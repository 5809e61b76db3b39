"""Variant modules: importing this package registers every model variant."""

from stn_ablation.variants import loc3, paper, tutorial  # noqa: F401
