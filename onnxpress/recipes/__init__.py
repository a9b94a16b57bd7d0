"""Recipes: named pass pipelines stored as TOML inside the package.

A recipe file (read with :mod:`tomllib`) has:

* ``name`` and ``description`` (strings);
* a ``[pipeline]`` table: ``fixed_point`` (bool, repeat the pass sequence until
  no pass modifies the model, in stages: a lossy pass runs once, after the
  lossless passes before it reached their fixed point; see
  :class:`~onnxpress.passes.PassManager`) and ``max_iterations`` (int, the cap
  per stage);
* an array ``[[passes]]`` of tables, each with a ``name`` (a registered pass,
  ``onnxpress passes`` lists them) and the pass's options;
* a ``[calibration]`` table: ``required`` (bool: the recipe cannot run without
  calibration data) and ``limit`` (int: use at most this many samples);
* a ``[check]`` table: ``rtol`` and ``atol``, the default tolerances of the
  check after optimizing, and optionally ``min_snr_db``, ``min_cosine``,
  ``min_top1``; per output name, a ``[check.outputs.NAME]`` table with the
  same keys overrides them for that output (see
  :class:`onnxpress.runtime_check.Tolerance`).

:func:`load_recipe` takes a built-in name (``onnxpress recipes`` lists them) or a
path to a user's ``.toml``; :func:`parse_recipe` takes TOML text. An unknown key,
pass name or pass option is reported with its line in the file and the list of
valid names, e.g. ``mine.toml:7: pass 'fold-constants' has no option
'max_bytes'; valid options: max_output_bytes``. (``tomllib`` gives no positions
for keys, so lines are found by scanning the text: :func:`key_lines`.)
"""
from __future__ import annotations

import hashlib
import os
import re
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

__all__ = ["Recipe", "builtin_recipes", "key_lines", "load_recipe", "parse_recipe"]

_TOP_KEYS = {"name", "description", "pipeline", "passes", "calibration", "check"}
_PIPELINE_KEYS = {"fixed_point", "max_iterations"}
_CALIBRATION_KEYS = {"required", "limit"}
_CHECK_KEYS = {"rtol", "atol", "min_snr_db", "min_cosine", "min_top1", "outputs"}
_OUTPUT_CHECK_KEYS = {"rtol", "atol", "min_snr_db", "min_cosine", "min_top1"}


@dataclass
class Recipe:
    """A parsed recipe.

    Attributes:
        name: recipe name.
        description: one line for ``onnxpress recipes``.
        passes: ``(pass name, options)`` in run order.
        fixed_point, max_iterations: how the pass manager repeats the sequence.
        rtol, atol: default tolerances of the check after optimizing.
        source: where the recipe came from (``recipe 'lossless'`` or a file path).
        calibration_required: the recipe's passes need calibration data.
        calibration_limit: use at most this many calibration samples (None: all).
        text: the TOML text the recipe was parsed from.
        check_options: the criterion keys the ``[check]`` table sets (laid over
            the default criterion of the candidate's kind by the check).
        check_outputs: ``[check.outputs.NAME]`` tables: criterion keys per output.
    """

    name: str
    description: str = ""
    passes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fixed_point: bool = True
    max_iterations: int = 8
    rtol: float = 1e-4
    atol: float = 1e-5
    source: str = ""
    calibration_required: bool = False
    calibration_limit: int | None = None
    text: str = ""
    check_options: dict[str, float] = field(default_factory=dict)
    check_outputs: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """sha256 (hex) of the recipe's TOML text: identifies the recipe in zoo reports."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe names and their TOML text."""
    out = {}
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = entry.read_text(encoding="utf-8")
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------
# Line numbers of keys (tomllib reports none)
# ---------------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"' + r"|'[^']*'"
_PART = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_KEY = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_PART)


def _parts(dotted: str) -> tuple[str, ...]:
    out = []
    for m in _PART_RE.finditer(dotted):
        p = m.group(0)
        if p[0] in "\"'":
            p = p[1:-1]
        out.append(p)
    return tuple(out)


def key_lines(text: str) -> dict[tuple, int]:
    """Line numbers (1-based) of the tables and keys of a TOML text.

    Keys of the returned dict:

    * ``(table path, index)`` for a table header, e.g. ``(("pipeline",), 0)`` or
      ``(("passes",), 2)`` for the third ``[[passes]]``;
    * ``(table path, index, key path)`` for a key, e.g.
      ``(("passes",), 2, ("max_output_bytes",))``; top-level keys have the
      table path ``()`` and index 0.

    A scan of the text, not a parser: lines inside multi-line strings are
    skipped; keys of inline tables are not listed (their parent key is).
    """
    lines: dict[tuple, int] = {}
    counts: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    index = 0
    in_string: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        m = _ARRAY_HEADER.match(line)
        if m:
            table = _parts(m.group(1))
            index = counts.get(table, 0)
            counts[table] = index + 1
            lines.setdefault((table, index), lineno)
        else:
            m = _TABLE_HEADER.match(line)
            if m:
                table, index = _parts(m.group(1)), 0
                lines.setdefault((table, index), lineno)
            else:
                m = _KEY.match(line)
                if m:
                    lines.setdefault((table, index, _parts(m.group(1))), lineno)
        for quote in ('"""', "'''"):
            if line.count(quote) % 2 == 1:
                in_string = quote
                break
    return lines


class _Where:
    """Formats ``source:line:`` prefixes for recipe errors."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines = key_lines(text)

    def __call__(self, table: tuple[str, ...] = (), index: int = 0, key: str | None = None) -> str:
        line = None
        if key is not None:
            line = self.lines.get((table, index, (key,)))
            if line is None:  # a dotted key such as check.atol = 1 at the top level
                for k, v in self.lines.items():
                    if len(k) == 3 and k[2][-1:] == (key,) and k[0] + k[2][:-1] == table:
                        line = v
                        break
        if line is None and key is not None and table == ():
            line = self.lines.get(((key,), 0))  # a table such as [bogus]
        if line is None:
            line = self.lines.get((table, index))
        return f"{self.source}:{line}" if line is not None else self.source


def _unknown(keys, valid, where: str, what: str) -> None:
    bad = [k for k in keys if k not in valid]
    if bad:
        raise UnknownPassError(f"{where}: unknown key {bad[0]!r} in {what}; valid keys: {', '.join(sorted(valid))}")


def _table(data: dict, key: str, where: _Where) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UnknownPassError(f"{where(key=key)}: {key!r} must be a table ([{key}])")
    return value


def _typed(value: Any, types: type | tuple[type, ...], what: str, where: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise UnknownPassError(f"{where}: {what} must be {names}, got {value!r}")
    return value


def parse_recipe(text: str, source: str = "recipe", default_name: str = "") -> Recipe:
    """Parse and validate a recipe's TOML text.

    Every pass name and option is checked against the registry (the pass is
    instantiated once with its options), so a recipe that loads will run.

    Args:
        text: the TOML text.
        source: what to call it in messages (a file path or ``recipe 'NAME'``).
        default_name: the name when the text has no ``name`` key.

    Returns:
        The :class:`Recipe`.

    Raises:
        UnknownPassError: invalid TOML, an unknown key, pass name or option, or a
            value of the wrong type; the message starts with ``source:line:`` and
            lists the valid names.
    """
    from ..passes import get_pass, make_pass

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UnknownPassError(f"{source}: invalid TOML: {exc}") from None
    where = _Where(source, text)
    for key in data:
        if key not in _TOP_KEYS:
            _unknown([key], _TOP_KEYS, where(key=key), "the recipe")
    pipeline = _table(data, "pipeline", where)
    for key in pipeline:
        _unknown([key], _PIPELINE_KEYS, where(("pipeline",), key=key), "[pipeline]")
    calibration = _table(data, "calibration", where)
    for key in calibration:
        _unknown([key], _CALIBRATION_KEYS, where(("calibration",), key=key), "[calibration]")
    check = _table(data, "check", where)
    for key in check:
        _unknown([key], _CHECK_KEYS, where(("check",), key=key), "[check]")
    check_outputs: dict[str, dict[str, float]] = {}
    for out_name, table in _table(check, "outputs", where).items():
        at = where(("check", "outputs", out_name))
        if not isinstance(table, dict):
            raise UnknownPassError(f"{at}: [check.outputs.{out_name}] must be a table")
        _unknown(table, _OUTPUT_CHECK_KEYS, at, f"[check.outputs.{out_name}]")
        check_outputs[out_name] = {
            k: float(_typed(v, (int, float), k, where(("check", "outputs", out_name), key=k))) for k, v in table.items()
        }
    check_options = {
        k: float(_typed(v, (int, float), k, where(("check",), key=k))) for k, v in check.items() if k != "outputs"
    }
    entries = data.get("passes", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UnknownPassError(f"{where(key='passes')}: 'passes' must be an array of tables ([[passes]])")
    passes = []
    for i, entry in enumerate(entries):
        at = where(("passes",), i)
        if "name" not in entry:
            raise UnknownPassError(f"{at}: [[passes]] entry {i + 1} has no name")
        name = entry["name"]
        try:
            cls = get_pass(name)
        except UnknownPassError as exc:
            raise UnknownPassError(f"{where(('passes',), i, 'name')}: {exc}") from None
        options = {k: v for k, v in entry.items() if k != "name"}
        try:
            make_pass(name, **options)
        except UnknownPassError as exc:
            bad = next((k for k in options if not _has_option(cls, k)), None)
            raise UnknownPassError(f"{where(('passes',), i, bad)}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise UnknownPassError(f"{at}: pass {name!r}: invalid options: {exc}") from None
        passes.append((name, options))
    limit = calibration.get("limit")
    if limit is not None:
        _typed(limit, int, "[calibration] limit", where(("calibration",), key="limit"))
    return Recipe(
        name=str(data.get("name", default_name)),
        description=str(data.get("description", "")),
        passes=passes,
        fixed_point=bool(_typed(pipeline.get("fixed_point", True), bool, "fixed_point", where(("pipeline",), key="fixed_point"))),
        max_iterations=int(_typed(pipeline.get("max_iterations", 8), int, "max_iterations", where(("pipeline",), key="max_iterations"))),
        rtol=float(_typed(check.get("rtol", 1e-4), (int, float), "rtol", where(("check",), key="rtol"))),
        atol=float(_typed(check.get("atol", 1e-5), (int, float), "atol", where(("check",), key="atol"))),
        source=source,
        calibration_required=bool(
            _typed(calibration.get("required", False), bool, "[calibration] required", where(("calibration",), key="required"))
        ),
        calibration_limit=limit,
        text=text,
        check_options=check_options,
        check_outputs=check_outputs,
    )


def _has_option(cls: type, key: str) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(cls) and key in {f.name for f in dataclasses.fields(cls)}


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Load a built-in recipe by name, or a ``.toml`` file by path.

    Args:
        name_or_path: a built-in name (``lossless``, ``edge-int8``...) or a path
            to a ``.toml`` file.

    Returns:
        The :class:`Recipe`.

    Raises:
        UnknownPassError: unknown recipe or missing file, invalid TOML, unknown
            key, pass name or option (the message gives the line and lists the
            valid names).
    """
    text = builtin_recipes().get(str(name_or_path))
    source = f"recipe {str(name_or_path)!r}"
    if text is None:
        p = Path(name_or_path)
        if p.suffix == ".toml" and not p.is_file():
            raise UnknownPassError(f"recipe file {str(p)!r} not found")
        if not (p.suffix == ".toml" and p.is_file()):
            raise UnknownPassError(
                f"unknown recipe {str(name_or_path)!r}; built-in recipes: {', '.join(builtin_recipes())} "
                "(or a path to a .toml file)"
            )
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UnknownPassError(f"recipe file {str(p)!r} cannot be read: {exc}") from None
        source = str(p)
    return parse_recipe(text, source, default_name=Path(str(name_or_path)).stem)
