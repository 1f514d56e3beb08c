"""The target and profile reference (``docs/reference.md``), generated from the pydantic models
in :mod:`ftdeploy.profiles`, so the page cannot drift from what the loader accepts.

Every field of :class:`~ftdeploy.profiles.Target` and :class:`~ftdeploy.profiles.Profile` is a
table row: its name, type (enum and literal choices, numeric bounds, list and tuple shapes), its
default and its ``Field(description=...)``. A field holding a section (a nested model, a list
of them) gets a table of its own below; a union of models (a discriminated union such as
``Annotated[Union[A, B], Field(discriminator="kind")]``, bare or in a list) gets one table per
member, headed by its discriminator value. The walk is generic: a new field, section or kind
appears on the page without a change here.

Regenerate the page after changing a model::

    python3 -m ftdeploy.reference > docs/reference.md
"""

from __future__ import annotations

import enum
import inspect
import json
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .mapping import MAPPINGS
from .profiles import Profile, Target, builtin_targets, load_target

#: Where the generated page lives, relative to the repository root.
REFERENCE_PATH = Path("docs") / "reference.md"
REGENERATE = "python3 -m ftdeploy.reference > docs/reference.md"

_NONE = type(None)
#: How a list's item type reads in the plural ("list of numbers (0 ≤ x ≤ 1)").
_PLURALS = (("section,", "sections, each"), ("section (below)", "sections (below)"), ("number", "numbers"),
            ("integer", "integers"), ("text", "texts"), ("path", "paths"))  # fmt: skip

# Prose a section's model docstring does not carry (it is about the files, the loader or the
# command line rather than the model), keyed by the section's dotted path. A key that matches
# no section is an error, so a renamed section cannot leave its note behind unseen.
_NOTES: dict[str, str] = {
    "target": "A target is a chip family, one YAML file in `targets/` (or anywhere, given as a path).",
    "profile": (
        "A profile is one deployment of one target, one YAML file in `profiles/` (or anywhere, given "
        "as a path): the faults expected on the shipped chips, how a model is signed off, and the "
        "training defaults.\n\n"
        "Besides the fields below, a profile may start with `extends: BASE`, a profile (a name in "
        "`profiles/` or a path relative to this file) whose fields it starts from: sections merge "
        "field by field, a list (`signoff.rates`, `signoff.acceptance`) is replaced whole, `name` and "
        "`description` are never inherited, and the base must be a valid profile on its own. "
        "`ftdeploy verify` records each base's file and SHA-256 in its report."
    ),
    "training": (
        "An option typed on the command line overrides its field for that run: `--model`, `--method`, "
        "`--target-rate`, `--rates`, `--epochs`, `--lr` (the run's peak rate, pretraining or retraining), "
        "`--batch-size`, `--seed`, and the retraining recipe `--bn`, `--stuck-grad`, `--scale-grad`, "
        "`--rate-warmup`, `--progressive-blocks`, `--distill`, `--unbias-faults/--raw-faults`, "
        "`--clean-steps`, `--weight-clip`; so a profile carries the recipe it was tuned with. `ftdeploy "
        "demo` takes the whole section as it is. A pretraining (`--method pretrain`) injects no faults: it "
        "takes none of the recipe fields and refuses their options. Each run folder's `config.yaml` "
        "records what was used."
    ),
}


def _doc(obj) -> str:
    """A docstring as one or more Markdown paragraphs (its source line breaks joined)."""
    text = inspect.cleandoc(obj.__doc__ or "").replace("``", "`")
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _anchor(key: str) -> str:
    return "ref-" + "-".join("".join(c if c.isalnum() else " " for c in key.lower()).split())


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _number(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _bounds(metadata) -> str:
    """Numeric and length constraints (annotated_types metadata, possibly inside a nested
    FieldInfo) as words: "0 ≤ x ≤ 1", "> 0", "at least 1"."""
    found: dict[str, object] = {}

    def collect(items):
        for m in items:
            if isinstance(m, FieldInfo):  # Annotated[..., Field(ge=...)] nested in a type
                collect(m.metadata)
            for name in ("ge", "gt", "le", "lt", "min_length", "max_length"):
                if isinstance(m, getattr(annotated_types, {"min_length": "MinLen", "max_length": "MaxLen"}.get(name, name.title()))):
                    found[name] = getattr(m, name)

    collect(metadata)
    lower = f"{_number(found['ge'])} ≤" if "ge" in found else f"{_number(found['gt'])} <" if "gt" in found else ""
    upper = f"≤ {_number(found['le'])}" if "le" in found else f"< {_number(found['lt'])}" if "lt" in found else ""
    words = []
    if lower and upper:
        words.append(f"{lower} x {upper}")
    elif lower:  # "0 ≤" reads as "≥ 0" alone
        words.append(("≥ " if lower.endswith("≤") else "> ") + lower[:-2])
    elif upper:
        words.append(upper)
    if found.get("min_length"):
        words.append(f"at least {found['min_length']}")
    if "max_length" in found:
        words.append(f"at most {found['max_length']}")
    return ", ".join(words)


def _with_bounds(text: str, bounds: str) -> str:
    return f"{text} ({bounds})" if bounds else text


def _unwrap(tp) -> tuple[object, list]:
    """A type with its Annotated layers removed, and their metadata."""
    metadata = []
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        metadata += extra
    return tp, metadata


def _discriminator(metadata, field_discriminator=None) -> str | None:
    for m in metadata:
        if isinstance(m, FieldInfo) and m.discriminator is not None:
            field_discriminator = m.discriminator
    disc = field_discriminator
    return getattr(disc, "discriminator", disc) if disc is not None else None


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


class _Section(typing.NamedTuple):
    """A nested table to render: its dotted path, model, and for a union member the
    discriminator field and value that select it."""

    path: str
    model: type[BaseModel]
    kind: tuple[str, str] | None = None


def _kind_value(model: type[BaseModel], discriminator: str | None) -> str | None:
    if discriminator is None or discriminator not in model.model_fields:
        return None
    values = typing.get_args(_unwrap(model.model_fields[discriminator].annotation)[0])
    return " | ".join(str(v) for v in values) or None


def _type(tp, path: str, sections: list[_Section], field_discriminator=None, field_metadata=()) -> str:
    """The type of a field as words; nested models are appended to ``sections``. Constraints
    set on the field itself (``field_metadata``) apply to the value under any ``Optional``."""
    tp, metadata = _unwrap(tp)
    metadata = [*metadata, *field_metadata]
    discriminator = _discriminator(metadata, field_discriminator)
    if _is_union(tp):
        members = [a for a in typing.get_args(tp) if a is not _NONE]
        optional = len(members) < len(typing.get_args(tp))
        if members and all(_is_model(_unwrap(m)[0]) for m in members):
            kinds = []
            for member in members:
                model = _unwrap(member)[0]
                value = _kind_value(model, discriminator)
                sections.append(_Section(path, model, (discriminator, value) if value else None))
                kinds.append(f"`{value}`" if value else f"`{model.__name__}`")
            how = f", chosen by its `{discriminator}`" if discriminator else ""
            text = f"section, one of {', '.join(kinds)} (below){how}"
        else:
            text = " or ".join(_type(m, path, sections, None, metadata) for m in members)
        return text + (" or `null`" if optional else "")
    origin = typing.get_origin(tp)
    if origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and len(args) > 1 and Ellipsis not in typing.get_args(tp):
            inner = [_type(a, path, sections) for a in args]
            text = f"list of {len(args)}: " + (f"each {inner[0]}" if len(set(inner)) == 1 else ", ".join(inner))
        else:
            item = _type(args[0] if args else typing.Any, f"{path}[]", sections)
            for one, many in _PLURALS:
                if item.startswith(one):
                    item = many + item[len(one):]
                    break
            text = "list of " + item
        bounds = _bounds(metadata)
        return f"{text}, {bounds}" if bounds else text
    if origin is dict:
        key, value = typing.get_args(tp)
        return f"mapping of {_type(key, path, sections)} to {_type(value, path + '.*', sections)}"
    if origin is typing.Literal:
        return " | ".join(f"`{v}`" for v in typing.get_args(tp))
    if _is_model(tp):
        sections.append(_Section(path, tp))
        return "section (below)"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(f"`{m.value}`" for m in tp)
    names = {str: "text", int: "integer", float: "number", bool: "`true` | `false`", Path: "path"}
    return _with_bounds(names.get(tp, getattr(tp, "__name__", str(tp))), _bounds(metadata))


def _yaml_value(value) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, BaseModel):
        return "its fields' defaults"
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(v if isinstance(v, str) else _number(v) for v in value) + "]`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if value is None:
        return "none"
    return f"`{_number(value)}`" if isinstance(value, (int, float)) else f"`{json.dumps(value)}`"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return _yaml_value(field.default_factory())
    if field.default is PydanticUndefined:
        return "required"
    return _yaml_value(field.default)


def _fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """A model's fields, those it declares itself before those it inherits (a reader looks for a
    section's own fields first; pydantic lists inherited ones first)."""
    own = [name for name in model.model_fields if name in model.__dict__.get("__annotations__", {})]
    rest = [name for name in model.model_fields if name not in own]
    return [(name, model.model_fields[name]) for name in own + rest]


def _field_type(field: FieldInfo, path: str, sections: list[_Section]) -> str:
    return _type(field.annotation, path, sections, field.discriminator, field.metadata)


def _table(model: type[BaseModel], path: str) -> tuple[list[str], list[_Section]]:
    """The rows of one model's table and the sections its fields open."""
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    sections: list[_Section] = []
    for name, field in _fields(model):
        kind = _field_type(field, f"{path}.{name}" if path else name, sections)
        if field.default is None:  # "none" in the default column says it may be left out
            kind = kind.removesuffix(" or `null`")
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(field))} | {_cell(field.description or '')} |")
    return rows, sections


def _render_model(model: type[BaseModel], root: str, path: str, level: int, used: set[str],
                  kind: tuple[str, str] | None = None) -> list[str]:  # fmt: skip
    """One model's heading, prose and table, then the sections below it. ``root`` names the top
    model ("Target", "Profile"), ``path`` the section under it ("" for the top)."""
    note_key = path or root.lower()  # a top-level model by its own name: "target", "profile"
    anchor = f"{root} {path} {kind[1] if kind else ''}"
    title = f"`{path}`" + (f", {kind[0]} `{kind[1]}`" if kind else "") if path else root
    out = [f'<a id="{_anchor(anchor)}"></a>', "", f"{'#' * level} {title}", ""]
    if kind:
        out += [f"Selected by `{kind[0]}: {kind[1]}`.", ""]
    doc = _doc(model)
    if doc:
        out += [doc, ""]
    if note_key in _NOTES and not kind:
        used.add(note_key)
        out += [_NOTES[note_key], ""]
    rows, sections = _table(model, path)
    out += rows + [""]
    for section in sections:
        out += _render_model(section.model, root, section.path, min(level + 1, 4), used, section.kind)
    return out


def _render_shipped_targets() -> list[str]:
    out = ["The shipped targets:", ""]
    for path in builtin_targets():
        target, _ = load_target(path)
        out.append(f"- `{target.name}`: {target.description}")
    return out + [""]


def _render_mappings() -> list[str]:
    out = ['<a id="ref-target-mapping"></a>', "", "### `mapping` values", "",
           "Every mapping reads a weight's integer code back linearly from its cells' levels "
           "(`q = Σ coefficient·level + offset`; level 0 is g_off, level `L = 2**bits_per_cell − 1` "
           "is g_on), which is what the crossbar periphery does and what the ONNX file's decoding "
           "expresses (see [onnx-format.md](onnx-format.md)).", ""]  # fmt: skip
    for name, cls in MAPPINGS.items():
        out += [f"- `{name}`: " + _doc(cls).replace("\n\n", " "), ""]
    return out


def all_fields(model: type[BaseModel], path: str = "") -> typing.Iterator[tuple[str, FieldInfo]]:
    """(dotted path, field) of every field of ``model`` and of every section below it, union
    members included (a member's fields under ``path[kind]``): what the page documents."""
    sections: list[_Section] = []
    for name, field in _fields(model):
        child = f"{path}.{name}" if path else name
        yield child, field
        _field_type(field, child, sections)
    for section in sections:
        where = section.path.removesuffix("[]") + f"[{section.kind[1]}]" if section.kind else section.path
        yield from all_fields(section.model, where)


def render_model(model: type[BaseModel], title: str) -> str:
    """One model's section of the page, with the sections below it (a test renders a model of
    its own through the same walk as the page's)."""
    used: set[str] = set()
    return "\n".join(_render_model(model, title, "", 2, used)).rstrip("\n") + "\n"


def render_reference() -> str:
    """The Markdown page ``docs/reference.md``: every target and profile field."""
    used: set[str] = set()
    out = [
        "<!-- Generated from the pydantic models in ftdeploy/profiles.py by `python3 -m ftdeploy.reference`;",
        f"     do not edit by hand: change a Field description there, then run `{REGENERATE}`. -->",
        "",
        "# Target and profile reference",
        "",
        "A **target** (`targets/*.yaml`) describes a chip family; a **profile** (`profiles/*.yaml`) one "
        "deployment of one target. Both are YAML files validated when loaded: an unknown key is an error "
        "(a misspelt limit is never silently ignored), and a bad value is reported as "
        "`error: FILE: FIELD: what was expected (found VALUE)`, exit code 2. `ftdeploy profile validate "
        "FILE...` checks profiles and targets alike; `ftdeploy profile show NAME` prints a profile with its "
        "target and every default filled in; `ftdeploy profile list` lists the shipped ones. A field "
        "marked *required* must be given; every other field may be left out and takes its default.",
        "",
        "Contents: [Target](#ref-target) ([`mapping` values](#ref-target-mapping)), "
        "[Profile](#ref-profile). The exported ONNX file's format is described in "
        "[onnx-format.md](onnx-format.md).",
        "",
    ]
    target = _render_model(Target, "Target", "", 2, used)
    table = target.index("| field | type | default | description |")
    out += target[:table] + _render_shipped_targets() + target[table:] + _render_mappings()
    out += _render_model(Profile, "Profile", "", 2, used)
    unused = set(_NOTES) - used
    if unused:
        raise RuntimeError(f"reference notes for sections that no longer exist: {sorted(unused)}")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
