"""AnchorSwapCollator and split_into_blocks: the batch format, padding, truncation, and the alignment property."""

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whp_trainer.anchors import AnchorDictionary
from whp_trainer.collator import IGNORE_INDEX, AnchorSwapCollator, split_into_blocks, validate_batch

PAPER = 'Harry went up to him and said, "Hi, my name is Harry".'
ENTRIES = {"Harry": "Jon", "Harry Potter": "Jon Smith", "Hogwarts": "Mystic Academy", "Quidditch": "Skyball"}


def decode(tokenizer, ids):
    return tokenizer.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)


def rows(batch):
    """Per example: (original ids, shift_labels, alignment into the unpadded translated ids, translated ids)."""
    for b in range(len(batch["input_ids"])):
        real, translated_real = batch["attention_mask"][b].bool(), batch["translated_attention_mask"][b].bool()
        shift = int(translated_real.nonzero()[0]) if translated_real.any() else 0
        alignment = batch["alignment"][b][real]
        yield (
            batch["input_ids"][b][real],
            batch["shift_labels"][b][real],
            torch.where(alignment >= 0, alignment - shift, alignment),
            batch["translated_input_ids"][b][translated_real],
        )


def test_paper_example_batch(tokenizer):
    collator = AnchorSwapCollator(tokenizer, AnchorDictionary(ENTRIES), max_length=64)
    batch = collator([{"text": PAPER}])
    validate_batch(batch, expects_translation=True)
    ids = batch["input_ids"][0].tolist()
    second = tokenizer.convert_ids_to_tokens(ids).index("ĠHarry")
    assert batch["shift_labels"][0, second - 1] == IGNORE_INDEX and batch["alignment"][0, second - 1] == -1
    assert batch["shift_labels"][0, second] == ids[second + 1]  # the token after the repeated anchor keeps its loss
    jon = tokenizer.convert_tokens_to_ids("Jon")
    assert batch["suppress_ids"].shape == (1, len(ids), 1)
    assert (batch["suppress_ids"][0, :, 0] == jon).all()  # "Jon" is used at position 0: suppressed from there on
    assert decode(tokenizer, batch["translated_input_ids"][0]) == PAPER.replace("Harry", "Jon")


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_keeps_alignment(tokenizer, side):
    texts = ["Ron met Harry Potter at Hogwarts.", "Harry", "The cat sat on the mat and Harry played Quidditch."]
    collator = AnchorSwapCollator(tokenizer, AnchorDictionary(ENTRIES), max_length=64, padding_side=side)
    batch = collator([{"text": text} for text in texts])
    validate_batch(batch, expects_translation=True)
    pad_column = 0 if side == "left" else -1
    assert batch["attention_mask"][1, pad_column] == 0 and batch["translated_attention_mask"][1, pad_column] == 0
    loss = batch["alignment"] >= 0
    aligned = batch["translated_attention_mask"].gather(1, batch["alignment"].clamp(min=0))
    assert aligned[loss].all()  # every alignment points at a real translated token
    for text, (ids, labels, alignment, translated) in zip(texts, rows(batch)):
        assert decode(tokenizer, ids) == text
        text = re.sub("Harry Potter|Harry|Hogwarts|Quidditch", lambda match: ENTRIES[match.group()], text)
        assert decode(tokenizer, translated) == text
    other_side = "right" if side == "left" else "left"
    other = AnchorSwapCollator(tokenizer, AnchorDictionary(ENTRIES), max_length=64, padding_side=other_side)
    assert [r[2].tolist() for r in rows(batch)] == [r[2].tolist() for r in rows(other([{"text": t} for t in texts]))]


def test_truncation_cuts_an_anchor_and_translation_may_be_longer(tokenizer):
    text = "Hogwarts and Hogwarts met Harry Potter"
    ids = tokenizer(text)["input_ids"]
    harry = tokenizer.convert_ids_to_tokens(ids).index("ĠHarry")
    batch = AnchorSwapCollator(tokenizer, AnchorDictionary(ENTRIES), max_length=harry + 2)([{"input_ids": ids}])
    assert batch["input_ids"].shape[1] == harry + 2
    assert (batch["shift_labels"][0, harry - 1 :] == IGNORE_INDEX).all()  # "Harry Po|tter" is cut: no loss on it
    assert batch["translated_input_ids"].shape[1] > batch["input_ids"].shape[1]  # "Mystic Academy" is longer
    assert decode(tokenizer, batch["translated_input_ids"][0]) == "Mystic Academy and Mystic Academy met"


def test_without_anchors_only_original_keys(tokenizer):
    batch = AnchorSwapCollator(tokenizer, None, max_length=8)([{"text": PAPER}, {"text": "Harry"}])
    assert set(batch) == {"input_ids", "attention_mask", "shift_labels"}
    validate_batch(batch)
    assert batch["shift_labels"][0, :-1].tolist() == batch["input_ids"][0, 1:].tolist()
    assert (batch["shift_labels"][1] == IGNORE_INDEX).all()


def test_rule_2_can_be_turned_off_and_errors_are_clear(tokenizer):
    collator = AnchorSwapCollator(tokenizer, AnchorDictionary(ENTRIES), 16, suppress_used_translations=False)
    assert "suppress_ids" not in collator([{"text": PAPER}])
    with pytest.raises(ValueError, match=r"example 1 has neither 'input_ids' nor 'content' \(keys: \['body'\]\)"):
        AnchorSwapCollator(tokenizer, None, 16, text_field="content")([{"content": "a"}, {"body": "b"}])
    with pytest.raises(ValueError, match="padding_side='middle'"):
        AnchorSwapCollator(tokenizer, None, 16, padding_side="middle")


def test_split_into_blocks_lists_map_batches_and_datasets(tokenizer):
    import datasets

    ids = tokenizer("Harry went up to him and said hello", add_special_tokens=False)["input_ids"]
    expected = [ids[i : i + 3] for i in range(0, len(ids), 3) if len(ids) - i >= 2]
    assert split_into_blocks(["Harry went up to him and said hello"], tokenizer, 3) == expected
    mapped = split_into_blocks({"body": ["Harry went up to him and said hello"]}, tokenizer, 3, "body")
    assert mapped == {"input_ids": expected}
    dataset = datasets.Dataset.from_dict({"text": ["Harry went up to him and said hello"], "id": [0]})
    blocks = split_into_blocks(dataset, tokenizer, 3)
    assert blocks.column_names == ["input_ids"] and blocks["input_ids"] == expected


# --- property: every loss position is aligned to the translation of its prefix ----------------------------------

ANCHOR_POOL = ["Harry", "Harry Potter", "Potter", "Hogwarts", "Ron", "Hermione", "Quidditch", "Snitch", "Jon"]
TRANSLATION_POOL = ["Jon", "Tom", "Anna", "Mystic Academy", "Skyball", "the ball", "Smith", "Ron"]
WORDS = ["the", "cat", "went", "up", "said", "magic", "Hi", "name", "is", "Harrys", "Ronald", "studies", "at"]
SEPARATORS = [" ", " ", ", ", ". ", "\n", "'s ", " (", ") ", '"', " - ", ""]


@st.composite
def dictionaries(draw):
    anchors = draw(st.lists(st.sampled_from(ANCHOR_POOL), min_size=1, max_size=5, unique=True))
    return {a: draw(st.sampled_from([t for t in TRANSLATION_POOL if t not in anchors])) for a in anchors}


pieces = st.tuples(st.sampled_from(ANCHOR_POOL + WORDS), st.sampled_from(SEPARATORS))
texts = st.lists(pieces, min_size=1, max_size=14).map(lambda drawn: "".join(w + sep for w, sep in drawn))


def occurrences(text, entries):
    """Anchor occurrences found on characters, leftmost-longest, on alphanumeric boundaries (the oracle)."""
    alternation = "|".join(re.escape(a) for a in sorted(entries, key=len, reverse=True))
    return [(m.start(), m.end(), m.group()) for m in re.finditer(rf"(?<![^\W_])(?:{alternation})(?![^\W_])", text)]


def translated_prefix(text, found, entries, end):
    """The translation of ``text[:end]``, given the occurrences found in the whole text."""
    out, previous = [], 0
    for start, stop, anchor in found:
        if stop <= end:
            out += [text[previous:start], entries[anchor]]
            previous = stop
    return "".join(out) + text[previous:end]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=dictionaries(),
    batch=st.lists(texts, min_size=1, max_size=3),
    max_length=st.integers(2, 40),
    side=st.sampled_from(["left", "right"]),
)
def test_alignment_points_at_the_translation_of_the_prefix(tokenizer, entries, batch, max_length, side):
    collator = AnchorSwapCollator(tokenizer, AnchorDictionary(entries), max_length, padding_side=side)
    output = collator([{"text": text} for text in batch])
    validate_batch(output, expects_translation=True)
    for text, (ids, labels, alignment, translated) in zip(batch, rows(output)):
        offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"][: len(ids)]
        found = occurrences(text, entries)
        # a token overlapping an occurrence, or a lone space token just before one
        inside = [any(a < e and (b > s or s - 1 <= a) for s, e, _ in found) for a, b in offsets]
        for t in range(len(ids)):
            if alignment[t] >= 0:
                assert labels[t] == ids[t + 1]
                expected = translated_prefix(text, found, entries, offsets[t][1])
                assert decode(tokenizer, translated[: alignment[t] + 1]) == expected
            elif t + 1 < len(ids) and not inside[t] and not inside[t + 1]:
                pytest.fail(f"position {t} of {text!r} is outside every anchor but has no loss")


def test_several_translations_per_block_use_different_translations_and_share_loss_positions(tokenizer):
    """WHP+: row k·B + b is the k-th translation of block b; an anchor with N translations takes all N."""
    entries = {"Harry": ["Jon", "Tom", "Bob"], "Hogwarts": "Mystic Academy"}
    texts = ["Harry went to Hogwarts with Harry.", "The cat saw Harry."]
    one = AnchorSwapCollator(tokenizer, AnchorDictionary(entries), max_length=64)([{"text": t} for t in texts])
    collator = AnchorSwapCollator(tokenizer, AnchorDictionary(entries), max_length=64, translations_per_block=3)
    batch = collator([{"text": t} for t in texts])
    validate_batch(batch, expects_translation=True)
    assert len(batch["translated_input_ids"]) == len(batch["alignment"]) == len(batch["suppress_ids"]) == 6
    assert torch.equal(batch["input_ids"], one["input_ids"]) and torch.equal(batch["shift_labels"], one["shift_labels"])

    def translated(batch, row):
        return decode(tokenizer, batch["translated_input_ids"][row][batch["translated_attention_mask"][row].bool()])

    for b, text in enumerate(texts):
        variants = [translated(batch, k * 2 + b) for k in range(3)]
        assert variants[0] == translated(one, b)  # variant 0 is the single translation
        expected = {text.replace("Harry", name).replace("Hogwarts", "Mystic Academy") for name in ("Jon", "Tom", "Bob")}
        assert set(variants) == expected  # three variants, three different translations of "Harry"
        for k in range(3):  # the same loss positions in every variant
            assert torch.equal(batch["alignment"][k * 2 + b] >= 0, batch["shift_labels"][b] != IGNORE_INDEX)


def test_batch_with_translations_of_other_row_counts_is_rejected(tokenizer):
    collator = AnchorSwapCollator(tokenizer, AnchorDictionary(ENTRIES), max_length=64, translations_per_block=2)
    batch = collator([{"text": PAPER}, {"text": "Harry played Quidditch."}])
    validate_batch(batch, expects_translation=True)
    with pytest.raises(ValueError, match=r"alignment'\] has shape \(3, \d+\), expected \(2·N"):
        validate_batch({**batch, "alignment": batch["alignment"][:3]})
    with pytest.raises(ValueError, match=r"translated_input_ids'\] has 2 rows, batch\['alignment'\] 4"):
        validate_batch({**batch, "translated_input_ids": batch["translated_input_ids"][:2]})


@pytest.mark.parametrize("side", ["left", "right"])
def test_bootstrap_untranslated_gives_a_loss_inside_anchors_and_before_repeated_ones(tokenizer, side):
    """The positions the paper leaves untrained get their next token as label and are marked in bootstrap_mask;
    the last position and padding stay without a loss."""
    texts = [PAPER, "Harry Potter studies at Hogwarts."]
    plain = AnchorSwapCollator(tokenizer, AnchorDictionary(ENTRIES), max_length=64, padding_side=side)
    collator = AnchorSwapCollator(tokenizer, AnchorDictionary(ENTRIES), max_length=64, padding_side=side,
                                  bootstrap_untranslated=True)
    before, batch = plain([{"text": t} for t in texts]), collator([{"text": t} for t in texts])
    validate_batch(batch, expects_translation=True)
    untrained = (before["shift_labels"] == IGNORE_INDEX) & (batch["shift_labels"] != IGNORE_INDEX)
    assert torch.equal(untrained, batch["bootstrap_mask"])
    assert torch.equal(batch["alignment"], before["alignment"])  # the translated positions are unchanged
    ids = batch["input_ids"][0].tolist()
    second = tokenizer.convert_ids_to_tokens(ids).index("ĠHarry")
    assert batch["bootstrap_mask"][0, second - 1] and batch["shift_labels"][0, second - 1] == ids[second]
    real = batch["attention_mask"].bool()
    last = real.long().cumsum(1) == real.sum(1, keepdim=True)
    assert not (batch["bootstrap_mask"] & (~real | last)).any()
    assert batch["bootstrap_mask"][1].sum() >= 1  # inside "Harry Potter" (several tokens)
    assert torch.equal(batch["shift_labels"][untrained], batch["input_ids"].roll(-1, 1)[untrained])
