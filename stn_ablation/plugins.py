"""Plugins: the modules that register a user's classifiers. A study's `plugins`, the command line's `--plugin
MODULE` and installed packages' entry points (group ENTRY_POINTS, as pytest finds its plugins) are all imported
here, so that a module that fails to import is one line naming it and where it was named."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable, Iterable

from stn_ablation.errors import PluginError, UsageError

ENTRY_POINTS = "stn_ablation.variants"  # an installed package's [project.entry-points."stn_ablation.variants"]
_loaded_entry_points = False


def load_plugins(modules: Iterable[str], folder: Path, named_by: str) -> None:
    """Import each of `modules` (once per process: Python keeps them, so a module named twice registers once),
    looking first in `folder` (the study file's, or for --plugin the current one). The folder stays on sys.path:
    a model of the plugin's classes that MLflow pickled loads by the same module name."""
    modules = list(modules)
    if not modules:
        return
    path = str(Path(folder).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    for module in modules:
        _import(module, lambda: importlib.import_module(module), named_by, folder)


def load_entry_points() -> None:
    """Import every installed plugin of group ENTRY_POINTS, once per process (the registry calls this on first
    use, so every command and `stn_ablation.create_model` see them)."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    from importlib.metadata import entry_points  # here: a command that builds no model does not pay its 20-40 ms

    for point in entry_points(group=ENTRY_POINTS):
        package = point.dist.name if point.dist else "an installed package"
        _import(point.module, point.load, f"entry point {point.name!r} of {package}", None)


def _import(module: str, load: Callable[[], object], named_by: str, folder: Path | None) -> None:
    try:
        load()
    except UsageError:  # the registry's own one-line errors (a name registered twice, ...) already name the module
        raise
    except ModuleNotFoundError as e:
        if e.name != module.partition(".")[0] and e.name != module:
            raise PluginError(f"plugin {module!r} ({named_by}) needs a module that is not installed: {e}; install "
                              "it") from None
        where = f"{folder}/ or " if folder is not None else ""
        raise PluginError(f"plugin {module!r} ({named_by}) not found: put {module.replace('.', '/')}.py in "
                          f"{where}a folder on PYTHONPATH, or install its package") from None
    except Exception as e:  # a plugin's own code: any failure is its author's to fix
        first = str(e).splitlines()[0] if str(e) else ""
        raise PluginError(f"plugin {module!r} ({named_by}) failed to import: {type(e).__name__}: {first}; fix "
                          "the module or stop naming it") from None
