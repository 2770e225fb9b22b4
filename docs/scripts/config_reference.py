"""Write the reference part of ``docs/configuration.md`` from the config dataclasses.

Every section of :class:`cnn_apps.config.Config` becomes a table of its keys: type, default,
allowed values and the help the code gives (the field's comments in ``cnn_apps/config.py``
and any ``help`` in its metadata). The table sits between two markers in the page::

    <!-- config-reference -->
    ... generated, do not edit ...
    <!-- /config-reference -->

``python docs/scripts/config_reference.py`` rewrites it; ``--check`` only compares and exits 1
when the page is stale (``tests/test_docs.py`` runs the same comparison).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import typing
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"
START = "<!-- config-reference -->"
END = "<!-- /config-reference -->"
BLOCK = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), re.S)


def field_comments(source: str) -> dict[str, dict[str, str]]:
    """``{class name: {field name: help}}`` from the comments of a module's dataclass fields.

    A field's help is the block of comment lines right above it plus the comments on its own
    lines (a trailing comment, or one inside a value that spans several lines)."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        helps = {}
        previous_end = node.lineno  # the `class` line: comments above the first field count
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                above = []
                line = statement.lineno - 1
                while line > previous_end and lines[line - 1].strip().startswith("#"):
                    above.insert(0, comments[line])
                    line -= 1
                span = range(statement.lineno, statement.end_lineno + 1)
                own = [comments[n] for n in span if n in comments]
                helps[statement.target.id] = " ".join(part for part in above + own if part)
            previous_end = statement.end_lineno
        found[node.name] = helps
    return found


def _yaml_value(value) -> str:
    """A default as it is written in a YAML config."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _type_text(annotation: str) -> str:
    """``str | None`` as "`str` or `null`": no pipe, which would split a Markdown table cell."""
    parts = [part.strip() for part in str(annotation).split("|")]
    return " or ".join(f"`{'null' if part == 'None' else part}`" for part in parts)


def _default(spec: dataclasses.Field):
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith((".", "?", "!")) else text + "."


def _cell(text: str) -> str:
    """Help text for a table cell: ``<name>`` kept as text, not read as an HTML tag; no cell split."""
    pieces = text.split("`")
    for i in range(0, len(pieces), 2):  # outside `code` spans
        for char, escaped in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("*", "\\*")):
            pieces[i] = pieces[i].replace(char, escaped)
    return "`".join(pieces).replace("|", "\\|")


def _table(cls: type, prefix: str, helps: dict[str, str], sections: set[str]) -> list[str]:
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for spec in dataclasses.fields(cls):
        if spec.name in sections:
            continue
        help_parts = [_sentence(helps.get(spec.name, "")), _sentence(spec.metadata.get("help", ""))]
        choices = spec.metadata.get("choices")
        if choices:
            help_parts.append("One of " + ", ".join(f"`{_yaml_value(c)}`" for c in choices) + ".")
        description = " ".join(part for part in help_parts if part)
        rows.append(
            f"| `{prefix}{spec.name}` | {_type_text(spec.type)} | `{_yaml_value(_default(spec))}` "
            f"| {_cell(description)} |"
        )
    return rows


def reference(module: ModuleType) -> str:
    """The generated Markdown: the top-level keys, then one section per nested dataclass."""
    config_cls = module.Config
    comments = field_comments(inspect.getsource(module))
    hints = typing.get_type_hints(config_cls, vars(module))
    sections = {
        f.name: hints[f.name]
        for f in dataclasses.fields(config_cls)
        if dataclasses.is_dataclass(hints[f.name])
    }
    out = ["### Top level", "", inspect.cleandoc(config_cls.__doc__ or ""), ""]
    out += _table(config_cls, "", comments.get(config_cls.__name__, {}), set(sections))
    for name, cls in sections.items():
        out += ["", f"### `{name}`", ""]
        doc = cls.__doc__ or ""
        if doc and not doc.startswith(f"{cls.__name__}("):  # dataclass' generated signature: no docstring
            out += [inspect.cleandoc(doc), ""]
        out += _table(cls, f"{name}.", comments.get(cls.__name__, {}), set())
    return "\n".join(out) + "\n"


def render(page: str, module: ModuleType) -> str:
    """``page`` with its generated block replaced by the reference of ``module``."""
    if not BLOCK.search(page):
        raise SystemExit(f"{PAGE.relative_to(ROOT)} has no {START} ... {END} block")
    return BLOCK.sub(lambda _: f"{START}\n{reference(module)}{END}", page, count=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the page is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from cnn_apps import config

    page = PAGE.read_text(encoding="utf-8")
    new = render(page, config)
    if new == page:
        print(f"{PAGE.relative_to(ROOT)} is current")
        return 0
    if args.check:
        print(f"{PAGE.relative_to(ROOT)} is stale: run python docs/scripts/config_reference.py")
        return 1
    PAGE.write_text(new, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
