"""Studies: study files (spec.py), the Optuna worker that runs their trials (worker.py, imported by path: it
brings Optuna and torch, which reading a study file does not need) and the shared storage."""

from stn_ablation.study.spec import StudyFileError, StudySpec, list_studies, load_spec

__all__ = ["StudyFileError", "StudySpec", "list_studies", "load_spec"]
