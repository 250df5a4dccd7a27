"""The readings taken during training (``alpha: auto``'s targets, the reinforcement's fit and the stopping rule's
measurements; `FamiliarityCallback`'s) shared out among the processes of a multi-process run: each process reads every N-th item with
[`read_in_shares`][whp_trainer.models.read_in_shares] and all of them gather the results, so every process gets the
figures of the plain metric for a N-th of its forwards. Every process calls them with the same items (so they are
not the metrics' default: a reading in one process alone would wait for the others); in one process each is the
plain metric. A model whose parameters are sharded (FSDP, DeepSpeed ZeRO-3) gathers them from every process at each
forward, so there every process reads every item, in the same forwards."""

from __future__ import annotations

from collections.abc import Sequence

from ..models import is_sharded, read_in_shares
from .familiarity import first_token_probabilities
from .knowledge import answer_margins, row_log_likelihoods
from .membership import membership_results, membership_scores
from .retain import nlls_of_blocks, perplexity_blocks


def shared_reading(model, items: Sequence, read) -> list:
    """`read_in_shares` of ``items``, or ``read(items)`` in every process when ``model`` is sharded."""
    return read(list(items)) if is_sharded(model) else read_in_shares(items, read)


def shared_familiarity(model, tokenizer, probes: Sequence[dict], batch_size: int = 16) -> float:
    """`token_familiarity`."""
    if not probes:
        raise ValueError("token_familiarity needs at least one probe")
    probabilities = shared_reading(model, probes,
                                   lambda part: first_token_probabilities(model, tokenizer, part, batch_size))
    return sum(probabilities) / len(probabilities)


def shared_membership(model, tokenizer, forget_texts: Sequence[str], holdout_texts: Sequence[str],
                      max_length: int = 512, batch_size: int = 8) -> dict[str, float]:
    """`membership_auc`."""
    if not forget_texts or not holdout_texts:
        raise ValueError("membership_auc needs forget texts and holdout texts")
    scores = [shared_reading(model, texts, lambda part: membership_scores(model, tokenizer, part,
                                                                          max_length=max_length, batch_size=batch_size))
              for texts in (forget_texts, holdout_texts)]
    return membership_results(*scores)


def shared_block_nlls(model, tokenizer, texts: Sequence[str], max_length: int = 512,
                      batch_size: int = 8) -> list[tuple[float, int]]:
    """`block_nlls`."""
    return shared_reading(model, perplexity_blocks(texts, tokenizer, max_length),
                          lambda part: nlls_of_blocks(model, tokenizer, part, batch_size))


def shared_row_log_likelihoods(model, tokenizer, rows: Sequence[dict], max_length: int = 512) -> list[float]:
    """`row_log_likelihoods`."""
    return shared_reading(model, rows, lambda part: row_log_likelihoods(model, tokenizer, part, max_length=max_length))


def shared_answer_margins(model, tokenizer, rows: Sequence[dict], max_length: int = 512) -> list[float]:
    """`answer_margins`."""
    return shared_reading(model, rows, lambda part: answer_margins(model, tokenizer, part, max_length=max_length))
