"""The shared trainer on real CIFAR-10 subsets: learning, bit-exact resume, determinism, divergence, atomic
checkpoints, schedules, optimizer groups and the config it runs from."""

from __future__ import annotations

import dataclasses
import errno
import math
import re

import pytest
import torch

from stn_ablation import checkpoint as checkpoint_module
from stn_ablation.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from stn_ablation.config import TrainConfig
from stn_ablation.data.datasets import prepare
from stn_ablation.errors import ConfigError
from stn_ablation.models.registry import build_model, create_model
from stn_ablation.training.train import TrainResult, lr_factor, make_optimizer, train

CPU = torch.device("cpu")


def fit(cfg: TrainConfig, data, device: torch.device, **kwargs) -> TrainResult:
    """The trainer, handed the model that the registry builds for `cfg` (as a tracked run and the bench hand it)."""
    return train(build_model(cfg, data.in_shape, data.num_classes), cfg, data, device, **kwargs)
COMPARED = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "lr")  # not the wall-clock fields


class Stop(Exception):
    """Raised from the epoch hook: the test's stand-in for a killed process."""


def stop_after(epoch: int):
    def hook(stats, model):
        if stats.epoch == epoch:
            raise Stop
    return hook


def assert_same_run(a: TrainResult, b: TrainResult) -> None:
    assert a.status == b.status == "finished"
    assert [[getattr(s, f) for f in COMPARED] for s in a.history] == \
           [[getattr(s, f) for f in COMPARED] for s in b.history]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


# --- (a) it learns -----------------------------------------------------------------------------------------------

def test_short_training_beats_chance(cifar_raw):
    # measured on this copy: test accuracy 0.318 (seed 0) and 0.336 (seed 1); chance is 0.10
    data = prepare(cifar_raw, CPU, val_size=1000, subset=4000)
    cfg = TrainConfig(variant="tutorial_cnn", epochs=3, subset=4000, val_size=1000)
    result = fit(cfg, data, CPU)
    assert result.status == "finished" and result.reason == ""
    assert [s.epoch for s in result.history] == [1, 2, 3]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.test_acc > 0.25, result.history
    assert result.history[-1].val_acc > 0.2
    assert 1 <= result.best_epoch <= 3
    assert all(s.seconds > 0 and s.images_per_s > 0 for s in result.history)


# --- (b) resume ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, n_train, n_eval, batch_size", [
    ("tutorial_stn", 512, 500, 64),
    ("loc3_stn", 64, 32, 16),  # BatchNorm running statistics must survive the checkpoint too (and it is slow)
])
def test_resume_is_bit_identical(small_cifar, tmp_path, variant, n_train, n_eval, batch_size, shrink):
    data = shrink(small_cifar, n_train, n_eval)
    # standard augmentation and dropout: both the trainer's generator and the global RNG must be restored
    cfg = TrainConfig(variant=variant, epochs=2, batch_size=batch_size, aug="standard", subset=n_train,
                      val_size=500, eval_batch_size=500)
    straight = fit(cfg, data, CPU)

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Stop):
        fit(cfg, data, CPU, checkpoint=ckpt, on_epoch=stop_after(1))
    assert [h["epoch"] for h in load_checkpoint(ckpt)["history"]] == [1]
    torch.manual_seed(999)  # whatever the process did in between must not matter
    resumed = fit(cfg, data, CPU, checkpoint=ckpt)

    assert_same_run(straight, resumed)
    assert [h["epoch"] for h in load_checkpoint(ckpt)["history"]] == [1, 2]


def test_checkpoint_of_another_config_is_refused(small_cifar, tmp_path, shrink):
    data = shrink(small_cifar, 128, 100)
    cfg = TrainConfig(variant="tutorial_cnn", epochs=2, batch_size=64)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Stop):
        fit(cfg, data, CPU, checkpoint=ckpt, on_epoch=stop_after(1))
    with pytest.raises(CheckpointError, match="another config"):
        fit(cfg.with_overrides(lr=0.01), data, CPU, checkpoint=ckpt)


def test_full_disk_mid_run_keeps_last_checkpoint_and_resumes(small_cifar, tmp_path, monkeypatch, shrink):
    data = shrink(small_cifar, 256, 100)
    cfg = TrainConfig(variant="tutorial_cnn", epochs=2, batch_size=64)
    straight = fit(cfg, data, CPU)
    ckpt = tmp_path / "run.pt"

    def disk_fills_after_epoch_1(stats, model):
        monkeypatch.setattr(checkpoint_module.torch, "save", _full_disk)

    with pytest.raises(CheckpointError, match="intact"):
        fit(cfg, data, CPU, checkpoint=ckpt, on_epoch=disk_fills_after_epoch_1)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    assert [h["epoch"] for h in load_checkpoint(ckpt)["history"]] == [1]
    assert_same_run(straight, fit(cfg, data, CPU, checkpoint=ckpt))


def test_train_acc_counts_the_images_actually_seen(small_cifar, shrink):
    data = shrink(small_cifar, 32, 10)
    full_batch = fit(TrainConfig(variant="tutorial_cnn", epochs=1, batch_size=32), data, CPU)
    oversized = fit(TrainConfig(variant="tutorial_cnn", epochs=1, batch_size=128), data, CPU)
    # the same single step on the same 32 images: only the configured batch size differs
    assert oversized.history[0].train_loss == full_batch.history[0].train_loss
    assert oversized.history[0].train_acc == full_batch.history[0].train_acc


# --- (c) determinism -------------------------------------------------------------------------------------------------

def test_same_seed_same_run_and_hooks_do_not_perturb_it(small_cifar, shrink):
    data = shrink(small_cifar, 256, 200)
    cfg = TrainConfig(variant="tutorial_stn", epochs=2, batch_size=64, aug="standard")
    first = fit(cfg, data, CPU)

    def draws_random_numbers(stats, model):
        torch.rand(1000)
        torch.randn(10, 10)

    second = fit(cfg, data, CPU, on_epoch=draws_random_numbers)
    assert_same_run(first, second)

    other = fit(cfg.with_overrides(seed=1), data, CPU)
    assert other.history[0].train_loss != first.history[0].train_loss
    assert not torch.equal(other.model.classifier.head[-1].weight, first.model.classifier.head[-1].weight)


# --- (d) divergence ----------------------------------------------------------------------------------------------

def test_divergence_is_a_status_not_an_exception(small_cifar, tmp_path, shrink):
    data = shrink(small_cifar, 256, 100)
    cfg = TrainConfig(variant="tutorial_cnn", epochs=2, batch_size=64, lr=1e6)
    result = fit(cfg, data, CPU, checkpoint=tmp_path / "run.pt")
    assert result.status == "diverged"
    match = re.fullmatch(r"diverged at epoch (\d+): train loss is (nan|inf|-inf)", result.reason)
    assert match, result.reason
    epoch = int(match.group(1))
    assert 1 <= epoch <= cfg.epochs
    assert [s.epoch for s in result.history] == list(range(1, epoch))  # the diverged epoch is not recorded
    assert math.isnan(result.test_acc) if epoch == 1 else math.isfinite(result.test_acc)


# --- (e) checkpoint files ------------------------------------------------------------------------------------------

def _full_disk(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "deep" / "folder" / "run.pt"
    assert load_checkpoint(path) is None
    state = {"epoch": 3, "weights": torch.arange(6.0).view(2, 3), "history": [{"a": 1.5}]}
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["history"] == [{"a": 1.5}]
    assert torch.equal(loaded["weights"], state["weights"])
    assert [p.name for p in path.parent.iterdir()] == ["run.pt"]


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint_module.torch, "save", _full_disk)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    message = str(info.value)
    assert str(path) in message and "No space left on device" in message and "\n" not in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # no temporary file left behind


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module.torch, "save", _full_disk)
    with pytest.raises(CheckpointError):
        save_checkpoint({"epoch": 1}, tmp_path / "run.pt")
    assert list(tmp_path.iterdir()) == []


def test_any_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    def unpicklable(obj, f, *args, **kwargs):
        f.write(b"half")
        raise RuntimeError("cannot pickle this")

    monkeypatch.setattr(checkpoint_module.torch, "save", unpicklable)
    with pytest.raises(Exception):
        save_checkpoint({"epoch": 1}, tmp_path / "run.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", "truncated"])
def test_unreadable_checkpoint_raises(tmp_path, content, small_cifar, shrink):
    path = tmp_path / "run.pt"
    if content == "truncated":
        save_checkpoint({"w": torch.randn(1000)}, path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "delete it" in str(info.value)
    with pytest.raises(CheckpointError):  # and training refuses to start over it silently
        fit(TrainConfig(variant="tutorial_cnn", epochs=1), shrink(small_cifar, 64, 10), CPU, checkpoint=path)


# --- (f) schedules and optimizer ---------------------------------------------------------------------------------

def test_onecycle_schedule():
    total, warmup = 100, 0.2
    f = [lr_factor(step, total, "onecycle", warmup) for step in range(total + 1)]
    assert f[0] == pytest.approx(1 / 20)
    assert f[19] == pytest.approx(1.0)  # the peak at the end of the warm-up
    assert max(f) == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:19], f[1:20]))  # rising
    assert all(a >= b for a, b in zip(f[19:], f[20:]))  # then falling
    assert f[total - 1] < 0.02 and f[total] == 0.0
    assert lr_factor(0, 10, "onecycle", 0.0) == pytest.approx(1.0)  # no warm-up: start at the peak


def test_cosine_and_constant_schedules():
    total = 50
    f = [lr_factor(step, total, "cosine", 0.2) for step in range(total + 1)]
    assert f[0] == pytest.approx(1.0) and f[total] == pytest.approx(0.0, abs=1e-12)
    assert f[total // 2] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(f, f[1:]))
    assert all(lr_factor(s, total, "constant", 0.2) == 1.0 for s in range(total))


@pytest.mark.parametrize("variant", ["tutorial_stn", "loc3_stn", "tutorial_cnn"])
def test_optimizer_groups(variant):
    model = create_model(variant)
    cfg = TrainConfig(variant=variant, lr=0.05, loc_lr_mult=0.1, weight_decay=5e-4)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    stn_ids = {id(p) for p in model.stn.parameters()} if model.stn is not None else set()
    seen = []
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        seen += [id(p) for p in group["params"]]
        if group["name"] == "localization":
            assert ids <= stn_ids
            assert group["lr"] == pytest.approx(0.05 * 0.1)
        else:
            assert group["name"] == "classifier" and not ids & stn_ids
            assert group["lr"] == pytest.approx(0.05)
        dims = {p.ndim for p in group["params"]}
        if group["weight_decay"] == 0:
            assert max(dims) <= 1
        else:
            assert group["weight_decay"] == 5e-4 and min(dims) > 1
        assert group["nesterov"] and group["momentum"] == 0.9
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    one_d = [p for p in model.parameters() if p.ndim <= 1]
    assert one_d and all(g["weight_decay"] == 0 for g in opt.param_groups for p in g["params"] if p.ndim <= 1)
    assert {g["name"] for g in opt.param_groups} == ({"classifier", "localization"} if stn_ids else {"classifier"})
    if stn_ids:  # the identity bias of the transformer is never decayed
        final_bias = model.stn.regressor[-1].bias
        assert next(g for g in opt.param_groups if any(p is final_bias for p in g["params"]))["weight_decay"] == 0


def test_optimizer_variants():
    model = create_model("tutorial_stn")
    adamw = make_optimizer(model, TrainConfig(optimizer="adamw", momentum=0.8, lr=1e-3))
    assert isinstance(adamw, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.999) for g in adamw.param_groups)
    plain = make_optimizer(model, TrainConfig(momentum=0.0))  # nesterov needs momentum: silently off
    assert all(not g["nesterov"] for g in plain.param_groups)


def test_localization_lr_follows_the_schedule(small_cifar, tmp_path, shrink):
    """After 4 steps each group's rate is its base rate times the schedule's factor: the localization net's base
    rate is lr x loc_lr_mult. The checkpoint's optimizer state holds every group's rate."""
    data = shrink(small_cifar, 128, 10)
    cfg = TrainConfig(variant="tutorial_stn", epochs=1, batch_size=32, schedule="cosine", loc_lr_mult=0.25)
    result = fit(cfg, data, CPU, checkpoint=tmp_path / "c.pt")
    factor = lr_factor(3, 4, "cosine", cfg.warmup)
    assert result.history[0].lr == pytest.approx(cfg.lr * factor)
    groups = load_checkpoint(tmp_path / "c.pt")["optimizer"]["param_groups"]
    expected = {"classifier": cfg.lr * factor, "localization": cfg.lr * 0.25 * factor}
    assert {g["name"] for g in groups} == set(expected)
    for group in groups:
        assert group["lr"] == pytest.approx(expected[group["name"]]), group["name"]


# --- (g) config ----------------------------------------------------------------------------------------------------

ALTERNATIVES = dict(
    variant="loc3_stn", transform="tps", dataset="mnist", aug="standard", epochs=49, batch_size=64,
    optimizer="adamw", lr=0.1, momentum=0.8, nesterov=False, weight_decay=1e-4, schedule="cosine", warmup=0.3,
    label_smoothing=0.0, loc_lr_mult=0.5, seed=1, subset=1000, val_size=1000, eval_batch_size=500,
    frozen="attention:1.2,0,0", image_size=24,
)
NEEDS = {"image_size": {"dataset": "npz:own.npz"}}  # what a field's alternative needs set beside it (own data)


def test_alternatives_cover_every_field():
    assert set(ALTERNATIVES) == {f.name for f in dataclasses.fields(TrainConfig)}, \
        "a new TrainConfig field needs an entry in ALTERNATIVES"


def test_with_overrides_rejects_unknown_keys():
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_overrides(epoch=3, lr=0.1)
    assert "epoch" in str(info.value) and "epochs" in str(info.value)  # names the typo and what is allowed


def test_with_overrides_ignores_none_and_copies():
    cfg = TrainConfig()
    same = cfg.with_overrides(**{k: None for k in ALTERNATIVES})
    assert same == cfg
    changed = cfg.with_overrides(epochs=3, subset=None)
    assert changed.epochs == 3 and changed.subset is None and cfg.epochs == 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3


@pytest.mark.parametrize("overrides", [
    dict(epochs=0), dict(epochs=-1), dict(batch_size=0), dict(eval_batch_size=0), dict(subset=0),
    dict(lr=0.0), dict(lr=-0.1), dict(lr=float("nan")), dict(loc_lr_mult=-1.0), dict(label_smoothing=1.0),
    dict(warmup=1.0), dict(val_size=-1), dict(dataset="imagenet"), dict(aug="autoaugment"),
    dict(optimizer="adam"), dict(schedule="step"), dict(transform="spline"),
])
def test_invalid_values_are_rejected(overrides):
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_overrides(**overrides)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        TrainConfig(**overrides)


@pytest.mark.parametrize("overrides", [
    dict(epochs=2.5), dict(epochs="3"), dict(epochs=True), dict(nesterov="yes"), dict(subset=1000.0),
    dict(variant=3), dict(lr="0.1"),
])
def test_wrong_types_are_rejected(overrides):
    with pytest.raises(ConfigError):
        TrainConfig(**overrides)


def test_epochs_message_names_the_value():
    with pytest.raises(ConfigError, match=r"epochs must be at least 1, got -2"):
        TrainConfig(epochs=-2)


def test_digest_is_stable_and_changes_with_every_field():
    base = TrainConfig()
    assert base.digest() == TrainConfig().digest()
    assert re.fullmatch(r"[0-9a-f]{16}", base.digest())
    digests = {base.digest()}
    for name, value in ALTERNATIVES.items():
        start = base.with_overrides(**NEEDS.get(name, {}))
        assert getattr(start, name) != value
        digest = start.with_overrides(**{name: value}).digest()
        assert digest != start.digest(), name
        digests |= {start.digest(), digest}
    assert len(digests) == len(ALTERNATIVES) + 1 + len(NEEDS)


# --- (h) for a GPU: no per-step host synchronisation, the data's layout, deterministic kernels --------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fp16_steps_do_not_read_the_device(small_cifar, shrink, monkeypatch, optimizer):
    """Under fp16 the GradScaler skips a step whose gradients overflowed; with a plain optimizer it learns that by
    `.item()` on the inf flag, a host-device sync every step. The fused optimizer reads the flag on the device: the
    host reads per epoch (its mean loss and accuracy) do not grow with its steps. CPU fp16 autocast runs the same
    scaler code as CUDA."""
    calls: list[int] = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or item(self))
    counts = []
    for steps in (2, 5):
        data = shrink(small_cifar, 32 * steps, 50)
        cfg = TrainConfig(variant="tutorial_stn", epochs=1, batch_size=32, optimizer=optimizer, aug="standard")
        calls.clear()
        result = fit(cfg, data, CPU, precision="fp16")
        assert result.status == "finished" and math.isfinite(result.history[0].train_loss)
        counts.append(len(calls))
    assert counts[0] == counts[1], counts


def test_only_the_scaled_path_uses_the_fused_optimizer():
    """fp32 and bf16 keep the for-each kernels, and so their results bit for bit."""
    model = create_model("tutorial_stn")
    for optimizer in ("sgd", "adamw"):
        cfg = TrainConfig(optimizer=optimizer)
        assert all(g["fused"] for g in make_optimizer(model, cfg, fused=True).param_groups)
        assert not any(g["fused"] for g in make_optimizer(model, cfg).param_groups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs it there)")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_no_training_step_synchronizes_on_cuda(cifar_raw, precision):
    """CUDA's sync debug mode warns at every host-device synchronisation: an epoch of 5 steps must warn as often as
    one of 2 (the epoch's own reads at its end, and evaluation's)."""
    import warnings

    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bf16")
    gpu = torch.device("cuda")
    counts = []
    for steps in (2, 5):
        data = prepare(cifar_raw, gpu, val_size=50, subset=64 * steps)
        cfg = TrainConfig(variant="tutorial_stn", epochs=1, batch_size=64, aug="standard", subset=64 * steps,
                          val_size=50)
        fit(cfg, data, gpu, precision=precision)  # warm-up: cuDNN's autotuning syncs, once per shape
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit(cfg, data, gpu, precision=precision)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


def test_data_is_kept_in_the_models_layout_with_the_same_results(small_cifar, shrink):
    """On the CPU the model runs channels_last (device.channels_last), so prepare() stores the images so; the
    first convolution then copies nothing, and the run is bit-identical to one on NCHW data."""
    data = shrink(small_cifar, 128, 100)
    assert data.train_x.is_contiguous(memory_format=torch.channels_last) and not data.train_x.is_contiguous()
    nchw = dataclasses.replace(data, **{k: getattr(data, k).contiguous() for k in ("train_x", "val_x", "test_x")})
    cfg = TrainConfig(variant="tutorial_stn", epochs=1, batch_size=64, aug="standard")
    assert_same_run(fit(cfg, data, CPU), fit(cfg, nchw, CPU))


def test_deterministic_runs_on_deterministic_kernels_and_restores_them(small_cifar, shrink):
    data = shrink(small_cifar, 64, 50)
    seen = []
    hook = lambda stats, model: seen.append(torch.are_deterministic_algorithms_enabled())  # noqa: E731
    cfg = TrainConfig(variant="tutorial_cnn", epochs=1, batch_size=64)
    plain = fit(cfg, data, CPU, on_epoch=hook)
    deterministic = fit(cfg, data, CPU, on_epoch=hook, deterministic=True)
    assert seen == [False, True] and not torch.are_deterministic_algorithms_enabled()
    assert_same_run(plain, deterministic)  # the CPU was deterministic already
