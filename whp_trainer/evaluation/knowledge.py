"""Knowledge of the forget target: MUSE's KnowMem (ROUGE-L recall of answers to questions), knowledge by likelihood
(the log-likelihood of true answers, 2-choice accuracy between a true and a false answer) and the probability of the
target's entities where a passage first names them.

Knowledge rows are questions ``{"question", "true_answer", "false_answer"}`` (the format of the Harry Potter trivia
of Lynch et al. 2024) or cloze prompts ``{"prompt", "answer"}`` (a ``"false_answer"`` may be added); the same scores
on a *neighbour* set (related knowledge that must stay) tell forgetting the target from damaging the model.

The first mention matters: once a passage has named "Hermione", any model copies the name from its context, so
only the first mention in a passage tells whether the model knows who comes next.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from statistics import fmean

import torch

from ..batching import pad_token_id, padded_batch
from ..models import read_whole
from .familiarity import evaluation_mode, generate_continuations
from .probes import paragraphs, terms_pattern
from .records import read_records

ANSWER_STOPS = ("\n\n", "\nQuestion", "Question:")  # MUSE cuts a generated answer before any of these


def rouge_scorer():
    """MUSE's scorer: ROUGE-L of the ``rouge-score`` package, its default tokenization, no stemming."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=False)


def load_qa(path: str | os.PathLike) -> list[dict[str, str]]:
    """Question/answer pairs from a ``.jsonl``, ``.json`` or ``.csv`` file of ``{"question", "answer"}`` records.

    Raises ``ValueError`` naming the file and the line (``.jsonl``, ``.csv``) or entry (``.json``, from 1) at fault."""
    entries = read_records(path, "{question, answer} objects")
    for where, entry in entries:
        if not isinstance(entry, dict) or not all(_text(entry.get(key)) for key in ("question", "answer")):
            raise ValueError(f"{where}: expected an object with non-empty string 'question' and 'answer'")
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


def load_knowledge(path: str | os.PathLike) -> list[dict]:
    """Knowledge rows from a ``.jsonl``, ``.json`` or ``.csv`` file: questions ``{"question", "true_answer",
    "false_answer"}`` or cloze prompts ``{"prompt", "answer"}`` (optional ``"false_answer"``), mixed freely. A missing
    or empty ``false_answer`` is left out (the row then counts for the log-likelihood, not for 2-choice accuracy);
    other keys are kept.

    Raises ``ValueError`` naming the file and the line (``.jsonl``, ``.csv``) or entry (``.json``) at fault."""
    rows = [_knowledge_row(record, where) for where, record in read_records(path, "knowledge rows")]
    if not rows:
        raise ValueError(f"{path}: no knowledge row")
    return rows


GENERAL_KNOWLEDGE = os.path.join(os.path.dirname(__file__), "general_knowledge.jsonl")


def general_knowledge(anchors: Iterable[str] | None = None) -> list[dict]:
    """The package's own neighbour knowledge, read where a user gives none: 160 cloze facts most pretrained models
    hold (geography, science, history, literature, other fiction, music and art, everyday words, numbers, sport,
    animals, myths), each with a plausible false answer. Rows that name one of ``anchors`` (an anchor dictionary's
    terms, on word boundaries, any case, in the prompt followed by either answer) are left out: they may be the
    target itself."""
    rows = load_knowledge(GENERAL_KNOWLEDGE)
    pattern = terms_pattern(anchors or (), ignore_case=True)
    if pattern is None:
        return rows

    def names_a_term(row: dict) -> bool:
        context, *answers = knowledge_context(row)
        return any(pattern.search(context + answer) for answer in answers if answer)

    return [row for row in rows if not names_a_term(row)]


def _knowledge_row(record: object, where: str) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object {{question, true_answer, false_answer}} or {{prompt, answer}}, "
                         f"got {record!r:.80}")
    kind = ("question", "true_answer") if _text(record.get("question")) else ("prompt", "answer")
    for key in (*kind, "false_answer"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ValueError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    missing = [key for key in kind if not _text(record.get(key))]
    if missing:
        raise ValueError(f"{where}: missing or empty {' and '.join(map(repr, missing))} (expected {{question, "
                         "true_answer, false_answer}} or {prompt, answer})")
    return {key: value for key, value in record.items() if key != "false_answer" or _text(value)}


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def knowledge_context(row: dict) -> tuple[str, str, str | None]:
    """A row's context, true answer and false answer (``None`` without one), joined as they are scored: a question
    as ``"Question: …\nAnswer:"`` and ``" " + answer``; a cloze answer follows its prompt after one space unless
    the prompt ends or the answer starts with whitespace."""
    if "question" in row:
        context = qa_prompt(row["question"]).rstrip(" ")
        true, false = " " + row["true_answer"].strip(), row.get("false_answer")
        return context, true, None if false is None else " " + false.strip()
    context, false = row["prompt"], row.get("false_answer")
    return context, _spaced(context, row["answer"]), None if false is None else _spaced(context, false)


def _spaced(context: str, answer: str) -> str:
    return answer if context[-1:].isspace() or answer[:1].isspace() else " " + answer


def knowledge_scores(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, max_length: int = 512) -> dict:
    """Knowledge by likelihood of ``rows`` (see `load_knowledge`), from one pass over their answers.

    Returns ``{"loglik", "loglik_first", "loglik_later", "two_choice"}``: the mean over rows of the true answer's
    log-likelihood per token (nats, given the context; higher = better known); the same of its first token alone,
    and of its later tokens alone (rows of a multi-token answer; absent when none has one): a name forgotten at its
    first token can still be completed from it; and the share of rows with a ``false_answer`` whose true answer has
    the higher log-likelihood per token (ties count half; absent when no row has a false answer)."""
    if not rows:
        raise ValueError("knowledge_scores needs at least one knowledge row")
    contexts = [knowledge_context(row) for row in rows]
    pairs = [(context, true) for context, true, _ in contexts]
    pairs += [(context, false) for context, _, false in contexts if false is not None]
    tokens = answer_token_log_likelihoods(model, tokenizer, pairs, batch_size, max_length)
    true_tokens = tokens[: len(rows)]
    true_scores, false_scores = [fmean(row) for row in true_tokens], iter(fmean(row) for row in tokens[len(rows) :])
    result = {"loglik": fmean(true_scores), "loglik_first": fmean([row[0] for row in true_tokens])}
    later = [fmean(row[1:]) for row in true_tokens if len(row) > 1]
    if later:
        result["loglik_later"] = fmean(later)
    wins = [_win(score, next(false_scores)) for score, (_, _, false) in zip(true_scores, contexts) if false is not None]
    if wins:
        result["two_choice"] = sum(wins) / len(wins)
    return result


def _win(true: float, false: float) -> float:
    return 1.0 if true > false else 0.5 if true == false else 0.0


def answer_loglikelihood(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, max_length: int = 512) -> float:
    """The mean over ``rows`` of the true answer's log-likelihood per token, in nats, given the question or prompt
    (see `knowledge_scores`)."""
    if not rows:
        raise ValueError("answer_loglikelihood needs at least one knowledge row")
    return fmean(row_log_likelihoods(model, tokenizer, rows, batch_size, max_length))


def row_log_likelihoods(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, max_length: int = 512,
                        reader: Callable = read_whole) -> list[float]:
    """Per row of ``rows``: the true answer's log-likelihood per token, in nats, given the question or prompt.
    ``reader``: how the rows are read, in this process or shared out among the processes of a run
    (`whp_trainer.models.reader_for`)."""
    return reader(rows, lambda part: answer_log_likelihoods(
        model, tokenizer, [knowledge_context(row)[:2] for row in part], batch_size, max_length))


def answer_margins(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, max_length: int = 512,
                   reader: Callable = read_whole) -> list[float]:
    """Per row of ``rows``, each with a ``false_answer``: its true answer's log-likelihood per token less its false
    answer's (nats; above 0, the true answer is the more likely: the row's fact is known). ``reader``: as for
    `row_log_likelihoods`."""
    contexts = [knowledge_context(row) for row in rows]
    if any(false is None for _, _, false in contexts):
        raise ValueError("answer_margins needs rows with a 'false_answer'")
    return reader(contexts, lambda part: margins_of(model, tokenizer, part, batch_size, max_length))


def margins_of(model, tokenizer, contexts: list[tuple[str, str, str]], batch_size: int, max_length: int
               ) -> list[float]:
    """`answer_margins` of rows given as their `knowledge_context`."""
    pairs = [(context, true) for context, true, _ in contexts] + [(context, false) for context, _, false in contexts]
    scores = answer_log_likelihoods(model, tokenizer, pairs, batch_size, max_length)
    return [true - false for true, false in zip(scores[: len(contexts)], scores[len(contexts) :])]


def two_choice_accuracy(model, tokenizer, rows: Sequence[dict], batch_size: int = 8, max_length: int = 512) -> float:
    """The share of ``rows`` whose true answer is more likely per token than their false answer (ties count half);
    rows without a ``false_answer`` are left out (see `knowledge_scores`)."""
    chosen = [row for row in rows if row.get("false_answer")]
    if not chosen:
        raise ValueError("two_choice_accuracy needs rows with a 'false_answer'")
    return knowledge_scores(model, tokenizer, chosen, batch_size, max_length)["two_choice"]


def answer_log_likelihoods(
    model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 8, max_length: int = 512
) -> list[float]:
    """Per ``(context, answer)`` pair: the mean log-probability (nats) of the answer's tokens, each after the context
    and the answer's tokens before it. The context is cut on its left so that context and answer fit ``max_length``."""
    return [fmean(row) for row in answer_token_log_likelihoods(model, tokenizer, pairs, batch_size, max_length)]


def answer_token_log_likelihoods(
    model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 8, max_length: int = 512
) -> list[list[float]]:
    """Per ``(context, answer)`` pair: the log-probability (nats) of each of the answer's tokens (see
    `answer_log_likelihoods`)."""
    encoded = [_context_answer_ids(tokenizer, context, answer, max_length) for context, answer in pairs]
    pad_id = pad_token_id(tokenizer)
    scores = []
    with evaluation_mode(model):
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = padded_batch([context + answer for context, answer in chunk], pad_id, device=model.device)
            batch.pop("labels")
            logits = model(**batch).logits
            for row, (context, answer) in enumerate(chunk):
                positions = slice(len(context) - 1, len(context) + len(answer) - 1)
                log_probs = torch.log_softmax(logits[row, positions].float(), dim=-1)
                scores.append(log_probs.gather(-1, torch.tensor(answer, device=log_probs.device)[:, None])[:, 0].tolist())
    return scores


def _context_answer_ids(tokenizer, context: str, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """The context's ids and the answer's ids that follow them when the joined text is tokenized (the answer's own
    ids when the joined tokenization does not begin with the context's)."""
    context_ids = tokenizer(context)["input_ids"]
    full = tokenizer(context + answer)["input_ids"]
    if full[: len(context_ids)] == context_ids and len(full) > len(context_ids):
        answer_ids = full[len(context_ids) :]
    else:
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not context_ids or not answer_ids:
        raise ValueError(f"knowledge row {context!r:.60} / {answer!r:.40}: no context token or no answer token")
    answer_ids = answer_ids[: max_length - 1]
    return context_ids[-(max_length - len(answer_ids)) :], answer_ids


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
    for passage in (part for text in texts for part in paragraphs(text)):
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
