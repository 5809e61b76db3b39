"""What the hardware could do: the FLOPs of one training step (as FlopCounterMode counts them) and this device's
matmul peak, which `stn-ablate bench` sets the measured speed against."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

FLOP_BATCH = 8  # images in the forward+backward that FLOPs are counted over
UNCOUNTED = ("affine_grid", "grid_sampler")  # arithmetic ops FlopCounterMode has no formula for: the STN's warp


class _OpRecorder(TorchDispatchMode):
    """Records the name of every aten op that runs under it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def training_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, tuple[str, ...]]:
    """FLOPs of one forward+backward of cross-entropy on (x, y), as FlopCounterMode counts them (matmuls and
    convolutions; a multiply-add is 2), and the ops in UNCOUNTED that ran and are not in that count. Gradients
    are left as they were: none."""
    model.train()
    recorder = _OpRecorder()
    with FlopCounterMode(display=False) as counter, recorder:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    missed = {str(op).removeprefix("aten.") for op in recorder.ops if op not in flop_registry}
    return counter.get_total_flops(), tuple(sorted(m for m in missed if m.startswith(UNCOUNTED)))


def matmul_peak(device: torch.device, dtype: torch.dtype | None, seconds: float) -> tuple[float, int] | None:
    """Best FLOP/s of a square `torch.mm` in `dtype` (None: fp32) over about `seconds`, and its size n (doubled
    from 256 until one product takes 50 ms); None where the device cannot multiply in `dtype`. fp32 is multiplied
    with the TF32 setting the convolutions run with (cuDNN's, on by default), so a trainer's fp32 %peak compares
    its convolutions with the arithmetic they actually use."""
    with _matmul_tf32(torch.backends.cudnn.allow_tf32):
        return _matmul_peak(device, dtype or torch.float32, seconds)


@contextlib.contextmanager
def _matmul_tf32(allow: bool) -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float) -> tuple[float, int] | None:
    n = 256
    try:
        while True:
            a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
            _time_mm(a, b)  # set-up
            best = _time_mm(a, b)
            if best >= 0.05 or n >= 8192:
                break
            n *= 2
    except RuntimeError:
        return None
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = min(best, _time_mm(a, b))
    return 2 * n ** 3 / best, n


def _time_mm(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    float(torch.mm(a, b)[0, 0])  # reading an element waits for the device
    return time.perf_counter() - start


def peak_dtypes(amp: torch.dtype | None) -> list[torch.dtype | None]:
    """fp32 always, bf16 always (on CPUs without bf16 instructions it is emulated, and labelled so), fp16 when
    that is the precision in use. None stands for fp32, as in autocast_dtype."""
    return [None, torch.bfloat16] + ([torch.float16] if amp is torch.float16 else [])
