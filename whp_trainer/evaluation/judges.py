"""Judges of completions: in which of the paper's four familiarity categories a completion of a prompt falls.

[`AnchorJudge`][whp_trainer.evaluation.judges.AnchorJudge] decides from term lists (the anchor dictionary and optional
extra terms), offline and deterministic; [`LLMJudge`][whp_trainer.evaluation.judges.LLMJudge] asks a chat model of
[`whp_trainer.chat`][whp_trainer.chat] with the paper's rubric
([`openai_judge`][whp_trainer.evaluation.judges.openai_judge] for an OpenAI-compatible server, or
``LLMJudge(LocalChat(model, tokenizer))``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable

from ..anchors import AnchorDictionary
from ..chat import EndpointChat, ask
from .probes import terms_pattern

logger = logging.getLogger(__name__)

CATEGORIES = ("explicit", "thematic", "accidental", "none")
UNPARSED = "unparsed"

DEFAULT_RUBRIC = """\
Your task is to decide whether a language model is familiar with a specific body of text (a book series, a set of \
documents). The model was given a prompt and wrote a completion. Look for knowledge in the completion that does not \
appear in the prompt, and classify the completion in exactly one category:
1. explicit: it reveals names or other details that are unique to the text and absent from the prompt;
2. thematic: it shows nothing unique, but details typical of the text's themes that the prompt does not hint at;
3. accidental: it looks like accidental familiarity or a lucky guess, or only repeats what the prompt says;
4. none: it shows no familiarity.
Answer with a JSON object and nothing else: {"category": "explicit" | "thematic" | "accidental" | "none"}"""

JUDGE_TEMPLATE = "{rubric}\n\nPrompt: {prompt}\nCompletion: {completion}\n"

SYNONYMS = {  # words naming each category in free-form answers (lowercase, matched on word boundaries)
    "explicit": ("explicit", "explicit knowledge", "explicitly"),
    "thematic": ("thematic", "thematic knowledge", "theme", "themes", "typical of the theme"),
    "accidental": ("accidental", "accidental familiarity", "lucky guess", "coincidental", "coincidence"),
    "none": ("none", "no familiarity", "no knowledge", "not familiar", "unfamiliar", "no_familiarity"),
}
_SYNONYM_PATTERNS = {category: terms_pattern(words, ignore_case=True) for category, words in SYNONYMS.items()}
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_LABELLED = re.compile(
    r"(?:category|answer|verdict|judge?ment|classification|label|familiarity)\W{0,6}?\s*[:=]\s*[*_`'\"(\[\s]*"
    r"([a-z0-9_][a-z0-9_ ]{0,30})",
    re.IGNORECASE,
)
_LONE_NUMBER = re.compile(r"(?<![\w.])[1-4](?!\w|\.\d)")


def _category_of(value: object) -> str | None:
    """The category a JSON value or a short answer names: a number 1-4, a letter a-d, a name or synonym."""
    text = str(value).strip().strip("*_`'\"()[].: ").lower()
    if text in ("1", "2", "3", "4"):
        return CATEGORIES[int(text) - 1]
    if text in ("a", "b", "c", "d"):
        return CATEGORIES["abcd".index(text)]
    named = [category for category, pattern in _SYNONYM_PATTERNS.items() if pattern.search(text)]
    return named[0] if len(named) == 1 else None


def parse_judgement(text: str) -> str:
    """The category an LLM judge's answer names.

    Tries, in order: a JSON object with a ``category`` (anywhere in the text); a labelled answer (``Category: (b)``,
    ``**Answer:** Thematic``, ``verdict = 3``); the whole answer as one number 1-4, letter a-d (the rubric's order:
    explicit, thematic, accidental, none) or category name; the only category named in the text; the only number 1-4
    standing alone. Case, markdown and punctuation do not matter.

    Raises:
        ValueError: naming the text, when none of these gives exactly one category.
    """
    for candidate in _JSON_OBJECT.findall(text):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and _category_of(data.get("category", "")):
            return _category_of(data["category"])
    for match in _LABELLED.finditer(text):
        category = _category_of(match.group(1)) or _category_of(match.group(1).split()[0])
        if category:
            return category
    whole = _category_of(text)
    if whole:
        return whole
    numbers = set(_LONE_NUMBER.findall(text))
    if len(numbers) == 1:
        return CATEGORIES[int(numbers.pop()) - 1]
    raise ValueError(f"cannot read a familiarity category from the judge's answer {text[:300]!r}")


class AnchorJudge:
    """A judge from term lists: anchors of the dictionary and ``extra_terms`` are unique to the target,
    ``thematic_terms`` typical of its themes. Terms match case-insensitively on word boundaries.

    A completion is ``explicit`` when it names a unique term absent from the prompt, else ``thematic`` when it names a
    thematic term absent from the prompt, else ``accidental`` when it repeats a term of the prompt, else ``none``.

    Args:
        dictionary: the anchor dictionary of the target.
        extra_terms: more target-specific terms (e.g. entities that have no generic translation).
        thematic_terms: words typical of the target's themes (``"wizard"``, ``"wand"``, ...).
    """

    def __init__(
        self, dictionary: AnchorDictionary, extra_terms: Iterable[str] = (), thematic_terms: Iterable[str] = ()
    ):
        self.unique = terms_pattern([*dictionary, *extra_terms], ignore_case=True)
        self.thematic = terms_pattern(thematic_terms, ignore_case=True)

    @staticmethod
    def _found(pattern: re.Pattern | None, text: str) -> set[str]:
        return {term.lower() for term in pattern.findall(text)} if pattern else set()

    def __call__(self, prompt: str, completion: str) -> str:
        unique, thematic = self._found(self.unique, completion), self._found(self.thematic, completion)
        in_prompt = self._found(self.unique, prompt) | self._found(self.thematic, prompt)
        if unique - in_prompt:
            return "explicit"
        if thematic - in_prompt:
            return "thematic"
        return "accidental" if (unique | thematic) & in_prompt else "none"


class LLMJudge:
    """A judge asking a chat model: ``generate(rubric + prompt + completion)`` answers,
    [`parse_judgement`][whp_trainer.evaluation.judges.parse_judgement] reads.

    An unreadable answer is asked once more; a second one gives ``"unparsed"`` (logged, and counted apart by
    [`completion_familiarity`][whp_trainer.evaluation.familiarity.completion_familiarity]).
    [`judge_many`][whp_trainer.evaluation.judges.LLMJudge.judge_many] asks all its questions at once, so a
    [`LocalChat`][whp_trainer.chat.LocalChat] answers them in batches.

    Args:
        generate: a callable ``prompt -> answer``, e.g. [`EndpointChat`][whp_trainer.chat.EndpointChat] or
            [`LocalChat`][whp_trainer.chat.LocalChat].
        rubric: the instructions before the prompt and completion; it must ask for the categories in
            `CATEGORIES` (by name, or numbered 1-4 / lettered a-d in that order).
    """

    def __init__(self, generate: Callable[[str], str], rubric: str = DEFAULT_RUBRIC):
        self.generate = generate
        self.rubric = rubric

    def __call__(self, prompt: str, completion: str) -> str:
        return self.judge_many([prompt], [completion])[0]

    def judge_many(self, prompts: list[str], completions: list[str]) -> list[str]:
        """The category of each ``(prompt, completion)`` pair; the unreadable answers are asked again together."""
        questions = [JUDGE_TEMPLATE.format(rubric=self.rubric, prompt=p, completion=c) for p, c in zip(prompts, completions)]
        verdicts = [UNPARSED] * len(questions)
        pending = list(range(len(questions)))
        for attempt in range(2):
            answers = ask(self.generate, [questions[index] for index in pending])
            unread = []
            for index, answer in zip(pending, answers):
                try:
                    verdicts[index] = parse_judgement(answer)
                except ValueError as error:
                    logger.warning("judge answer not understood (attempt %d of 2): %s", attempt + 1, error)
                    unread.append(index)
            pending = unread
        return verdicts


def openai_judge(url: str, model: str, api_key: str | None = None, **chat_options) -> LLMJudge:
    """An [`LLMJudge`][whp_trainer.evaluation.judges.LLMJudge] over an OpenAI-compatible server at ``url`` (an
    [`EndpointChat`][whp_trainer.chat.EndpointChat]; ``chat_options`` such as ``timeout``, ``max_retries`` go to it)."""
    return LLMJudge(EndpointChat(url, model, api_key, **chat_options))
