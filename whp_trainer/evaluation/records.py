"""Records read from user files: a ``.jsonl`` file (one object per line), a ``.json`` list or a ``.csv`` table (a
header row naming the columns), each record paired with where it stands in its file, for errors that point at it."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

FORMATS = (".jsonl", ".json", ".csv")


def read_records(path: str | os.PathLike, what: str) -> list[tuple[str, object]]:
    """``(where, record)`` pairs of ``path``: ``where`` is ``"<path>, line N"`` (``.jsonl``, ``.csv``) or
    ``"<path>, entry N"`` (``.json``, from 1). Blank lines are skipped. ``what`` names the expected records in errors.

    Raises ``ValueError`` naming the file and the line of bad JSON or CSV, or an unknown format."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unknown format {suffix!r} for {what}; use {', '.join(FORMATS)}")
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        return [(f"{path}, line {number}", _decoded(line, path, number))
                for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if suffix == ".csv":
        return _csv_records(text, path)
    data = _decoded(text, path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    return [(f"{path}, entry {number}", entry) for number, entry in enumerate(data, 1)]


def _decoded(text: str, path: Path, line: int | None = None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {line or error.lineno}: not valid JSON: {error.msg}") from error


def _csv_records(text: str, path: Path) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    records = []
    try:
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(f"{path}, line {reader.line_num}: expected {len(reader.fieldnames)} columns "
                                 f"({', '.join(reader.fieldnames)}) as in the header, got another count")
            if any(value.strip() for value in row.values()):
                records.append((f"{path}, line {reader.line_num}", dict(row)))
    except csv.Error as error:
        raise ValueError(f"{path}, line {reader.line_num}: not valid CSV: {error}") from error
    return records
