"""Retained ability on ordinary text: perplexity."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..batching import pad_token_id, padded_batch
from ..collator import split_into_blocks
from ..models import read_whole
from .familiarity import evaluation_mode
from .probes import paragraphs, terms_pattern

GENERAL_TEXT = Path(__file__).with_name("general_text")


def perplexity(model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 8) -> float:
    """Perplexity of ``texts``: exp of the mean negative log-likelihood over all their predicted tokens.

    Texts are tokenized without special tokens and cut into blocks of ``max_length`` tokens
    ([`whp_trainer.collator.split_into_blocks`][whp_trainer.collator.split_into_blocks]); each block is scored on its
    own, so every token is predicted from the tokens before it in its block. Token-weighted: long texts count more than
    short ones.
    """
    return perplexity_of(block_nlls(model, tokenizer, texts, max_length, batch_size))


def general_text(anchors: Iterable[str] | None = None) -> list[str]:
    """The package's own ordinary text, read where a user gives no budget text: 14 documents of modern English of
    as many kinds (news, science, fiction with dialogue, a recipe, a letter, a review, a how-to with code, history,
    an interview, sport, a memo, travel, a children's story, health questions), about 5,500 words written for this
    package. Paragraphs that name one of ``anchors`` (an anchor dictionary's terms, on word boundaries, any case)
    are left out: they may be about the target itself."""
    pattern = terms_pattern(anchors or (), ignore_case=True)
    texts = []
    for path in sorted(GENERAL_TEXT.glob("*.txt")):
        kept = [paragraph for paragraph in paragraphs(path.read_text(encoding="utf-8").strip())
                if pattern is None or not pattern.search(paragraph)]
        if kept:
            texts.append("\n\n".join(kept))
    return texts


def perplexity_of(blocks: list[tuple[float, int]]) -> float:
    """The perplexity of blocks given as `block_nlls` gives them."""
    return math.exp(sum(nll for nll, _ in blocks) / sum(count for _, count in blocks))


def block_nlls(model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 8,
               reader: Callable = read_whole) -> list[tuple[float, int]]:
    """Per block of ``texts`` (cut as `perplexity` cuts them, in an order that depends on the texts alone): the summed
    negative log-likelihood of its predicted tokens and their count. ``reader``: how the blocks are read, in this
    process or shared out among the processes of a run (`whp_trainer.models.reader_for`)."""
    return reader(perplexity_blocks(texts, tokenizer, max_length),
                  lambda part: nlls_of_blocks(model, tokenizer, part, batch_size))


def nlls_of_blocks(model, tokenizer, blocks: list[list[int]], batch_size: int = 8) -> list[tuple[float, int]]:
    """`block_nlls` of blocks already cut (`perplexity_blocks`)."""
    pad_id = pad_token_id(tokenizer)
    results = []
    with evaluation_mode(model):
        for start in range(0, len(blocks), batch_size):
            batch = padded_batch(blocks[start : start + batch_size], pad_id, device=model.device)
            labels = batch.pop("labels")
            results += row_nlls(model(**batch).logits, labels)
    return results


def perplexity_blocks(texts, tokenizer, max_length: int, reader: str = "perplexity") -> list[list[int]]:
    """``texts`` cut into blocks of ``max_length`` tokens as `perplexity` reads them, shortest first (similar lengths
    pad less); ``reader``, who reads them, refuses texts with no block of 2 tokens."""
    blocks = sorted(split_into_blocks(list(texts), tokenizer, max_length), key=len)
    if not blocks:
        raise ValueError(f"{reader}: no text of at least 2 tokens")
    return blocks


def row_nlls(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, int]]:
    """Per row of a batch (``labels`` ``-100`` on padding): the summed negative log-likelihood of its next tokens and
    their count."""
    labels = labels[:, 1:]
    nlls = [F.cross_entropy(logits[row, :-1].float(), labels[row], reduction="none").sum().item()
            for row in range(len(labels))]  # row by row: one row's float logits at a time, not the batch's
    return list(zip(nlls, (labels != -100).sum(dim=1).tolist()))


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """The summed negative log-likelihood of a batch's next tokens (``labels`` ``-100`` on padding) and their count."""
    rows = row_nlls(logits, labels)
    return sum(nll for nll, _ in rows), sum(count for _, count in rows)
