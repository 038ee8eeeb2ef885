"""MkDocs hook: generate the reference pages during every build (``mkdocs.yml``'s ``hooks:``).

``reference/cli.md`` is written from the argument parsers (``mase_lite.cli.build_parser``),
``reference/config.md`` from the config dataclasses (``search.config.RunConfig`` and its tables, the
``transform`` and ``train`` files, every registered pass and number format) and
``reference/benchmarks.md`` from the docstrings of ``benchmarks/*.py`` (read, not imported). Nothing here is
committed as Markdown, so the reference cannot drift from the code: an option or field added,
removed or renamed shows up in the next build, and ``mkdocs build --strict`` (``make docs``,
``tests/test_docs.py``) fails if generating a page fails.

Valid values come from the code, too: ``Literal`` types give their choices, and every other
scalar field is *probed* -- the config class is asked to validate an out-of-range number or an
unknown string, and the range or the choices its own ConfigError names are shown.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import re
import textwrap
import types
import typing
from typing import Any, Literal, Union

# Building the reference never needs the network (a config class probed below must not reach the hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/config.md"
BENCH_PAGE = "reference/benchmarks.md"


# --------------------------------------------------------------------------- MkDocs entry point


def on_files(files, config):  # noqa: D103  (MkDocs hook)
    from mkdocs.structure.files import File

    for uri, make in ((CLI_PAGE, cli_markdown), (CONFIG_PAGE, config_markdown), (BENCH_PAGE, benchmarks_markdown)):
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=make()))
    return files


_ROLE_HTML = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):(<code>)~?")


def on_page_content(html, page, config, files):  # noqa: D103  (MkDocs hook)
    # Docstrings are reST-flavoured; mkdocstrings renders :class:`X` as ":class:<code>X</code>": drop the role.
    return _ROLE_HTML.sub(r"\1", html)


# --------------------------------------------------------------------------- helpers


def _cell(text: Any) -> str:
    """Text for one Markdown table cell (pipes escaped, one line)."""
    s = " ".join(str(text).split())
    return s.replace("|", "\\|")


def _code(text: Any) -> str:
    s = str(text)
    tick = "``" if "`" in s else "`"
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{tick}{pad}{s}{pad}{tick}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _rst_to_md(doc: str) -> str:
    """Docstring text (reST-flavoured) as Markdown: ``x`` -> `x`, :role:`x` -> `x`, literal blocks fenced."""
    doc = inspect.cleandoc(doc or "")
    doc = re.sub(r":(?:class|func|meth|mod|data|attr|obj|exc):`~?([^`]+)`", r"`\1`", doc)
    doc = doc.replace("``", "`")
    out: list[str] = []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines):
            out.append(line.rstrip()[:-1] if not line.rstrip().endswith(" ::") else line.rstrip()[:-3])
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```text", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


# --------------------------------------------------------------------------- CLI reference


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help or ""
    return ""


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class(prog=parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _action_rows(parser: argparse.ArgumentParser, action: argparse.Action) -> list[str]:
    formatter = parser.formatter_class(prog=parser.prog, width=100)
    if action.option_strings:
        names = ", ".join(_code(o) for o in action.option_strings)
        takes = action.nargs != 0
        arg = _code(formatter._format_args(action, action.dest.upper())) if takes else ""
    else:
        names = _code(action.metavar or action.dest)
        arg = ""
    help_text = formatter._expand_help(action) if action.help else ""
    extra = []
    if action.choices is not None and not arg.startswith("`{"):
        extra.append("choices: " + ", ".join(_code(c) for c in action.choices))
    if action.required and action.option_strings:
        extra.append("**required**")
    if isinstance(action, argparse._AppendAction):
        extra.append("repeatable")
    default = action.default
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                           argparse._CountAction, argparse.BooleanOptionalAction)) or not action.option_strings:
        default_s = "" if not isinstance(action, argparse.BooleanOptionalAction) else _code(default)
    else:
        default_s = "" if default in (None, argparse.SUPPRESS) or default == [] else _code(default)
    desc = "; ".join(x for x in [_cell(help_text), *extra] if x)
    return [f"| {names} | {arg} | {default_s} | {desc} |"]


def _parser_section(parser: argparse.ArgumentParser, path: list[str], help_line: str, depth: int) -> list[str]:
    title = " ".join(path)
    out = [f"{'#' * depth} `{title}`", ""]
    if help_line:
        out += [help_line[0].upper() + help_line[1:] + ("" if help_line.endswith(".") else "."), ""]
    if parser.description and parser.description != help_line:
        out += [parser.description, ""]
    out += ["```text", _usage(parser), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
                   and not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        out += [f"**{group.title}**", ""]
        if group.description:
            out += [group.description, ""]
        out += ["| option | argument | default | description |", "|---|---|---|---|"]
        for action in actions:
            out += _action_rows(parser, action)
        out.append("")
    for name, sub in _subparsers(parser).items():
        out += _parser_section(sub, [*path, name], _help_of(parser, name), min(depth + 1, 4))
    return out


def cli_markdown() -> str:
    """The CLI reference page: every command and subcommand with every option."""
    from mase_lite.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; fixed width for stable pages
    try:
        parser = build_parser()
        subs = _subparsers(parser)
        out = [
            "# CLI reference",
            "",
            "<!-- Generated at build time from mase_lite/cli.py's parsers by docs/_gen/hooks.py; do not edit. -->",
            "",
            "Every `mase-lite` command with every option, generated from the argument parsers when the "
            "site is built, so it always matches the installed code. `mase-lite COMMAND --help` prints "
            "the same. A user error (bad config key or value, missing data, unreachable storage) prints "
            "one line naming the field and the valid values and exits with status 2; `--debug` shows the "
            "traceback instead.",
            "",
            "Commands: " + ", ".join(f"[`{n}`](#{_slug('mase-lite ' + n)})" for n in subs) + ".",
            "",
        ]
        out += _parser_section(parser, ["mase-lite"], "", 2)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- config reference


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)) and len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    tp, optional = _unwrap_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        s = "string" if all(isinstance(a, str) for a in args) else "one of"
    elif origin in (Union, types.UnionType):
        s = " or ".join(_type_name(a) for a in args if a is not type(None))
    elif origin in (list, tuple):
        s = f"list of {_type_name(args[0]) if args else 'values'}"
    elif origin is dict:
        s = f"table of {_type_name(args[1])}" if len(args) == 2 else "table"
    elif tp is Any:
        s = "any"
    elif isinstance(tp, type) and _is_config(tp):
        s = "table"
    else:
        s = {bool: "bool", int: "integer", float: "number", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))
    return s + (" (optional)" if optional else "")


def _is_config(tp: Any) -> bool:
    from mase_lite.config import Config

    return isinstance(tp, type) and issubclass(tp, Config)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
    else:
        return "**required**"
    if _is_config(type(v)):
        return "(table defaults)"
    return _code(_toml(v))


def _toml(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    if _is_config(type(v)):
        return _toml(v.to_dict())
    return repr(v)


def _field_comments(cls: type) -> dict[str, str]:
    """``#:`` comments above each field of ``cls`` (Sphinx's attribute-comment convention)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = src.splitlines()
    out: dict[str, str] = {}
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment: list[str] = []
            j = node.lineno - 2
            while j >= 0 and lines[j].strip().startswith("#:"):
                comment.insert(0, lines[j].strip()[2:].strip())
                j -= 1
            if comment:
                out[node.target.id] = " ".join(comment)
    return out


_PROBE_ERRORS = (Exception,)

#: Fields whose TOML form differs from the dataclass field: what to write instead.
FIELD_NOTES = {
    ("QuantizeConfig", "entries"): "Not a key itself: every other key of the table is an entry, `{config = {...}}` "
                                   "as in [`default`](#passes-quantize-default): an op type (`linear`, `embedding`, "
                                   "`attention`, ...) with `by = \"type\"`, a node name or module path with "
                                   "`by = \"name\"`, a regular expression with `by = \"regex_name\"`.",
    ("QuantizeConfig", "resolved"): "Written by the pass (the concrete formats of `\"auto\"` choices), recorded in "
                                    "the history; not written by hand.",
    ("QuantEntryConfig", "roles"): "Not a key itself: each role's format fields, as `<role>_<field>` keys "
                                   "(`weight_width = 8`), a shared `<field>` key for every role, or a `<role>` "
                                   "sub-table; roles `data_in`, `weight`, `bias`, `data_out`; fields: "
                                   "[Number formats](#number-formats).",
    ("QuantEntryConfig", "shared"): "Not a key itself: format fields given once for every role (`width = 8`).",
    ("PruneConfig", "nodes"): "Per-node overrides: `nodes.\"<node name or module path>\" = {weight = {...}, "
                              "activation = {...}}` (regular expressions with `by = \"regex_name\"`).",
    ("CalibrateConfig", "ranges"): "Filled in by the pass (node -> role -> `{min, max, absmax}`); not written by hand.",
}


def _probe(cls: type, name: str, tp: Any, base: dict[str, Any]) -> str:
    """Valid values of field ``name`` as ``cls``'s own validation reports them ('' if it says nothing)."""
    from mase_lite.errors import ConfigError

    inner, _ = _unwrap_optional(tp)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is Literal:
        return ", ".join(_code(a if isinstance(a, str) else _toml(a)) for a in args)
    if inner is bool:
        return "`true`, `false`"
    item = args[0] if origin in (list, tuple) and args else None
    scalar = item if item is not None else inner
    if origin in (Union, types.UnionType):
        lits = [a for a in args if typing.get_origin(a) is Literal]
        rest = [a for a in args if typing.get_origin(a) is not Literal and a is not type(None)]
        choices = [_code(_toml(x)) for lit in lits for x in typing.get_args(lit)]
        rng = _probe(cls, name, rest[0], base) if len(rest) == 1 else ""
        return ", ".join(x for x in [rng, *choices] if x)
    if scalar in (int, float):
        probes = [-(10**9), 10**6]
    elif scalar is str:
        probes = ["\u2047not-a-valid-value"]
    else:
        return ""
    lo = hi = None
    choices = ""
    for value in probes:
        data = {**base, name: [value] if item is not None else value}
        try:
            cls.from_dict(data)
        except ConfigError as exc:
            msg = str(exc)
            m = re.search(r"must be in \[([^,\]]+), ([^\]]+)\]", msg)
            if m:
                lo, hi = m.group(1), re.sub(r" = \S+$", "", m.group(2))
            m = re.search(r"choose one of: (.*?)(?:\s*\(|;|$)", msg)
            if m and not choices:
                choices = m.group(1).strip().rstrip(".")
            m = re.search(r"valid(?: values)?: (\[.*?\]|[^;)]*)", msg)
            if m and not choices and "valid keys" not in msg:
                choices = m.group(1).strip().rstrip(".")
        except _PROBE_ERRORS:
            pass
    if choices:
        return _cell(choices.replace("'", "`") if "'" in choices else choices)
    if lo is not None or hi is not None:
        lo_s = "" if lo in (None, "-inf") else lo
        hi_s = "" if hi in (None, "inf") else hi
        if lo_s and hi_s:
            return f"{lo_s} to {hi_s}" + (" (each)" if item is not None else "")
        if lo_s:
            return f"&ge; {lo_s}" + (" (each)" if item is not None else "")
        if hi_s:
            return f"&le; {hi_s}" + (" (each)" if item is not None else "")
    return ""


def _required_base(cls: type) -> dict[str, Any]:
    """Values for the required fields of ``cls`` that let ``from_dict`` succeed (best effort)."""
    base: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            tp, _ = _unwrap_optional(hints[f.name])
            base[f.name] = 8 if tp in (int, float) or typing.get_origin(tp) in (Union, types.UnionType) else "x"
    return base


def _config_table(cls: type, table: str, *, skip: tuple[str, ...] = (), notes: dict[str, str] | None = None,
                  depth: int = 3) -> list[str]:
    """A section for the TOML table ``table`` read by ``cls``: its docstring and every field."""
    notes = notes or {}
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            comments = {**_field_comments(base), **comments}
    base = _required_base(cls)
    if table.startswith("format "):
        heading = f"`{table[len('format '):]}`"
    else:
        heading = f"`[{table}]`"
    out = [f"{'#' * depth} {heading} {{ #{_slug(table)} }}", "", f"Read by `{cls.__module__}.{cls.__qualname__}`.", ""]
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        out += [_rst_to_md(cls.__doc__), ""]
    out += ["| key | type | default | valid values | notes |", "|---|---|---|---|---|"]
    nested = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or f.name == "path":
            continue
        tp = hints[f.name]
        inner, _ = _unwrap_optional(tp)
        if _is_config(inner):
            sub = f"{table}.{f.name}" if table else f.name
            nested.append((f.name, inner, sub))
            out.append(f"| `{f.name}` | table | | | see [`[{sub}]`](#{_slug(sub)}) |")
            continue
        note = notes.get(f.name) or FIELD_NOTES.get((cls.__name__, f.name)) or comments.get(f.name, "")
        valid = _probe(cls, f.name, tp, base)
        out.append(f"| `{f.name}` | {_type_name(tp)} | {_default(f)} | {valid} | {_cell(note)} |")
    if out[-1] == "|---|---|---|---|---|":
        out[-2:] = ["No keys."]
    out.append("")
    for name, sub_cls, sub in nested:
        out += _config_table(sub_cls, sub, depth=depth)
    return out


def config_markdown() -> str:
    """The configuration reference page: every TOML file, table and field."""
    from mase_lite.commands.transform import TransformFile
    from mase_lite.data import DataConfig
    from mase_lite.models import ModelConfig
    from mase_lite.training import TrainConfig
    from passes.formats import format_names, get_config_cls
    from passes.registry import PASSES, available_passes
    from search.config import RunConfig

    available_passes()  # registers the built-in passes
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated at build time from the config dataclasses by docs/_gen/hooks.py; do not edit. -->",
        "",
        "Every TOML table and key that mase-lite reads, generated from the config dataclasses when the "
        "site is built. *Default* is the value when the key is absent (`unset`: no value, the behaviour "
        "the notes describe). *Valid values* are what the code accepts: a `Literal` type's choices, or "
        "the range and choices that the class's own validation reports when it is given an "
        "out-of-range value (blank: any value of the type; the notes and the class text above the "
        "table say more). An unknown key or a bad value is one error naming the key and the valid "
        "values. `mase-lite search --set TABLE.KEY=VALUE` overrides any key from the command line.",
        "",
        "Files:",
        "",
        "- [Search run config](#search-run-config) — `mase-lite search`, `mase-lite bench build` and "
        "`bench replay` (`examples/quickstart.toml`, `examples/lab2_*.toml`).",
        "- [Transform config](#transform-config) — `mase-lite transform` (`examples/lab2_compression.toml`).",
        "- [Train config](#train-config) — `mase-lite train` and `mase-lite eval`: `[model]`, `[data]` and "
        "`[train]` tables, the same classes as below.",
        "- [Passes](#passes) — the `[passes.<name>]` tables of a pipeline (`run_pipeline`, the transform "
        "config, a search's `[compression]`).",
        "- [Number formats](#number-formats) — the fields of each format in a `quantize` entry.",
        "",
        "## Search run config",
        "",
        "One TOML file; each top-level table below. Read by `search.config.RunConfig` "
        "(`search.load_run_config`).",
        "",
    ]
    hints = typing.get_type_hints(RunConfig)
    run_notes = {
        "finetune": "The fine-tune epoch of `compress_finetune`: any [`[train]`](#train) key, overriding "
                    "`[train]` for that epoch (one epoch unless `epochs` is given; its `seed` defaults to one "
                    "derived from the study seed). Only with a `compress_finetune` variant.",
        "compression": "The compress variants' pipeline: `[compression.passes.<name>]` tables, each a "
                       "[pass config](#passes), run in order. Default: Lab 2's (`search.config.DEFAULT_COMPRESSION`): "
                       "integer 8-bit data/weight/bias with 4 fraction bits on every linear layer, then 50 % "
                       "l1-norm local pruning of weights and activations.",
    }
    for f in dataclasses.fields(RunConfig):
        inner, _ = _unwrap_optional(hints[f.name])
        if _is_config(inner):
            out += _config_table(inner, f.name)
        else:
            out += [f"### `[{f.name}]` {{ #{_slug(f.name)} }}", "", run_notes.get(f.name, f"Type: {_type_name(hints[f.name])}."), ""]
    out += ["## Transform config", "",
            "One TOML file for `mase-lite transform --config FILE`. Read by "
            "`mase_lite.commands.transform.TransformFile`:", "",
            _rst_to_md(inspect.getmodule(TransformFile).__doc__ or ""), ""]
    th = typing.get_type_hints(TransformFile)
    out += ["| key / table | type | default | notes |", "|---|---|---|---|"]
    tnotes = {
        "checkpoint": "An HF checkpoint directory or `package:NAME`; or give a `[model]` table.",
        "model": "A [`[model]`](#model) table (`ModelConfig` fields).",
        "data": "A [`[data]`](#data) table: evaluate on IMDb when given.",
        "eval": "See [`[eval]`](#eval) below.",
        "passes": "`[passes.<name>]` tables, run in document order: see [Passes](#passes).",
    }
    for f in dataclasses.fields(TransformFile):
        out.append(f"| `{f.name}` | {_type_name(th[f.name])} | {_default(f)} | {tnotes.get(f.name, '')} |")
    out.append("")
    out += _config_table(typing.get_type_hints(TransformFile)["eval"], "eval")
    out += ["## Train config", "",
            "`mase-lite train --config FILE` reads `[model]` (`mase_lite.models.ModelConfig`, see "
            "[`[model]`](#model); the search's `[model]` adds `checkpoint`), `[data]` "
            f"(`{DataConfig.__module__}.DataConfig`, [`[data]`](#data)) and `[train]` "
            f"(`{TrainConfig.__module__}.TrainConfig`, [`[train]`](#train)); `mase-lite eval --config FILE` "
            "reads `[data]`. Command-line flags override the file (see the [CLI reference](cli.md)).", ""]
    assert ModelConfig is not None
    out += ["## Passes", "",
            "A pipeline is `[passes.<name>]` tables run in document order (an array of tables `[[passes]]` "
            "with `name = ...` runs a pass twice). Each pass reads the config class below; "
            "`passes.run_pass(graph, name, config)` takes the same keys as a dict.", ""]
    for name in sorted(PASSES):
        spec = PASSES[name]
        out += [f"### `{name}` {{ #pass-{_slug(name)} }}", "",
                f"{spec.kind.capitalize()} pass (`{spec.fn.__module__}.{spec.fn.__name__}`, version {spec.version}"
                + (", takes data: `context=PassContext(batches=...)`" if spec.takes_context else "")
                + (", recorded in the history" if spec.recorded else "") + ").", ""]
        if spec.fn.__doc__:
            out += [_rst_to_md(spec.fn.__doc__), ""]
        if spec.example is not None and spec.example.config:
            out += ["Example (the config the pass-contract test runs):", "", "```python",
                    f"run_pass(graph, {name!r}, {dict(spec.example.config)!r})", "```", ""]
        out += _config_table(spec.config_cls, f"passes.{name}", depth=4)
    out += ["## Number formats", "",
            "Each entry of a `quantize` config names a format (`name = \"...\"`) and gives its fields per "
            "role (`weight_width`, `data_in_frac_width`, ...), once for every role (`width = 8`), or as a "
            "sub-table per role (`weight = {name = \"minifloat\", preset = \"fp8_e4m3\"}`). Roles: "
            "`data_in`, `weight`, `bias`, `data_out`.", ""]
    for fmt in format_names():
        cls = get_config_cls(fmt)
        out += _config_table(cls, f"format {fmt}", depth=3)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- benchmark scripts


def benchmarks_markdown() -> str:
    """The benchmark scripts page: each script of ``benchmarks/`` with its module docstring (not imported)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    out = [
        "# Benchmark scripts",
        "",
        "<!-- Generated at build time from the scripts' docstrings by docs/_gen/hooks.py; do not edit. -->",
        "",
        "The scripts in `benchmarks/` measure what the [Results](../results/index.md) report. Each prints "
        "ratios measured within one run (the machines are shared and noisy: run them on an idle machine) "
        "and most write `results.json` / `results.md` into `docs/results/<name>/` (`--out`). "
        "`python benchmarks/NAME.py --help` lists every option. Their descriptions, from each script's "
        "docstring:",
        "",
    ]
    for script in sorted(root.glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or "(no docstring)"
        out += [f"## `benchmarks/{script.name}` {{ #{_slug(script.stem)} }}", "", _rst_to_md(doc), ""]
    return "\n".join(out) + "\n"
