"""Device and numeric-precision selection: the only place that names a device type."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import torch

from stn_ablation.config import DEVICES, PRECISIONS
from stn_ablation.errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; `cuda:N` names one GPU. Asking for a device that is absent
    is a clear error."""
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)} or cuda:N")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but PyTorch sees no CUDA GPU; use --device auto or cpu")
    if index and int(index) >= (count := torch.cuda.device_count()):
        raise ConfigError(f"--device {name} was asked for but PyTorch sees {count} CUDA GPU(s), cuda:0 to "
                          f"cuda:{count - 1}; pick one of them (CUDA_VISIBLE_DEVICES sets which are visible)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but this PyTorch has no MPS backend; use --device auto or cpu")
    return torch.device(name)


def worker_devices(device: str, workers: int, share_gpus: bool = False) -> list[str]:
    """The --device of each of `workers` worker processes on this machine. On CUDA (`auto` with a GPU, or `cuda`),
    each worker gets its own GPU, round-robin over the visible ones; more workers than GPUs share them only with
    `share_gpus` (several small models can fill one large GPU). A named device (`cuda:N`, `cpu`) goes to all."""
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return [device] * workers
    gpus = torch.cuda.device_count()
    if workers > gpus and not share_gpus:
        raise ConfigError(f"--workers {workers} on {gpus} visible GPU(s): one worker per GPU is the default; pass "
                          f"--workers {gpus}, or --share-gpus to run several workers on each GPU")
    return [f"cuda:{i % gpus}" for i in range(workers)]


NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 / AMX, Arm's BF16 extension


def _cpuinfo(keys: tuple[str, ...], cpuinfo: Path) -> str | None:
    """The value of the first line of /proc/cpuinfo whose key is one of `keys`; None where there is no such line
    or no /proc/cpuinfo (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags the kernel lists for this CPU (`flags` on x86, `Features` on Arm); empty where
    /proc/cpuinfo is absent (not Linux), which makes `auto` choose fp32 there."""
    return frozenset((_cpuinfo(("flags", "Features"), cpuinfo) or "").split())


# The widest vector extension decides which CPU kernels run, and fp32 kernels for different extensions round
# differently: a run repeats bit for bit only on a CPU with the same one. Widest first; x86, then Arm.
VECTOR_EXTENSIONS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"),
                     ("avx", "AVX"), ("sve2", "SVE2"), ("sve", "SVE"), ("asimd", "NEON"))


def device_model(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What the device is, for a benchmark's header and a run's tag: the GPU's name on CUDA; on the CPU its model
    string (`model name` on x86; Arm kernels often list none, and the platform's processor name is used) and its
    widest vector extension, since the model string alone (say, "AMD EPYC") does not tell AVX2 from AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform

        name = _cpuinfo(("model name",), cpuinfo) or platform.processor() or "unknown CPU"
        flags = cpu_flags(cpuinfo)
        widest = next((label for flag, label in VECTOR_EXTENSIONS if flag in flags), None)
        return f"{name}, {widest}" if widest else name
    return device.type


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one), not all the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16, AMX or Arm BF16), where bf16 autocast is faster than fp32
    (measured on 2 AVX512-BF16 EPYC cores: 1.6x training throughput for tutorial_stn, 1.3x for loc3_stn).
    PyTorch has no public query for this: `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is also true where
    AVX512 only emulates bf16."""
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision`, or None for full fp32. `auto`: bf16 on CUDA GPUs that run it natively
    (Ampere and newer; else fp16 with a gradient scaler) and on CPUs with native bf16; fp32 elsewhere, where
    emulated bf16 would only be slower."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":  # emulated bf16 (V100, T4) has no bf16 cuDNN convolutions: fp16 there
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    return AUTOCAST_DTYPES[precision]


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --precision -> autocast dtype


def precision_name(dtype: torch.dtype | None) -> str:
    """The name a run records for its autocast dtype: float32 (no autocast), bfloat16 or float16."""
    return str(dtype or torch.float32).removeprefix("torch.")


def precision_flag(name: str) -> str:
    """The --precision value that reproduces a recorded `precision_name` (auto for an unknown one)."""
    return next((flag for flag, dtype in AUTOCAST_DTYPES.items() if precision_name(dtype) == name), "auto")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast context for `dtype`, or a no-op for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


CUDA_EVAL_BATCH = 2048  # the least evaluation batch on CUDA (eval_batch_size)


def eval_batch_size(device: torch.device, configured: int) -> int:
    """The batch evaluation runs in on `device`, for a config's `eval_batch_size`: on CUDA at least
    CUDA_EVAL_BATCH, as small batches leave a GPU idle between launches; elsewhere the configured batch, so CPU
    results stay bit for bit. Not part of the config: in eval mode each image's logits depend on that image only."""
    return max(configured, CUDA_EVAL_BATCH) if device.type == "cuda" else configured


CUBLAS_WORKSPACE_CONFIG = ":4096:8"  # the cuBLAS workspace setting that makes its matmuls deterministic


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """With `enabled`, run the block on deterministic kernels only: `torch.use_deterministic_algorithms`, cuDNN
    without autotuning and in its deterministic mode, cuBLAS with a fixed workspace (read at the process's first
    CUDA matmul, which a training run is the first to make; a value the user set is kept). An operation PyTorch
    has no deterministic kernel for warns instead of failing the run (`warn_only`): on CUDA that is grid_sample's
    backward, so a spatial transformer's training still differs in the last bits between runs, while its twin
    does not. The previous settings come back afterwards, so one run's flag does not leak into the next."""
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.benchmark, cudnn.deterministic)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.benchmark, cudnn.deterministic = saved[2:]


def channels_last(device: torch.device) -> bool:
    """NHWC memory layout: tensor-core convolutions on CUDA, and oneDNN's fastest kernels on the CPU (measured on
    2 AVX2 cores: +30% training and +75-120% evaluation throughput for the tutorial models)."""
    return device.type in ("cuda", "cpu")
