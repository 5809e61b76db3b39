"""Device and precision selection, including the CUDA and MPS branches, tested without a GPU by faking what
PyTorch reports."""

from __future__ import annotations

import os
import re

import pytest
import torch

from stn_ablation import device as dev
from stn_ablation.errors import ConfigError


GPUS = {  # what torch.cuda.is_bf16_supported(including_emulation) answers on each kind of GPU
    "bf16-native": {True: True, False: True},  # Ampere and newer (A100, H100, RTX 30xx)
    "bf16-emulating": {True: True, False: False},  # V100, T4: bf16 works, without bf16 tensor cores or cuDNN convs
    "fp16-only": {True: False, False: False},
}


@pytest.fixture
def fake(monkeypatch):
    def set_(cuda: bool = False, mps: bool = False, gpu: str = "bf16-native", bf16_cpu: bool = False,
             gpus: int = 1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus if cuda else 0)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: GPUS[gpu][including_emulation])
        monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: bf16_cpu)
    return set_


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(fake, cuda, mps, expected):
    fake(cuda=cuda, mps=mps)
    assert dev.select_device("auto").type == expected


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_asking_for_an_absent_accelerator_is_a_one_line_error(fake, name):
    fake()
    with pytest.raises(ConfigError, match=f"--device {name} was asked for"):
        dev.select_device(name)


def test_unknown_device_and_precision_are_errors():
    with pytest.raises(ConfigError, match="unknown device"):
        dev.select_device("tpu")
    with pytest.raises(ConfigError, match="unknown precision"):
        dev.autocast_dtype(torch.device("cpu"), "int8")


@pytest.mark.parametrize("gpu, expected", [("bf16-native", torch.bfloat16), ("bf16-emulating", torch.float16),
                                            ("fp16-only", torch.float16)])
def test_cuda_auto_precision_is_bf16_only_where_native(fake, gpu, expected):
    fake(cuda=True, gpu=gpu)
    assert dev.autocast_dtype(torch.device("cuda"), "auto") is expected
    assert dev.channels_last(torch.device("cuda"))


@pytest.mark.parametrize("name, gpus, expected", [("cuda:0", 1, "cuda:0"), ("cuda:3", 4, "cuda:3"),
                                                  ("cuda", 2, "cuda")])
def test_cuda_n_names_one_gpu(fake, name, gpus, expected):
    fake(cuda=True, gpus=gpus)
    assert str(dev.select_device(name)) == expected


@pytest.mark.parametrize("name, message", [("cuda:2", "sees 2 CUDA GPU(s), cuda:0 to cuda:1"),
                                           ("cuda:x", "unknown device"), ("cpu:1", "unknown device")])
def test_a_gpu_that_is_not_there_is_a_one_line_error(fake, name, message):
    fake(cuda=True, gpus=2)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        dev.select_device(name)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("gpus, workers, share, expected", [
    (1, 1, False, ["cuda:0"]),
    (2, 2, False, ["cuda:0", "cuda:1"]),
    (4, 3, False, ["cuda:0", "cuda:1", "cuda:2"]),
    (4, 4, False, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]),
    (1, 3, True, ["cuda:0", "cuda:0", "cuda:0"]),  # asked for: several workers share the one GPU
    (2, 5, True, ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]),
])
def test_each_worker_gets_its_own_gpu_round_robin(fake, gpus, workers, share, expected):
    fake(cuda=True, gpus=gpus)
    assert dev.worker_devices("auto", workers, share) == expected
    assert dev.worker_devices("cuda", workers, share) == expected


def test_more_workers_than_gpus_only_when_asked(fake):
    fake(cuda=True, gpus=2)
    with pytest.raises(ConfigError, match="--workers 3 on 2 visible GPU\\(s\\).*--share-gpus"):
        dev.worker_devices("auto", 3)
    assert dev.worker_devices("cuda:1", 3) == ["cuda:1"] * 3  # a named GPU is what was asked for


def test_workers_without_a_gpu_share_the_cpu(fake):
    fake(cuda=False)
    assert dev.worker_devices("auto", 2) == ["auto", "auto"]


@pytest.mark.parametrize("bf16_cpu, expected", [(True, torch.bfloat16), (False, None)])
def test_cpu_auto_precision_uses_bf16_only_where_native(fake, bf16_cpu, expected):
    fake(bf16_cpu=bf16_cpu)
    assert dev.autocast_dtype(torch.device("cpu"), "auto") is expected
    assert dev.channels_last(torch.device("cpu")) and not dev.channels_last(torch.device("mps"))


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
    ("fpu sse2 avx2 avx512f amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
    ("fpu sse2 avx2 avx512f avx512bw avx512_vnni", False),  # AVX512 emulates bf16: slower than fp32
    ("fp asimd sve bf16 i8mm", True),  # Arm Features line
    ("", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset(flags.split()))
    assert dev.cpu_has_native_bf16() is native


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert dev.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert dev.cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize("precision, expected", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_explicit_precision_wins(precision, expected):
    assert dev.autocast_dtype(torch.device("cpu"), precision) is expected


def test_bf16_autocast_keeps_the_sampler_in_fp32():
    """grid_sample runs in fp32 under bf16 autocast, so the transformer's output keeps fp32 precision."""
    from stn_ablation.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("tutorial_stn").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), dev.autocast(torch.device("cpu"), torch.bfloat16):
        warped = model.stn(x)
    assert warped.dtype == torch.float32
    assert torch.allclose(warped, x, atol=1e-5)  # identity at initialization, even under bf16 autocast


def test_device_model_names_the_gpu_or_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert dev.device_model(torch.device("cuda:1")) == "NVIDIA H100 80GB HBM3"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\nflags\t\t: fpu\n")
    assert dev.device_model(torch.device("cpu"), cpuinfo) == "AMD EPYC 9654 96-Core Processor"
    # the widest vector extension is named: two CPUs of one model string can run different fp32 kernels
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512_bf16\n")
    assert dev.device_model(torch.device("cpu"), cpuinfo) == "AMD EPYC, AVX512-BF16"
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx avx2\n")
    assert dev.device_model(torch.device("cpu"), cpuinfo) == "AMD EPYC, AVX2"
    assert dev.device_model(torch.device("cpu"), tmp_path / "absent")  # a name of some kind, never empty


def test_evaluation_batches_are_larger_only_on_cuda():
    assert dev.eval_batch_size(torch.device("cpu"), 256) == 256  # CPU results stay bit-identical
    assert dev.eval_batch_size(torch.device("mps"), 256) == 256
    assert dev.eval_batch_size(torch.device("cuda:1"), 256) == dev.CUDA_EVAL_BATCH
    assert dev.eval_batch_size(torch.device("cuda"), 8192) == 8192  # a larger configured batch is kept


def test_deterministic_kernels_set_every_switch_and_restore_them(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "benchmark", True)
    monkeypatch.setattr(cudnn, "deterministic", False)
    with dev.deterministic_kernels(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # grid_sample's CUDA backward has no other
        assert (cudnn.benchmark, cudnn.deterministic) == (False, True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
    with dev.deterministic_kernels(False):
        assert not torch.are_deterministic_algorithms_enabled() and cudnn.benchmark
