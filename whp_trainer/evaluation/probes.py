"""Familiarity probes: ``{"prompt": str, "target": str}`` records, read from files or built from the forget text.

A probe asks for one idiosyncratic continuation of the forget target: the prompt ``"Every day Harry went to"`` and the
target ``" Hogwarts"`` (with its leading space, as in the text).
[`build_probes`][whp_trainer.evaluation.probes.build_probes] cuts them out of the forget text at the occurrences of the
anchors of an [`AnchorDictionary`][whp_trainer.anchors.AnchorDictionary].
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path

from ..anchors import AnchorDictionary

REQUIRED_KEYS = ("prompt", "target")


def load_probes(path: str | os.PathLike) -> list[dict]:
    """Read probes from a ``.json`` list or a ``.jsonl`` file (one object per line, blank lines skipped).

    Extra keys are kept. Raises ``ValueError`` naming the file and the line (``.jsonl``, or bad JSON) or the entry
    number (``.json``, from 1) of the first problem: bad JSON, an entry that is not an object, a missing or
    non-string ``prompt``/``target``, an empty one.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        entries = [(f"line {number}", _decoded(line, path, number)) for number, line in enumerate(text.splitlines(), 1)
                   if line.strip()]
    elif path.suffix.lower() == ".json":
        data = _decoded(text, path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of {{prompt, target}} objects, got {type(data).__name__}")
        entries = [(f"entry {index}", entry) for index, entry in enumerate(data, 1)]
    else:
        raise ValueError(f"{path}: unknown probe file format {path.suffix!r}; use .json or .jsonl")
    return [_validated(entry, f"{path}, {where}") for where, entry in entries]


def _decoded(text: str, path: Path, line: int | None = None) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {line}" if line else f"line {error.lineno}"
        raise ValueError(f"{path}, {where}: not valid JSON: {error.msg}") from error


def _validated(entry: object, where: str) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object {{\"prompt\": ..., \"target\": ...}}, got {entry!r:.80}")
    for key in REQUIRED_KEYS:
        if key not in entry:
            raise ValueError(f"{where}: missing key {key!r}")
        if not isinstance(entry[key], str):
            raise ValueError(f"{where}: {key!r} must be a string, got {type(entry[key]).__name__}")
        if not entry[key].strip():
            raise ValueError(f"{where}: empty {key!r}")
    return entry


def write_probes(path: str | os.PathLike, probes: Iterable[dict]) -> None:
    """Write probes as a ``.jsonl`` file (one object per line) or, for any other suffix, an indented JSON list; the
    folder is created if needed."""
    path = Path(path)
    probes = list(probes)
    if path.suffix.lower() == ".jsonl":
        body = "".join(json.dumps(probe, ensure_ascii=False) + "\n" for probe in probes)
    else:
        body = json.dumps(probes, ensure_ascii=False, indent=1) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")


def paragraphs(text: str) -> list[str]:
    """The blank-line separated parts of ``text``, as written (the unit probes and first mentions are read in)."""
    return re.split(r"\n\s*\n", text)


def terms_pattern(terms: Iterable[str], ignore_case: bool = False) -> re.Pattern | None:
    """A regex finding any of ``terms`` on word boundaries, longest first (``None`` when there is no term)."""
    terms = sorted({term for term in terms if term}, key=lambda term: (-len(term), term))
    if not terms:
        return None
    alternation = "|".join(map(re.escape, terms))
    return re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE if ignore_case else 0)


def build_probes(
    texts: list[str],
    dictionary: AnchorDictionary,
    max_probes: int = 300,
    context_words: int = 12,
    seed: int = 0,
    min_words: int = 3,
) -> list[dict]:
    """Probes at the anchor occurrences of the forget text.

    For each occurrence of an anchor (case-sensitive, on word boundaries), the prompt is the up to ``context_words``
    words before it within its paragraph (``texts`` items and blank-line separated parts of them), and the target is
    the anchor with its leading space (``" Hogwarts"``; no space after a quote or bracket). Occurrences with fewer than
    ``min_words`` words before them are skipped. Duplicates are dropped; when more than ``max_probes`` remain, a
    sample drawn with ``seed`` is kept, in text order. Deterministic.
    """
    pattern = terms_pattern(dictionary)
    words = re.compile(r"\S+")
    probes: dict[tuple[str, str], None] = {}
    for paragraph in (part for text in texts for part in paragraphs(text)):
        for match in pattern.finditer(paragraph):
            before = paragraph[: match.start()]
            starts = [word.start() for word in words.finditer(before)][-context_words:]
            if len(starts) < min_words:
                continue
            prompt = before[starts[0] :].rstrip()
            space = " " if len(prompt) < len(before[starts[0] :]) else ""
            probes.setdefault((prompt, space + match.group()), None)
    chosen = list(probes)
    if len(chosen) > max_probes:
        keep = set(random.Random(seed).sample(range(len(chosen)), max_probes))
        chosen = [probe for index, probe in enumerate(chosen) if index in keep]
    return [{"prompt": prompt, "target": target} for prompt, target in chosen]
