"""Recipe files: built-ins as TOML in the package, user files, errors with line
numbers and the valid names, ``onnxpress recipes [show|check]``, and the
``edge-int8`` default of ``optimize`` that needs calibration."""
from __future__ import annotations

import sys
import textwrap

import pytest

import onnxpress
from onnxpress.cli import main
from onnxpress.demo import load_demo
from onnxpress.errors import InputError, UnknownPassError
from onnxpress.passes import registered_passes
from onnxpress.recipes import builtin_recipes, key_lines, load_recipe, parse_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_builtin_recipes_load_and_name_registered_passes():
    names = builtin_recipes()
    assert {"lossless", "edge-int8", "fp16", "int4-weights"} <= set(names)
    for name, text in names.items():
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.text == text and recipe.passes
        assert all(p in registered_passes() for p, _ in recipe.passes)
        assert len(recipe.sha256) == 64
    assert load_recipe("edge-int8").calibration_required
    assert not load_recipe("lossless").calibration_required


def test_recipes_cli_lists_shows_and_checks(tmp_path, capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    for name in builtin_recipes():
        assert name in listing
    assert "needs calibration" in listing
    assert main(["recipes", "show", "edge-int8"]) == 0
    shown = capsys.readouterr().out
    assert shown == builtin_recipes()["edge-int8"]
    assert tomllib.loads(shown)["name"] == "edge-int8"
    mine = tmp_path / "mine.toml"
    mine.write_text('name = "mine"\n[[passes]]\nname = "remove-noops"\n')
    assert main(["recipes", "show", str(mine)]) == 0
    assert 'name = "mine"' in capsys.readouterr().out
    assert main(["recipes", "check", str(mine)]) == 0
    assert "ok: recipe 'mine', 1 passes (remove-noops)" in capsys.readouterr().out
    assert main(["recipes", "show", "no-such"]) == 2
    assert "built-in recipes: " in capsys.readouterr().err
    assert main(["recipes", "show"]) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "x"\nbogus = 1\n', r"mine\.toml:2: unknown key 'bogus' in the recipe; valid keys: calibration, check, description, name, passes, pipeline"),
        ('name = "x"\n\n[extra]\na = 1\n', r"mine\.toml:3: unknown key 'extra' in the recipe"),
        ('[pipeline]\nfixed_point = true\nmax_iters = 3\n', r"mine\.toml:3: unknown key 'max_iters' in \[pipeline\]; valid keys: fixed_point, max_iterations"),
        ('[check]\natol = 1e-5\ntolerance = 3\n', r"mine\.toml:3: unknown key 'tolerance' in \[check\]; valid keys: atol, .*rtol"),
        ('[calibration]\nrequire = true\n', r"mine\.toml:2: unknown key 'require' in \[calibration\]; valid keys: limit, required"),
        (
            '[[passes]]\nname = "lift-constants"\n\n[[passes]]\n# a comment\nname = "fold-constant"\n',
            r"mine\.toml:6: unknown pass 'fold-constant'; valid passes: .*fold-constants",
        ),
        (
            '[[passes]]\nname = "fold-constants"\nmax_output_bytes = 10\nmax_bytes = 3\n',
            r"mine\.toml:4: pass 'fold-constants' has no option 'max_bytes'; valid options: .*max_output_bytes",
        ),
        ('[[passes]]\nmax_output_bytes = 10\n', r"mine\.toml:1: \[\[passes\]\] entry 1 has no name"),
        ('[pipeline]\nmax_iterations = "8"\n', r"mine\.toml:2: max_iterations must be int"),
        ('[check]\natol = true\n', r"mine\.toml:2: atol must be int or float"),
        ('name = \n', r"mine\.toml: invalid TOML"),
    ],
)
def test_recipe_errors_give_line_and_valid_names(tmp_path, text, message):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    with pytest.raises(UnknownPassError, match=message):
        load_recipe(path)


def test_recipe_error_through_cli_optimize(tmp_path, capsys):
    model, _, _ = load_demo()
    import onnx

    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "r.toml").write_text('name = "r"\n[[passes]]\nname = "remove-noops"\nspeed = 3\n')
    code = main(["optimize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--recipe", str(tmp_path / "r.toml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "r.toml:4: pass 'remove-noops' has no option 'speed'" in err
    assert not (tmp_path / "o.onnx").exists()
    assert main(["recipes", "check", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_user_recipe_with_calibration_and_check_tables(tmp_path):
    text = textwrap.dedent(
        '''\
        name = "mine"
        description = """multi-line
        name = "not a key"
        """
        [pipeline]
        fixed_point = false
        max_iterations = 2

        [[passes]]
        name = "remove-noops"

        [[passes]]
        name = "quantize-int8"
        method = "minmax"

        [calibration]
        required = true
        limit = 3

        [check]
        rtol = 1
        atol = 1
        '''
    )
    recipe = parse_recipe(text, "mine.toml")
    assert recipe.name == "mine" and not recipe.fixed_point and recipe.max_iterations == 2
    assert recipe.passes == [("remove-noops", {}), ("quantize-int8", {"method": "minmax"})]
    assert recipe.calibration_required and recipe.calibration_limit == 3
    assert (recipe.rtol, recipe.atol) == (1.0, 1.0)
    lines = key_lines(text)
    assert lines[(("passes",), 1, ("method",))] == 14
    assert lines[(("passes",), 1)] == 12
    assert lines[((), 0, ("name",))] == 1  # the "name =" inside the string is not a key
    assert lines[(("calibration",), 0, ("limit",))] == 18
    model, x, _ = load_demo()
    with pytest.raises(InputError, match="needs calibration"):
        onnxpress.optimize(model, recipe=recipe)
    result = onnxpress.optimize(model, recipe=recipe, calibration=[{"input": x[i : i + 1]} for i in range(10)])
    assert result.after.op_types.get("QuantizeLinear", 0) > 0


def test_key_lines_dotted_and_quoted_keys():
    text = '"a b".c = 1\n[t."x.y"]\nk = 2\n[[arr]]\nv = 1\n[[arr]]\nv = 2\n'
    lines = key_lines(text)
    assert lines[((), 0, ("a b", "c"))] == 1
    assert lines[(("t", "x.y"), 0, ("k",))] == 3
    assert lines[(("arr",), 1, ("v",))] == 7


def test_optimize_defaults_to_edge_int8_and_asks_for_calibration():
    model, x, _ = load_demo()
    with pytest.raises(InputError, match=r"recipe 'edge-int8' needs calibration data: give --calib on the command line or calibration= in Python"):
        onnxpress.optimize(model)
    result = onnxpress.optimize(model, calibration=[{"input": x[i : i + 8]} for i in range(0, 64, 8)], check=True)
    assert result.recipe.name == "edge-int8"
    assert result.after.op_types.get("QuantizeLinear", 0) > 0
    optimized, report = result  # unpacks as (model, report)
    assert optimized.graph.node and report is result.report
    # An explicit pass list without a quantizer needs no calibration.
    assert onnxpress.optimize(model, passes=["remove-noops"]).after.nodes == 4
    d = result.to_dict()
    assert d["recipe"] == "edge-int8" and d["before"]["nodes"] == 7 and "quantize-int8" in d["passes"]
