"""The trainer's numbers are guarded by NUMERICS_VERSION: `run` reuses a finished run whose identity (config, data,
device, precision, numerics version) equals a cell's, so a change that moves the numbers without bumping the
version would let old runs stand in for new ones.

WHEN THIS TEST FAILS: a change altered what the trainer computes. If that was meant (a fix, a new default), bump
`NUMERICS_VERSION` in stn_ablation/tracking/identity.py and record the new fingerprints with
`STN_ABLATE_RECORD_NUMERICS=1 pytest tests/test_numerics.py` (commit tests/numerics.json); earlier runs are then
never reused. If it was not meant (a refactor), find what moved the numbers.

The exact digest is recorded per kind of CPU (instruction set, native bf16 or not, torch release): another kind
rounds differently in the last bits. On a kind with no record the test still compares a coarse fingerprint (loss and
accuracies, to tolerances far above rounding and far below what a changed trainer moves) and says that the exact
check did not run; the record for that kind is added as above.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from stn_ablation.config import TrainConfig
from stn_ablation.device import cpu_has_native_bf16
from stn_ablation.tracking.identity import NUMERICS_VERSION
from stn_ablation.models.registry import build_model
from stn_ablation.training.train import train

RECORD = Path(__file__).with_name("numerics.json")
CONFIG = TrainConfig(variant="tutorial_stn", epochs=1, batch_size=64, subset=384, val_size=256)
LOSS_TOLERANCE = 2e-3  # a kind of CPU moves the loss by about 1e-6 here; a changed recipe by far more than 1e-2
ACC_TOLERANCE = 3 / 256  # three images of the 256 evaluated


def cpu_kind() -> str:
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"torch {torch.__version__.split('+')[0]}, {torch.backends.cpu.get_cpu_capability()}, {bf16}"


def fingerprint(data, precision: str) -> dict:
    """The trained weights' digest and the epoch's loss and accuracies, for CONFIG on `data`."""
    result = train(build_model(CONFIG, data.in_shape, data.num_classes), CONFIG, data, torch.device("cpu"),
                   precision=precision)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    stats = result.history[-1]
    return {"digest": digest.hexdigest()[:24], "train_loss": stats.train_loss, "train_acc": stats.train_acc,
            "val_acc": stats.val_acc, "test_acc": stats.test_acc}


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_the_trainers_numbers_match_the_recorded_numerics_version(small_cifar, shrink, precision):
    data = shrink(small_cifar, CONFIG.subset, 256)
    now = fingerprint(data, precision)
    record = json.loads(RECORD.read_text())
    if os.environ.get("STN_ABLATE_RECORD_NUMERICS") == "1":
        if record["numerics_version"] != NUMERICS_VERSION:
            record = {"numerics_version": NUMERICS_VERSION, "coarse": {}, "exact": {}}
        record["coarse"].setdefault(precision, now)
        record["exact"].setdefault(cpu_kind(), {})[precision] = now["digest"]
        RECORD.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"recorded the {precision} fingerprint for {cpu_kind()} in {RECORD.name}")
    assert record["numerics_version"] == NUMERICS_VERSION, (
        f"{RECORD.name} records numerics version {record['numerics_version']}, the code is {NUMERICS_VERSION}: "
        "record the fingerprints of the new version (see this module's docstring)")
    coarse = record["coarse"][precision]
    assert math.isclose(now["train_loss"], coarse["train_loss"], abs_tol=LOSS_TOLERANCE), (now, coarse)
    for key in ("train_acc", "val_acc", "test_acc"):
        assert math.isclose(now[key], coarse[key], abs_tol=ACC_TOLERANCE), (key, now, coarse)
    exact = record["exact"].get(cpu_kind(), {}).get(precision)
    if exact is None:
        pytest.skip(f"the coarse fingerprint matches; no exact digest is recorded for {cpu_kind()} in "
                    f"{precision}: record it as this module's docstring says")
    assert now["digest"] == exact, (
        f"the trainer's numbers moved in {precision} on {cpu_kind()} without a new NUMERICS_VERSION: see this "
        "module's docstring")
