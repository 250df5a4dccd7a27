"""Verbatim memorization of the forget text: greedy continuations of its passages against the true text (MUSE)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..batching import pad_token_id
from .familiarity import evaluation_mode, generate_continuations
from .knowledge import rouge_scorer

logger = logging.getLogger(__name__)


def rouge_l(reference_tokens: Sequence, candidate_tokens: Sequence) -> float:
    """ROUGE-L F1: the F-measure of the longest common subsequence's precision and recall (0 when either is empty).

    Tokens are any comparable items: words, token ids.
    """
    if not reference_tokens or not candidate_tokens:
        return 0.0
    common = longest_common_subsequence(reference_tokens, candidate_tokens)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def longest_common_subsequence(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for item in a:
        current = [0]
        for column, other in enumerate(b):
            current.append(previous[column] + 1 if item == other else max(previous[column + 1], current[column]))
        previous = current
    return previous[-1]


def verbatim_memorization(
    model,
    tokenizer,
    passages: list[str],
    prompt_tokens: int = 32,
    continuation_tokens: int = 32,
    batch_size: int = 8,
) -> dict:
    """How much of each passage's next ``continuation_tokens`` the model reproduces greedily from its first
    ``prompt_tokens`` tokens (as the tokenizer encodes the passage, special tokens included), as in MUSE's
    verbatim-memorization test.

    Returns:
        ``rouge_l``: mean ROUGE-L F1 between the words (whitespace-split decoded text) of the continuation and of the
        true text; ``verbmem``: MUSE's VerbMem, the mean ROUGE-L F1 of the ``rouge-score`` package (its
        tokenization, no stemming) between the decoded true continuation and the decoded generated one;
        ``exact_token_accuracy``: mean share of continuation positions holding the true token;
        ``passages``: passages measured; ``skipped``: passages shorter than ``prompt_tokens + continuation_tokens``
        (both means are ``nan`` when every passage was skipped).
    """
    needed = prompt_tokens + continuation_tokens
    encoded = [tokenizer(passage)["input_ids"] for passage in passages]
    usable = [ids[:needed] for ids in encoded if len(ids) >= needed]
    skipped = len(encoded) - len(usable)
    if skipped:
        logger.info("verbatim_memorization: %d of %d passages shorter than %d tokens skipped", skipped, len(encoded),
                    needed)
    rouge, muse, exact = [], [], []
    scorer = rouge_scorer()
    pad_id = pad_token_id(tokenizer)
    with evaluation_mode(model):
        for start in range(0, len(usable), batch_size):
            rows = usable[start : start + batch_size]
            generated = generate_continuations(model, [row[:prompt_tokens] for row in rows], pad_id,
                                               max_new_tokens=continuation_tokens, do_sample=False)
            for row, continuation in zip(rows, generated):
                truth = torch.tensor(row[prompt_tokens:])
                exact.append((continuation[: len(truth)] == truth[: len(continuation)]).sum().item() / len(truth))
                output, reference = (tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
                                     for ids in (continuation, truth))
                rouge.append(rouge_l(reference.split(), output.split()))
                muse.append(scorer.score(reference, output)["rougeL"].fmeasure)
    return {"rouge_l": _mean(rouge), "verbmem": _mean(muse), "exact_token_accuracy": _mean(exact),
            "passages": len(usable), "skipped": skipped}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
