"""Tracking: MLflow (tracker.py, the only module that imports it) and one tracked run (run.py, imported by path:
it brings torch, which the tracker alone, as the report and the UI use it, does not need)."""

from stn_ablation.tracking.tracker import Tracker, TrackingError

__all__ = ["Tracker", "TrackingError"]
