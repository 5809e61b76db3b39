"""The glibc allocator setting that keeps a CPU training step from page-faulting."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Minor page faults of 3 training steps of loc3_cnn (batch 64, crop + flip), after 2 warm-up steps.
STEPS = """
import resource, sys, torch, torch.nn.functional as F
from stn_ablation.allocator import keep_freed_memory
from stn_ablation.augment import augment
from stn_ablation.registry import create_model
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
model = create_model("loc3_cnn")
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
x, y, g = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)), torch.Generator().manual_seed(0)
for i in range(5):
    if i == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(augment(x, "standard", g)), y).backward()
    optimizer.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds exist only in glibc")
def test_kept_memory_removes_the_page_faults_of_a_training_step():
    default, kept = _faults("default"), _faults("keep")
    assert default > 1000  # fresh pages for the step's activations, every step
    assert kept < default / 10
