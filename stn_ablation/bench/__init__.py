"""Bench: the trainer's throughput against a plain PyTorch reference, FLOPs, and concurrent workers."""

from stn_ablation.bench.throughput import run_bench

__all__ = ["run_bench"]
