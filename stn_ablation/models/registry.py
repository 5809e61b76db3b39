"""The one registry of model variants: a name -> factory dict, filled by the decorated factories of the families
(tutorial.py, loc3.py, paper.py), which the package's face imports, and by plugins' classifiers, from which it
derives their STN variants and frozen controls; the registry imports no family."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from stn_ablation import plugins
from stn_ablation.config import FROZEN_LEARNED, TrainConfig
from stn_ablation.errors import ConfigError, PluginError, UsageError
from stn_ablation.models.blocks import (FixedTransform, SpatialTransformer, STNClassifier, loc3_localization,
                                        sized_localization, tutorial_localization)


@dataclass(frozen=True)
class Variant:
    """A registered model: its name, the factory that builds it, and the first line of the factory's docstring."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    twin: str | None  # for an STN variant: the variant with the same classifier and no transformer
    controls: str | None = None  # for a `<twin>+frozen` control: the STN variant whose transform it holds fixed
    origin: str = ""  # the module that registered it (for a derived variant, its classifier's): a plugin's name
    classifier: bool = False  # registered by register_classifier: the registry derives its STN variants

    @property
    def has_transformer(self) -> bool:
        """Only a variant with a transformer names a twin; it alone takes a transform family and a localization
        rate."""
        return self.twin is not None


class UnknownVariantError(UsageError, KeyError):
    """Raised for a variant name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


_VARIANTS: dict[str, Variant] = {}
DEFAULT_SHAPE = (3, 32, 32)  # C x H x W a variant is built for when no shape is given (`stn-ablate list`)
DEFAULT_CLASSES = 10
# the STN variants derived from each registered classifier: name suffix -> (localization stem, what list says)
DERIVED_STNS = {"+stn": (tutorial_localization, "the tutorial's 2-conv localization net"),
                "+stn_loc3": (loc3_localization, "loc3's 3-conv localization net")}
FROZEN_SUFFIX = "+frozen"


def register_variant(name: str, *, twin: str | None = None
                     ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory under `name`; a second factory with the same name is an error.
    An STN variant names its no-STN `twin`, which is what the ablation compares it with. The factory returns an
    STNClassifier; for any other classifier, register_classifier derives the pair."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _add(Variant(name, factory, _first_line(factory), twin, origin=factory.__module__))
        return factory

    return decorate


def register_classifier(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator for a classifier factory `(in_shape, num_classes) -> nn.Module` mapping B x C x H x W images to
    B x num_classes logits: registers it as variant `name`, the no-STN twin of the STN variants the registry
    derives from it, `name+stn` and `name+stn_loc3` (a transformer in front, its localization net sized to the
    input), and of its frozen control `name+frozen`."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _add(Variant(name, _twin_factory(name, factory), _first_line(factory), None, origin=factory.__module__,
                     classifier=True))
        return factory

    return decorate


def _first_line(factory: Callable) -> str:
    doc = (factory.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def _add(variant: Variant) -> None:
    if "+" in variant.name:
        raise PluginError(f"variant {variant.name!r} (registered by {variant.origin}) has a '+', which marks the "
                          "variants the registry derives (+stn, +frozen): rename it")
    if variant.name in _VARIANTS:
        raise PluginError(f"variant {variant.name!r} is registered twice, by {_VARIANTS[variant.name].origin} and "
                          f"by {variant.origin}: rename one")
    _VARIANTS[variant.name] = variant


def list_variants(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell-style pattern, sorted (a classifier's derived variants follow it)."""
    _derive()
    return sorted(n for n in _VARIANTS if fnmatch.fnmatchcase(n, pattern))


def get_variant(name: str) -> Variant:
    _derive()
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(
            f"unknown variant {name!r}; choose one of: {', '.join(sorted(_VARIANTS))} (see `stn-ablate list`; "
            "a plugin's variants need --plugin MODULE or the study's plugins)") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build variant `name`. Keyword arguments that are None are dropped, so an unset CLI flag never overrides a
    variant's own default (the timm convention)."""
    return get_variant(name).factory(**{k: v for k, v in kwargs.items() if v is not None})


def build_model(cfg: TrainConfig, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Seed, then build: an STN variant, its twin and its frozen control get the same classifier initialization.
    Only a variant with a transformer (one with a twin) takes the config's transform family, only a control its
    `frozen` transform, which a study resolves before training when it is "learned"."""
    torch.manual_seed(cfg.seed)
    variant = get_variant(cfg.variant)
    if variant.controls and cfg.frozen in ("", FROZEN_LEARNED):
        raise ConfigError(f"{cfg.variant} needs its fixed transform: set frozen to <family>:<parameters> (e.g. "
                          f"attention:1.63,0,0), or to \"{FROZEN_LEARNED}\" in a study that also runs "
                          f"{variant.controls}")
    return create_model(cfg.variant, in_shape=in_shape, num_classes=num_classes,
                        transform=cfg.transform if variant.has_transformer else None,
                        frozen=cfg.frozen if variant.controls else None)


def _derive() -> None:
    """On first use, import the installed plugins (plugins.ENTRY_POINTS); then derive each registered classifier's
    STN variants and each STN's frozen-transform control, on every use so that a variant registered later (a
    plugin named by a study) gets them too. With several STNs of one twin, the control is the first's."""
    plugins.load_entry_points()
    for classifier in [v for v in _VARIANTS.values() if v.classifier]:
        for suffix, (stem, what) in DERIVED_STNS.items():
            name = classifier.name + suffix
            if name not in _VARIANTS:
                _VARIANTS[name] = Variant(name, _stn_factory(classifier.factory, stem),
                                          f"{classifier.name} behind a spatial transformer with {what}",
                                          classifier.name, origin=classifier.origin)
    for stn in [v for v in _VARIANTS.values() if v.has_transformer]:
        name = stn.twin + FROZEN_SUFFIX
        if name not in _VARIANTS:
            _VARIANTS[name] = Variant(name, _frozen_factory(_VARIANTS[stn.twin].factory),
                                      f"{stn.twin} behind a fixed, non-learned transform (config `frozen`): the "
                                      f"control of {stn.name}", None, controls=stn.name, origin=stn.origin)


def _twin_factory(name: str, factory: Callable[..., nn.Module]) -> Callable[..., STNClassifier]:
    """The factory of a registered classifier's variant: the classifier, checked, as an STNClassifier without a
    transformer, so that it is built, trained and pictured like every other variant."""

    def build(in_shape=DEFAULT_SHAPE, num_classes=DEFAULT_CLASSES) -> STNClassifier:
        return STNClassifier(_checked(name, factory, tuple(in_shape), num_classes))
    return build


def _checked(name: str, factory: Callable[..., nn.Module], in_shape: tuple[int, int, int], num_classes: int
             ) -> nn.Module:
    """`factory(in_shape, num_classes)`, or a PluginError naming its module when it returns no nn.Module or one
    that does not map a batch of 2 images to 2 x num_classes logits. The trial forward runs in eval mode with the
    random state restored after it, so it changes neither the weights nor what the seed draws next."""
    where = f"classifier {name!r} ({factory.__module__}.{factory.__qualname__})"
    model = factory(in_shape, num_classes)
    if not isinstance(model, nn.Module):
        raise PluginError(f"{where} returned a {type(model).__name__}, not a torch.nn.Module: return the model")
    batch = f"a batch of 2 x {' x '.join(map(str, in_shape))} images"
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            training = model.training
            out = model.eval()(torch.zeros(2, *in_shape))
            model.train(training)
    except Exception as e:  # the user's forward: any failure is theirs to fix
        raise PluginError(f"{where} fails on {batch} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                          ": size its layers from in_shape") from None
    got = " x ".join(map(str, out.shape)) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        raise PluginError(f"{where} maps {batch} to {got}, not 2 x {num_classes} logits: give its last layer "
                          "num_classes outputs")
    return model


def _stn_factory(twin: Callable[..., STNClassifier], stem: Callable[[int], nn.Sequential]
                 ) -> Callable[..., STNClassifier]:
    """The factory of a classifier's derived STN variant: the twin built first, so with the same seed its classifier
    is the twin's bit for bit, then a SpatialTransformer with `stem`'s localization net sized to the input (its
    regressor's last layer at the identity) in front."""

    def build(in_shape=DEFAULT_SHAPE, num_classes=DEFAULT_CLASSES, transform: str = "affine") -> STNClassifier:
        model = twin(in_shape, num_classes)
        model.stn = SpatialTransformer(sized_localization(stem, tuple(in_shape)), tuple(in_shape), family=transform)
        return model
    return build


def _frozen_factory(twin: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The factory of a twin's frozen control: the twin built first, so with the same seed its classifier is the
    twin's bit for bit, then a FixedTransform in front (the identity unless `frozen` names one)."""

    def build(in_shape=None, num_classes=None, frozen: str = "affine:1,0,0,0,1,0") -> nn.Module:
        from stn_ablation.config import frozen_transform

        model = twin(**{k: v for k, v in (("in_shape", in_shape), ("num_classes", num_classes)) if v is not None})
        model.stn = FixedTransform(*frozen_transform(frozen))
        return model
    return build
