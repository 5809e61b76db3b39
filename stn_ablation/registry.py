"""The one registry of model variants: a name -> factory dict, filled by decorated factories in `variants/`."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from stn_ablation.errors import UsageError


@dataclass(frozen=True)
class Variant:
    """A registered model: its name, the factory that builds it, and the first line of the factory's docstring."""

    name: str
    factory: Callable[..., nn.Module]
    description: str
    twin: str | None  # for an STN variant: the variant with the same classifier and no transformer

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
    _load_variants()
    return sorted(n for n in _VARIANTS if fnmatch.fnmatchcase(n, pattern))


def get_variant(name: str) -> Variant:
    _load_variants()
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


def _load_variants() -> None:
    """Import the variant modules, whose decorators fill the registry; deferred so `import registry` stays cheap."""
    import stn_ablation.variants  # noqa: F401
