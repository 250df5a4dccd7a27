"""Membership inference on the forget text: Min-K% and Min-K%++ AUC of forget vs holdout texts, and MUSE's PrivLeak.

A model that read a text gives its tokens, and above all its least likely tokens, more probability than those of a
text of the same kind it never read. Min-K% (Shi et al. 2024) scores a text by the mean log-probability of its ``k``
least likely tokens; Min-K%++ (Zhang et al. 2024) first standardises each token's log-probability by the mean and
spread of log-probabilities under the model's own next-token distribution. The AUC of telling forget texts (members)
from holdout texts (non-members) by that score is 0.5 for a model that read neither; the oracle's value is the goal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..batching import pad_token_id, padded_batch
from ..models import read_whole
from .familiarity import evaluation_mode

MUSE_K = 0.4  # MUSE's PrivLeak uses Min-40%


def token_scores(model, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8):
    """Per text: the log-probability of each of its tokens after the ones before (the first is not scored), and
    the Min-K%++ standardised score ``(log p(x_t) − μ_t) / σ_t`` with ``μ_t``, ``σ_t`` the mean and standard
    deviation of ``log p(·)`` under the model's next-token distribution at ``t``. Texts are tokenized as the
    tokenizer does by default (special tokens included, as MUSE does) and cut at ``max_length`` tokens."""
    return token_scores_of_ids(model, membership_ids(tokenizer, texts, max_length), pad_token_id(tokenizer),
                               batch_size)


def token_scores_of_ids(model, encoded: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8):
    """`token_scores` of texts already encoded (`membership_ids`), padded with ``pad_id``."""
    log_probs, standardised = [], []
    with evaluation_mode(model):
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start : start + batch_size]
            batch = padded_batch(rows, pad_id, device=model.device)
            batch.pop("labels")
            scores = scores_from_logits(model(**batch).logits, batch["input_ids"], rows)
            log_probs += scores[0]
            standardised += scores[1]
    return log_probs, standardised


def membership_ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """The token ids membership scores read: special tokens included (as MUSE does), cut at ``max_length``."""
    return [tokenizer(text)["input_ids"][:max_length] for text in texts]


def scores_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, rows: Sequence[Sequence[int]]):
    """`token_scores` of one right-padded batch from its logits ``(B, T, V)``: per row, the log-probabilities of its
    tokens and their Min-K%++ standardised scores (CPU tensors). Row by row, on the row's own positions: the float
    tensors of vocabulary size are one row's, not the batch's (`benchmarks/bench_reading_memory.py`)."""
    log_probs, standardised = [], []
    for row, ids in enumerate(rows):
        length = len(ids) - 1
        distribution = torch.log_softmax(logits[row, :length].float(), dim=-1)
        probabilities = distribution.exp()
        mean = (probabilities * distribution).sum(-1)
        spread = ((probabilities * distribution.square()).sum(-1) - mean.square()).clamp(min=1e-12).sqrt()
        chosen = distribution.gather(-1, input_ids[row, 1 : length + 1].unsqueeze(-1)).squeeze(-1)
        log_probs.append(chosen.cpu())
        standardised.append(((chosen - mean) / spread).cpu())
    return log_probs, standardised


def min_k(values: torch.Tensor, k: float = MUSE_K) -> float:
    """Mean of the ``k`` share (at least one) of the lowest ``values``: higher = the text looks more familiar."""
    if len(values) == 0:
        return float("nan")
    count = max(1, int(len(values) * k))
    return values.sort().values[:count].mean().item()


def auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """Area under the ROC curve of telling ``members`` from ``non_members`` by a higher score (ties count half):
    the probability that a random member scores above a random non-member."""
    members, non_members = torch.tensor(list(members)), torch.tensor(list(non_members))
    if not len(members) or not len(non_members):
        raise ValueError("auc needs at least one member and one non-member score")
    above = (members[:, None] > non_members[None, :]).float().mean()
    ties = (members[:, None] == non_members[None, :]).float().mean()
    return (above + ties / 2).item()


def membership_auc(
    model, tokenizer, forget_texts: Sequence[str], holdout_texts: Sequence[str], k: float = MUSE_K,
    max_length: int = 512, batch_size: int = 8, reader: Callable = read_whole,
) -> dict[str, float]:
    """Min-K% and Min-K%++ AUC of ``forget_texts`` (members) against ``holdout_texts`` (non-members, of the same
    kind and never trained on): 0.5 = no membership signal, 1 = every forget text is recognised. Each with its
    standard error at these sample sizes (`auc_standard_error`): the resolution a comparison can claim. ``reader``:
    how the texts are read, in this process or shared out among the processes of a run
    (`whp_trainer.models.reader_for`).

    Returns ``{"membership_auc_mink": ..., "membership_auc_minkpp": ..., "membership_auc_mink_se": ...,
    "membership_auc_minkpp_se": ...}``.
    """
    if not forget_texts or not holdout_texts:
        raise ValueError("membership_auc needs forget texts and holdout texts")
    scores = [reader(texts, lambda part: membership_scores(model, tokenizer, part, k, max_length, batch_size))
              for texts in (forget_texts, holdout_texts)]
    return membership_results(*scores)


def membership_scores(model, tokenizer, texts: Sequence[str], k: float = MUSE_K, max_length: int = 512,
                      batch_size: int = 8) -> list[tuple[float, float]]:
    """Per text: its Min-K% and Min-K%++ scores (higher = it looks more familiar)."""
    log_probs, standardised = token_scores(model, tokenizer, texts, max_length, batch_size)
    return [(min_k(plain, k), min_k(plus, k)) for plain, plus in zip(log_probs, standardised, strict=True)]


def membership_results(forget: Sequence[tuple[float, float]], holdout: Sequence[tuple[float, float]]
                       ) -> dict[str, float]:
    """`membership_auc`'s dict from the (Min-K%, Min-K%++) scores of each forget and each holdout text."""
    forget, holdout = list(zip(*forget)), list(zip(*holdout))
    found = {}
    for index, name in enumerate(("membership_auc_mink", "membership_auc_minkpp")):
        found[name] = auc(forget[index], holdout[index])
        found[f"{name}_se"] = auc_standard_error(found[name], len(forget[index]), len(holdout[index]))
    return found


def auc_standard_error(value: float, members: int, non_members: int) -> float:
    """The standard error of an AUC of ``value`` measured on ``members`` and ``non_members`` samples (Hanley &
    McNeil 1982): about 0.065 at 40 + 40 texts and AUC 0.5, 0.18 at 6 + 5, so two AUCs of small samples differ
    by more than a goal of ±0.05 by chance alone."""
    q_members, q_non_members = value / (2 - value), 2 * value**2 / (1 + value)
    variance = (value * (1 - value) + (members - 1) * (q_members - value**2)
                + (non_members - 1) * (q_non_members - value**2)) / (members * non_members)
    return math.sqrt(max(variance, 0.0))


def privleak(membership: float, oracle_membership: float) -> float:
    """MUSE's PrivLeak, in percent: ``(AUC − AUC_oracle) / AUC_oracle × 100`` with MUSE's AUC, which labels the holdout
    texts as members (``1 − membership``, as [`membership_auc`][whp_trainer.evaluation.membership.membership_auc]
    returns it). Near 0 = like the oracle; strongly negative = the forget text is still recognised (under-unlearned);
    positive = it is now recognised as *unseen* more than an unseen text is (over-unlearned, itself a membership
    signal)."""
    muse, muse_oracle = 1 - membership, 1 - oracle_membership
    return float("nan") if muse_oracle == 0 else (muse - muse_oracle) / muse_oracle * 100
