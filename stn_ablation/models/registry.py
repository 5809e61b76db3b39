"""The one registry of model variants: a name -> factory dict, filled by the decorated factories of the families
(tutorial.py, loc3.py, paper.py), which the package's face imports; the registry imports no family."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from stn_ablation.config import FROZEN_LEARNED, TrainConfig
from stn_ablation.errors import ConfigError, UsageError
from stn_ablation.models.blocks import FixedTransform


@dataclass(frozen=True)
class Variant:
    """A registered model: its name, the factory that builds it, and the first line of the factory's docstring."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    twin: str | None  # for an STN variant: the variant with the same classifier and no transformer
    controls: str | None = None  # for a `<twin>+frozen` control: the STN variant whose transform it holds fixed

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


def register_variant(name: str, *, twin: str | None = None
                     ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory under `name`; a second factory with the same name is an error.
    An STN variant names its no-STN `twin`, which is what the ablation compares it with."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _VARIANTS:
            raise ValueError(f"variant {name!r} is registered twice")
        doc = (factory.__doc__ or "").strip().splitlines()
        _VARIANTS[name] = Variant(name, factory, doc[0] if doc else "", twin)
        return factory

    return decorate


def list_variants(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell-style pattern, sorted."""
    _derive_controls()
    return sorted(n for n in _VARIANTS if fnmatch.fnmatchcase(n, pattern))


def get_variant(name: str) -> Variant:
    _derive_controls()
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownVariantError(
            f"unknown variant {name!r}; choose one of: {', '.join(sorted(_VARIANTS))} (see `stn-ablate list`)"
        ) from None


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


FROZEN_SUFFIX = "+frozen"


def _derive_controls() -> None:
    """Derive each registered STN's frozen-transform control (the families are registered by the package's face,
    which imports them), on first use so that a family registered later gets one too."""
    for stn in [v for v in _VARIANTS.values() if v.has_transformer]:
        name = stn.twin + FROZEN_SUFFIX
        if name not in _VARIANTS:
            _VARIANTS[name] = Variant(name, _frozen_factory(_VARIANTS[stn.twin].factory),
                                      f"{stn.twin} behind a fixed, non-learned transform (config `frozen`): the "
                                      f"control of {stn.name}", None, controls=stn.name)


def _frozen_factory(twin: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """The factory of a twin's frozen control: the twin built first, so with the same seed its classifier is the
    twin's bit for bit, then a FixedTransform in front (the identity unless `frozen` names one)."""

    def build(in_shape=None, num_classes=None, frozen: str = "affine:1,0,0,0,1,0") -> nn.Module:
        from stn_ablation.config import frozen_transform

        model = twin(**{k: v for k, v in (("in_shape", in_shape), ("num_classes", num_classes)) if v is not None})
        model.stn = FixedTransform(*frozen_transform(frozen))
        return model
    return build
