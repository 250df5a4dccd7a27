"""Anchor dictionary files and entries: reading ``.yaml``/``.yml``, ``.json`` and ``.csv`` files (duplicate keys and
line numbers kept, so errors can name them), validating entries (every problem of a dictionary reported at once)
and writing a dictionary back in any of the three formats.

[`AnchorDictionary`][whp_trainer.anchors.AnchorDictionary] holds the validated entries; this module is its input
and output. Its UTF-8 reader, [`read_text`][whp_trainer.dictionary.read_text], is the one every text file of whp
goes through.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".csv": "csv"}
MAX_LISTED_ERRORS = 20


class _Pairs(list):
    """A mapping read from a file as ``(key, value, line)`` triples, so duplicate keys are not lost."""


class _PairsLoader(yaml.SafeLoader):
    """A safe YAML loader that keeps duplicate keys and their line numbers."""


def _construct_pairs(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Pairs:
    return _Pairs(
        (loader.construct_object(key, deep=True), loader.construct_object(value, deep=True), key.start_mark.line + 1)
        for key, value in node.value
    )


_PairsLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_pairs)


@dataclass(frozen=True)
class RawEntry:
    """One entry as read, before validation; ``where`` names it in error messages (line, or entry number)."""

    anchor: object
    translations: object
    where: str


def read_entries(path: str | Path) -> list[RawEntry]:
    """The entries of a ``.json``, ``.yaml``/``.yml`` or ``.csv`` dictionary file, as read (not yet validated)."""
    path = Path(path)
    fmt = format_of(path)
    text = read_text(path)
    if fmt == "csv":
        return read_csv(path)
    try:
        data = json.loads(text, object_pairs_hook=_json_pairs) if fmt == "json" else yaml.load(text, _PairsLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not valid {fmt.upper()}: {error}") from error
    return raw_entries(data, str(path))


def write_entries(path: str | Path, items: Iterable[tuple[str, tuple[str, ...]]]) -> None:
    """Write ``anchor → translations`` items; the format follows the suffix (``.json``, ``.yaml``/``.yml``,
    ``.csv``). A single translation is written as a string, several as a list."""
    path = Path(path)
    fmt = format_of(path)
    if fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["anchor", "translation"])
            writer.writerows([anchor, *translations] for anchor, translations in items)
        return
    mapping = {anchor: ts[0] if len(ts) == 1 else list(ts) for anchor, ts in items}
    if fmt == "json":
        path.write_text(json.dumps(mapping, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(mapping, allow_unicode=True, sort_keys=True), encoding="utf-8")


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content, with an error naming the file and the byte offset where it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); convert it to UTF-8") from None


def read_json_object(path: str | Path) -> dict:
    """A JSON file holding one object; an error naming the file (and the line and column) otherwise."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown dictionary format {path.suffix!r}; use one of {sorted(FORMATS)}") from None


def _json_pairs(pairs: list[tuple]) -> _Pairs:
    return _Pairs((key, value, None) for key, value in pairs)


def read_csv(path: Path) -> list[RawEntry]:
    """Rows ``anchor,translation[,translation...]``; an optional header row starts with ``anchor``.

    Empty trailing cells (spreadsheet exports pad rows) are ignored; an empty cell before a filled one is an error.
    """
    raw, first_row = [], True
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            is_header = first_row and row[0].strip().lower() == "anchor"
            first_row = False
            if is_header:
                continue
            while len(row) > 2 and not row[-1].strip():
                row.pop()
            raw.append(RawEntry(row[0], row[1:], f"line {reader.line_num}"))
    return raw


def raw_entries(data: object, source: str) -> list[RawEntry]:
    """Entries of a mapping or of a list of ``{"anchor": ..., "translations": ...}`` entries."""
    if isinstance(data, _Pairs):
        return [RawEntry(key, value, _where(index, key, line)) for index, (key, value, line) in enumerate(data, 1)]
    if isinstance(data, Mapping):
        return [RawEntry(key, value, _where(index, key, None)) for index, (key, value) in enumerate(data.items(), 1)]
    if isinstance(data, Sequence) and not isinstance(data, str):
        return [_list_entry(item, index, source) for index, item in enumerate(data, start=1)]
    if data is None:
        return []
    raise ValueError(
        f"{source}: expected a mapping anchor → translation(s) or a list of entries, got {type(data).__name__}"
    )


def _where(index: int, anchor: object, line: int | None) -> str:
    return f"line {line} (entry {anchor!r})" if line else f"entry {index} ({anchor!r})"


def _list_entry(item: object, index: int, source: str) -> RawEntry:
    fields = {key: value for key, value, _ in item} if isinstance(item, _Pairs) else item
    line = item[0][2] if isinstance(item, _Pairs) and item else None
    where = f"{'line ' + str(line) + ', ' if line else ''}entry {index}"
    if not isinstance(fields, Mapping) or "anchor" not in fields:
        raise ValueError(f'{source}, {where}: expected {{"anchor": ..., "translations": [...]}}, got {item!r}')
    unknown = set(fields) - {"anchor", "translation", "translations"}
    if unknown:
        raise ValueError(f"{source}, {where}: unknown field(s) {sorted(map(str, unknown))}")
    translations = fields.get("translations", fields.get("translation"))
    return RawEntry(fields["anchor"], translations, where)


def validated(raw: list[RawEntry], source: str) -> dict[str, tuple[str, ...]]:
    """The entries, validated; raises one ``ValueError`` listing every problem."""
    entries: dict[str, tuple[str, ...]] = {}
    first_seen: dict[str, str] = {}
    errors = []
    for entry in raw:
        problem, anchor, translations = _entry_problem(entry)
        if problem is None and anchor in entries and entries[anchor] != translations:
            problem = f"anchor {anchor!r} duplicates {first_seen[anchor]} with different translations"
        if problem:
            errors.append(f"{source}, {entry.where}: {problem}")
        elif anchor not in entries:
            entries[anchor], first_seen[anchor] = translations, entry.where
    errors += [f"{source}, {first_seen[anchor]}: translation {translation!r} of {anchor!r} is itself an anchor "
               f"(its text would be replaced in turn)"
               for anchor, translations in entries.items() for translation in translations if translation in entries]
    if not raw:
        errors.append(f"{source}: the dictionary is empty")
    if errors:
        listed = errors[:MAX_LISTED_ERRORS] + [f"... and {len(errors) - MAX_LISTED_ERRORS} more"] * (
            len(errors) > MAX_LISTED_ERRORS
        )
        raise ValueError("invalid anchor dictionary:\n" + "\n".join(listed))
    return dict(sorted(entries.items()))


def _entry_problem(entry: RawEntry) -> tuple[str | None, str, tuple[str, ...]]:
    """``(problem or None, anchor, sorted translations)`` of one raw entry."""
    if not isinstance(entry.anchor, str):
        return f"anchor must be a string, got {type(entry.anchor).__name__} {entry.anchor!r}", "", ()
    anchor = entry.anchor.strip()
    if not anchor:
        return "empty anchor", anchor, ()
    values = [entry.translations] if isinstance(entry.translations, str) else entry.translations
    if not values:
        return f"anchor {anchor!r} has no translation", anchor, ()
    if not isinstance(values, (list, tuple)) or isinstance(values, _Pairs):
        values = [values]
    bad = [value for value in values if not isinstance(value, str)]
    if bad:
        kind = "a mapping" if isinstance(bad[0], (Mapping, _Pairs)) else f"{type(bad[0]).__name__} {bad[0]!r}"
        return f"translation of {anchor!r} must be a string, got {kind}", anchor, ()
    translations = tuple(sorted({value.strip() for value in values}))
    if any(not translation for translation in translations):
        return f"empty translation of anchor {anchor!r}", anchor, ()
    if anchor in translations:
        return f"anchor {anchor!r} is its own translation", anchor, ()
    holding = [t for t in translations if re.search(rf"(?<!\w){re.escape(anchor)}(?!\w)", t)]
    if holding:
        return f"translation {holding[0]!r} contains its anchor {anchor!r} (the translated text would hold it still)", anchor, ()
    return None, anchor, translations
