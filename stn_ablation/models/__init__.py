"""Models: the registry of variants and the families that fill it. Importing any part of the package imports this
face, and so the families (tutorial, loc3, paper), whose decorators register their variants."""

from stn_ablation.models.registry import (UnknownVariantError, Variant, build_model, create_model, get_variant,
                                          list_variants, register_variant)
from stn_ablation.models import loc3, paper, tutorial  # noqa: F401  (last: they import the registry)

__all__ = ["UnknownVariantError", "Variant", "build_model", "create_model", "get_variant", "list_variants",
           "register_variant"]
