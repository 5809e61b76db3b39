"""The models' old module path. MLflow pickles a logged model with its classes' paths, and models logged before
the package layout name `stn_ablation.variants.blocks`; importing that module loads this alias, so they still load."""

import sys

from stn_ablation.models import blocks, loc3, paper, tutorial

for _module in (blocks, loc3, paper, tutorial):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
