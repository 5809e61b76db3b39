"""A model logged to MLflow before the package layout (at 7b721ea: `stn-ablate train --variant tutorial_stn
--dataset mnist --epochs 1 --subset 256`, its serving example left out, and the one path of the machine that
logged it, a file name cloudpickle kept in data.pkl, replaced by one of the same length) still loads and predicts as
it did."""

import json
from pathlib import Path

import mlflow.pytorch
import torch

from stn_ablation.models.blocks import STNClassifier

OLD = Path(__file__).with_name("fixtures") / "model_7b721ea"


def test_model_logged_before_the_layout_loads_and_predicts_the_same():
    model = mlflow.pytorch.load_model(str(OLD), map_location="cpu").eval()
    assert isinstance(model, STNClassifier)  # pickled as stn_ablation.variants.blocks.STNClassifier
    x = torch.tensor(json.loads((OLD / "input_example.json").read_text()), dtype=torch.float32)
    expected = torch.tensor(json.loads((OLD / "expected_output.json").read_text())["logits"])
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_every_old_model_module_resolves_to_its_new_one():
    import importlib

    for name in ("blocks", "loc3", "paper", "tutorial"):
        assert importlib.import_module(f"stn_ablation.variants.{name}") is importlib.import_module(
            f"stn_ablation.models.{name}")
