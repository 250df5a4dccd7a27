"""Batches for [`UnlearnTrainer`][whp_trainer.UnlearnTrainer].

The batch format
----------------
This is the one place the format is defined; the trainer consumes exactly these keys. ``B`` is the batch size,
``T`` the length of the original blocks, ``T'`` that of the translated blocks, ``K`` the most tokens suppressed at
one position. Position ``t`` always means "the prediction made at position ``t``", i.e. of token ``t + 1``.

=========================== ============ ==================================================================
key                         shape        meaning
=========================== ============ ==================================================================
``input_ids``               ``(B, T)``   the original text (what the student and the reinforced model read)
``attention_mask``          ``(B, T)``   1 on real tokens, 0 on padding
``shift_labels``            ``(B, T)``   the original next token ``input_ids[t + 1]`` where position ``t``
                                         gets a loss, ``-100`` elsewhere (padding, the last token, tokens
                                         inside an anchor span, repeated anchors). The Trainer counts these
                                         for ``num_items_in_batch``.
``translated_input_ids``    ``(B, T')``  optional: the block with anchors replaced by generic translations
                                         (what the baseline reads). Absent: the baseline reads
                                         ``input_ids`` (bootstrapping-only ablation).
``translated_attention_mask`` ``(B, T')`` with ``translated_input_ids``
``alignment``               ``(B, T)``   translated position whose baseline prediction stands in for
                                         original position ``t``; ``-1`` where ``t`` gets no loss. Required
                                         with ``translated_input_ids``; absent means ``t ↦ t``.
``suppress_ids``            ``(B, T, S)`` optional: token ids pushed down in the generic logits at
                                         position ``t`` (consistency rule 2); ``-1`` pads.
``bootstrap_mask``          ``(B, T)``   optional: positions the translation leaves without a stand-in
                                         (inside a multi-token anchor, before a repeated anchor, before an
                                         anchor cut by the block's end) that get a loss all the same, from the
                                         bootstrapped target: the baseline reads the original block there.
=========================== ============ ==================================================================

Several translations of each block (WHP+, ``translations_per_block = N``): the translated keys, ``alignment`` and
``suppress_ids`` hold ``N·B`` rows, row ``k·B + b`` being the ``k``-th translation of block ``b``; the teacher's
target distributions over the ``N`` translations are averaged.

Invariant: ``shift_labels[b, t] != -100`` exactly where ``alignment[k·B + b, t] >= 0`` (for every ``k``) or
``bootstrap_mask[b, t]``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .anchors import AnchorDictionary
from .batching import pad_rows, pad_token_id, padding_mask
from .dictionary import read_text
from .targets import IGNORE_INDEX

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("input_ids", "attention_mask", "shift_labels")
TRANSLATION_KEYS = ("translated_input_ids", "translated_attention_mask", "alignment")


def validate_batch(batch: dict, expects_translation: bool = False) -> None:
    """Raise a ``ValueError`` naming the key at fault when ``batch`` does not follow the batch format above."""
    missing = [key for key in REQUIRED_KEYS if key not in batch]
    if missing:
        raise ValueError(
            f"batch is missing {missing}; UnlearnTrainer expects the format documented in whp_trainer.collator "
            "(use AnchorSwapCollator to build it)"
        )
    has_translation = [key in batch for key in TRANSLATION_KEYS]
    if any(has_translation) and not all(has_translation):
        absent = [key for key, present in zip(TRANSLATION_KEYS, has_translation) if not present]
        raise ValueError(f"batch has translated ids but lacks {absent}: the baseline cannot be aligned")
    if expects_translation and not all(has_translation):
        raise ValueError(
            "anchors are configured but the batch has no 'alignment'/'translated_input_ids': the data collator "
            "did not translate the blocks (use AnchorSwapCollator with the same dictionary)"
        )
    shape = batch["input_ids"].shape
    for key in ("attention_mask", "shift_labels"):
        if batch[key].shape != shape:
            raise ValueError(f"batch[{key!r}] has shape {tuple(batch[key].shape)}, expected {tuple(shape)}")
    if "alignment" in batch:
        alignment = batch["alignment"]
        if alignment.dim() != 2 or alignment.shape[1] != shape[1] or alignment.shape[0] % shape[0]:
            raise ValueError(
                f"batch['alignment'] has shape {tuple(alignment.shape)}, expected ({shape[0]}·N, {shape[1]}) for N "
                "translations of each block"
            )
        for key in ("translated_input_ids", "translated_attention_mask", "suppress_ids"):
            if key in batch and len(batch[key]) != len(alignment):
                raise ValueError(f"batch[{key!r}] has {len(batch[key])} rows, batch['alignment'] {len(alignment)}")
        has_loss = batch["shift_labels"] != IGNORE_INDEX
        if "bootstrap_mask" in batch:
            has_loss = has_loss & ~batch["bootstrap_mask"]
        if torch.any(has_loss.repeat(translations_in(batch), 1) & (alignment < 0)):
            raise ValueError(
                "batch has loss positions (shift_labels != -100) whose alignment is -1 and that are not in "
                "bootstrap_mask"
            )


def translations_in(batch: dict) -> int:
    """How many translations of each block the batch holds (WHP+; 1 without ``alignment``)."""
    return len(batch["alignment"]) // len(batch["input_ids"]) if "alignment" in batch else 1


def with_shift_labels(batch: dict) -> dict:
    """A batch of the standard format (``input_ids``, ``attention_mask``, optional ``labels``, as
    ``default_data_collator`` or ``DataCollatorForLanguageModeling`` make) with its ``shift_labels`` added: the
    next token where ``labels`` (else the attention mask) allows a loss. Batches that have them pass unchanged."""
    if "shift_labels" in batch or "input_ids" not in batch:
        return batch
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    labels = batch.get("labels", ids.masked_fill(mask == 0, IGNORE_INDEX))
    shift_labels = torch.full_like(ids, IGNORE_INDEX)
    shift_labels[:, :-1] = labels[:, 1:]
    return {**batch, "attention_mask": mask, "shift_labels": shift_labels}


class AnchorSwapCollator:
    """Build the batch format above from raw examples (``{text_field: str}``) or tokenized ones (``{"input_ids"}``).

    Each example becomes one block of at most ``max_length`` tokens (longer ones are truncated; use
    [`split_into_blocks`][whp_trainer.collator.split_into_blocks] to keep the rest). With ``anchors`` each block is
    translated by [`translate`][whp_trainer.anchors.TokenAnchors.translate]; with ``anchors=None`` the batch has no
    translated keys
    (bootstrapping-only ablation). With ``translations_per_block = N > 1`` each block is translated ``N`` times,
    each anchor taking a different one of its translations where it has enough (WHP+, Liu et al. 2024). With
    ``bootstrap_untranslated``, the positions the translation leaves without a stand-in get a loss too, from the
    bootstrapped target (``bootstrap_mask``). Blocks are
    padded to the longest in the batch on ``padding_side`` (the tokenizer's by default); translated blocks are
    padded on the same side, and ``alignment`` indexes the padded ``translated_input_ids``.
    """

    def __init__(
        self,
        tokenizer,
        anchors: AnchorDictionary | None,
        max_length: int,
        text_field: str = "text",
        exclude_repeated_anchors: bool = True,
        suppress_used_translations: bool = True,
        seed: int = 0,
        padding_side: str | None = None,
        translations_per_block: int = 1,
        bootstrap_untranslated: bool = False,
    ):
        if max_length < 2:
            raise ValueError(f"AnchorSwapCollator: max_length={max_length} must be >= 2")
        if translations_per_block < 1:
            raise ValueError(f"AnchorSwapCollator: translations_per_block={translations_per_block} must be >= 1")
        self.padding_side = padding_side or tokenizer.padding_side
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"AnchorSwapCollator: padding_side={self.padding_side!r} must be 'left' or 'right'")
        self.tokenizer = tokenizer
        self.anchors = None if anchors is None else anchors.compile(tokenizer)
        self.max_length = max_length
        self.text_field = text_field
        self.exclude_repeated_anchors = exclude_repeated_anchors
        self.suppress_used_translations = suppress_used_translations
        self.seed = seed
        self.translations_per_block = translations_per_block
        self.bootstrap_untranslated = bootstrap_untranslated
        self.pad_token_id = pad_token_id(tokenizer)
        if translations_per_block > 1 and anchors is not None and max(map(len, self.anchors.translations)) == 1:
            logger.warning(
                "translations_per_block=%d but every anchor has one translation: the %d translations of a block are "
                "the same (give anchors several translations for WHP+)", translations_per_block, translations_per_block
            )

    def __repr__(self) -> str:  # the target cache's key: every setting that changes a batch
        settings = ("max_length", "text_field", "exclude_repeated_anchors", "suppress_used_translations", "seed",
                    "padding_side", "translations_per_block", "bootstrap_untranslated")
        return f"AnchorSwapCollator({', '.join(f'{name}={getattr(self, name)!r}' for name in settings)})"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        windows = self._token_windows(examples)
        blocks = [window[: self.max_length] for window in windows]
        if self.anchors is None:
            alignments = [_plain_alignment(len(block)) for block in blocks]
            return self._original_part(blocks, alignments)[0]
        translations = [  # row k·B + b: the k-th translation of block b
            self.anchors.translate(window, self.max_length, self.seed, self.exclude_repeated_anchors, variant)
            for variant in range(self.translations_per_block)
            for window in windows
        ]
        batch, offsets = self._original_part(blocks, [translation.alignment for translation in translations])
        translated_rows = [translation.translated_ids for translation in translations]
        translated, translated_offsets = pad_rows(translated_rows, self.pad_token_id, self.padding_side)
        batch["translated_input_ids"] = torch.from_numpy(translated)
        batch["translated_attention_mask"] = torch.from_numpy(
            padding_mask(translated_rows, translated_offsets, translated.shape[1])
        )
        alignment = batch["alignment"]
        alignment += torch.from_numpy(translated_offsets)[:, None] * (alignment >= 0)
        if self.bootstrap_untranslated:
            untranslated = [_untranslated(translation.alignment) for translation in translations[: len(blocks)]]
            bootstrap_mask = torch.from_numpy(pad_rows(untranslated, 0, self.padding_side)[0].astype(bool))
            batch["bootstrap_mask"] = bootstrap_mask
            batch["shift_labels"][bootstrap_mask] = batch["input_ids"].roll(-1, dims=1)[bootstrap_mask]
        if self.suppress_used_translations:
            repeats = self.translations_per_block
            suppression = _suppression(translations, np.tile(offsets, repeats), alignment.shape, blocks * repeats)
            batch["suppress_ids"] = torch.from_numpy(suppression)
        return batch

    def _token_windows(self, examples: list[dict]) -> list[np.ndarray]:
        """Token ids of each example, ``max_length`` plus the longest anchor form (to see anchors cut at the end)."""
        window = self.max_length + (self.anchors.max_pattern_length if self.anchors else 0)
        examples = [as_example(example, index) for index, example in enumerate(examples)]
        texts = {
            i: ex[self.text_field] for i, ex in enumerate(examples) if "input_ids" not in ex and self.text_field in ex
        }
        missing = [i for i, ex in enumerate(examples) if "input_ids" not in ex and i not in texts]
        if missing:
            raise ValueError(
                f"AnchorSwapCollator: example {missing[0]} has neither 'input_ids' nor {self.text_field!r} "
                f"(keys: {sorted(examples[missing[0]])})"
            )
        encoded = dict(zip(texts, self._tokenize(list(texts.values()), window)))
        return [
            np.asarray(encoded[i] if i in encoded else ex["input_ids"][:window], dtype=np.int64)
            for i, ex in enumerate(examples)
        ]

    def _tokenize(self, texts: list[str], window: int) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, truncation=True, max_length=window, return_attention_mask=False)["input_ids"]

    def _original_part(self, blocks, alignments) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """``input_ids``, ``attention_mask``, ``shift_labels`` and (unshifted) ``alignment``; and the pad offsets.
        ``alignments`` holds one row per translation of each block; all translations share the loss positions."""
        input_ids, offsets = pad_rows(blocks, self.pad_token_id, self.padding_side)
        alignment, _ = pad_rows(alignments, -1, self.padding_side)
        shift_labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
        shift_labels[:, :-1] = input_ids[:, 1:]
        shift_labels[alignment[: len(blocks)] < 0] = IGNORE_INDEX
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(padding_mask(blocks, offsets, input_ids.shape[1])),
            "shift_labels": torch.from_numpy(shift_labels),
        }
        if self.anchors is not None:
            batch["alignment"] = torch.from_numpy(alignment)
        return batch, offsets


def collator_for(tokenizer, anchors: AnchorDictionary | None, args) -> AnchorSwapCollator:
    """The default collator of an ``UnlearnConfig`` (``args``): its block length, text field, rules and seed."""
    if tokenizer is None:
        raise ValueError("pass processing_class (the tokenizer) or a data_collator: the default collator needs it")
    return AnchorSwapCollator(
        tokenizer,
        anchors,
        max_length=args.max_length,
        text_field=args.dataset_text_field,
        exclude_repeated_anchors=args.exclude_repeated_anchors,
        suppress_used_translations=args.suppress_used_translations,
        seed=args.seed,
        translations_per_block=args.translations_per_block,
        bootstrap_untranslated=args.bootstrap_untranslated,
    )


FEW_BLOCKS = 0.1  # warn when fewer than this fraction of the blocks holds an anchor


def check_anchor_coverage(collator, dataset, batch_size: int = 256) -> Counter | None:
    """Count, over a sized dataset, the blocks that hold an anchor and each anchor's occurrences; log them, warn
    when few blocks hold one, and refuse when none does (the "full method" would then train on nothing the
    dictionary says). Skipped for collators that do not translate, or datasets without a length."""
    matcher = getattr(collator, "anchors", None)
    if not isinstance(collator, AnchorSwapCollator) or matcher is None or not hasattr(dataset, "__len__"):
        return None
    if getattr(collator, "_coverage", (None,))[0] is dataset:
        return collator._coverage[1]
    counts, blocks_with_anchor = Counter(), 0
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
        for window in collator._token_windows(rows):
            found = [matcher.anchors[matcher.pattern_anchor[p]] for _, end, p in matcher.find(window) if end <= collator.max_length]
            counts.update(found)
            blocks_with_anchor += bool(found)
    collator._coverage = (dataset, counts)
    summary = (
        f"anchors: {blocks_with_anchor} of {len(dataset)} blocks hold one; {len(counts)} of {len(matcher.anchors)} "
        f"anchors occur (most: {', '.join(f'{a!r} x{n}' for a, n in counts.most_common(5)) or 'none'})"
    )
    if not counts:
        raise ValueError(f"no anchor of the dictionary occurs in the training data ({summary}); check that the "
                         "dictionary belongs to this text and tokenizer")
    (logger.warning if blocks_with_anchor < FEW_BLOCKS * len(dataset) else logger.info)(summary)
    return counts


def check_loss_positions(collator, dataset, batch_size: int = 64) -> None:
    """Refuse a sized training set in which no position gets a loss (e.g. a text made only of anchors): every step
    would have loss 0 and the adapter would stay equal to the base. Stops at the first batch that has one."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
        if (with_shift_labels(collator(rows))["shift_labels"] != IGNORE_INDEX).any():
            return
    raise ValueError(
        f"no position of the {len(dataset)} training blocks gets a loss (each next token lies inside an anchor, is a "
        "repeated anchor, or is padding): training would change nothing. Give more text than the anchors alone"
    )


def as_example(example, index: int) -> Mapping:
    """A dataset row as a mapping; a bare list of token ids (what `split_into_blocks` returns for a list of
    strings) is read as ``{"input_ids": ...}``."""
    if isinstance(example, Mapping):
        return example
    if isinstance(example, Sequence) and not isinstance(example, str) and all(isinstance(i, int) for i in example):
        return {"input_ids": list(example)}
    raise TypeError(
        f"AnchorSwapCollator: example {index} is a {type(example).__name__}, not a row; expected a mapping with "
        "'input_ids' (token ids) or a text column, or a list of token ids"
    )


def _plain_alignment(length: int) -> np.ndarray:
    """``t ↦ t`` with ``-1`` at the last position (which predicts nothing)."""
    alignment = np.arange(length, dtype=np.int64)
    alignment[-1:] = -1
    return alignment


def _untranslated(alignment: np.ndarray) -> np.ndarray:
    """Positions of a block that the translation leaves without a stand-in, its last position (which predicts
    nothing) excepted."""
    untranslated = alignment < 0
    untranslated[-1:] = False
    return untranslated


def _suppression(translations, offsets: np.ndarray, shape, blocks) -> np.ndarray:
    """``(B, T, K)`` token ids suppressed at each position (rule 2), ``-1`` padded."""
    width = max((sum(len(tokens) for _, tokens in t.suppress) for t in translations), default=0)
    out = np.full((*shape, width), -1, dtype=np.int64)
    for row, (translation, offset, block) in enumerate(zip(translations, offsets, blocks)):
        column = 0
        for position, tokens in translation.suppress:
            out[row, offset + position : offset + len(block), column : column + len(tokens)] = tokens
            column += len(tokens)
    return out


def split_into_blocks(dataset_or_texts, tokenizer, block_size: int, text_field: str = "text"):
    """Split documents into consecutive blocks of ``block_size`` token ids (the last block of a document is shorter).

    Accepts a ``datasets.Dataset`` (returns a Dataset with one ``input_ids`` column), a batch as passed by
    ``Dataset.map(batched=True)`` (returns ``{"input_ids": [...]}``) or a list of strings (returns a list of id
    lists). Ids are tokenized without special tokens; blocks of fewer than 2 tokens predict nothing and are dropped.
    """
    if hasattr(dataset_or_texts, "map") and hasattr(dataset_or_texts, "column_names"):
        return dataset_or_texts.map(
            split_into_blocks,
            batched=True,
            remove_columns=dataset_or_texts.column_names,
            fn_kwargs={"tokenizer": tokenizer, "block_size": block_size, "text_field": text_field},
            desc=f"whp: tokenizing into blocks of {block_size} tokens",
        )
    if isinstance(dataset_or_texts, Mapping):
        return {"input_ids": split_into_blocks(list(dataset_or_texts[text_field]), tokenizer, block_size)}
    if block_size < 2:
        raise ValueError(f"split_into_blocks: block_size={block_size} must be >= 2")
    documents = tokenizer(list(dataset_or_texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [
        ids[start : start + block_size]
        for ids in documents
        for start in range(0, len(ids), block_size)
        if len(ids) - start >= 2
    ]


def text_blocks(texts: Sequence[str], tokenizer, block_size: int) -> list[str]:
    """The blocks of [`split_into_blocks`][whp_trainer.collator.split_into_blocks] as text: each document cut where
    its blocks of ``block_size`` tokens start (at the characters of each block's first token; decoded ids with a slow
    tokenizer), stripped. What the evaluation measures, so that it reads the text as training did."""
    texts = list(texts)
    if not getattr(tokenizer, "is_fast", False):
        return [tokenizer.decode(ids).strip() for ids in split_into_blocks(texts, tokenizer, block_size)]
    offsets = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    found = []
    for text, spans in zip(texts, offsets):
        starts = [spans[first][0] for first in range(0, len(spans), block_size) if len(spans) - first >= 2]
        found += [text[start:end].strip() for start, end in zip(starts, [*starts[1:], len(text)])]
    return found


def block_summary(blocks, block_size: int) -> str:
    """One line on ``blocks`` (token-id lists, or a Dataset of ``input_ids``): how many, their tokens, and the share
    of padding if each were padded to ``block_size``."""
    lengths = [len(ids) for ids in (blocks["input_ids"] if hasattr(blocks, "column_names") else blocks)]
    tokens = sum(lengths)
    padding = 1 - tokens / (len(lengths) * block_size) if lengths else 0.0
    return (f"{len(lengths):,} blocks of up to {block_size} tokens, {tokens:,} tokens "
            f"({tokens / max(1, len(lengths)):.0f} a block), padding {padding:.0%} at {block_size}")


def read_paragraphs(path: str | os.PathLike) -> list[str]:
    """The paragraphs of a text file (separated by blank lines), stripped, empty ones dropped."""
    text = read_text(path)
    return [paragraph.strip() for paragraph in text.split("\n\n") if paragraph.strip()]

