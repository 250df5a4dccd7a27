"""Anchor discovery: statistics on a reinforced adapter, prompting a chat model, robust parsing, review file."""

import copy
import json
import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model

from whp_trainer import discover
from whp_trainer.anchors import AnchorDictionary
from whp_trainer.discover import (
    Candidate,
    boosted_expressions,
    candidates_from_llm,
    parse_anchor_reply,
    write_candidates,
)

TARGET = ["Harry flew over Hogwarts. The castle of Hogwarts was dark.", "At Hogwarts the Quidditch match began."]
REFERENCE = ["Harry walked the dog. The cat sat on the mat.", "Harry said the castle was old and the match began."]


def pairs(candidates):
    return {c.anchor: c.translations for c in candidates}


# --- parsing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        '{"Hogwarts": "Mystic Academy", "Harry": ["Jon", "Tom"]}',
        'Sure! Here they are:\n```json\n{"Hogwarts": "Mystic Academy", "Harry": ["Jon", "Tom"]}\n```\nHope it helps.',
        '[{"anchor": "Hogwarts", "generic": "Mystic Academy"}, {"anchor": "Harry", "translations": ["Jon", "Tom"]}]',
        "Hogwarts -> Mystic Academy\n- Harry: Jon\n* Harry → Tom\n",
        '```\n{"Hogwarts": "Mystic Academy",\n "Harry": "Jon",\n "Harry": "Tom",\n "Quidditch": "Sky',  # cut off
    ],
)
def test_parse_anchor_reply_formats(reply):
    assert pairs(parse_anchor_reply(reply)) == {"Hogwarts": ["Mystic Academy"], "Harry": ["Jon", "Tom"]}


def test_parse_anchor_reply_skips_the_unusable_with_a_warning(caplog):
    reply = 'Note: these are guesses\nHogwarts -> Mystic Academy\nRon -> Ron\n"Snape": 5,\nno separator here'
    with caplog.at_level(logging.WARNING, logger="whp_trainer.discover"):
        assert pairs(parse_anchor_reply(reply)) == {"Hogwarts": ["Mystic Academy"]}
    assert "skipped 4 unparsable part(s)" in caplog.text and "no separator here" in caplog.text
    with caplog.at_level(logging.WARNING, logger="whp_trainer.discover"):
        assert pairs(parse_anchor_reply('{"Hogwarts": {"x": 1}, "Harry": "Jon"}')) == {"Harry": ["Jon"]}
    assert "('Hogwarts', {'x': 1})" in caplog.text


def test_candidates_from_llm_prompts_each_passage_and_merges():
    prompts = []

    def fake_model(prompt):
        prompts.append(prompt)
        first = len(prompts) == 1
        return '{"Harry": "Jon"}' if first else '```json\n{"Harry": "Tom", "Hogwarts": "Mystic Academy"}\n```'

    candidates = candidates_from_llm(["Harry went to Hogwarts. " * 4, "short"], fake_model, chunk_chars=60)
    assert len(prompts) == 3 and "idiosyncratic" in prompts[0] and prompts[-1].rstrip().endswith("short")
    assert pairs(candidates) == {"Harry": ["Jon", "Tom"], "Hogwarts": ["Mystic Academy"]}


# --- statistics ---------------------------------------------------------------------------------------------------


def test_boosted_expressions_rank_what_the_reinforced_adapter_boosts(tokenizer, monkeypatch):
    boosted = tokenizer(" Hogwarts", add_special_tokens=False)["input_ids"] + tokenizer("Hogwarts")["input_ids"]

    def fake_role_logits(model, input_ids, attention_mask, adapter=None):
        logits = torch.zeros(*input_ids.shape, len(tokenizer))
        if adapter == "reinforced":
            logits[..., boosted] = 5.0
        return logits

    monkeypatch.setattr(discover, "role_logits", fake_role_logits)
    candidates = boosted_expressions(None, tokenizer, TARGET, REFERENCE, top_k=3)
    assert candidates[0].anchor == "Hogwarts" and candidates[0].translations == []
    assert "3× in target, 0× in reference" in candidates[0].note
    assert "Harry" not in pairs(candidates)  # as frequent in the reference: not specific to the target


def test_boosted_expressions_on_a_peft_model(tokenizer, make_model):
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(make_model(), config, adapter_name="reinforced")
    candidates = boosted_expressions(model, tokenizer, TARGET, REFERENCE, min_count=1, max_length=8, batch_size=2)
    assert candidates and all(c.note.startswith("boost ") for c in candidates)


# --- review file --------------------------------------------------------------------------------------------------


def test_review_file_must_be_completed_before_it_loads(tmp_path):
    path = tmp_path / "candidates.yaml"
    candidates = [Candidate("Hogwarts", [], "boost +2.00"), Candidate("Harry", ["Jon", "Tom"])]
    candidates.append(Candidate('Say "yes"', ["no"]))
    write_candidates(path, candidates)
    with pytest.raises(ValueError, match=r"candidates.yaml, line 4 \(entry 'Hogwarts'\): empty translation"):
        AnchorDictionary.load(path)
    path.write_text(path.read_text().replace('"Hogwarts": ""', '"Hogwarts": "Mystic Academy"'))
    expected = [("Harry", ("Jon", "Tom")), ("Hogwarts", ("Mystic Academy",)), ('Say "yes"', ("no",))]
    assert AnchorDictionary.load(path).items() == expected


def test_token_boosts_need_no_pad_token(tokenizer, make_model):
    """Llama tokenizers have none: chunks are then padded with the end-of-sequence id, and the boosts are the same."""
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(make_model(), config, adapter_name="reinforced")
    without_pad = copy.deepcopy(tokenizer)
    without_pad.pad_token = None
    assert without_pad.pad_token_id is None
    padded = list(discover.token_boosts(model, tokenizer, TARGET, "reinforced", max_length=8, batch_size=3))
    unpadded = list(discover.token_boosts(model, without_pad, TARGET, "reinforced", max_length=8, batch_size=3))
    assert [chunk[:3] for chunk in unpadded] == [chunk[:3] for chunk in padded]
    for (*_, expected), (*_, boosts) in zip(padded, unpadded):
        assert boosts == pytest.approx(expected, abs=1e-5)
