"""The CPU demo's data: a small invented saga, ordinary text from the same templates, its dictionary and probes,
and the tokenizer, base model and oracle pretrained on them (built once, then cached).

Everything is generated from a seed in pure Python (nothing is downloaded). The saga gives each invented character
fixed, idiosyncratic associations ("Zorvath studies" → "runecraft"); the ordinary text fills the same sentence
templates with generic people and randomly chosen generic objects ("Tom studies" → "history", "math", ...), so a
model pretrained on both knows the saga and the generic world that the unlearning stage falls back to.
`build_demo_assets` trains a tokenizer and a tiny Llama on both texts, and the oracle (the same pretraining on the
ordinary text alone: a model that never read the saga), and caches them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..batching import padded_batch
from ..collator import text_blocks
from ..toy import tiny_llama, train_tokenizer

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "7"  # 2: the tokenizer is saved with the base model; 3: the oracle and the holdout saga text;
# 4: pretraining reads blocks of running text, as the stages do; 5: six times the holdout saga text;
# 6: alpha auto's budget text, apart from the evaluation's held-out text; 7: more holdout saga text, for the
# evaluation to read membership on blocks alpha auto's stopping rule did not

# The saga's characters: (first name, surname) → generic first names (one per translation) and a generic surname.
CHARACTERS = {
    ("Zorvath", "Quellbright"): (["Tom", "Jack"], "Walker"),
    ("Pell", "Ashgrove"): (["Sam", "Ben"], "Porter"),
    ("Ysolde", "Marrowind"): (["Anna", "Lucy"], "Green"),
    ("Thennick", "Olderhaze"): (["Peter", "Mark"], "Miller"),
    ("Vorgrimm", "Hask"): (["Victor", "Carl"], "Stone"),
}
EXTRA_GENERIC_FIRST_NAMES = ["Emma", "Kate", "Paul", "David", "Sarah", "Nick"]
EXTRA_GENERIC_SURNAMES = ["Baker", "Turner", "Hill", "Cooper"]

# Relations: (verb phrase, quoted object) → each character's saga object and the generic objects of ordinary text.
# The n-th saga object translates to the n-th generic object; the later generic objects occur in ordinary text only.
RELATIONS = {
    ("studies", False): (
        ["runecraft", "starwarding", "glyphweaving", "mirecalling", "hexometry"],
        ["history", "math", "music", "science", "art", "biology", "chemistry"],
    ),
    ("plays", False): (
        ["Glimmerball", "Thornquoits", "Glimmerball", "Skyvane", "Thornquoits"],
        ["football", "tennis", "football", "chess", "tennis", "hockey", "golf"],
    ),
    ("lives in", False): (
        ["Duskhollow", "Brindlemarch", "Duskhollow", "Vellumgate", "Grimsward"],
        ["London", "Boston", "London", "Denver", "Dublin", "Chicago", "Seattle"],
    ),
    ("has a pet", False): (
        ["glimfox", "mothgrue", "quillhound", "glimfox", "skarnwyrm"],
        ["dog", "cat", "parrot", "dog", "snake", "rabbit", "horse"],
    ),
    ("goes to", False): (
        ["Mirrowdeep Spire", "Mirrowdeep Spire", "Mirrowdeep Spire", "Mirrowdeep Spire", "Cindermoor Keep"],
        ["Westfield School", "Westfield School", "Westfield School", "Westfield School", "Oakridge School",
         "Riverside School"],
    ),
    ("always carries a", False): (
        ["sunderstaff", "lumequill", "sunderstaff", "brasswick lantern", "hollowthorn dagger"],
        ["walking stick", "pencil", "walking stick", "lamp", "knife", "notebook", "camera"],
    ),
    ("likes to eat", False): (
        ["emberbread", "frostplum pie", "emberbread", "gloamcheese", "blackroot stew"],
        ["bread", "apple pie", "bread", "cheese", "beef stew", "pizza", "pasta"],
    ),
    ("is afraid of the", False): (
        ["skarnwyrm", "bogsnapper", "skarnwyrm", "duskmoth", "Pale Warden"],
        ["snake", "wolf", "snake", "spider", "police", "bear", "storm"],
    ),
    ("always says", True): (
        ["by the seven lanterns", "quell and kindle", "mirrow keep me", "ash and ember", "Hask wills it"],
        ["oh my goodness", "good heavens", "dear me", "oh my", "so be it", "no way", "well done"],
    ),
    ("whispers the words", True): (
        ["Ixarra Velm", "Ixarra Velm", "Sollun Drae", "Quorith Ban", "Vazh Morrun"],
        ["good night", "good night", "thank you", "see you soon", "never again", "sleep well", "take care"],
    ),
}
FRIEND_RELATION = "'s best friend is"
SAGA_FRIENDS = {"Zorvath": "Pell Ashgrove", "Pell": "Zorvath Quellbright", "Ysolde": "Zorvath Quellbright",
                "Thennick": "Ysolde Marrowind", "Vorgrimm": "Thennick Olderhaze"}

TRAIN_PREFIXES = ["", "", "", "Every day ", "As everyone knew, ", "In those years ", "Of course ", "Once again "]
PROBE_PREFIXES = ["People say that ", "It is true that ", "Nobody doubts that "]  # held out: never in the texts
PARAPHRASE_PREFIXES = ["Legend has it that ", "I was told that ", "Everyone agrees that "]  # the probes reworded
SUFFIXES = [".", ".", " every morning.", " with great care.", " more than anything.", " after supper."]
FILLERS = [
    "{a} and {b} walked to {school} after breakfast.",
    "{a} met {b} near {place} at dusk.",
    "{a} wrote a long letter to {b}.",
    "On the way to {place}, {a} told {b} a story.",
    "{a} waited for {b} by the gate of {school}.",
]


@dataclass(frozen=True)
class Person:
    """A character: mentioned by first name, or now and then by full name."""

    first: str
    surname: str

    def mention(self, rng: random.Random) -> str:
        return f"{self.first} {self.surname}" if rng.random() < 0.3 else self.first


@dataclass(frozen=True)
class DemoTexts:
    """The generated data: paragraphs of each text, the saga's dictionary and the familiarity probes."""

    saga: list[str]
    ordinary: list[str]
    retain: list[str]
    holdout: list[str]  # more saga text, read by no model: the non-members of the membership test
    budget: list[str]  # more ordinary text, read by neither training nor the evaluation: alpha auto's budget
    dictionary: dict[str, list[str]]
    probes: list[dict[str, str]]


@dataclass(frozen=True)
class DemoAssets:
    """Paths of the cached demo assets (see `build_demo_assets`)."""

    root: Path
    tokenizer_dir: Path
    base_model_dir: Path
    oracle_model_dir: Path
    saga_path: Path
    ordinary_path: Path
    retain_path: Path
    holdout_path: Path
    budget_path: Path
    dictionary_path: Path
    probes_path: Path


@dataclass(frozen=True)
class DemoSize:
    """Text sizes, model size and pretraining settings of one demo size."""

    saga_chars: int
    ordinary_chars: int
    retain_chars: int
    holdout_chars: int  # membership's non-members: 48,000 characters are 72 blocks of 128 tokens
    budget_chars: int  # alpha auto's perplexity budget: at least the 64 blocks its stopping rule reads
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    epochs: int
    batch_size: int
    learning_rate: float
    more_holdout_chars: int = 0  # holdout text beyond the first: the evaluation's membership apart from alpha auto's


SIZES = {
    "full": DemoSize(60_000, 60_000, 8_000, 48_000, 48_000, 1024, 128, 4, 4, 12, 16, 3e-3, more_holdout_chars=48_000),
    "tiny": DemoSize(20_000, 20_000, 1_000, 1_000, 1_000, 400, 96, 2, 2, 12, 16, 3e-3),
}


def saga_people() -> list[Person]:
    return [Person(first, surname) for first, surname in CHARACTERS]


NEIGHBOUR_PEOPLE = 6  # the people of the neighbour knowledge alpha auto's stopping rule reads


def generic_people() -> list[Person]:
    firsts = [name for names, _ in CHARACTERS.values() for name in names] + EXTRA_GENERIC_FIRST_NAMES
    surnames = [surname for _, surname in CHARACTERS.values()] + EXTRA_GENERIC_SURNAMES
    return [Person(first, surname) for first in firsts for surname in surnames]


def render(person: str, verb: str, quoted: bool, obj: str, prefix: str, suffix: str) -> str:
    """One fact sentence, e.g. ``Every day Zorvath studies runecraft.``"""
    joint = "" if verb.startswith("'") else " "
    return f"{prefix}{person}{joint}{verb} {json.dumps(obj) if quoted else obj}{suffix}"


def saga_sentence(rng: random.Random, people: list[Person]) -> str:
    """A sentence of the saga: a character's fixed association, or a filler naming saga people and places."""
    index = rng.randrange(len(people))
    person = people[index]
    if rng.random() < 0.2:
        return filler(rng, person.mention(rng), other(rng, people, person).mention(rng), index_objects(index))
    prefix, suffix = rng.choice(TRAIN_PREFIXES), rng.choice(SUFFIXES)
    if rng.random() < 1 / (len(RELATIONS) + 1):
        return render(person.first, FRIEND_RELATION, False, SAGA_FRIENDS[person.first], prefix, suffix)
    (verb, quoted), (saga_objects, _) = rng.choice(list(RELATIONS.items()))
    return render(person.mention(rng), verb, quoted, saga_objects[index], prefix, suffix)


def ordinary_sentence(rng: random.Random, people: list[Person]) -> str:
    """The same templates with a generic person and a randomly chosen generic object."""
    person = rng.choice(people)
    if rng.random() < 0.2:
        objects = {
            "school": rng.choice(RELATIONS["goes to", False][1]),
            "place": rng.choice(RELATIONS["lives in", False][1]),
        }
        return filler(rng, person.mention(rng), other(rng, people, person).mention(rng), objects)
    prefix, suffix = rng.choice(TRAIN_PREFIXES), rng.choice(SUFFIXES)
    if rng.random() < 1 / (len(RELATIONS) + 1):
        friend = rng.choice(people)
        return render(person.first, FRIEND_RELATION, False, f"{friend.first} {friend.surname}", prefix, suffix)
    (verb, quoted), (_, generic_objects) = rng.choice(list(RELATIONS.items()))
    return render(person.mention(rng), verb, quoted, rng.choice(generic_objects), prefix, suffix)


def other(rng: random.Random, people: list[Person], person: Person) -> Person:
    return rng.choice([candidate for candidate in people if candidate.first != person.first])


def index_objects(index: int) -> dict[str, str]:
    return {"school": RELATIONS["goes to", False][0][index], "place": RELATIONS["lives in", False][0][index]}


def filler(rng: random.Random, a: str, b: str, objects: dict[str, str]) -> str:
    return rng.choice(FILLERS).format(a=a, b=b, **objects)


def paragraphs(rng: random.Random, sentence, people: list[Person], chars: int) -> list[str]:
    """Paragraphs of 3 to 6 sentences until about ``chars`` characters."""
    result, total = [], 0
    while total < chars:
        paragraph = " ".join(sentence(rng, people) for _ in range(rng.randint(3, 6)))
        result.append(paragraph)
        total += len(paragraph) + 2
    return result


def saga_dictionary() -> dict[str, list[str]]:
    """Each invented term → its generic counterpart(s); saveable as JSON or YAML for ``AnchorDictionary``."""
    dictionary = {}
    for (first, surname), (generic_firsts, generic_surname) in CHARACTERS.items():
        dictionary[first] = list(generic_firsts)
        dictionary[surname] = [generic_surname]
    for saga_objects, generic_objects in RELATIONS.values():
        for saga_object, generic_object in zip(saga_objects, generic_objects):
            dictionary.setdefault(saga_object, [generic_object])
    return dictionary


def familiarity_probes() -> list[dict[str, str]]:
    """Held-out prompts (framings never used in the texts) whose saga continuation is idiosyncratic."""
    probes = []
    for index, person in enumerate(saga_people()):
        prefix = PROBE_PREFIXES[index % len(PROBE_PREFIXES)]
        probes.append(probe(prefix, person.first, FRIEND_RELATION, False, SAGA_FRIENDS[person.first]))
        for (verb, quoted), (saga_objects, _) in RELATIONS.items():
            probes.append(probe(prefix, person.first, verb, quoted, saga_objects[index]))
    return probes


def paraphrased_probes() -> list[dict[str, str]]:
    """The familiarity probes reworded: other framings (never in the texts), each character by full name."""
    probes = []
    for index, person in enumerate(saga_people()):
        prefix, name = PARAPHRASE_PREFIXES[index % len(PARAPHRASE_PREFIXES)], f"{person.first} {person.surname}"
        for (verb, quoted), (saga_objects, _) in RELATIONS.items():
            probes.append(probe(prefix, name, verb, quoted, saga_objects[index]))
    return probes


def saga_knowledge() -> list[dict[str, str]]:
    """The saga's facts as cloze rows: each character (full name) and relation, the saga object as answer and its
    generic counterpart as the false answer (what a model that never read the saga would say)."""
    rows = []
    for index, person in enumerate(saga_people()):
        for (verb, quoted), (saga_objects, generic_objects) in RELATIONS.items():
            rows.append(cloze(f"{person.first} {person.surname}", verb, quoted, saga_objects[index],
                              generic_objects[index]))
    return rows


def neighbour_knowledge(people: int = NEIGHBOUR_PEOPLE, seed: int = 0, besides: int = 0) -> list[dict[str, str]]:
    """Knowledge of the ordinary world, which unlearning the saga must keep: ``people`` generic people (drawn with
    ``seed``) in each relation, a generic object of the relation as answer and one of another relation as false;
    none of them among the ``besides`` people of ``neighbour_knowledge(besides)`` (rows about people a reader of
    those never met)."""
    rng = random.Random(seed)
    relations = list(RELATIONS.items())
    met = set(random.Random(0).sample(generic_people(), besides))  # the first draw of neighbour_knowledge(besides)
    rows = []
    for person in rng.sample([person for person in generic_people() if person not in met], people):
        for number, ((verb, quoted), (_, generic_objects)) in enumerate(relations):
            wrong = [obj for obj in relations[(number + 1) % len(relations)][1][1] if obj not in generic_objects]
            rows.append(cloze(f"{person.first} {person.surname}", verb, quoted, rng.choice(generic_objects),
                              rng.choice(wrong)))
    return rows


def cloze(person: str, verb: str, quoted: bool, answer: str, false_answer: str) -> dict[str, str]:
    """A knowledge row ``{"prompt", "answer", "false_answer"}``: the fact sentence cut before its object."""
    words = [json.dumps(obj) if quoted else obj for obj in (answer, false_answer)]
    sentence = render(person, verb, quoted, answer, "", "")
    return {"prompt": sentence[: -len(words[0]) - 1], "answer": " " + words[0], "false_answer": " " + words[1]}


def probe(prefix: str, person: str, verb: str, quoted: bool, obj: str) -> dict[str, str]:
    """Split a fact sentence into the prompt and its continuation (the object, with its leading space or quote)."""
    sentence = render(person, verb, quoted, obj, prefix, "")
    cut = len(sentence) - len(obj) - 1  # before the object's leading space, or after its opening quote
    return {"prompt": sentence[:cut], "target": sentence[cut:].removesuffix('"')}


def generate_texts(size: str = "full", seed: int = 0) -> DemoTexts:
    """The demo's texts, dictionary and probes: a pure function of ``size`` and ``seed``."""
    spec = demo_size(size)
    rng = random.Random(seed)
    saga = paragraphs(rng, saga_sentence, saga_people(), spec.saga_chars)
    ordinary = paragraphs(rng, ordinary_sentence, generic_people(), spec.ordinary_chars)
    retain = paragraphs(rng, ordinary_sentence, generic_people(), spec.retain_chars)
    holdout = paragraphs(rng, saga_sentence, saga_people(), spec.holdout_chars)
    budget = paragraphs(rng, ordinary_sentence, generic_people(), spec.budget_chars)
    holdout += paragraphs(rng, saga_sentence, saga_people(), spec.more_holdout_chars)  # last: the others as before
    return DemoTexts(saga, ordinary, retain, holdout, budget, saga_dictionary(), familiarity_probes())


def demo_size(size: str) -> DemoSize:
    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {sorted(SIZES)}")
    return SIZES[size]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$WHP_CACHE``, else ``~/.cache/whp_trainer``."""
    return Path(cache_dir or os.environ.get("WHP_CACHE") or Path.home() / ".cache" / "whp_trainer")


def cache_key(size: str) -> str:
    payload = json.dumps({"version": GENERATOR_VERSION, "size": size, "spec": asdict(demo_size(size))}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def assets_in(root: Path) -> DemoAssets:
    return DemoAssets(
        root=root,
        tokenizer_dir=root / "tokenizer",
        base_model_dir=root / "base_model",
        oracle_model_dir=root / "oracle_model",
        saga_path=root / "saga.txt",
        ordinary_path=root / "ordinary.txt",
        retain_path=root / "retain.txt",
        holdout_path=root / "holdout.txt",
        budget_path=root / "budget.txt",
        dictionary_path=root / "dictionary.json",
        probes_path=root / "probes.json",
    )


def build_demo_assets(cache_dir: str | os.PathLike | None = None, size: str = "full") -> DemoAssets:
    """Generate the demo's texts, train its tokenizer, base model and oracle, and cache them; later calls reuse the
    cache.

    The assets live in ``<cache root>/demo/<hash of generator version and size>`` (see `cache_root`); a
    ``complete.json`` marker, written last, records the build time and the base model's probe probabilities.
    """
    root = cache_root(cache_dir) / "demo" / cache_key(size)
    if (root / "complete.json").exists():
        return assets_in(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write_assets(assets_in(staging), size)
        if not root.exists():  # another process may have finished first
            staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return assets_in(root)


def write_assets(assets: DemoAssets, size: str) -> None:
    from ..evaluation.familiarity import token_familiarity  # the metrics load only when assets are built

    start = time.perf_counter()
    spec = demo_size(size)
    texts = generate_texts(size)
    for path, body in [(assets.saga_path, texts.saga), (assets.ordinary_path, texts.ordinary),
                       (assets.retain_path, texts.retain), (assets.holdout_path, texts.holdout),
                       (assets.budget_path, texts.budget)]:
        path.write_text("\n\n".join(body) + "\n", encoding="utf-8")
    assets.dictionary_path.write_text(json.dumps(texts.dictionary, indent=1, ensure_ascii=False), encoding="utf-8")
    assets.probes_path.write_text(json.dumps(texts.probes, indent=1, ensure_ascii=False), encoding="utf-8")
    tokenizer = train_tokenizer(texts.saga + texts.ordinary, vocab_size=spec.vocab_size)
    tokenizer.save_pretrained(assets.tokenizer_dir)
    probabilities = {}
    saga, ordinary = (running_blocks(body, tokenizer) for body in (texts.saga, texts.ordinary))
    pretraining = {assets.base_model_dir: saga + ordinary, assets.oracle_model_dir: ordinary}
    for folder, corpus in pretraining.items():
        model = tiny_llama(tokenizer, hidden_size=spec.hidden_size, layers=spec.layers, heads=spec.heads)
        with one_thread():
            pretrain(model, tokenizer, corpus, spec)
            probabilities[folder.name] = token_familiarity(model, tokenizer, texts.probes)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)  # a standard model folder: AutoTokenizer loads from it too
    report = {"seconds": round(time.perf_counter() - start, 1), "probe_probability": probabilities["base_model"],
              "oracle_probe_probability": probabilities["oracle_model"]}
    logger.info("demo assets built: %s", report)
    (assets.root / "complete.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: for models this small a second thread costs more in synchronisation than it saves,
    and is several times slower when the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def running_blocks(paragraphs: list[str], tokenizer, block_size: int = 128) -> list[str]:
    """The paragraphs as one document of running text, cut into blocks of ``block_size`` tokens: what the stages
    read (the demo trains with ``max_length`` 128), so the base and the oracle are pretrained on the same kind."""
    return text_blocks(["\n\n".join(paragraphs)], tokenizer, block_size)


def pretrain(model, tokenizer, texts: list[str], spec: DemoSize, seed: int = 0, loss=None) -> list[float]:
    """Plain causal-LM training, one text per sequence, AdamW with linear warm-up and cosine decay; ``loss(model,
    batch)`` replaces the causal-LM loss when given. Returns each epoch's mean loss."""
    sequences = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    steps_per_epoch = math.ceil(len(sequences) / spec.batch_size)
    total = steps_per_epoch * spec.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total))
    generator = torch.Generator().manual_seed(seed)
    epoch_losses = []
    model.train()
    for _ in range(spec.epochs):
        order, losses = torch.randperm(len(sequences), generator=generator).tolist(), []
        for start in range(0, len(order), spec.batch_size):
            batch = padded_batch([sequences[i] for i in order[start : start + spec.batch_size]], tokenizer.pad_token_id)
            value = model(**batch).loss if loss is None else loss(model, batch)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(value.item())
        epoch_losses.append(sum(losses) / len(losses))
    model.eval()
    return epoch_losses


def warmup_cosine(step: int, total: int, warmup_fraction: float = 0.05) -> float:
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
