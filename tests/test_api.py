"""Python API: optimize/check/inspect take and return ModelProto or paths."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxpress
import onnxpress.graph.io as gio
from onnxpress.demo import load_demo
from onnxpress.errors import UnknownPassError


def test_optimize_proto_in_proto_out(tmp_path):
    model, x, y = load_demo()
    before = model.SerializeToString()
    result = onnxpress.optimize(model, recipe="lossless", check=[{"input": x[:32]}])
    assert isinstance(result.model, onnx.ModelProto)
    assert result.report.passed
    assert (result.before.nodes, result.after.nodes) == (7, 3)
    assert result.pass_totals()["remove-noops"]["nodes_removed"] == 3
    assert onnx.ModelProto.FromString(before).graph.node[0].op_type == "Flatten"
    assert len(model.graph.node) == 7  # the caller's model is left as it was
    path = result.save(tmp_path / "m.onnx")
    assert onnxpress.check(model, path, data=[{"input": x[:5]}]).passed
    assert onnxpress.inspect(path).op_types == {"Gemm": 2, "Relu": 1}


def test_passes_skip_and_overrides():
    model, _, _ = load_demo()
    only = onnxpress.optimize(model, recipe="lossless", passes=["remove-noops"], skip=["remove-noops"])
    assert only.after.nodes == 7 and only.records == []
    r = onnxpress.optimize(model, recipe="lossless", passes=["lift-constants", "fold-constants"], fold_constants={"max_output_bytes": 10})
    assert r.after.nodes == 6
    with pytest.raises(UnknownPassError, match="not in the pipeline"):
        onnxpress.optimize(model, recipe="lossless", passes=["lift-constants"], fold_constants={"max_output_bytes": 10})
    with pytest.raises(UnknownPassError, match="unknown recipe"):
        onnxpress.optimize(model, recipe="no-such-recipe")


def test_large_models_are_saved_with_external_data(tmp_path, monkeypatch):
    model, x, _ = load_demo()
    # As if the weights were over the 2 GB protobuf limit (the margin is 64 MiB).
    monkeypatch.setattr(gio, "PROTOBUF_LIMIT", (64 << 20) + 1000)
    result = onnxpress.optimize(model, recipe="lossless")
    path = result.save(tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    assert path.stat().st_size < 10_000
    # An external-data model is read back relative to its folder and optimizes again.
    again = onnxpress.optimize(str(path), recipe="lossless", check=[{"input": x[:4]}])
    assert again.report.passed


def test_user_recipe_file(tmp_path):
    model, _, _ = load_demo()
    recipe = tmp_path / "mine.toml"
    recipe.write_text('name = "mine"\n[[passes]]\nname = "remove-noops"\n')
    assert onnxpress.optimize(model, recipe=recipe).after.nodes == 4
    recipe.write_text('name = "mine"\n[[passes]]\nname = "remove-nops"\n')
    with pytest.raises(UnknownPassError, match="unknown pass 'remove-nops'"):
        onnxpress.optimize(model, recipe=recipe)
    recipe.write_text('name = "mine"\nbogus = 1\n')
    with pytest.raises(UnknownPassError, match="unknown key 'bogus'"):
        onnxpress.optimize(model, recipe=recipe)


def test_a_pass_listed_twice_gets_one_stats_entry_per_listing(tmp_path):
    """Progressive pruning in a user recipe (prune-channels, distill, twice, with
    their own ratios): pass_totals / to_dict keep each round apart (name#1,
    name#2) instead of summing them (a cosine above 1, MACs of both rounds)."""
    model, x, _ = load_demo()
    recipe = tmp_path / "progressive.toml"
    recipe.write_text(
        'name = "progressive"\n'
        '[[passes]]\nname = "prune-channels"\nratio = 0.2\n'
        '[[passes]]\nname = "distill"\n'
        '[[passes]]\nname = "prune-channels"\nratio = 0.1\n'
        '[[passes]]\nname = "distill"\n'
    )
    r = onnxpress.optimize(model, recipe=recipe, calibration=[{"input": x[i : i + 10]} for i in range(0, 100, 10)])
    totals = r.pass_totals()
    assert set(totals) == {"prune-channels#1", "distill#1", "prune-channels#2", "distill#2"}
    first, second = totals["prune-channels#1"], totals["prune-channels#2"]
    assert first["channels_removed"] > second["channels_removed"] > 0
    assert second["prunable"] == first["prunable"] - first["channels_removed"]  # the second round sees what is left
    assert second["macs_before"] == first["macs_after"] > second["macs_after"] == r.after.macs
    for d in (totals["distill#1"], totals["distill#2"]):
        assert d["layers_refit"] >= 1 and 0 < d["model_cosine_after"] <= 1
    line = next(ln for ln in r.pass_summary().splitlines() if ln.strip().startswith("prune-channels#2:"))
    assert f"channels_removed={second['channels_removed']:g}," in line
