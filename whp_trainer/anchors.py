"""The anchored-terms dictionary in memory and its compiled form: match anchors on token ids, translate blocks with
alignment.

An [`AnchorDictionary`][whp_trainer.anchors.AnchorDictionary] maps idiosyncratic expressions of the forget target
(anchors) to one or more generic translations; its files are read, validated and written by
[`whp_trainer.dictionary`][whp_trainer.dictionary].
[`AnchorDictionary.compile`][whp_trainer.anchors.AnchorDictionary.compile] turns it, for one tokenizer, into
[`TokenAnchors`][whp_trainer.anchors.TokenAnchors]: a trie over the token ids of every surface form of every
anchor, which finds anchors in a block in one left-to-right pass and translates the block (see
[`TokenAnchors.translate`][whp_trainer.anchors.TokenAnchors.translate] for the alignment it returns).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .dictionary import raw_entries, read_entries, validated, write_entries

# Contexts an anchor is tokenized in to find its surface forms: at the start of a text, after a word and a space,
# a newline, an opening bracket or quote; followed by nothing, a word, a possessive, punctuation or a newline.
CONTEXT_PREFIXES = ("", "said ", "\n", "(", '"')
CONTEXT_SUFFIXES = ("", " said", "'s", ".", ",", '"', "\n")

NEUTRAL_PREFIX = "said "
ONE_SIDED_CONTEXTS = [(prefix, "") for prefix in CONTEXT_PREFIXES] + [
    (NEUTRAL_PREFIX, suffix) for suffix in CONTEXT_SUFFIXES if suffix
]
CROSS_CONTEXTS = [(prefix, suffix) for prefix in CONTEXT_PREFIXES for suffix in CONTEXT_SUFFIXES if (prefix, suffix)
                  not in ONE_SIDED_CONTEXTS]
COMPILE_CHUNK = 2048  # anchors tokenized at a time: bounds the memory held by their encodings


class AnchorDictionary:
    """Anchors of the forget target, each with one or more generic translations.

    ``entries`` is a mapping ``anchor → translation | [translations]`` or a list of
    ``{"anchor": ..., "translations": [...]}`` entries. Everything is validated on construction; all problems are
    reported at once in one ``ValueError`` naming each entry. Surrounding whitespace is stripped; translations are
    kept sorted and deduplicated, so the dictionary (and its
    [`content_hash`][whp_trainer.anchors.AnchorDictionary.content_hash]) depends on content only.
    """

    def __init__(self, entries: Mapping | Sequence, source: str = "<dictionary>"):
        self.source = source
        self._entries = validated(raw_entries(entries, source), source)

    @classmethod
    def load(cls, path: str | Path) -> AnchorDictionary:
        """Read a ``.json``, ``.yaml``/``.yml`` or ``.csv`` dictionary file."""
        dictionary = cls.__new__(cls)
        dictionary.source = str(Path(path))
        dictionary._entries = validated(read_entries(path), dictionary.source)
        return dictionary

    def save(self, path: str | Path) -> None:
        """Write the dictionary; the format follows the suffix (``.json``, ``.yaml``/``.yml``, ``.csv``)."""
        write_entries(path, self.items())

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical content: independent of file format, entry order and translation order."""
        canonical = json.dumps(sorted(self.items()), ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def items(self) -> list[tuple[str, tuple[str, ...]]]:
        return list(self._entries.items())

    def __getitem__(self, anchor: str) -> tuple[str, ...]:
        return self._entries[anchor]

    def __contains__(self, anchor: object) -> bool:
        return anchor in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"AnchorDictionary({len(self)} anchors from {self.source}, sha256 {self.content_hash[:12]})"

    def compile(self, tokenizer) -> TokenAnchors:
        """Matcher and translator of this dictionary on the token ids of ``tokenizer`` (a fast tokenizer)."""
        return TokenAnchors(self, tokenizer)


@dataclass(frozen=True)
class AnchorMatch:
    """One translated anchor occurrence: original token span ``[start, end)`` and the translation used."""

    start: int
    end: int
    anchor: str
    translation: str


@dataclass
class BlockTranslation:
    """A translated block.

    ``alignment[t]`` is the translated position whose prediction stands in for the prediction at original position
    ``t`` (of token ``t + 1``), ``-1`` where ``t`` gets no loss. ``suppress`` lists ``(position, token_ids)``: from
    that original position on, ``token_ids`` are pushed down (consistency rule 2).
    """

    translated_ids: np.ndarray
    alignment: np.ndarray
    suppress: list[tuple[int, tuple[int, ...]]]
    matches: list[AnchorMatch]


class TokenAnchors:
    """An [`AnchorDictionary`][whp_trainer.anchors.AnchorDictionary] compiled for one tokenizer: surface forms of
    every anchor in a trie over token ids.

    A surface form is the token sequence an anchor gets in context: byte-level BPE tokenizes " Harry" and "Harry"
    differently, and a tokenizer without a merge for " Jon" yields ``[" ", "Jon"]``. Each anchor is tokenized in
    `CONTEXT_PREFIXES` × `CONTEXT_SUFFIXES` together with each of its translations in the same context;
    the form is the smallest token span, containing the anchor, outside of which both tokenizations agree, and the
    translation's tokens over the same span are what replaces it. An occurrence must sit on word boundaries:
    "Ron" does not match inside "Ronald".
    """

    def __init__(self, dictionary: AnchorDictionary, tokenizer):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("AnchorDictionary.compile needs a fast tokenizer (it reads token offsets)")
        self.anchors = list(dictionary)
        self.translations = [dictionary[anchor] for anchor in self.anchors]
        self._init_token_classes(tokenizer)
        self.pattern_anchor: list[int] = []
        self.pattern_forms: list[tuple[tuple[int, ...], ...]] = []
        self._trie: dict = {}
        self.max_pattern_length = 0
        self._first_tokens = np.zeros(len(self._joins_left), dtype=bool)
        with cyclic_gc_paused():  # millions of small containers, no cycles: the collector's passes cost a third
            self._add_surface_forms(tokenizer)
        self.suppress_tokens = self._first_translation_tokens()

    def _init_token_classes(self, tokenizer) -> None:
        """Per vocabulary id: does it start inside a word, end with a word character, hold only whitespace."""
        size = len(tokenizer)
        reference = tokenizer("a", add_special_tokens=False)["input_ids"][-1]
        reference_text = tokenizer.decode([reference], clean_up_tokenization_spaces=False)
        singles = tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
        pairs = tokenizer.batch_decode([[reference, i] for i in range(size)], clean_up_tokenization_spaces=False)
        self._joins_left = np.array([pair[len(reference_text) : len(reference_text) + 1].isalnum() for pair in pairs])
        self._ends_word = np.array([text[-1:].isalnum() for text in singles])
        self._blank = np.array([not text.strip() for text in singles])

    def _add_surface_forms(self, tokenizer) -> None:
        """Tokenize every entry in the one-sided contexts (a prefix, or a suffix, with a neutral other side), and in
        every prefix × suffix only where both sides change the entry's tokens. Chunks of anchors bound the memory;
        translations, which repeat across anchors, are tokenized once per context."""
        backend = tokenizer.backend_tokenizer
        translations: dict[str, tuple[list[int], tuple[int, int]]] = {}
        # seconds for a large dictionary: a bar says what runs, and goes when it is done
        desc = f"whp: compiling {len(self.anchors)} anchors for the tokenizer"
        bar = tqdm(total=len(self.anchors), desc=desc, unit="anchor", leave=False)
        for start in range(0, len(self.anchors), COMPILE_CHUNK):
            chunk = range(start, min(start + COMPILE_CHUNK, len(self.anchors)))
            forms = self._tokenized(chunk, ONE_SIDED_CONTEXTS, backend, translations)
            for index in chunk:
                for context in ONE_SIDED_CONTEXTS:
                    self._add_form(index, forms[index, context])
            both_sides = [index for index in chunk if self._changes_on_both_sides(index, forms)]
            if both_sides:
                forms = self._tokenized(both_sides, CROSS_CONTEXTS, backend, translations)
                for index in both_sides:
                    for context in CROSS_CONTEXTS:
                        self._add_form(index, forms[index, context])
            bar.update(len(chunk))
        bar.close()

    def _tokenized(self, indices, contexts, backend, translations: dict) -> dict:
        """``(anchor index, context) -> [(ids, phrase token span)]`` of the anchor and then each translation."""
        texts = {}
        for index in indices:
            for prefix, suffix in contexts:
                for phrase in (self.anchors[index], *self.translations[index]):
                    texts[prefix + phrase + suffix] = (len(prefix), len(prefix) + len(phrase))
        todo = [text for text in texts if text not in translations]
        encoded = dict(zip(todo, backend.encode_batch(todo, add_special_tokens=False)))
        done = {}
        for text in todo:
            encoding = encoded.pop(text)
            done[text] = (encoding.ids, _phrase_tokens(encoding, *texts[text]))
        translation_texts = {
            prefix + phrase + suffix
            for index in indices
            for phrase in self.translations[index]
            for prefix, suffix in contexts
        }
        translations.update((text, done[text]) for text in translation_texts if text in done)
        lookup = {**done, **{text: translations[text] for text in translation_texts}}
        return {
            (index, (prefix, suffix)): [
                lookup[prefix + phrase + suffix] for phrase in (self.anchors[index], *self.translations[index])
            ]
            for index in indices
            for prefix, suffix in contexts
        }

    @staticmethod
    def _changes_on_both_sides(index: int, forms: dict) -> bool:
        """Whether some prefix and some suffix each change the tokens of the entry's phrases (then the two may
        interact, and every prefix × suffix is tokenized)."""
        def phrases(context):
            return [tuple(ids[first : last + 1]) for ids, (first, last) in forms[index, context]]

        neutral = phrases((NEUTRAL_PREFIX, ""))
        prefix_changes = any(phrases((prefix, "")) != neutral for prefix in CONTEXT_PREFIXES)
        suffix_changes = any(phrases((NEUTRAL_PREFIX, suffix)) != neutral for suffix in CONTEXT_SUFFIXES)
        return prefix_changes and suffix_changes

    def _add_form(self, anchor_index: int, tokenized: list[tuple[list[int], tuple[int, int]]]) -> None:
        """Add the anchor's form in one context from ``(ids, phrase token span)`` of the anchor and translations."""
        (anchor_ids, (first, last)), others = tokenized[0], tokenized[1:]
        head, tail = first, len(anchor_ids) - 1 - last
        for ids, (start, end) in others:
            head = min(head, start)
            if anchor_ids[:head] != ids[:head]:  # the context's tokens differ: the form starts earlier
                head = _common_prefix(anchor_ids, ids)
            tail = min(tail, len(ids) - 1 - end)
            if tail and anchor_ids[-tail:] != ids[-tail:]:
                tail = _common_suffix(anchor_ids, ids)
        pattern = tuple(anchor_ids[head : len(anchor_ids) - tail])
        forms = tuple(tuple(ids[head : len(ids) - tail]) for ids, _ in others)
        node = self._trie
        for token in pattern:
            node = node.setdefault(token, {})
        if -1 in node:
            known = self.pattern_anchor[node[-1]]
            if known != anchor_index:
                raise ValueError(
                    f"anchors {self.anchors[known]!r} and {self.anchors[anchor_index]!r} have the same tokens "
                    f"{list(pattern)}; keep one of them in the dictionary"
                )
            return
        node[-1] = len(self.pattern_anchor)
        self.pattern_anchor.append(anchor_index)
        self.pattern_forms.append(forms)
        self._first_tokens[pattern[0]] = True
        self.max_pattern_length = max(self.max_pattern_length, len(pattern))

    def _first_translation_tokens(self) -> list[list[tuple[int, ...]]]:
        """Per anchor and translation: the first non-blank token of every surface form of the translation."""
        tokens = [[set() for _ in translations] for translations in self.translations]
        for anchor_index, forms in zip(self.pattern_anchor, self.pattern_forms):
            for choice, form in enumerate(forms):
                first = next((token for token in form if not self._blank[token]), form[0])
                tokens[anchor_index][choice].add(first)
        return [[tuple(sorted(choice)) for choice in per_anchor] for per_anchor in tokens]

    def find(self, ids: np.ndarray) -> list[tuple[int, int, int]]:
        """Leftmost-longest occurrences ``(start, end, pattern)`` on word boundaries, in one pass over ``ids``."""
        if len(ids) == 0:
            return []
        if int(ids.max()) >= len(self._joins_left) or int(ids.min()) < 0:
            raise ValueError(f"token ids outside the tokenizer's vocabulary (0..{len(self._joins_left) - 1})")
        boundary = np.ones(len(ids) + 1, dtype=bool)
        boundary[1:-1] = ~(self._ends_word[ids[:-1]] & self._joins_left[ids[1:]])
        starts = np.flatnonzero(self._first_tokens[ids] & boundary[:-1]).tolist()
        if not starts:
            return []
        tokens, boundary, limit = ids.tolist(), boundary.tolist(), len(ids)
        matches, free_from = [], 0
        for start in starts:
            if start < free_from:
                continue
            node, best = self._trie, None
            for position in range(start, min(start + self.max_pattern_length, limit)):
                node = node.get(tokens[position])
                if node is None:
                    break
                if -1 in node and boundary[position + 1]:
                    best = (start, position + 1, node[-1])
            if best:
                matches.append(best)
                free_from = best[1]
        return matches

    def translate(
        self,
        ids: Sequence[int] | np.ndarray,
        length: int | None = None,
        seed: int = 0,
        exclude_repeated: bool = True,
        variant: int = 0,
    ) -> BlockTranslation:
        """Translate the block ``ids[:length]``; tokens after ``length`` only show whether the block cuts an anchor.

        Alignment: a position outside every anchor span maps to its counterpart; the last token of a span
        to the last token of its translation; a position inside a span, not its last, gets ``-1``. The position just
        before a span (predicting the anchor's first token) maps to its counterpart, which predicts the first token
        of the translation: that is where the generic prediction is learnt. ``-1`` also marks the last position, the
        positions whose next token lies in a repeated anchor (``exclude_repeated``, rule 1) and those whose next
        token lies in an anchor cut by the end of the block. One translation is chosen per anchor per block, from a
        generator seeded by ``seed`` and the block's ids. Variant ``k`` takes, for every anchor, the translation ``k``
        places after the one variant 0 takes (cyclically), so ``K`` variants use ``K`` different translations of each
        anchor that has ``K`` or more (WHP+). Every variant has the same loss positions.
        """
        ids = np.asarray(ids, dtype=np.int64)
        length = len(ids) if length is None else min(length, len(ids))
        block = ids[:length]
        found = self.find(ids)
        cut = next((start for start, end, _ in found if start < length < end), length)
        occurrences = [(start, end, pattern) for start, end, pattern in found if end <= cut]
        choices = self._choose_translations(block, occurrences, seed, variant)
        pieces, previous, seen = [], 0, set()
        delta = np.zeros(length, dtype=np.int64)
        no_loss = np.zeros(length, dtype=bool)
        suppress, matches = [], []
        for start, end, pattern in occurrences:
            anchor = self.pattern_anchor[pattern]
            form = self.pattern_forms[pattern][choices[anchor]]
            pieces += [block[previous:start], np.asarray(form, dtype=np.int64)]
            previous = end
            delta[end - 1] += len(form) - (end - start)
            no_loss[start : end - 1] = True
            if anchor not in seen:
                seen.add(anchor)
                suppress.append((end - 1, self.suppress_tokens[anchor][choices[anchor]]))
            elif exclude_repeated:
                no_loss[max(start - 1, 0) : end - 1] = True
            matches.append(AnchorMatch(start, end, self.anchors[anchor], self.translations[anchor][choices[anchor]]))
        pieces.append(block[previous:cut])
        no_loss[max(cut - 1, 0) :] = True
        alignment = np.arange(length, dtype=np.int64) + np.cumsum(delta)
        alignment[no_loss] = -1
        return BlockTranslation(np.concatenate(pieces), alignment, suppress, matches)

    def _choose_translations(self, block: np.ndarray, occurrences: list, seed: int, variant: int = 0) -> dict[int, int]:
        """Index of the translation used for each anchor in the block (reproducible from ``seed``, the block and the
        ``variant``)."""
        anchors = dict.fromkeys(self.pattern_anchor[pattern] for _, _, pattern in occurrences)
        if all(len(self.translations[anchor]) == 1 for anchor in anchors):
            return dict.fromkeys(anchors, 0)
        digest = hashlib.blake2b(block.tobytes(), digest_size=8, key=str(seed).encode()).digest()
        rng = random.Random(int.from_bytes(digest, "little"))
        return {
            anchor: (rng.randrange(len(self.translations[anchor])) + variant) % len(self.translations[anchor])
            for anchor in anchors
        }


@contextlib.contextmanager
def cyclic_gc_paused():
    """Python's cyclic garbage collector off for the block (reference counting still frees), as it was after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _phrase_tokens(encoding, start: int, end: int) -> tuple[int, int]:
    """First and last index of the tokens covering characters ``[start, end)`` of the encoded text."""
    first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
    if first is None or last is None:  # a character the normalizer dropped: read the offsets
        return _token_span(encoding.offsets, start, end)
    return first, last


def _token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """First and last index of the tokens overlapping characters ``[start, end)``."""
    inside = [index for index, (left, right) in enumerate(offsets) if left < end and right > start]
    return inside[0], inside[-1]


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _common_suffix(a: list[int], b: list[int]) -> int:
    return _common_prefix(a[::-1], b[::-1])
