"""Recipes: named pass pipelines stored as TOML inside the package.

A recipe file has a ``name``, a ``description``, a ``[pipeline]`` table
(``fixed_point``, ``max_iterations``), an array ``[[passes]]`` of tables with a
``name`` and the pass's options, and a ``[check]`` table (``rtol``, ``atol``).
``load_recipe`` takes a built-in name or a path to a user's ``.toml``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import UnknownPassError

__all__ = ["Recipe", "builtin_recipes", "load_recipe"]

_TOP_KEYS = {"name", "description", "pipeline", "passes", "check"}
_PIPELINE_KEYS = {"fixed_point", "max_iterations"}
_CHECK_KEYS = {"rtol", "atol"}


@dataclass
class Recipe:
    """A parsed recipe.

    Attributes:
        name: recipe name.
        passes: ``(pass name, options)`` in run order.
        fixed_point, max_iterations: how the pass manager repeats the sequence.
        rtol, atol: default tolerances of the check after optimizing.
    """

    name: str
    description: str = ""
    passes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fixed_point: bool = True
    max_iterations: int = 8
    rtol: float = 1e-4
    atol: float = 1e-5
    source: str = ""


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe names and their TOML text."""
    out = {}
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = entry.read_text(encoding="utf-8")
    return dict(sorted(out.items()))


def _unknown(keys, valid, where: str, source: str) -> None:
    bad = sorted(set(keys) - set(valid))
    if bad:
        raise UnknownPassError(f"{source}: unknown key {bad[0]!r} in {where}; valid keys: {', '.join(sorted(valid))}")


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Load a built-in recipe by name, or a ``.toml`` file by path.

    Raises:
        UnknownPassError: unknown recipe, unknown key, or unknown pass name (the
            message lists the valid names).
    """
    from ..passes import get_pass

    text = builtin_recipes().get(str(name_or_path))
    source = f"recipe {name_or_path!r}"
    if text is None:
        p = Path(name_or_path)
        if not (p.suffix == ".toml" and p.is_file()):
            raise UnknownPassError(
                f"unknown recipe {str(name_or_path)!r}; built-in recipes: {', '.join(builtin_recipes())} "
                "(or a path to a .toml file)"
            )
        text, source = p.read_text(encoding="utf-8"), str(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UnknownPassError(f"{source}: invalid TOML: {exc}") from None
    _unknown(data, _TOP_KEYS, "the recipe", source)
    pipeline = data.get("pipeline", {})
    _unknown(pipeline, _PIPELINE_KEYS, "[pipeline]", source)
    check = data.get("check", {})
    _unknown(check, _CHECK_KEYS, "[check]", source)
    passes = []
    for i, entry in enumerate(data.get("passes", [])):
        if "name" not in entry:
            raise UnknownPassError(f"{source}: [[passes]] entry {i + 1} has no name")
        options = {k: v for k, v in entry.items() if k != "name"}
        get_pass(entry["name"])  # raises with the list of valid names
        passes.append((entry["name"], options))
    return Recipe(
        name=data.get("name", str(name_or_path)),
        description=data.get("description", ""),
        passes=passes,
        fixed_point=bool(pipeline.get("fixed_point", True)),
        max_iterations=int(pipeline.get("max_iterations", 8)),
        rtol=float(check.get("rtol", 1e-4)),
        atol=float(check.get("atol", 1e-5)),
        source=source,
    )
