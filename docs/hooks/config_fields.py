"""MkDocs hook: replace ``<!-- whp-fields MODULE.CLASS -->`` with a table of the config dataclass's own fields (and
the library defaults it changes): name, type, default and the ``help`` string the command line shows, so the API
reference lists every field from the same source the code reads."""

import dataclasses
import importlib
import re
import typing

MARKER = re.compile(r"<!-- whp-fields ([\w.]+) -->")
MISSING = dataclasses.MISSING


def library_base(cls: type) -> type:
    """The first dataclass ``cls`` extends that is not whp_trainer's (``TrainingArguments``, ``SFTConfig``)."""
    return next(c for c in cls.__mro__[1:] if dataclasses.is_dataclass(c) and not c.__module__.startswith("whp_"))


def default_of(field: dataclasses.Field):
    return field.default_factory() if field.default_factory is not MISSING else field.default


def own_fields(cls: type) -> list[dataclasses.Field]:
    """Fields ``cls`` adds to its library base, and those whose default it changes, in declaration order."""
    inherited = {field.name: field for field in dataclasses.fields(library_base(cls))}
    return [
        field
        for field in dataclasses.fields(cls)
        if field.name not in inherited or default_of(field) != default_of(inherited[field.name])
    ]


def type_name(annotation) -> str:
    """``str``, ``int or None``, ``dict[str, Any] or str or None``: the same text whether or not ``HfArgumentParser``
    has replaced the fields' string annotations by the types (it does, in place, when it parses a config)."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
    return text.replace(" | ", " or ")


def fields_table(path: str) -> str:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    base = library_base(cls)
    types = typing.get_type_hints(cls)
    rows = [
        f"| `{field.name}` | `{type_name(types[field.name])}` | `{default_of(field)!r}` | "
        f"{'' if field.name not in {f.name for f in dataclasses.fields(base)} else '(default changed) '}"
        f"{field.metadata.get('help', '')} |".replace("\n", " ")
        for field in own_fields(cls)
    ]
    header = f"Fields `{name}` adds to `{base.__name__}`, or whose default it changes (all of `{base.__name__}`'s apply):"
    return "\n".join([header, "", "| field | type | default | meaning |", "| --- | --- | --- | --- |", *rows]) + "\n"


def on_page_markdown(markdown, page, config, files):
    return MARKER.sub(lambda match: fields_table(match.group(1)), markdown)
