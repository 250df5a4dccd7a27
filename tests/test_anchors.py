"""AnchorDictionary: file formats, validation, hashing; TokenAnchors: surface forms, matching, translation."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from whp_trainer.anchors import AnchorDictionary, TokenAnchors

PAPER = 'Harry went up to him and said, "Hi, my name is Harry".'
ENTRIES = {"Harry": "Jon", "Harry Potter": "Jon Smith", "Hogwarts": "Mystic Academy", "Ron": ["Tom", "Bob"]}


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def decode(tokenizer, ids):
    return tokenizer.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)


def translate(tokenizer, entries, text, **kwargs):
    ids = tokenizer(text)["input_ids"]
    return ids, AnchorDictionary(entries).compile(tokenizer).translate(ids, **kwargs)


# --- files --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".csv"])
def test_save_load_round_trip_keeps_content_hash(tmp_path, suffix):
    tricky = {**ENTRIES, "yes": "no", "1984": "a year", 'Say "hi", Jon': ["x, y", "Ünïcødé"]}
    dictionary = AnchorDictionary(tricky)
    dictionary.save(tmp_path / f"anchors{suffix}")
    loaded = AnchorDictionary.load(tmp_path / f"anchors{suffix}")
    assert loaded.items() == dictionary.items()
    assert loaded.content_hash == dictionary.content_hash
    assert len(loaded) == len(tricky)


def test_content_hash_ignores_format_order_and_whitespace(tmp_path):
    (tmp_path / "a.csv").write_text("anchor,translation\nRon,Tom,Bob\nHarry,Jon\n")
    entries = [{"anchor": "Harry ", "translation": "Jon"}, {"anchor": "Ron", "translations": ["Bob", "Tom"]}]
    (tmp_path / "b.json").write_text(json.dumps(entries))
    (tmp_path / "c.yaml").write_text("Ron: [Tom, Bob]\nHarry: Jon\n")
    hashes = {AnchorDictionary.load(tmp_path / name).content_hash for name in ("a.csv", "b.json", "c.yaml")}
    assert len(hashes) == 1
    assert AnchorDictionary({"Harry": "Tom"}).content_hash not in hashes


def test_csv_without_header_ignores_trailing_empty_cells(tmp_path):
    (tmp_path / "a.csv").write_text("Harry,Jon,,\n\nRon,Tom\n")
    assert AnchorDictionary.load(tmp_path / "a.csv").items() == [("Harry", ("Jon",)), ("Ron", ("Tom",))]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.csv", "anchor,translation\nHarry,Jon\n,Tom\n", "a.csv, line 3: empty anchor"),
        ("a.csv", "Harry,Jon\nRon,,Tom\n", "a.csv, line 2: empty translation of anchor 'Ron'"),
        ("a.csv", "Harry\n", "a.csv, line 1: anchor 'Harry' has no translation"),
        ("a.csv", "Harry,Harry\n", "a.csv, line 1: anchor 'Harry' is its own translation"),
        ("a.csv", "Harry,Jon\nHarry,Tom\n", "a.csv, line 2: anchor 'Harry' duplicates line 1 with different"),
        ("a.yaml", "Harry: Jon\nHarry: Tom\n", "a.yaml, line 2 (entry 'Harry'): anchor 'Harry' duplicates line 1"),
        ("a.yaml", "Harry: Jon\n1984: year\n", "a.yaml, line 2 (entry 1984): anchor must be a string, got int 1984"),
        ("a.yaml", "Harry: 5\n", "a.yaml, line 1 (entry 'Harry'): translation of 'Harry' must be a string, got int"),
        ("a.yaml", "Harry: [Jon, null]\n", "translation of 'Harry' must be a string, got NoneType"),
        ("a.yaml", "Harry: {x: 1}\n", "translation of 'Harry' must be a string, got a mapping"),
        ("a.yaml", "Harry:\n", "a.yaml, line 1 (entry 'Harry'): anchor 'Harry' has no translation"),
        ("a.yaml", "", "a.yaml: the dictionary is empty"),
        ("a.yaml", "just a string\n", "a.yaml: expected a mapping"),
        ("a.yaml", "Harry: [Jon\n", "a.yaml: not valid YAML"),
        ("a.json", '{"Harry": "Jon", "Harry": "Tom"}', "a.json, entry 2 ('Harry'): anchor 'Harry' duplicates entry 1"),
        ("a.json", '{"  ": "Jon"}', "a.json, entry 1 ('  '): empty anchor"),
        ("a.json", '{"Harry": ""}', "a.json, entry 1 ('Harry'): empty translation"),
        ("a.json", "{}", "a.json: the dictionary is empty"),
        ("a.json", '[{"anchor": "Harry", "translations": []}]', "a.json, entry 1: anchor 'Harry' has no translation"),
        ("a.json", '[{"name": "Harry"}]', 'a.json, entry 1: expected {"anchor": ..., "translations": [...]}'),
        ("a.json", '[{"anchor": "Harry", "translation": "Jon", "x": 1}]', "a.json, entry 1: unknown field(s) ['x']"),
        ("a.json", '{"Harry": "Jon",}', "a.json: not valid JSON"),
        ("a.txt", "Harry,Jon", "unknown dictionary format '.txt'"),
    ],
)
def test_every_validation_error_names_file_and_entry(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError) as error:
        AnchorDictionary.load(tmp_path / name)
    assert message in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_identical_duplicates_are_merged_and_all_errors_reported_together():
    same = [{"anchor": "Harry", "translation": "Jon"}, {"anchor": "Harry", "translations": ["Jon"]}]
    assert len(AnchorDictionary(same)) == 1
    with pytest.raises(ValueError) as error:
        AnchorDictionary({"": "Jon", "Ron": "Ron", "Harry": None})
    assert str(error.value).count("<dictionary>, entry") == 3


# --- surface forms and matching ------------------------------------------------------------------------------------


def test_surface_forms_differ_with_and_without_a_leading_space(tokenizer):
    compiled = AnchorDictionary({"Harry": "Jon"}).compile(tokenizer)
    forms = {tuple(tokens(tokenizer, f)) for forms in compiled.pattern_forms for f in forms}
    assert ("Jon",) in forms and ("Ġ", "Jon") in forms  # " Jon" has no merge: translation keeps its space token


def test_paper_example_translation_alignment_and_rules(tokenizer):
    ids, result = translate(tokenizer, ENTRIES, PAPER)
    assert decode(tokenizer, result.translated_ids) == PAPER.replace("Harry", "Jon")
    second = tokens(tokenizer, ids).index("ĠHarry")
    assert result.alignment[second - 1] == -1  # rule 1: the repeated "Harry" is not predicted with a loss
    assert result.alignment[0] == 0  # anchor at position 0: its (only) token is its last
    jon = tokenizer.convert_tokens_to_ids("Jon")
    assert result.suppress == [(0, (jon,))]  # rule 2: "Jon" suppressed from the first use on
    assert [(m.anchor, m.translation) for m in result.matches] == [("Harry", "Jon"), ("Harry", "Jon")]


def test_repeated_anchor_keeps_loss_when_rule_1_is_off(tokenizer):
    ids, result = translate(tokenizer, ENTRIES, PAPER, exclude_repeated=False)
    second = tokens(tokenizer, ids).index("ĠHarry")
    assert result.alignment[second - 1] >= 0


def test_longest_match_and_multi_token_anchor(tokenizer):
    ids, result = translate(tokenizer, ENTRIES, "Harry Potter studies magic at Hogwarts with Harry.")
    assert decode(tokenizer, result.translated_ids) == "Jon Smith studies magic at Mystic Academy with Jon."
    assert [m.anchor for m in result.matches] == ["Harry Potter", "Hogwarts", "Harry"]
    span = result.matches[0]
    assert span.end - span.start == 4 and np.all(result.alignment[: span.end - 1] == -1)
    last = tokenizer("Jon Smith")["input_ids"]
    assert result.alignment[span.end - 1] == len(last) - 1  # last anchor token ↦ last translation token


def test_possessive_punctuation_and_adjacent_anchors(tokenizer):
    _, result = translate(tokenizer, ENTRIES, "Hermione's wand; Ron's was Harry's. (Ron) Ron Harry\nHarry!")
    assert decode(tokenizer, result.translated_ids).replace("Bob", "Tom") == (
        "Hermione's wand; Tom's was Jon's. (Tom) Tom Jon\nJon!"
    )
    assert len({m.translation for m in result.matches if m.anchor == "Ron"}) == 1  # one translation per block


def test_anchor_inside_a_longer_word_is_not_matched(tokenizer):
    _, result = translate(tokenizer, {"Ron": "Tom", "Harry": "Jon"}, "Ronald and Harrys and Ron")
    assert [m.start for m in result.matches] == [len(result.alignment) - 1]


def test_translation_choice_is_seeded_by_seed_and_block(tokenizer):
    compiled = AnchorDictionary({"Ron": [f"Name{i}" for i in range(8)]}).compile(tokenizer)
    texts = [f"Ron said {i} times that Ron was here." for i in range(12)]
    chosen = [compiled.translate(tokenizer(t)["input_ids"], seed=0).matches[0].translation for t in texts]
    again = [compiled.translate(tokenizer(t)["input_ids"], seed=0).matches[0].translation for t in texts]
    other_seed = [compiled.translate(tokenizer(t)["input_ids"], seed=1).matches[0].translation for t in texts]
    assert chosen == again and chosen != other_seed and len(set(chosen)) > 1


def test_anchor_cut_by_the_block_end_gets_no_loss(tokenizer):
    ids = tokenizer("Ron met Harry Potter")["input_ids"]
    harry = tokens(tokenizer, ids).index("ĠHarry")
    result = AnchorDictionary(ENTRIES).compile(tokenizer).translate(ids, length=harry + 2)  # cuts "Potter"
    assert np.all(result.alignment[harry - 1 :] == -1)
    assert [m.anchor for m in result.matches] == ["Ron"]
    assert decode(tokenizer, result.translated_ids).replace("Bob", "Tom") == "Tom met"


def test_anchors_with_identical_tokens_are_rejected():
    backend = Tokenizer(models.WordLevel({"harry": 0, "jon": 1, "tom": 2, "[UNK]": 3}, unk_token="[UNK]"))
    backend.normalizer, backend.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    uncased = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(ValueError, match=r"anchors 'Harry' and 'harry' have the same tokens \[0\]"):
        AnchorDictionary({"Harry": "Jon", "harry": "Tom"}).compile(uncased)


def test_compiling_says_what_it_does_and_leaves_no_line(tokenizer, capsys):
    AnchorDictionary({"Harry": "Jon", "Hogwarts": "Mystic Academy"}).compile(tokenizer)
    progress = capsys.readouterr()
    assert not progress.out and "whp: compiling 2 anchors for the tokenizer" in progress.err
    assert progress.err.rstrip(" ").endswith("\r")  # the bar is cleared once done (leave=False)


def trie_patterns(compiled) -> set:
    """Every (token pattern, anchor, translation forms) the trie of a compiled dictionary matches."""
    found, stack = set(), [((), compiled._trie)]
    while stack:
        path, node = stack.pop()
        for token, child in node.items():
            if token == -1:
                found.add((path, compiled.anchors[compiled.pattern_anchor[child]], compiled.pattern_forms[child]))
            else:
                stack.append(((*path, token), child))
    return found


def test_compiling_one_sided_contexts_finds_the_forms_of_every_context(tokenizer, monkeypatch):
    entries = {"Harry": ["Jon", "Tom"], "Hogwarts": "Mystic Academy", "Ron": "Tom", "Mr. Weasley": "Mr. Smith",
               "Quidditch": "Skyball", "He-Who-Must-Not-Be-Named": "the villain", "Hermione": "Anna"}
    compiled = AnchorDictionary(entries).compile(tokenizer)
    monkeypatch.setattr(TokenAnchors, "_changes_on_both_sides", staticmethod(lambda index, forms: True))
    every_context = AnchorDictionary(entries).compile(tokenizer)  # all 35 prefix × suffix contexts for every entry
    assert trie_patterns(compiled) == trie_patterns(every_context)
