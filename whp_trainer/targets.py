"""The method's mathematics on plain tensors: generic logits, suppression, targets and the student loss.

Nothing here knows about models; every function takes logits of shape ``(..., V)`` and is tested on small tensors.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

TARGET_MODES = ("argmax", "soft")
RETAIN_LOSSES = ("kl", "nll")
IGNORE_INDEX = -100


def generic_logits(
    baseline: torch.Tensor, reinforced: torch.Tensor, alpha: float, relu: bool = True,
    spared: torch.Tensor | None = None,
) -> torch.Tensor:
    """``v_baseline − α · ReLU(v_reinforced − v_baseline)`` (Eldan & Russinovich 2023, eq. 1).

    With ``relu=False`` the difference is subtracted without clipping, so tokens the reinforced model
    *lowers* are raised in return. The ``spared`` token ids (`commonest_tokens`) keep the baseline's logits.
    """
    boost = reinforced - baseline
    if relu:
        boost.clamp_(min=0)
    if spared is not None:
        boost[..., spared.to(boost.device)] = 0
    return torch.sub(baseline, boost, alpha=alpha)  # one pass over vocabulary-sized tensors, not two


def commonest_tokens(blocks: list[list[int]], share: float) -> torch.Tensor | None:
    """The most frequent token ids of ``blocks`` (ties in order of first occurrence), as many as make up ``share``
    of their tokens; None for ``share`` 0. On ordinary text these are its punctuation, articles and commonest words,
    which no target's knowledge lives in."""
    if not share:
        return None
    counts = Counter(token for block in blocks for token in block)
    chosen, covered, total = [], 0, sum(counts.values())
    for token, count in counts.most_common():
        if covered >= share * total:
            break
        chosen.append(token)
        covered += count
    return torch.tensor(chosen, dtype=torch.long)


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


def averaged_targets(generics: list[torch.Tensor], mode: str = "argmax", temperature: float = 1.0) -> torch.Tensor:
    """WHP+ (Liu et al. 2024): the mean of the target distributions ``softmax(v_generic_k / τ)`` of several
    translations of a block, or its most likely token in ``"argmax"`` mode. One translation gives
    ``make_targets`` of it exactly."""
    if len(generics) == 1:
        return make_targets(generics[0], mode, temperature)
    if mode not in TARGET_MODES:
        raise ValueError(f"unknown target mode {mode!r}; expected one of {TARGET_MODES}")
    mean = sum(soft_targets(generic, temperature) for generic in generics) / len(generics)
    return mean if mode == "soft" else hard_targets(mean)


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


def chunked_distillation_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    original: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = 1024,
    softcap: float | None = None,
    cap_weight: float = 0.0,
    bias: torch.Tensor | None = None,
    scale: float = 1.0,
    cap_level: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[`distillation_loss`][whp_trainer.targets.distillation_loss] of the logits
    ``(hidden @ weight.T + bias) · scale`` (then soft-capped with ``softcap``), computed chunk by chunk so that only
    ``chunk_size`` rows of vocabulary-sized logits exist at a time, in forward and backward.

    ``hidden`` holds the student's final hidden states at the ``N`` loss positions (``(N, H)``, with grad),
    ``weight`` and ``bias`` the frozen LM head (``(V, H)``, ``(V,)``), ``targets`` token ids (``(N,)``, ``-100`` = no
    loss) or probabilities (``(N, V)``). As Liger's fused linear cross-entropy, each chunk's gradient with respect to
    ``hidden`` is computed in the forward, so the backward neither keeps nor recomputes logits.
    ``cap_weight`` (soft targets) adds `original_token_cap` times that weight (down to ``cap_level``, see
    `cap_level`), as the unchunked loss does.
    Returns the loss and the student's log-probabilities of the ``original`` tokens (``(N,)``, no grad), for metrics.
    """
    if cap_weight and not targets.is_floating_point():
        raise ValueError("the original-token cap needs soft targets (probabilities)")
    total, original_log_probs = _ChunkedHeadLoss.apply(
        hidden, weight, bias, targets, original, chunk_size, softcap, cap_weight, scale, cap_level
    )
    if num_items_in_batch is not None:
        denominator = num_items_in_batch
    else:
        denominator = len(targets) if targets.is_floating_point() else targets.ne(IGNORE_INDEX).sum()
    return total / torch.as_tensor(denominator, dtype=total.dtype, device=total.device).clamp(min=1), original_log_probs


class _ChunkedHeadLoss(torch.autograd.Function):
    """Summed loss of [`chunked_distillation_loss`][whp_trainer.targets.chunked_distillation_loss]; its gradient with
    respect to ``hidden`` is kept from the forward (``(N, H)`` float32), so the head is frozen (no gradient)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, original, chunk_size, softcap, cap_weight, scale, cap_level):
        wants_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if wants_grad else None
        original_log_probs = torch.empty(len(hidden), dtype=torch.float32, device=hidden.device)
        for start in range(0, len(hidden), chunk_size):
            rows = slice(start, start + chunk_size)
            logits = F.linear(hidden[rows].to(weight.dtype), weight, bias).float()
            if scale != 1.0:
                logits = logits * scale
            if softcap:
                capped = torch.tanh(logits / softcap)
                logits = capped * softcap
            log_probs = torch.log_softmax(logits, dim=-1)
            del logits
            total += distillation_loss(log_probs, targets[rows], num_items_in_batch=1)  # 1: the summed loss
            original_log_probs[rows] = log_probs.gather(-1, original[rows].clamp(min=0).unsqueeze(-1)).squeeze(-1)
            capped_rows = None
            if cap_weight:
                level = _target_log_prob(targets[rows], original[rows]) if cap_level is None else cap_level[rows]
                excess = original_log_probs[rows] - level
                total += cap_weight * excess.clamp(min=0).sum()
                capped_rows = cap_weight * (excess > 0).to(log_probs.dtype)
            if wants_grad:
                grad_logits = _loss_grad_wrt_logits(log_probs, targets[rows], original[rows], capped_rows)
                if softcap:
                    grad_logits *= 1 - capped.square()
                if scale != 1.0:
                    grad_logits *= scale
                grad_hidden[rows] = grad_logits.to(weight.dtype) @ weight
        ctx.mark_non_differentiable(original_log_probs)
        ctx.save_for_backward(grad_hidden)
        ctx.hidden_dtype = hidden.dtype
        return total, original_log_probs

    @staticmethod
    def backward(ctx, grad_total, grad_original):
        (grad_hidden,) = ctx.saved_tensors
        return (grad_hidden * grad_total).to(ctx.hidden_dtype), *[None] * 9


def _target_log_prob(targets: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``log p_target(original)`` per row, floored as `original_token_cap` floors it."""
    return targets.gather(-1, original.unsqueeze(-1)).squeeze(-1).clamp(min=1e-12).log()


def _loss_grad_wrt_logits(
    log_probs: torch.Tensor, targets: torch.Tensor, original: torch.Tensor, capped_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Gradient of the summed loss with respect to the logits: ``softmax · Σp − p`` (``p`` one-hot for token ids,
    zero rows at ``-100``), plus ``c · (onehot(original) − softmax)`` for the cap's weight ``c`` on the rows where
    the cap is active (``capped_rows``). Overwrites ``log_probs``."""
    grad = log_probs.exp_()
    if targets.is_floating_point():
        if capped_rows is None:
            return grad.mul_(targets.sum(-1, keepdim=True)).sub_(targets)
        grad.mul_(targets.sum(-1, keepdim=True) - capped_rows.unsqueeze(-1)).sub_(targets)
        rows = torch.arange(len(targets), device=targets.device)
        grad[rows, original] += capped_rows
        return grad
    ignored = targets.eq(IGNORE_INDEX)
    rows = torch.arange(len(targets), device=targets.device)
    grad[rows, targets.clamp(min=0)] -= 1
    grad[ignored] = 0
    return grad


def drop_unchanged(hard: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Hard targets with no loss (``-100``) where they equal the ``original`` next token: cross-entropy there would
    only raise the probability of the memorized token (towards 1, above the teacher's own probability for it)."""
    return hard.masked_fill(hard == original, IGNORE_INDEX)


def retain_kl(student_logits: torch.Tensor, baseline_logits: torch.Tensor, mask: torch.Tensor,
              positions: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the ``mask``ed positions of ``KL(baseline ‖ student)`` between next-token distributions: the
    retain regulariser that keeps the student's predictions on ordinary text those of the base. ``positions``: the
    count to divide by instead of the masked positions' (several processes: their mean count,
    `positions_per_process`)."""
    baseline = torch.log_softmax(baseline_logits.float(), dim=-1)
    student = torch.log_softmax(student_logits.float(), dim=-1)
    per_position = (baseline.exp() * (baseline - student)).sum(-1)
    return (per_position * mask).sum() / (mask.sum().clamp(min=1) if positions is None else positions)


def cap_level(
    targets: torch.Tensor, original: torch.Tensor, base_log_probs: torch.Tensor | None = None,
    depth: float | None = None,
) -> torch.Tensor:
    """The log-probability `original_token_cap` pushes each original token down to: the soft target's
    (``(N, V)`` ``targets``, ``(N,)`` ``original``), or, with ``depth`` (beyond the paper), never more than ``depth``
    nats below the base model's own log-probability of it, ``base_log_probs`` (``(N,)``): a push bounded by how
    likely the base found the token, not by how far into its tail the target puts it."""
    level = _target_log_prob(targets, original)
    return level if depth is None else torch.maximum(level, base_log_probs.to(level.dtype) - depth)


def original_token_cap(
    log_probs: torch.Tensor, targets: torch.Tensor, original: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None, level: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ ReLU(log p_student(original) − log p_target(original))`` over the loss positions, divided as
    [`distillation_loss`][whp_trainer.targets.distillation_loss] divides: pushes the original next token down to the
    soft target's probability for it, in log space (so down to the target's far tail too), and never up.

    ``log_probs`` and ``targets`` are ``(N, V)`` student log-probabilities and target probabilities at the ``N``
    loss positions, ``original`` the ``(N,)`` original next tokens; ``level`` (``(N,)``, from `cap_level`) replaces
    ``log p_target(original)`` where given.
    """
    student = log_probs.gather(-1, original.unsqueeze(-1)).squeeze(-1)
    target = _target_log_prob(targets, original) if level is None else level
    total = (student - target).clamp(min=0).sum()
    denominator = len(original) if num_items_in_batch is None else num_items_in_batch
    return total / torch.as_tensor(denominator, dtype=total.dtype, device=total.device).clamp(min=1)


def without_conflict(
    gradients: list[torch.Tensor | None], keep: list[torch.Tensor | None]
) -> list[torch.Tensor | None]:
    """``gradients`` less their component along ``keep`` when the two conflict (negative dot product), else as given
    (PCGrad, Yu et al. 2020): a step along the result does not, to first order, raise the loss whose gradient is
    ``keep``. Both lists are per parameter; ``None`` is a zero gradient."""
    pairs = [(g, k) for g, k in zip(gradients, keep) if g is not None and k is not None]
    dot = sum((g.float() * k.float()).sum() for g, k in pairs)
    norm = sum(k.float().square().sum() for k in keep if k is not None)
    if not pairs or dot >= 0 or norm == 0:
        return gradients
    scale = dot / norm
    return [g if g is None or k is None else (g.float() - scale * k.float()).to(g.dtype)
            for g, k in zip(gradients, keep)]
