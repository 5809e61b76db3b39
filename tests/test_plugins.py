"""Your own classifier as a plugin: found through a study's `plugins`, through `--plugin` and through an installed
package's entry point; its derived STN variants, sized to any input; and the one-line error of each way a plugin
can go wrong. Each test registers into a copy of the registry, so no test's plugin outlives it."""

from __future__ import annotations

import re
import sys
import textwrap

import pytest
import torch

from stn_ablation import cli, plugins
from stn_ablation.models import registry
from stn_ablation.models.registry import create_model, get_variant, list_variants
from stn_ablation.study.spec import load_spec

PLUGIN = '''
import torch.nn as nn
import stn_ablation


@stn_ablation.register_classifier("{name}")
def build(in_shape, num_classes):
    """A linear classifier on the flattened image."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], {outputs}))
'''


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """A copy of the registry and of the entry-point flag for each test, and its plugin modules (plugin_*)
    forgotten after it, so that the next test imports, and registers, its own."""
    monkeypatch.setattr(registry, "_VARIANTS", dict(registry._VARIANTS))
    monkeypatch.setattr(plugins, "_loaded_entry_points", True)
    yield
    for name in [m for m in sys.modules if m.startswith("plugin_")]:
        del sys.modules[name]


def _module(folder, name: str, body: str | None = None, outputs: str = "num_classes") -> str:
    (folder / f"{name}.py").write_text(body if body is not None else PLUGIN.format(name=name, outputs=outputs))
    return name


def _one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("stn-ablate: error: "), err
    return err


def test_a_studys_plugins_are_imported_from_beside_it_before_its_grid_is_read(tmp_path):
    name = _module(tmp_path, "plugin_study_linear")
    study = tmp_path / "mine.toml"
    study.write_text(textwrap.dedent(f'''
        name = "mine"
        description = "a plugin's classifier and its derived STN"
        plugins = ["{name}"]
        [grid]
        variant = ["{name}", "{name}+stn"]
        seed = [0, 1]
    '''))
    spec = load_spec(str(study))
    assert [c["variant"] for c in spec.cells()] == [name, name, f"{name}+stn", f"{name}+stn"]
    assert get_variant(f"{name}+stn").twin == name and get_variant(name).origin == name


def test_a_plugin_named_by_plugin_is_listed_with_its_derived_variants(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    name = _module(tmp_path, "plugin_cli_linear")
    assert cli.main(["list", "--plugin", name]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.split("\n\n")[0].splitlines()[1:]}
    derived = [f"{name}+frozen", f"{name}+stn", f"{name}+stn_loc3"]
    assert list(rows)[list(rows).index(name):][:4] == [name, *derived]  # each beside its classifier
    assert f"{3 * 32 * 32 * 10 + 10:,}" in rows[name] and f"[plugin {name}]" in rows[f"{name}+stn"]


def test_an_installed_packages_entry_point_registers_its_classifier(tmp_path, monkeypatch):
    """A package installed the ecosystem's way: its .dist-info names the module in group stn_ablation.variants,
    and the registry imports it on first use, with no --plugin."""
    name = _module(tmp_path, "plugin_entry_linear")
    info = tmp_path / "plugin_entry_linear-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-entry-linear\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINTS}]\nlinear = {name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded_entry_points", False)
    assert {name, f"{name}+stn", f"{name}+stn_loc3"} <= set(list_variants())
    assert create_model(f"{name}+stn", in_shape=(1, 28, 28), num_classes=3)(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


@pytest.mark.parametrize("in_shape", [(1, 17, 23), (3, 32, 32), (4, 96, 96)])
@pytest.mark.parametrize("suffix", ["+stn", "+stn_loc3"])
def test_a_derived_stn_fits_any_input_starts_at_the_identity_and_keeps_the_twins_classifier(tmp_path, monkeypatch,
                                                                                            in_shape, suffix):
    monkeypatch.chdir(tmp_path)
    plugins.load_plugins([_module(tmp_path, "plugin_shapes_linear")], tmp_path, "test")
    torch.manual_seed(5)
    stn = create_model("plugin_shapes_linear" + suffix, in_shape=in_shape, num_classes=7)
    torch.manual_seed(5)
    twin = create_model("plugin_shapes_linear", in_shape=in_shape, num_classes=7)
    a, b = stn.classifier.state_dict(), twin.classifier.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(3, *in_shape)
    with torch.no_grad():
        torch.testing.assert_close(stn.stn(x), x, rtol=0, atol=1e-4)  # the regressor's last layer: the identity
        torch.testing.assert_close(stn.eval()(x), twin.eval()(x), rtol=0, atol=1e-3)
    pooled = isinstance(stn.stn.features[0], torch.nn.AdaptiveAvgPool2d)
    assert pooled == (in_shape[1:] != (32, 32))  # sized to the input: pooled to the 32 x 32 its layers expect


@pytest.mark.parametrize("body, message", [
    ("import torch\nraise RuntimeError('no weights file')\n",
     r"plugin 'plugin_bad' \(--plugin\) failed to import: RuntimeError: no weights file; fix the module"),
    (None, r"plugin 'plugin_absent' \(--plugin\) not found: put plugin_absent.py in .* or install its package"),
    ("import stn_ablation\nstn_ablation.register_classifier('tutorial_cnn')(lambda s, n: None)\n",
     r"variant 'tutorial_cnn' is registered twice, by stn_ablation.models.tutorial and by plugin_bad: rename one"),
    ("import stn_ablation\nstn_ablation.register_classifier('plugin_bad')(lambda s, n: 'a model')\n",
     r"classifier 'plugin_bad' \(plugin_bad.<lambda>\) returned a str, not a torch.nn.Module: return the model"),
    (PLUGIN.format(name="plugin_bad", outputs="5"),
     r"classifier 'plugin_bad' \(plugin_bad.build\) maps a batch of 2 x 3 x 32 x 32 images to 2 x 5, not 2 x 10 "
     "logits: give its last layer num_classes outputs"),
    (PLUGIN.format(name="plugin_bad", outputs="num_classes").replace("in_shape[0] * ", ""),
     r"classifier 'plugin_bad' \(plugin_bad.build\) fails on a batch of 2 x 3 x 32 x 32 images \(RuntimeError: "
     r"mat1 and mat2 shapes cannot be multiplied .*\): size its layers from in_shape"),
])
def test_a_broken_plugin_is_one_line_naming_its_module(tmp_path, monkeypatch, capsys, body, message):
    monkeypatch.chdir(tmp_path)
    name = "plugin_absent" if body is None else _module(tmp_path, "plugin_bad", body)
    line = _one_line(capsys, cli.main(["list", "--plugin", name]))
    assert re.search(message, line), line


def test_a_studys_broken_plugin_names_the_study_file(tmp_path, capsys):
    study = tmp_path / "broken.toml"
    study.write_text('name = "broken"\ndescription = "x"\nplugins = ["plugin_nowhere"]\n[grid]\nseed = [0]\n')
    line = _one_line(capsys, cli.main(["run", "--study", str(study), "--home", str(tmp_path / "home")]))
    assert f"plugin 'plugin_nowhere' ({study}: plugins) not found: put plugin_nowhere.py in {tmp_path}/" in line
