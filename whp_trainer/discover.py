"""Candidate anchors for a new forget target, written to a YAML dictionary for a person to review.

Two sources, usable together ([`merge_candidates`][whp_trainer.discover.merge_candidates]):

* statistics ([`boosted_expressions`][whp_trainer.discover.boosted_expressions]): expressions that are frequent in the
  target text, rare in a reference text, and whose tokens the reinforced adapter boosts most over the baseline. Their
  translations are left empty.
* a chat model ([`candidates_from_llm`][whp_trainer.discover.candidates_from_llm]), prompted as in Eldan & Russinovich
  (2023) for idiosyncratic names, places, objects and expressions with generic alternatives. The model is any
  ``Callable[[str], str]``:
  [`EndpointChat`][whp_trainer.chat.EndpointChat] (an OpenAI-compatible endpoint),
  [`LocalChat`][whp_trainer.chat.LocalChat] (a local ``transformers`` model, prompts batched), or your own (e.g.
  ``lambda prompt: pipe(prompt)[0]["generated_text"]``).

[`write_candidates`][whp_trainer.discover.write_candidates] writes empty translations as ``""``, which
[`AnchorDictionary.load`][whp_trainer.anchors.AnchorDictionary.load] rejects, naming the line: the file cannot be used
before every entry has been reviewed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .batching import pad_token_id, padded_batch
from .chat import ask
from .models import role_logits

logger = logging.getLogger(__name__)

WORD = re.compile(r"\w+(?:-\w+)*")
STOPWORDS = frozenset(
    "a an and are as at be but by for from had has have he her his i in is it its of on or she that the their them "
    "they this to was were with you said s".split()
)

EXTRACTION_PROMPT = """You are helping to make a language model forget one specific work. Below is a passage from it.

List the expressions that are idiosyncratic to this work: names of people, places, creatures, objects, spells, \
organisations, and unique phrases that would reveal which work the passage comes from. For each, give a generic \
alternative of the same kind that does not belong to this work (a common first name for a character, an ordinary \
place for a place, a plain description for an object), so that swapping one for the other keeps the sentence \
grammatical and natural.

Answer with one JSON object only, mapping each expression to its generic alternative, for example:
{{"Hogwarts": "Mystic Academy", "Quidditch": "Skyball", "Harry": "Jon"}}

Passage:
{passage}
"""


@dataclass
class Candidate:
    """A proposed anchor; empty ``translations`` are left for the reviewer. ``note`` says why it was proposed."""

    anchor: str
    translations: list[str] = field(default_factory=list)
    note: str = ""


# --- statistics --------------------------------------------------------------------------------------------------


def boosted_expressions(
    model,
    tokenizer,
    target_texts: Sequence[str],
    reference_texts: Sequence[str],
    reinforced_adapter: str = "reinforced",
    top_k: int = 100,
    max_words: int = 3,
    min_count: int = 2,
    min_log_ratio: float = 1.0,
    max_length: int = 512,
    batch_size: int = 4,
) -> list[Candidate]:
    """The ``top_k`` expressions of the target that the reinforced adapter boosts most, with empty translations.

    An expression (1 to ``max_words`` words, not starting or ending with a stopword) qualifies when it occurs at
    least ``min_count`` times in the target and its relative frequency there exceeds that in the reference by at
    least ``min_log_ratio`` (natural log, add-one smoothed). Qualifying expressions are ranked by the mean, over their
    tokens in the target, of ``log p_reinforced − log p_baseline`` of the token given its prefix. ``model`` is a
    ``PeftModel`` holding the reinforced adapter under ``reinforced_adapter``.
    """
    target_counts = expression_counts(target_texts, max_words)
    reference_counts = expression_counts(reference_texts, max_words)
    target_total, reference_total = sum(target_counts.values()) + 1, sum(reference_counts.values()) + 1
    specific = {
        expression
        for expression, count in target_counts.items()
        if count >= min_count
        and math.log((count + 1) / target_total) - math.log((reference_counts[expression] + 1) / reference_total)
        >= min_log_ratio
    }
    boosts = expression_boosts(
        model, tokenizer, target_texts, specific, max_words, reinforced_adapter, max_length, batch_size
    )
    ranked = sorted(boosts, key=lambda expression: -boosts[expression])[:top_k]
    return [
        Candidate(
            expression,
            note=f"boost {boosts[expression]:+.2f} nats/token; {target_counts[expression]}× in target, "
            f"{reference_counts[expression]}× in reference",
        )
        for expression in ranked
    ]


def expression_spans(text: str, max_words: int) -> Iterable[tuple[str, int, int]]:
    """``(expression, start, end)`` for every run of 1..``max_words`` words separated by single spaces only."""
    words = list(WORD.finditer(text))
    for first, match in enumerate(words):
        if match.group().lower() in STOPWORDS:
            continue
        for last in range(first, min(first + max_words, len(words))):
            if last > first and text[words[last - 1].end() : words[last].start()] != " ":
                break
            if words[last].group().lower() not in STOPWORDS:
                yield text[match.start() : words[last].end()], match.start(), words[last].end()


def expression_counts(texts: Iterable[str], max_words: int) -> Counter:
    return Counter(expression for text in texts for expression, _, _ in expression_spans(text, max_words))


def expression_boosts(
    model, tokenizer, texts, expressions: set[str], max_words: int, adapter: str, max_length: int, batch_size: int
) -> dict[str, float]:
    """Mean reinforced-over-baseline log-probability boost of the tokens of each of ``expressions`` in ``texts``."""
    sums, counts = defaultdict(float), Counter()
    for text, starts, ends, boosts in token_boosts(model, tokenizer, texts, adapter, max_length, batch_size):
        for expression, start, end in expression_spans(text, max_words):
            if expression not in expressions:
                continue
            first, last = bisect_left(ends, start + 1), bisect_left(starts, end)
            sums[expression] += sum(boosts[first:last])
            counts[expression] += last - first
    return {expression: sums[expression] / counts[expression] for expression in counts if counts[expression]}


def token_boosts(model, tokenizer, texts, adapter: str, max_length: int, batch_size: int):
    """Per chunk of ``max_length`` tokens: ``(text, token starts, token ends, log p_reinforced − log p_baseline)``.

    The first token of a chunk has no prediction and is left out.
    """
    texts = list(texts)
    encoded = tokenizer(
        texts, truncation=True, max_length=max_length, return_overflowing_tokens=True, return_offsets_mapping=True
    )
    chunks = list(zip(encoded["input_ids"], encoded["offset_mapping"], encoded["overflow_to_sample_mapping"]))
    for begin in range(0, len(chunks), batch_size):
        batch = chunks[begin : begin + batch_size]
        padded = padded_batch([chunk[0] for chunk in batch], pad_token_id(tokenizer))
        ids, mask = padded["input_ids"], padded["attention_mask"]
        base = torch.log_softmax(role_logits(model, ids, mask), dim=-1)
        reinforced = torch.log_softmax(role_logits(model, ids, mask, adapter=adapter), dim=-1)
        following = ids[:, 1:, None]
        boost = (reinforced[:, :-1].gather(-1, following) - base[:, :-1].gather(-1, following)).squeeze(-1)
        for row, (chunk_ids, offsets, sample) in enumerate(batch):
            spans = offsets[1 : len(chunk_ids)]
            yield texts[sample], [s for s, _ in spans], [e for _, e in spans], boost[row, : len(spans)].tolist()


# --- prompting a chat model --------------------------------------------------------------------------------------


def candidates_from_llm(
    texts: Iterable[str], generate: Callable[[str], str], chunk_chars: int = 6000, prompt: str = EXTRACTION_PROMPT
) -> list[Candidate]:
    """Ask ``generate`` (prompt → reply) for anchors in each passage of about ``chunk_chars`` characters (all passages
    at once to a ``generate`` with a ``batch`` method, such as [`LocalChat`][whp_trainer.chat.LocalChat])."""
    replies = ask(generate, [prompt.format(passage=passage) for passage in passages(texts, chunk_chars)])
    return merge_candidates(*(parse_anchor_reply(reply) for reply in replies))


def passages(texts: Iterable[str], chunk_chars: int) -> Iterable[str]:
    """Pieces of at most ``chunk_chars`` characters, cut at paragraph or line ends where possible."""
    for text in texts:
        while len(text) > chunk_chars:
            cut = max(text.rfind("\n", 0, chunk_chars), text.rfind(" ", 0, chunk_chars))
            cut = cut if cut > 0 else chunk_chars
            yield text[:cut]
            text = text[cut:].lstrip()
        if text.strip():
            yield text


FENCE = re.compile(r"```[\w-]*\n?(.*?)(?:```|$)", re.DOTALL)
ARROW = re.compile(r"\s*(?:->|=>|→|—>)\s*")
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def parse_anchor_reply(reply: str) -> list[Candidate]:
    """Anchors in a model's reply: a JSON object or list, possibly fenced, truncated or wrapped in prose, or lines
    such as ``Hogwarts -> Mystic Academy``, ``"Harry": "Jon",`` or ``- Quidditch: Skyball``.

    What cannot be parsed is skipped with a warning naming the lines.
    """
    fenced = FENCE.search(reply)
    body = fenced.group(1) if fenced else reply
    whole = _json_document(body)
    if whole is not None:
        candidates, skipped = _from_json(whole)
    else:
        candidates, skipped = [], []
        for line in body.splitlines():
            parsed = _parse_line(line)
            if parsed is None:
                skipped += [line.strip()] if line.strip() and line.strip() not in "{}[]" else []
            else:
                candidates += parsed
    if skipped:
        logger.warning("skipped %d unparsable part(s) of the model's reply: %s", len(skipped), skipped[:5])
    return merge_candidates(candidates)


def _json_document(body: str) -> object | None:
    """The JSON object or list in ``body`` (prose around it allowed), or None."""
    starts = [index for index in (body.find("{"), body.find("[")) if index >= 0]
    if not starts:
        return None
    try:
        return json.JSONDecoder().raw_decode(body[min(starts) :])[0]
    except json.JSONDecodeError:
        return None


def _from_json(data: object) -> tuple[list[Candidate], list[str]]:
    if isinstance(data, dict):
        pairs = list(data.items())
    elif isinstance(data, list):
        pairs = [_pair_of(item) for item in data]
    else:
        return [], [repr(data)]
    candidates, skipped = [], []
    for pair in pairs:
        candidate = _candidate(*pair) if pair else None
        if candidate is None:
            skipped.append(repr(pair))
        else:
            candidates.append(candidate)
    return candidates, skipped


def _pair_of(item: object) -> tuple[object, object] | None:
    """``(anchor, translation(s))`` of a list item: ``{"anchor": ..., "translation(s)"/"generic": ...}`` or a pair."""
    if isinstance(item, dict):
        anchor = item.get("anchor", item.get("expression", item.get("term")))
        keys = ("translations", "translation", "generic", "alternative")
        translation = next((item[key] for key in keys if key in item), None)
        return anchor, translation
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return item[0], item[1]
    return None


def _parse_line(line: str) -> list[Candidate] | None:
    """Candidates on one line of a non-JSON reply, or None if it holds none.

    Accepted: a JSON member (``"Harry": "Jon",``) or entry object, ``A -> B`` (also ``=>``, ``→``), and a bulleted
    ``- A: B``. A JSON-looking line that does not parse (a reply cut mid-string) is rejected.
    """
    stripped = line.strip()
    text = BULLET.sub("", stripped).rstrip(",;")
    if text.startswith(("{", '"')):
        try:
            data = json.loads("{" + text.strip("{}") + "}")
        except json.JSONDecodeError:
            return None
        candidates, _ = _from_json([data] if "anchor" in data else data)
        return candidates or None
    parts = ARROW.split(text, maxsplit=1)
    if len(parts) < 2 and text != stripped:
        parts = text.split(": ", 1)
    candidate = _candidate(*(part.strip().strip("\"'`*") for part in parts)) if len(parts) == 2 else None
    return [candidate] if candidate else None


def _candidate(anchor: object, translation: object) -> Candidate | None:
    """A candidate from a parsed pair, or None when either side is not usable text."""
    translations = [translation] if isinstance(translation, str) else translation
    if not isinstance(anchor, str) or not isinstance(translations, list):
        return None
    translations = [t.strip() for t in translations if isinstance(t, str) and t.strip() and t.strip() != anchor.strip()]
    if not anchor.strip() or not translations:
        return None
    return Candidate(anchor.strip(), translations, note="proposed by a chat model")


def merge_candidates(*lists: Iterable[Candidate]) -> list[Candidate]:
    """One candidate per anchor, in first-seen order, with the union of translations and the notes joined."""
    merged: dict[str, Candidate] = {}
    for candidate in (candidate for candidates in lists for candidate in candidates):
        known = merged.setdefault(candidate.anchor, Candidate(candidate.anchor, [], candidate.note))
        known.translations += [t for t in candidate.translations if t not in known.translations]
        if candidate.note and candidate.note not in known.note:
            known.note = f"{known.note}; {candidate.note}"
    return list(merged.values())


# --- output -------------------------------------------------------------------------------------------------------

HEADER = """\
# Candidate anchors for review ({count} entries). For each entry: keep it only if it is idiosyncratic to the
# target; give one or more generic translations of the same kind (a list is allowed: ["Jon", "Tom"]); delete it
# otherwise. Entries left with "" make AnchorDictionary.load fail, naming the line.
"""


SIGNATURE = "# written by whp anchors; any edit is a review, which whp never replaces: sha256 "


def write_candidates(path: str | Path, candidates: Sequence[Candidate]) -> None:
    """Write ``candidates`` as a YAML dictionary with one commented line per entry, signed on its last line with the
    hash of the lines above (see `is_unedited_candidates`)."""
    lines = [HEADER.format(count=len(candidates))]
    for candidate in candidates:
        translations = candidate.translations
        value = json.dumps(translations[0] if len(translations) == 1 else translations or "", ensure_ascii=False)
        comment = f"  # {candidate.note}" if candidate.note else ""
        lines.append(f"{json.dumps(candidate.anchor, ensure_ascii=False)}: {value}{comment}\n")
    body = "".join(lines)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(body + SIGNATURE + hashlib.sha256(body.encode()).hexdigest() + "\n", encoding="utf-8")


def is_unedited_candidates(path: str | Path) -> bool:
    """Whether ``path`` is a candidates file as `write_candidates` wrote it, not edited since (not yet a review)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    body, _, last = text.rstrip("\n").rpartition("\n")
    return last.startswith(SIGNATURE) and last.removeprefix(SIGNATURE) == hashlib.sha256(f"{body}\n".encode()).hexdigest()
