"""The method's mathematics on plain tensors: generic logits, suppression, targets and the student loss.

Nothing here knows about models; every function takes logits of shape ``(..., V)`` and is tested on small tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TARGET_MODES = ("argmax", "soft")
RETAIN_LOSSES = ("kl", "nll")
IGNORE_INDEX = -100


def generic_logits(
    baseline: torch.Tensor, reinforced: torch.Tensor, alpha: float, relu: bool = True
) -> torch.Tensor:
    """``v_baseline − α · ReLU(v_reinforced − v_baseline)`` (Eldan & Russinovich 2023, eq. 1).

    With ``relu=False`` the difference is subtracted without clipping, so tokens the reinforced model
    *lowers* are raised in return.
    """
    boost = reinforced - baseline
    if relu:
        boost.clamp_(min=0)
    return torch.sub(baseline, boost, alpha=alpha)  # one pass over vocabulary-sized tensors, not two


def suppress(logits: torch.Tensor, token_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` from the logits of ``token_ids`` (shape ``(..., K)``, ``-1`` = no token).

    Used for consistency rule 2: once an anchor's translation was used in a block, the student must not learn to
    say that substitute where the original entity stood. A token listed twice is penalised once.
    """
    if token_ids.numel() == 0 or penalty == 0:
        return logits
    present = (token_ids >= 0).to(logits.dtype) * penalty
    penalties = torch.zeros_like(logits).scatter_reduce(
        -1, token_ids.clamp(min=0), present, reduce="amax", include_self=True
    )
    return logits - penalties


def hard_targets(generic: torch.Tensor) -> torch.Tensor:
    """The paper's labels: the most likely generic token at each position."""
    return generic.argmax(dim=-1)


def soft_targets(generic: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """A target distribution ``softmax(v_generic / τ)``."""
    return torch.softmax(generic.float() / temperature, dim=-1)


def make_targets(generic: torch.Tensor, mode: str = "argmax", temperature: float = 1.0) -> torch.Tensor:
    """Hard targets (token ids) in ``"argmax"`` mode, soft targets (probabilities) in ``"soft"`` mode."""
    if mode == "argmax":
        return hard_targets(generic)
    if mode == "soft":
        return soft_targets(generic, temperature)
    raise ValueError(f"unknown target mode {mode!r}; expected one of {TARGET_MODES}")


def distillation_loss(
    log_probs: torch.Tensor, targets: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Summed student loss divided by ``num_items_in_batch`` (the loss positions of the whole accumulated batch).

    ``log_probs`` are the student's log-probabilities (``log_softmax`` of its logits). ``targets`` are either token
    ids (``log_probs.shape[:-1]``, ``-100`` = no loss) for cross-entropy, or probabilities (``log_probs.shape``,
    every row a loss position) for ``KL(targets ‖ student)``. Dividing by the count over the whole accumulated
    batch (the Trainer passes it) makes gradient accumulation of k micro-batches equal one batch k times larger;
    without it, the mean over loss positions is returned.
    """
    if targets.is_floating_point():
        total = (torch.special.xlogy(targets, targets) - targets * log_probs).sum()
        count = targets.shape[:-1].numel()
    else:
        total = F.nll_loss(log_probs.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        count = targets.ne(IGNORE_INDEX).sum()
    denominator = count if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(denominator, dtype=total.dtype, device=total.device).clamp(min=1)


def drop_unchanged(hard: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Hard targets with no loss (``-100``) where they equal the ``original`` next token: cross-entropy there would
    only raise the probability of the memorized token (towards 1, above the teacher's own probability for it)."""
    return hard.masked_fill(hard == original, IGNORE_INDEX)


def retain_kl(student_logits: torch.Tensor, baseline_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the ``mask``ed positions of ``KL(baseline ‖ student)`` between next-token distributions: the
    retain regulariser that keeps the student's predictions on ordinary text those of the base."""
    baseline = torch.log_softmax(baseline_logits.float(), dim=-1)
    student = torch.log_softmax(student_logits.float(), dim=-1)
    per_position = (baseline.exp() * (baseline - student)).sum(-1)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def original_token_cap(
    log_probs: torch.Tensor, targets: torch.Tensor, original: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ ReLU(log p_student(original) − log p_target(original))`` over the loss positions, divided as
    :func:`distillation_loss` divides: pushes the original next token down to the soft target's probability for it,
    in log space (so down to the target's far tail too), and never up.

    ``log_probs`` and ``targets`` are ``(N, V)`` student log-probabilities and target probabilities at the ``N``
    loss positions, ``original`` the ``(N,)`` original next tokens.
    """
    index = original.unsqueeze(-1)
    student = log_probs.gather(-1, index).squeeze(-1)
    target = targets.gather(-1, index).squeeze(-1).clamp(min=1e-12).log()
    total = (student - target).clamp(min=0).sum()
    denominator = len(original) if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(denominator, dtype=total.dtype, device=total.device).clamp(min=1)
