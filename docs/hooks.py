"""mkdocs hooks: pages generated at build time from the code, so they cannot drift.

- ``<!-- regzoo:regularizers -->``: the regularizer catalogue, from the registry;
- ``<!-- regzoo:config-reference -->``: every config key, from the pydantic schema;
- ``<!-- regzoo:cli -->``: every command and option, from the argparse parser;
- ``<!-- regzoo:public-names PACKAGE -->``: a package's public names (its ``__all__``), each
  linked to the page of the module that defines it (re-exports are documented once, there).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

PLACEHOLDERS = {
    "<!-- regzoo:regularizers -->": "regularizer_catalogue",
    "<!-- regzoo:config-reference -->": "config_reference",
    "<!-- regzoo:cli -->": "cli_reference",
}


def regularizer_catalogue() -> str:
    """One section per registered regularizer: docstring, parameters, options."""
    from regzoo import regularizers

    parts = []
    for name in regularizers.available():
        cls = regularizers.get(name)
        doc = inspect.cleandoc(cls.__doc__ or "")
        parts.append(f"## `{name}`\n\n`{cls.__module__}.{cls.__qualname__}`\n\n{doc}\n")
        if len(cls.space):
            rows = [
                "| parameter | low | high | default | scale | physical domain | meaning |",
                "|---|---|---|---|---|---|---|",
            ]
            rows += [
                f"| `{s.name}` | {s.low:g} | {s.high:g} | {s.default:g} | {s.scale} | "
                f"`{s.domain_text()}` | {s.description} |"
                for s in cls.space
            ]
            parts.append("\n".join(rows) + "\n")
        else:
            parts.append("No physical parameters: only the term weight `alpha`.\n")
        quadratic = "yes" if cls.quadratic else "no"
        parts.append(f"Quadratic (`R(c u) = c^2 R(u)`): {quadratic}.\n")
        options = cls.Options.model_fields
        if options:
            rows = ["| option | default | meaning |", "|---|---|---|"]
            rows += [
                f"| `{k}` | `{f.default!r}` | {f.description or ''} |" for k, f in options.items()
            ]
            parts.append("Options (`options:` in a config term):\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def _type_name(annotation: object) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("regzoo.config.", "").replace(" | ", " or ")


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_of(argument)
        if found is not None:
            return found
    return None


def _child_path(prefix: str, key: str, annotation: object) -> str:
    origin = typing.get_origin(annotation)
    suffix = "[]" if origin is list else ".<name>" if origin is dict else ""
    return f"{prefix}.{key}{suffix}" if prefix else f"{key}{suffix}"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0]
    title = f"`{prefix}`" if prefix else "top level"
    out.append(f"## {title}\n\n{doc}\n\n| key | type | default | description |\n|---|---|---|---|")
    nested = []
    for key, field in model.model_fields.items():
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            value = field.default_factory()
            default = "see below" if isinstance(value, BaseModel) else f"`{value!r}`"
        elif isinstance(field.default, Path):
            default = f"`{field.default}`"
        else:
            default = f"`{field.default!r}`"
        out.append(
            f"| `{key}` | `{_type_name(field.annotation)}` | {default} | {field.description or ''} |"
        )
        sub = _model_of(field.annotation)
        if sub is not None and sub is not model:
            nested.append((sub, _child_path(prefix, key, field.annotation)))
    out.append("")
    for sub, path in nested:
        _section(sub, path, out)


def config_reference() -> str:
    """Tables of every config section and key, from the pydantic models."""
    from regzoo.config import ExperimentConfig

    out: list[str] = []
    _section(ExperimentConfig, "", out)
    return "\n".join(out)


def cli_reference() -> str:
    """The help text of every ``regzoo`` command."""
    from regzoo.cli import build_parser

    def commands(parser: typing.Any, prefix: str) -> typing.Iterator[tuple[str, typing.Any]]:
        subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        for action in subparsers:
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from commands(sub, f"{prefix} {name}")  # ``regzoo config check``

    parser = build_parser()
    parts = ["```text\n" + parser.format_help() + "```\n"]
    for command, sub in commands(parser, "regzoo"):
        level = "#" * (command.count(" ") + 1)
        parts.append(f"{level} `{command}`\n\n```text\n{sub.format_help()}```\n")
    return "\n".join(parts)


PUBLIC_NAMES = re.compile(r"<!-- regzoo:public-names ([\w.]+) -->")


def _defining_module(package: str, name: str) -> str:
    """The module whose source binds ``name`` (following ``from X import name`` re-exports)."""
    module = importlib.import_module(package)
    source = Path(inspect.getfile(module)).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and any(
            (a.asname or a.name) == name for a in node.names
        ):
            target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            if target == package:  # ``from . import submodule``
                return package
            return _defining_module(target, name)
    lazy = getattr(module, "_LAZY", {})
    if name in lazy:
        return _defining_module(lazy[name], name)
    return package


def public_names(package: str) -> str:
    """A table of ``package.__all__``: each name linked to its defining module's entry."""
    module = importlib.import_module(package)
    rows = ["| name | kind | defined in | summary |", "|---|---|---|---|"]
    for name in sorted(module.__all__, key=str.lower):
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            where, kind = value.__name__, "module"
            target = where
        else:
            where = _defining_module(package, name)
            target = f"{where}.{name}"
            kind = (
                "class"
                if isinstance(value, type)
                else "function"
                if callable(value)
                else "constant"
            )
        doc = inspect.getdoc(value) if kind != "constant" else ""
        summary = (doc or "").split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
        rows.append(f"| [`{name}`][{target}] | {kind} | `{where}` | {summary} |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page: object, config: object, files: object) -> str:
    """Replace each placeholder with its generated content."""
    for marker, builder in PLACEHOLDERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, globals()[builder]())
    return PUBLIC_NAMES.sub(lambda m: public_names(m.group(1)), markdown)
