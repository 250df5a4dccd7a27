"""Knowledge of the forget target: MUSE's KnowMem (ROUGE-L recall of answers to questions) and the probability of
the target's entities where a passage first names them.

The first mention matters: once a passage has named "Hermione", any model copies the name from its context, so
only the first mention in a passage tells whether the model knows who comes next.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..batching import pad_token_id
from .familiarity import evaluation_mode, generate_continuations
from .probes import terms_pattern

ANSWER_STOPS = ("\n\n", "\nQuestion", "Question:")  # MUSE cuts a generated answer before any of these


def rouge_scorer():
    """MUSE's scorer: ROUGE-L of the ``rouge-score`` package, its default tokenization, no stemming."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=False)


def load_qa(path: str | os.PathLike) -> list[dict[str, str]]:
    """Question/answer pairs from a ``.json`` list or a ``.jsonl`` file of ``{"question", "answer"}`` objects.

    Raises ``ValueError`` naming the file and the entry (``.json``, from 1) or line (``.jsonl``) at fault."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".jsonl":
            entries = [(f"line {n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of {{question, answer}} objects")
            entries = [(f"entry {n}", entry) for n, entry in enumerate(data, 1)]
        else:
            raise ValueError(f"{path}: unknown question/answer file format {path.suffix!r}; use .json or .jsonl")
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from error
    for where, entry in entries:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str) and entry[key].strip()
                                                  for key in ("question", "answer")):
            raise ValueError(f"{path}, {where}: expected an object with non-empty string 'question' and 'answer'")
    if not entries:
        raise ValueError(f"{path}: no question/answer pair")
    return [entry for _, entry in entries]


def qa_prompt(question: str, shots: Sequence[dict] = ()) -> str:
    """MUSE's prompt: few-shot ``Question: …\\nAnswer: …`` pairs, blank-line separated, then the question."""
    examples = "".join(f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\n" for shot in shots)
    return examples + f"Question: {question}\nAnswer: "


def cut_answer(text: str) -> str:
    for stop in ANSWER_STOPS:
        text = text.split(stop)[0]
    return text


def knowledge_memorization(
    model, tokenizer, qa: Sequence[dict], shots: Sequence[dict] = (), max_new_tokens: int = 32, batch_size: int = 8
) -> float:
    """MUSE's KnowMem: the mean ROUGE-L recall of the true answer in the model's greedy answer (``max_new_tokens``
    at most, cut at the next question) to each question, asked after the few-shot ``shots``."""
    if not qa:
        raise ValueError("knowledge_memorization needs at least one question/answer pair")
    scorer = rouge_scorer()
    contexts = [tokenizer(qa_prompt(pair["question"], shots))["input_ids"] for pair in qa]
    pad_id = pad_token_id(tokenizer)
    recalls = []
    with evaluation_mode(model):
        for start in range(0, len(contexts), batch_size):
            new = generate_continuations(model, contexts[start : start + batch_size], pad_id,
                                         max_new_tokens=max_new_tokens, do_sample=False)
            answers = tokenizer.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            for pair, answer in zip(qa[start : start + batch_size], answers):
                recalls.append(scorer.score(pair["answer"], cut_answer(answer))["rougeL"].recall)
    return sum(recalls) / len(recalls)


def first_mention_probes(
    texts: Iterable[str], entities: Iterable[str], min_words: int = 3, max_context_chars: int = 2000
) -> list[dict[str, str]]:
    """Probes at the first mention of each entity in each passage (blank-line separated part of ``texts``): the
    passage up to the mention (its last ``max_context_chars`` characters) as prompt, the entity with its leading
    space as target. Mentions with fewer than ``min_words`` words before them are skipped; later mentions of the
    same entity in the passage are never probes (the model could copy them)."""
    pattern = terms_pattern(entities)
    if pattern is None:
        return []
    probes = []
    for passage in (part for text in texts for part in re.split(r"\n\s*\n", text)):
        seen = set()
        for match in pattern.finditer(passage):
            if match.group() in seen:
                continue
            seen.add(match.group())
            before = passage[: match.start()]
            if len(before.split()) < min_words:
                continue
            prompt = before.rstrip()
            space = " " if len(prompt) < len(before) else ""
            probes.append({"prompt": prompt[-max_context_chars:], "target": space + match.group()})
    return probes
