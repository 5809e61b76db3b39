"""Models: the registry of variants and the families that fill it (tutorial, loc3, paper)."""

from stn_ablation.models.registry import (UnknownVariantError, Variant, build_model, create_model, get_variant, list_variants,
                                          register_variant)

__all__ = ["UnknownVariantError", "Variant", "build_model", "create_model", "get_variant", "list_variants", "register_variant"]
