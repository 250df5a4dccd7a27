"""Familiarity with the forget target: the paper's token-probability and completion-based metrics.

Every function takes a causal LM (a ``PeftModel`` measures its active adapter), runs it in eval mode without grad
and in batches, and restores its train/eval mode afterwards. The batching helpers here (`next_token_logits`,
`generate_continuations`) are shared by the other metrics.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from ..batching import pad_token_id, padded_batch
from ..models import read_whole
from .judges import CATEGORIES, UNPARSED

THEMATIC_WEIGHT = 0.2  # weight of a thematic completion against an explicit one (5:1, see completion_familiarity)


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module):
    """Eval mode and no grad inside the block; the train/eval mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def next_token_logits(model, contexts: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Float logits ``(len(contexts), vocabulary)`` of the token after each context (one left-padded forward)."""
    batch = padded_batch(contexts, pad_id, side="left", device=model.device)
    batch.pop("labels")
    return model(**batch, logits_to_keep=1).logits[:, -1].float()


def probe_ids(tokenizer, probe: dict, index: int = 0) -> tuple[list[int], int]:
    """The prompt's token ids and the first token of the target past them (from tokenizing prompt + target)."""
    context = tokenizer(probe["prompt"])["input_ids"]
    full = tokenizer(probe["prompt"] + probe["target"])["input_ids"]
    if len(full) <= len(context) or not context:
        raise ValueError(f"probe {index} ({probe!r:.80}): no prompt token or no target token past the prompt")
    return context, full[len(context)]


def first_token_probabilities(model, tokenizer, probes: Sequence[dict], batch_size: int = 16) -> list[float]:
    """Per probe: the probability of its target's first token right after its prompt."""
    pairs = [probe_ids(tokenizer, probe, index) for index, probe in enumerate(probes)]
    pad_id = pad_token_id(tokenizer)
    probabilities = []
    with evaluation_mode(model):
        for start in range(0, len(pairs), batch_size):
            contexts, targets = zip(*pairs[start : start + batch_size])
            distribution = next_token_logits(model, contexts, pad_id).softmax(-1)
            probabilities += distribution[torch.arange(len(targets)), torch.tensor(targets)].tolist()
    return probabilities


def token_familiarity(model, tokenizer, probes: Sequence[dict], batch_size: int = 16, reader: Callable = read_whole
                      ) -> float:
    """The paper's token-probability familiarity: the mean over ``probes`` of the probability of the target's first
    token after the prompt (lower = more forgotten).

    Args:
        model: a causal LM (a ``PeftModel`` is measured with its active adapter).
        tokenizer: its tokenizer.
        probes: ``{"prompt", "target"}`` records (see `whp_trainer.evaluation.probes`).
        batch_size: prompts per forward pass.
        reader: how the probes are read: in this process, or shared out among the processes of a run
            (`whp_trainer.models.reader_for`).
    """
    if not probes:
        raise ValueError("token_familiarity needs at least one probe")
    probabilities = reader(probes, lambda part: first_token_probabilities(model, tokenizer, part, batch_size))
    return sum(probabilities) / len(probabilities)


def next_token_probabilities(model, tokenizer, prompt: str, tokens: list[str]) -> dict[str, float]:
    """The probability of each of ``tokens`` (its first token, with its leading space) right after ``prompt``.

    The paper's next-token curves: ``next_token_probabilities(model, tok, "Harry Potter studies", [" magic", " the"])``.
    """
    probes = [{"prompt": prompt, "target": token} for token in tokens]
    return dict(zip(tokens, first_token_probabilities(model, tokenizer, probes, batch_size=max(1, len(tokens)))))


def generate_continuations(model, contexts: Sequence[Sequence[int]], pad_id: int, **generate_kwargs) -> torch.Tensor:
    """The new token ids ``model.generate`` appends to each left-padded context (rows after an end are padding)."""
    batch = padded_batch(contexts, pad_id, side="left", device=model.device)
    output = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pad_token_id=pad_id, **generate_kwargs
    )
    return output[:, batch["input_ids"].shape[1] :].cpu()


def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 24,
    num_samples: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> list[list[str]]:
    """``num_samples`` completions of each prompt (the continuation only, special tokens removed).

    Sampled at ``temperature`` (``0``: greedy) with the model's other generation settings, from a generator seeded
    by ``seed`` (the global RNG state is left as it was).
    """
    if temperature == 0 and num_samples > 1:
        raise ValueError("temperature=0 is greedy: num_samples > 1 would repeat the same completion")
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    pad_id = pad_token_id(tokenizer)
    contexts = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    texts = []
    with evaluation_mode(model), torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(contexts), batch_size):
            new = generate_continuations(model, contexts[start : start + batch_size], pad_id,
                                         max_new_tokens=max_new_tokens, num_return_sequences=num_samples, **sampling)
            texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return [texts[index : index + num_samples] for index in range(0, len(texts), num_samples)]


def judged_rows(judge, prompts: Sequence[str], completions: Sequence[Sequence[str]]) -> list[list[str]]:
    """``judge``'s category of each completion, row by row; all at once through ``judge.judge_many`` if it has one."""
    pairs = [(prompt, text) for prompt, row in zip(prompts, completions) for text in row]
    many = getattr(judge, "judge_many", None)
    flat = iter(many([p for p, _ in pairs], [t for _, t in pairs]) if many else [judge(p, t) for p, t in pairs])
    return [[next(flat) for _ in row] for row in completions]


def completion_familiarity(
    completions: Sequence[Sequence[str]],
    judge: Callable[[str, str], str],
    prompts: Sequence[str] | None = None,
) -> dict:
    """The paper's completion-based familiarity of judged completions.

    Each completion is put by ``judge(prompt, completion)`` in one of `CATEGORIES`
    (or ``"unparsed"`` when an LLM judge's answer could not be read). The score weighs explicit completions 5 to 1
    against thematic ones, as the paper's GPT-4 grades are scored in the re-implementation of Lynch et al. (2024,
    "Eight Methods to Evaluate Robust Unlearning in LLMs": explicit 5, thematic 1, accidental and none 0), divided by
    5 so that it lies in [0, 1]::

        score = (explicit + 0.2 * thematic) / (explicit + thematic + accidental + none)

    Unparsed judgements are counted apart and left out of the denominator (``nan`` when nothing was judged).

    Args:
        completions: per prompt, its completions (as
            [`sample_completions`][whp_trainer.evaluation.familiarity.sample_completions] returns them).
        judge: a callable ``(prompt, completion) -> category``, e.g. an
            [`AnchorJudge`][whp_trainer.evaluation.judges.AnchorJudge] or
            [`LLMJudge`][whp_trainer.evaluation.judges.LLMJudge].
        prompts: the prompt of each row of ``completions``; without them the judge sees an empty prompt (so a term
            repeated from the prompt cannot be told from new knowledge).

    Returns:
        ``{"score": float, "counts": {category: int, ..., "unparsed": int}, "categories": [[category, ...], ...]}``.
    """
    if prompts is not None and len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} rows of completions")
    prompts = [""] * len(completions) if prompts is None else prompts
    categories = judged_rows(judge, prompts, completions)
    counts = Counter(category for row in categories for category in row)
    unknown = set(counts) - {*CATEGORIES, UNPARSED}
    if unknown:
        raise ValueError(f"the judge returned unknown categories {sorted(unknown)}; expected {CATEGORIES}")
    judged = sum(counts[category] for category in CATEGORIES)
    familiar = counts["explicit"] + THEMATIC_WEIGHT * counts["thematic"]
    return {
        "score": familiar / judged if judged else float("nan"),
        "counts": {category: counts[category] for category in (*CATEGORIES, UNPARSED)},
        "categories": categories,
    }
