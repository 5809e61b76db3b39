"""What decides a run's result, as one hash: the run's identity. Two runs with the same identity log the same
numbers (bit for bit on one kind of CPU), so `run` takes a finished run's result instead of training the cell
again, whichever study or study version trained it."""

from __future__ import annotations

import hashlib
import json

from stn_ablation.config import TrainConfig
from stn_ablation.data.augment import VERSIONS as AUGMENT_VERSIONS
from stn_ablation.data.datasets import DataSplits
from stn_ablation.models.registry import get_variant

# Bump whenever a change alters what the trainer computes (a different number for the same config and data):
# runs of an older version are then never reused. tests/test_numerics.py fails when the numbers move without it.
NUMERICS_VERSION = 1

IDENTITY_TAG = "stn.identity"
NUMERICS_TAG = "numerics_version"


def training_params(cfg: TrainConfig) -> dict:
    """The config as it applies to its variant: a model without a transformer has no localization-net rate and no
    transform family, and only a frozen control has a fixed transform, so their runs are the same whatever a study
    set those to."""
    params = cfg.as_dict()
    variant = get_variant(cfg.variant)
    if not variant.has_transformer:
        params.pop("loc_lr_mult")
        params.pop("transform")
    if not variant.controls:
        params.pop("frozen", None)
    return params


def run_identity(cfg: TrainConfig, data: DataSplits, device_type: str, precision: str) -> str:
    """Hash of the resolved training config, the content of the data (each split's digest, and for a generated set
    the version of the code that generated it), the device type, the autocast precision, NUMERICS_VERSION, and the
    augmentation's own version where it has one (absent otherwise, so other runs keep the identity they had)."""
    payload = {"config": training_params(cfg), "data": data.digests, "device": device_type, "precision": precision,
               "generation": data.generation.get("version"), "numerics": NUMERICS_VERSION}
    if cfg.aug in AUGMENT_VERSIONS:
        payload["augment"] = AUGMENT_VERSIONS[cfg.aug]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
