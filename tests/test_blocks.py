"""Blocks of running text, as the paper trains: a book of short paragraphs is packed into full blocks of max_length
tokens within each document, both stages and the evaluation read the same blocks, and one block per paragraph only
when asked."""

import logging
import math

import pytest
from conftest import CORPUS
from trl import ModelConfig, SFTTrainer

from whp_trainer import UnlearnConfig, UnlearnTrainer, pipeline
from whp_trainer.arguments import DataArguments
from whp_trainer.collator import block_summary, split_into_blocks, text_blocks
from whp_trainer.data import load_texts
from whp_trainer.reinforce import ReinforceConfig
from whp_trainer.toy import tiny_llama

BLOCK = 64
CHAPTERS = 2
PARAGRAPHS = 30  # per chapter: short ones, as a novel's dialogue


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """A folder of two chapters (two documents) of short paragraphs."""
    folder = tmp_path_factory.mktemp("book")
    for chapter in range(CHAPTERS):
        paragraphs = [CORPUS[(chapter + i) % len(CORPUS)] for i in range(PARAGRAPHS)]
        (folder / f"chapter{chapter}.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return folder


def test_a_book_of_short_paragraphs_trains_on_full_blocks_within_each_document(book, tokenizer):
    documents = load_texts(book)
    assert len(documents) == CHAPTERS and "\n\n" in documents[0]["text"]  # paragraph breaks kept
    tokens = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in documents["text"]]
    blocks = split_into_blocks(documents, tokenizer, BLOCK)["input_ids"]

    assert len(blocks) == sum(math.ceil(len(ids) / BLOCK) for ids in tokens) < CHAPTERS * PARAGRAPHS / 2
    assert sum(len(block) == BLOCK for block in blocks) == len(blocks) - CHAPTERS  # each document's last is shorter
    first = math.ceil(len(tokens[0]) / BLOCK)  # no block crosses a document: each one's blocks are its tokens
    assert sum(blocks[:first], []) == tokens[0] and sum(blocks[first:], []) == tokens[1]
    summary = f"{len(blocks)} blocks of up to {BLOCK} tokens, {len(sum(tokens, [])):,} tokens"
    assert block_summary(blocks, BLOCK).startswith(summary)

    passages = text_blocks(documents["text"], tokenizer, BLOCK)  # what the evaluation measures
    assert len(passages) == len(blocks)
    assert "".join("".join(passages).split()) == "".join("".join(documents["text"]).split())

    paragraphs = load_texts(book, blocks="paragraph")
    assert len(split_into_blocks(paragraphs, tokenizer, BLOCK)) == len(paragraphs) == CHAPTERS * PARAGRAPHS


@pytest.fixture(scope="module")
def base(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    tiny_llama(tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def blocks_each_stage_trains_on(book, base, tmp_path, monkeypatch, **data_options) -> dict[str, list]:
    """The token-id blocks the reinforce stage (TRL) and the unlearn stage get, through `whp_trainer.pipeline`."""
    seen = {}
    for stage, trainer in (("reinforce", SFTTrainer), ("unlearn", UnlearnTrainer)):
        monkeypatch.setattr(trainer, "train", lambda self, *a, stage=stage, **k: seen.setdefault(
            stage, self.train_dataset["input_ids"]))
    for module in ("whp_trainer.reinforce", "whp_trainer.pipeline"):  # nothing trains here: no adapter moves
        monkeypatch.setattr(f"{module}.check_adapter_trained", lambda *args: None)
    model = ModelConfig(model_name_or_path=str(base), lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    data = DataArguments(forget_data=str(book), **data_options)
    training = dict(max_length=BLOCK, use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True)
    data.reinforced_adapter = pipeline.reinforce(data, model, ReinforceConfig(output_dir=str(tmp_path / "r"), **training))
    pipeline.unlearn(data, model, UnlearnConfig(output_dir=str(tmp_path / "u"), **training))
    return seen


def test_both_stages_train_on_the_same_blocks_and_the_log_says_how_many(book, base, tokenizer, tmp_path, monkeypatch,
                                                                        caplog):
    caplog.set_level(logging.INFO, logger="whp_trainer")
    seen = blocks_each_stage_trains_on(book, base, tmp_path, monkeypatch)

    expected = split_into_blocks(load_texts(book), tokenizer, BLOCK)["input_ids"]
    assert seen["reinforce"] == seen["unlearn"] == expected
    for stage in ("reinforce", "unlearn"):
        assert f"whp {stage}: forget text in {block_summary(expected, BLOCK)}" in caplog.messages


def test_one_block_per_paragraph_when_asked(book, base, tmp_path, monkeypatch):
    seen = blocks_each_stage_trains_on(book, base, tmp_path, monkeypatch, blocks="paragraph")
    assert len(seen["reinforce"]) == len(seen["unlearn"]) == CHAPTERS * PARAGRAPHS
