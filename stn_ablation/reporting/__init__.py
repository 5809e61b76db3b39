"""Reporting: run records -> results -> comparisons, tables and figures. Reads runs; imports no torch."""

from stn_ablation.reporting.report import write_report

__all__ = ["write_report"]
