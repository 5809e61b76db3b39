"""stn-ablate: does a spatial transformer help this classifier? The public API is the registry's four functions
below (README, "Your own classifier"); they load on first use, so `import stn_ablation` imports no torch."""

__all__ = ["create_model", "list_variants", "register_classifier", "register_variant"]


def __getattr__(name: str):
    if name in __all__:
        from stn_ablation.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'stn_ablation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
