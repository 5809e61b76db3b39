"""Every registered variant, parametrized over the registry itself: a newly registered variant is tested
without touching this file. The worked example's classifier (examples/my_classifier.py) is loaded as a plugin, so
the variants the registry derives from a user's classifier are tested beside the shipped ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stn_ablation import transforms
from stn_ablation.models import registry
from stn_ablation.errors import UsageError
from stn_ablation.models.registry import UnknownVariantError, create_model, get_variant, list_variants, register_variant
from stn_ablation.plugins import load_plugins

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
load_plugins(["my_classifier"], EXAMPLES, "tests/test_registry.py")
VARIANTS = list_variants()
STN_VARIANTS = [name for name in VARIANTS if get_variant(name).twin is not None]


def test_registry_has_the_core_variants():
    assert {"tutorial_stn", "tutorial_cnn", "loc3_stn", "loc3_cnn"} <= set(VARIANTS)
    assert list_variants("small_resnet*") == ["small_resnet", "small_resnet+frozen", "small_resnet+stn",
                                              "small_resnet+stn_loc3"]  # the example's classifier, derived
    assert VARIANTS == sorted(VARIANTS)
    assert list_variants("loc3_*") == ["loc3_cnn", "loc3_cnn+frozen", "loc3_stn"]


def _images(shape, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)


@pytest.mark.parametrize("name", VARIANTS)
def test_output_shape_and_finite(name):
    torch.manual_seed(0)
    model = create_model(name)
    x, _ = _images((3, 32, 32), batch=5)
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        assert out.shape == (5, 10)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_variants_build_for_mnist_shape(name):
    torch.manual_seed(0)
    model = create_model(name, in_shape=(1, 28, 28), num_classes=10)
    x, _ = _images((1, 28, 28), batch=3)
    out = model(x)
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_one_backward_pass_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x, y = _images((3, 32, 32), batch=8)
    F.cross_entropy(model(x), y).backward()

    stn = getattr(model, "stn", None)
    stn = stn if get_variant(name).has_transformer else None  # a frozen control's transform has no parameters
    final_regressor = {id(p) for p in stn.regressor[-1].parameters()} if stn is not None else set()
    stn_params = {id(p) for p in stn.parameters()} if stn is not None else set()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        if id(p) in stn_params and id(p) not in final_regressor:
            # the regressor's last weight is zero at init, so nothing flows back past it on the first step
            assert torch.count_nonzero(p.grad) == 0, f"{name}.{pname}: gradient should be zero at init"
        else:
            # classifier and the final regressor layer (its weight sees the nonzero hidden activations)
            assert torch.count_nonzero(p.grad) > 0, f"{name}.{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", STN_VARIANTS)
def test_stn_is_identity_at_init(name):
    torch.manual_seed(0)
    model = create_model(name)
    assert model.stn is not None
    x, _ = _images((3, 32, 32), batch=4)
    theta = model.stn.theta(x)
    assert torch.allclose(theta, torch.tensor([1.0, 0, 0, 0, 1.0, 0]).expand(4, 6))  # affine by default
    with torch.no_grad():
        out = model.stn(x)
    assert out.shape == x.shape
    assert (out - x).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", STN_VARIANTS)
def test_stn_and_twin_share_classifier_initialization(name):
    twin = get_variant(name).twin
    assert twin in VARIANTS, f"{name}'s twin {twin!r} is not registered"
    torch.manual_seed(123)
    with_stn = create_model(name)
    torch.manual_seed(123)
    without = create_model(twin)
    assert with_stn.stn is not None and without.stn is None
    a, b = with_stn.classifier.state_dict(), without.classifier.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    # and the seed matters: a different seed gives a different classifier
    torch.manual_seed(124)
    other = create_model(twin).classifier.state_dict()
    assert any(not torch.equal(a[k], other[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("family", list(transforms.FAMILIES))
@pytest.mark.parametrize("name", STN_VARIANTS)
def test_every_family_starts_at_the_identity_and_trains_a_step(name, family):
    """Any STN variant takes any family: the regressor outputs the family's parameters, starts at its identity
    (output equals input), and one SGD step gives finite gradients and moves the transform off the identity."""
    torch.manual_seed(0)
    model = create_model(name, in_shape=(1, 28, 28), transform=family).train()
    assert model.stn.family is transforms.FAMILIES[family]
    x, y = _images((1, 28, 28), batch=6)
    theta = model.stn.theta(x)
    assert theta.shape == (6, model.stn.family.n_params)
    assert torch.equal(theta, torch.tensor(model.stn.family.identity).expand_as(theta))
    with torch.no_grad():
        assert (model.stn(x) - x).abs().max().item() < 1e-5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(x), y).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.stn.regressor[-1].weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(model.stn.theta(x), theta)


@pytest.mark.parametrize("name", STN_VARIANTS)
def test_an_affine_stn_computes_what_it_did_before_families(name):
    """The affine family is F.affine_grid + grid_sample of the regressor's six outputs as a 2 x 3 matrix, in fp32:
    the STN of before the transform families were added, recomputed here, gives bit-identical logits and
    gradients for the same seed (its regressor's last layer has the same shape, so the same initialization)."""
    def build():
        torch.manual_seed(7)
        model = create_model(name).train()
        with torch.no_grad():  # off the identity, so the warp is not trivial
            model.stn.regressor[-1].weight.normal_(0, 0.05)
        return model

    def before(model, x):  # the STN's forward as it was: theta B x 2 x 3 -> affine_grid -> grid_sample
        theta = model.stn.regressor(model.stn.features(x).flatten(1)).view(-1, 2, 3).float()
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return model.classifier(F.grid_sample(x, grid, align_corners=False))

    x, y = _images((3, 32, 32), batch=8, seed=1)
    logits, grads = [], []
    for forward in (lambda m, x: m(x), before):
        model = build()
        torch.manual_seed(3)  # the classifier's dropout
        out = forward(model, x)
        F.cross_entropy(out, y).backward()
        logits.append(out.detach())
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert torch.equal(logits[0], logits[1])
    for k in grads[0]:
        assert torch.equal(grads[0][k], grads[1][k]), k


@pytest.mark.parametrize("name", ["paper_cnn", "paper_stn"])
@pytest.mark.parametrize("size", [28, 42])
def test_paper_variants_build_for_mnist_and_its_rts_canvas(name, size):
    torch.manual_seed(0)
    model = create_model(name, in_shape=(1, size, size), num_classes=10)
    x, y = _images((1, size, size), batch=3)
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    if model.stn is not None:
        assert model.stn.regressor[0].out_features == 20  # the paper's 20-unit layer


@pytest.mark.parametrize("name", STN_VARIANTS)
def test_each_stn_has_a_frozen_control_with_the_twins_classifier(name):
    """`<twin>+frozen`, derived by the registry: the twin's classifier bit for bit (same seed), behind a transform
    that learns nothing; at the identity it computes what the twin computes."""
    twin = get_variant(name).twin
    control = get_variant(twin + registry.FROZEN_SUFFIX)
    assert get_variant(control.controls).twin == twin and control.twin is None  # of name, or of the first STN
    assert control.controls == name or name.endswith("+stn_loc3")  # of one twin
    torch.manual_seed(7)
    frozen = create_model(control.name, frozen="attention:1.6,0.1,-0.2")
    torch.manual_seed(7)
    plain = create_model(twin)
    a, b = frozen.classifier.state_dict(), plain.classifier.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(p.numel() for p in frozen.parameters()) == sum(p.numel() for p in plain.parameters())
    shape = (3, 32, 32) if name != "paper_stn" else (1, 28, 28)
    x, _ = _images(shape)
    torch.manual_seed(7)
    identity = create_model(control.name, in_shape=shape).eval()
    plain = create_model(twin, in_shape=shape).eval()
    plain.load_state_dict(identity.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(identity(x), plain(x), rtol=0, atol=1e-5)
        zoomed = frozen.eval().stn(x if shape[0] == 3 else torch.randn(4, 3, 32, 32))
    assert frozen.stn.theta(x).tolist() == [[1.600000023841858, 0.10000000149011612, -0.20000000298023224]] * 4
    assert not torch.allclose(zoomed[:, :, 16, 16], x[:, :, 16, 16] if shape[0] == 3 else zoomed[:, :, 0, 0])


def test_a_bad_frozen_transform_is_one_line():
    from stn_ablation.config import TrainConfig
    from stn_ablation.errors import ConfigError
    from stn_ablation.models.registry import build_model

    for spec in ("attention:1.6,0", "zoom:2", "attention:a,b,c"):
        with pytest.raises(ConfigError, match="frozen must be .learned. or <family>:<parameters>"):
            TrainConfig(variant="tutorial_cnn+frozen", frozen=spec)
    with pytest.raises(ConfigError, match="needs its fixed transform"):  # a study resolves "learned"; train cannot
        build_model(TrainConfig(variant="tutorial_cnn+frozen", frozen="learned"), (3, 32, 32), 10)


def test_twins_are_not_stn_variants():
    for name in STN_VARIANTS:
        assert get_variant(get_variant(name).twin).twin is None


def test_every_variant_has_a_description():
    for name in VARIANTS:
        assert get_variant(name).description.strip(), name


def test_duplicate_registration_raises(monkeypatch):
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))
    original = get_variant("tutorial_cnn").factory
    with pytest.raises(ValueError, match="tutorial_cnn"):
        register_variant("tutorial_cnn")(lambda **kw: None)
    assert get_variant("tutorial_cnn").factory is original

    def first(**kwargs):
        """First."""
    register_variant("dup_test")(first)
    with pytest.raises(ValueError, match="registered twice"):
        register_variant("dup_test")(lambda **kw: None)
    assert get_variant("dup_test").factory is first


def test_unknown_variant_error_lists_the_variants():
    with pytest.raises(UnknownVariantError) as info:
        get_variant("no_such_variant")
    message = str(info.value)
    assert "no_such_variant" in message
    for name in VARIANTS:
        assert name in message
    assert not message.startswith('"')  # KeyError would quote it
    assert isinstance(info.value, UsageError) and isinstance(info.value, KeyError)
    with pytest.raises(UnknownVariantError):
        create_model("no_such_variant")


def test_create_model_drops_none_kwargs(monkeypatch):
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))
    seen = {}

    @register_variant("spy_test")
    def spy(**kwargs):
        """Records its keyword arguments."""
        seen.update(kwargs)
        return torch.nn.Identity()

    create_model("spy_test", in_shape=None, num_classes=7, dropout=None)
    assert seen == {"num_classes": 7}

    model = create_model("tutorial_cnn", in_shape=None, num_classes=None)  # the variant's own defaults
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert create_model("tutorial_cnn", num_classes=7)(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def _n_params(name: str) -> int:
    return sum(p.numel() for p in create_model(name).parameters())


def test_parameter_counts():
    for name in STN_VARIANTS:
        assert _n_params(name) > _n_params(get_variant(name).twin)


# The published layer table of the 78.9% CIFAR-10 STN (torchsummary, 3 x 32 x 32 input): per layer its parameters
# and its output per image. Localization net first (the transformer runs first), then the classifier, whose rows
# are (conv parameters, output) with "BRD" after the conv: BatchNorm, ReLU, Dropout.
LOC3_LOCALIZATION = [
    ("Conv2d", 224, (8, 30, 30)), ("Conv2d", 584, (8, 28, 28)), ("Conv2d", 3_144, (8, 22, 22)),
    ("MaxPool2d", 0, (8, 11, 11)), ("ReLU", 0, (8, 11, 11)),
    ("Conv2d", 2_010, (10, 7, 7)), ("MaxPool2d", 0, (10, 3, 3)), ("ReLU", 0, (10, 3, 3)),
    ("Linear", 2_912, (32,)), ("ReLU", 0, (32,)), ("Linear", 198, (6,)),
]
LOC3_CLASSIFIER = [
    (648, (24, 32, 32), "BRD"), (5_184, (24, 32, 32), "BRD"), (5_184, (24, 16, 16), "BRD"),
    (576, (24, 16, 16), ""), (5_184, (24, 16, 16), "BRD"), (216, (24, 16, 16), "BRD"), (432, (24, 8, 8), "BRD"),
    (1_152, (48, 8, 8), ""), (20_736, (48, 8, 8), "BRD"), (432, (48, 8, 8), "BRD"),
    (4_608, (96, 8, 8), ""), (82_944, (96, 8, 8), "BRD"), (6_912, (96, 8, 8), "BRD"),
    (960, (10, 8, 8), ""),
]


def _loc3_classifier_rows() -> list[tuple[str, int, tuple[int, ...]]]:
    rows = []
    for params, out, after in LOC3_CLASSIFIER:
        rows.append(("Conv2d", params, out))
        if after:
            rows += [("BatchNorm2d", 2 * out[0], out), ("ReLU", 0, out), ("Dropout", 0, out)]
    return rows + [("AdaptiveAvgPool2d", 0, (10, 1, 1)), ("Flatten", 0, (10,))]


def _layer_table(model: torch.nn.Module, in_shape=(3, 32, 32)) -> list[tuple[str, int, tuple[int, ...]]]:
    """(kind, own parameters, output per image) of every leaf module in the order they run on one image, as
    torchsummary lists them; a Conv2d subclass (DilatedConv2d) counts as Conv2d."""
    rows, hooks = [], []

    def record(module, inputs, output):
        kind = "Conv2d" if isinstance(module, torch.nn.Conv2d) else type(module).__name__
        rows.append((kind, sum(p.numel() for p in module.parameters()), tuple(output.shape[1:])))

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(record))
    try:
        model.train()(torch.randn(1, *in_shape))  # train mode: dropout runs and is listed
    finally:
        for hook in hooks:
            hook.remove()
    return rows


@pytest.mark.parametrize("name", ["loc3_stn", "loc3_cnn"])
def test_loc3_matches_the_published_layer_table(name):
    model = create_model(name)
    expected = (LOC3_LOCALIZATION if model.stn is not None else []) + _loc3_classifier_rows()
    assert _layer_table(model) == expected


def test_loc3_parameter_totals_are_the_published_ones():
    model = create_model("loc3_stn")
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert (count(model), count(model.classifier), count(model.stn)) == (145_104, 136_032, 9_072)
    assert _n_params("loc3_cnn") == 136_032
    assert sum(count(m) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)) == 864
    assert all(m.bias is None for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d))


def _bf16_channels_last_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter gradients of one step as the trainer takes it on a bf16 CPU: channels_last, bf16 autocast."""
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks on every call
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x.contiguous(memory_format=torch.channels_last))
    F.cross_entropy(logits.float(), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_channels_last_gradients_are_finite_and_repeatable(name):
    """The fast CPU path must not change results from call to call: a oneDNN bug gave loc3's dilated convolution
    garbage weight gradients in exactly this mode (see blocks.DilatedConv2d)."""
    torch.manual_seed(0)
    model = create_model(name).train().to(memory_format=torch.channels_last)
    x, y = _images((3, 32, 32), batch=16)
    first, second = _bf16_channels_last_grads(model, x, y), _bf16_channels_last_grads(model, x, y)
    for param, grad in first.items():
        assert torch.isfinite(grad).all(), param
        assert torch.equal(grad, second[param]), f"{param}: bf16 gradient differs between two identical calls"


def test_dilated_conv_bf16_weight_gradient_matches_fp32():
    from stn_ablation.models.blocks import DilatedConv2d

    torch.manual_seed(0)
    conv = DilatedConv2d(24, 48, 3, padding=2, dilation=2, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(16, 24, 32, 32).contiguous(memory_format=torch.channels_last)  # the shape that broke
    grads = []
    for amp in (False, True):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = conv(x)
        assert out.is_contiguous(memory_format=torch.channels_last)  # the layers after it stay in one layout
        (out.float() * torch.linspace(0, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append(conv.weight.grad.clone())
    fp32, bf16 = grads
    assert ((bf16 - fp32).norm() / fp32.norm()).item() < 0.01  # bf16 rounding is ~0.3% here; the bug gave inf


@pytest.mark.parametrize("size", [32, 15])
@pytest.mark.parametrize("groups", [1, 12])
def test_strided_dilated_conv_is_the_dilated_conv(size, groups):
    """With stride = dilation, DilatedConv2d runs the undilated kernel on every d-th pixel: the same function and
    gradients as a dilated nn.Conv2d (to fp32 summation order), for even and odd sizes."""
    from stn_ablation.models.blocks import DilatedConv2d

    torch.manual_seed(0)
    conv = DilatedConv2d(24, 24, 3, stride=2, padding=2, dilation=2, groups=groups, bias=False)
    x = torch.randn(4, 24, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    results = []
    for forward in (conv.forward, lambda t: torch.nn.Conv2d.forward(conv, t)):
        conv.zero_grad()
        x.grad = None
        out = forward(x * 1)  # a non-leaf input, as in the model
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
        results.append((out, conv.weight.grad.clone(), x.grad.clone()))
    (out, w_grad, x_grad), (ref_out, ref_w_grad, ref_x_grad) = results
    assert out.shape == ref_out.shape == (4, 24, (size + 1) // 2, (size + 1) // 2)
    for got, want in ((out, ref_out), (w_grad, ref_w_grad), (x_grad, ref_x_grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="padding"):
        DilatedConv2d(24, 24, 3, stride=2, padding=1, dilation=2)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_drops_p_of_the_elements_and_rescales_the_rest(layout, dtype):
    """blocks.Dropout draws its own mask on the CPU; it must still be nn.Dropout in distribution: a fraction p of
    zeros (within 6 standard deviations over 2**20 elements), the rest scaled by 1 / (1 - p), the gradient the
    same mask, and the input's memory layout kept."""
    from stn_ablation.models.blocks import Dropout

    p, shape = 0.05, (64, 16, 32, 32)
    x = torch.ones(shape, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    torch.manual_seed(0)
    out = Dropout(p).train()(x)
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) < 6 * (p * (1 - p) / out.numel()) ** 0.5
    kept = out[out != 0]
    assert torch.equal(kept, torch.full_like(kept, 1 / (1 - p)))
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad, out.detach())
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    per_channel = (out == 0).double().mean((0, 2, 3))  # one mask per element, not per channel or image
    assert per_channel.min().item() > 0.03 and per_channel.max().item() < 0.07


def test_dropout_follows_the_global_seed_and_is_off_in_eval():
    from stn_ablation.models.blocks import Dropout

    x = torch.randn(8, 4, 16, 16)
    masks = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        masks.append(Dropout(0.5).train()(x) == 0)
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])
    assert Dropout(0.5).eval()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
