"""Device and precision selection, including the CUDA and MPS branches, tested without a GPU by faking what
PyTorch reports."""

from __future__ import annotations

import pytest
import torch

from stn_ablation import device as dev
from stn_ablation.errors import ConfigError


@pytest.fixture
def fake(monkeypatch):
    def set_(cuda: bool = False, mps: bool = False, bf16_gpu: bool = True, bf16_cpu: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
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


@pytest.mark.parametrize("bf16_gpu, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_auto_precision_is_mixed(fake, bf16_gpu, expected):
    fake(cuda=True, bf16_gpu=bf16_gpu)
    assert dev.autocast_dtype(torch.device("cuda"), "auto") is expected
    assert dev.channels_last(torch.device("cuda"))


@pytest.mark.parametrize("bf16_cpu, expected", [(True, torch.bfloat16), (False, None)])
def test_cpu_auto_precision_uses_bf16_only_where_native(fake, bf16_cpu, expected):
    fake(bf16_cpu=bf16_cpu)
    assert dev.autocast_dtype(torch.device("cpu"), "auto") is expected
    assert dev.channels_last(torch.device("cpu")) and not dev.channels_last(torch.device("mps"))


@pytest.mark.parametrize("precision, expected", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_explicit_precision_wins(precision, expected):
    assert dev.autocast_dtype(torch.device("cpu"), precision) is expected


def test_bf16_autocast_keeps_the_sampler_in_fp32():
    """grid_sample runs in fp32 under bf16 autocast, so the transformer's output keeps fp32 precision."""
    from stn_ablation.registry import create_model

    torch.manual_seed(0)
    model = create_model("tutorial_stn").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), dev.autocast(torch.device("cpu"), torch.bfloat16):
        warped = model.stn(x)
    assert warped.dtype == torch.float32
    assert torch.allclose(warped, x, atol=1e-5)  # identity at initialization, even under bf16 autocast
