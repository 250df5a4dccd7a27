"""Robustness of forgetting (Lynch et al. 2024): relearning from a little related text, and hints in the prompt."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from ..anchors import AnchorDictionary
from ..batching import pad_token_id, padded_batch
from ..collator import split_into_blocks
from .familiarity import token_familiarity


def relearning_probe(
    model,
    tokenizer,
    texts: list[str],
    probes: Sequence[dict],
    steps: int = 10,
    learning_rate: float = 1e-4,
    batch_size: int = 4,
    max_length: int = 128,
) -> dict:
    """Token familiarity before and after ``steps`` AdamW steps of causal-LM fine-tuning on ``texts``.

    Only the trainable parameters move (a ``PeftModel``: its active adapter); blocks of ``max_length`` tokens are
    cycled through in order. Every trainable parameter is saved first and restored afterwards, gradients are cleared
    and the optimizer is dropped, so the model is left bit-identical, in its train/eval mode.

    Returns:
        ``{"before": float, "after": float, "loss": float}`` (the loss of the last step).
    """
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not parameters:
        raise ValueError("relearning_probe: the model has no trainable parameter (activate an adapter to fine-tune)")
    blocks = split_into_blocks(list(texts), tokenizer, max_length)
    if not blocks:
        raise ValueError("relearning_probe: no text of at least 2 tokens")
    before = token_familiarity(model, tokenizer, probes, batch_size=batch_size)
    saved = [parameter.detach().clone() for parameter in parameters]
    was_training = model.training
    try:
        loss = _fine_tune(model, parameters, blocks, pad_token_id(tokenizer), steps, learning_rate, batch_size)
        after = token_familiarity(model, tokenizer, probes, batch_size=batch_size)
    finally:
        with torch.no_grad():
            for parameter, value in zip(parameters, saved):
                parameter.copy_(value)
                parameter.grad = None
        model.train(was_training)
    return {"before": before, "after": after, "loss": loss}


def _fine_tune(model, parameters, blocks, pad_id: int, steps: int, learning_rate: float, batch_size: int) -> float:
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    model.train()
    loss = torch.tensor(float("nan"))
    with torch.enable_grad():
        for step in range(steps):
            chosen = [blocks[(step * batch_size + offset) % len(blocks)] for offset in range(batch_size)]
            loss = model(**padded_batch(chosen, pad_id, device=model.device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return loss.item()


def hint_probes(
    probes: Sequence[dict], dictionary: AnchorDictionary, hints_per_probe: int = 2, seed: int = 0
) -> list[dict]:
    """The probes with a prefix naming other anchors of the target: ``"Think of Hogwarts and Ron. " + prompt``.

    Hints are drawn (with ``seed``, deterministically) among the anchors that occur (case-insensitively, even inside
    a word) neither in the prompt nor in the target, so a hint never gives the answer away. Comparing token
    familiarity with and without hints measures in-context re-extraction. Each returned probe also records its
    ``hints``.
    """
    rng = random.Random(seed)
    hinted = []
    for probe in probes:
        text = (probe["prompt"] + " " + probe["target"]).lower()
        candidates = [anchor for anchor in dictionary if anchor.lower() not in text]
        hints = rng.sample(candidates, min(hints_per_probe, len(candidates)))
        prefix = f"Think of {_listed(hints)}. " if hints else ""
        hinted.append({**probe, "prompt": prefix + probe["prompt"], "hints": hints})
    return hinted


def _listed(items: list[str]) -> str:
    """``"A"``, ``"A and B"``, ``"A, B and C"``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
