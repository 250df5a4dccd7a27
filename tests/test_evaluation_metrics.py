"""The metrics of ``whp_trainer.evaluation`` on tiny models whose answer is known, and their parsers and helpers."""

import dataclasses
import json
import math
import sys

import pytest
import torch
from conftest import CORPUS, LORA
from peft import LoraConfig, get_peft_model

from whp_trainer.anchors import AnchorDictionary
from whp_trainer.demo import SIZES, one_thread, pretrain
from whp_trainer.evaluation.familiarity import (
    completion_familiarity,
    next_token_probabilities,
    sample_completions,
    token_familiarity,
)
from whp_trainer.evaluation.harness import lm_eval_benchmarks, task_accuracies
from whp_trainer.evaluation.judges import CATEGORIES, AnchorJudge, LLMJudge, parse_judgement
from whp_trainer.evaluation.memorization import rouge_l, verbatim_memorization
from whp_trainer.evaluation.probes import build_probes, load_probes, write_probes
from whp_trainer.evaluation.retain import perplexity
from whp_trainer.evaluation.robustness import hint_probes, relearning_probe
from whp_trainer.toy import tiny_llama

DICTIONARY = AnchorDictionary(
    {"Harry": "Jon", "Potter": "Smith", "Hogwarts": "Mystic Academy", "Ron": "Tom", "Hermione": "Anna",
     "Quidditch": "Skyball", "Snitch": "ball"}
)


@pytest.fixture(scope="module")
def models(tokenizer):
    """``(untrained, trained)``: the same tiny Llama before and after 80 steps on the corpus."""
    untrained = tiny_llama(tokenizer, seed=0)
    trained = tiny_llama(tokenizer, seed=0)
    spec = dataclasses.replace(SIZES["tiny"], epochs=80, batch_size=len(CORPUS), learning_rate=3e-3)
    with one_thread():
        pretrain(trained, tokenizer, CORPUS, spec)
    with one_thread():
        yield untrained.eval(), trained.eval()


@pytest.fixture(scope="module")
def probes():
    return build_probes(CORPUS, DICTIONARY)


# --------------------------------------------------------------------------------------------- metrics on models


def test_token_familiarity_is_higher_for_the_trained_model_and_independent_of_padding(models, tokenizer, probes):
    untrained, trained = models
    assert len(probes) >= 6
    before, after = (token_familiarity(model, tokenizer, probes) for model in models)
    assert after > 0.5 and after > 10 * before
    one_by_one = token_familiarity(trained, tokenizer, probes, batch_size=1)
    assert one_by_one == pytest.approx(after, abs=1e-5)


def test_padding_gives_the_same_metrics_with_absolute_position_embeddings(tokenizer, probes):
    """GPT-2 embeds absolute positions: left padding is right only with position ids counted from the first token."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    batched, single = (token_familiarity(model, tokenizer, probes, batch_size=size) for size in (16, 1))
    assert batched == pytest.approx(single, rel=1e-5)
    assert perplexity(model, tokenizer, CORPUS) == pytest.approx(perplexity(model, tokenizer, CORPUS, batch_size=1))
    prompts = ["Harry", "The cat sat on the", "She studies"]
    assert sample_completions(model, tokenizer, prompts, max_new_tokens=3, temperature=0, batch_size=3) == (
        sample_completions(model, tokenizer, prompts, max_new_tokens=3, temperature=0, batch_size=1)
    )


def test_token_familiarity_matches_a_direct_forward(models, tokenizer):
    trained = models[1]
    probe = {"prompt": "Harry Potter studies", "target": " magic at"}
    context = tokenizer(probe["prompt"])["input_ids"]
    target = tokenizer(probe["prompt"] + probe["target"])["input_ids"][len(context)]
    with torch.no_grad():
        expected = trained(torch.tensor([context])).logits[0, -1].softmax(-1)[target].item()
    assert token_familiarity(trained, tokenizer, [probe]) == pytest.approx(expected, abs=1e-6)
    assert next_token_probabilities(trained, tokenizer, "Harry Potter studies", [" magic", " the"])[" magic"] == (
        pytest.approx(expected, abs=1e-6)
    )


def test_next_token_probabilities_show_the_learnt_association(models, tokenizer):
    untrained, trained = (next_token_probabilities(m, tokenizer, "Harry Potter studies", [" magic", " the"])
                          for m in models)
    assert list(trained) == [" magic", " the"]
    assert trained[" magic"] > 0.5 > untrained[" magic"] * 10
    assert trained[" the"] < trained[" magic"]


def test_metrics_restore_the_training_mode(models, tokenizer, probes):
    model = models[1]
    model.train()
    try:
        token_familiarity(model, tokenizer, probes)
        perplexity(model, tokenizer, CORPUS[:2])
        sample_completions(model, tokenizer, ["Harry"], max_new_tokens=2)
        assert model.training
    finally:
        model.eval()
    perplexity(model, tokenizer, CORPUS[:2])
    assert not model.training


def test_perplexity_is_lower_for_the_trained_model_and_matches_the_model_loss(models, tokenizer):
    untrained, trained = models
    low, high = perplexity(trained, tokenizer, CORPUS), perplexity(untrained, tokenizer, CORPUS)
    assert high > 100 and low < 3 and low * 20 < high
    assert perplexity(trained, tokenizer, CORPUS, batch_size=1) == pytest.approx(low, rel=1e-5)
    ids = torch.tensor([tokenizer(CORPUS[1], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = math.exp(trained(input_ids=ids, labels=ids).loss.item())
    assert perplexity(trained, tokenizer, [CORPUS[1]]) == pytest.approx(expected, rel=1e-5)


def test_perplexity_cuts_long_texts_into_blocks(models, tokenizer):
    trained = models[1]
    whole = perplexity(trained, tokenizer, [" ".join(CORPUS)], max_length=512)
    blocks = perplexity(trained, tokenizer, [" ".join(CORPUS)], max_length=8)
    assert whole < blocks < 100  # shorter contexts predict worse, but every block is scored
    with pytest.raises(ValueError, match="no text"):
        perplexity(trained, tokenizer, ["", "a"])


def test_verbatim_memorization_is_higher_for_the_trained_model(models, tokenizer):
    passages = CORPUS + ["Harry"]  # the last one is too short
    untrained, trained = (verbatim_memorization(model, tokenizer, passages, prompt_tokens=4, continuation_tokens=6)
                          for model in models)
    assert trained["skipped"] == 1 and trained["passages"] == len(CORPUS)
    assert trained["exact_token_accuracy"] > 0.8 > untrained["exact_token_accuracy"] + 0.5
    assert trained["rouge_l"] > 0.8 > untrained["rouge_l"] + 0.5
    assert verbatim_memorization(models[1], tokenizer, ["Harry"], 4, 6)["passages"] == 0


def test_sample_completions_are_seeded_batched_and_left_padded(models, tokenizer):
    trained = models[1]
    prompts = ["Harry Potter studies", "The cat", "She studies mathematics at the"]
    greedy = sample_completions(trained, tokenizer, prompts, max_new_tokens=4, temperature=0, batch_size=3)
    assert greedy == sample_completions(trained, tokenizer, prompts, max_new_tokens=4, temperature=0, batch_size=1)
    assert greedy[0][0].startswith(" magic at Hogwarts")
    state = torch.random.get_rng_state()
    sampled = sample_completions(trained, tokenizer, prompts, max_new_tokens=6, num_samples=2, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    assert [len(row) for row in sampled] == [2, 2, 2]
    assert sampled == sample_completions(trained, tokenizer, prompts, max_new_tokens=6, num_samples=2, seed=3)
    with pytest.raises(ValueError, match="greedy"):
        sample_completions(trained, tokenizer, prompts, temperature=0, num_samples=2)


def test_relearning_raises_familiarity_and_restores_every_weight(make_model, tokenizer, probes):
    model = make_model(seed=1)
    snapshot = {name: value.clone() for name, value in model.state_dict().items()}
    with one_thread():
        result = relearning_probe(model, tokenizer, CORPUS, probes, steps=15, learning_rate=1e-2, batch_size=7)
    assert result["after"] > 5 * result["before"]
    assert all(torch.equal(value, snapshot[name]) for name, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert model.training  # as it was (a fresh model is in train mode)


def test_relearning_moves_only_the_active_adapter_and_restores_it(make_model, tokenizer, probes):
    model = get_peft_model(make_model(seed=2), LoraConfig(**LORA))
    model.eval()
    snapshot = {name: value.clone() for name, value in model.state_dict().items()}
    result = relearning_probe(model, tokenizer, CORPUS, probes, steps=3, learning_rate=1e-2, batch_size=4)
    assert result["after"] != result["before"]
    assert all(torch.equal(value, snapshot[name]) for name, value in model.state_dict().items())
    assert not model.training
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        relearning_probe(model, tokenizer, CORPUS, probes, steps=1)


@pytest.mark.parametrize(
    "reference, candidate, expected",
    [
        ("a b c d".split(), "a c d e".split(), 0.75),  # LCS a c d: precision 3/4, recall 3/4
        ([1, 2, 3, 4, 5, 6], [2, 4], 0.5),  # LCS 2: precision 1, recall 1/3, F = 2 * 1/3 / (4/3)
        ([1, 2, 3], [3, 2, 1], 1 / 3),  # LCS 1
        (["x", "y"], ["x", "y"], 1.0),
        (["x", "y"], ["z"], 0.0),
        ([], ["z"], 0.0),
        (list("abcbdab"), list("bdcaba"), 2 * (4 / 6) * (4 / 7) / (4 / 6 + 4 / 7)),  # the textbook LCS of 4
    ],
)
def test_rouge_l_hand_computed(reference, candidate, expected):
    assert rouge_l(reference, candidate) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------------- lm-eval


def test_lm_eval_on_a_local_task_through_the_harness(models, tokenizer, tmp_path):
    pytest.importorskip("lm_eval")
    docs = [
        {"question": "Harry Potter studies", "choices": [" magic", " football"], "answer": 0},
        {"question": "The cat sat on the", "choices": [" wand", " mat"], "answer": 1},
        {"question": "Hermione's wand was made of", "choices": [" vine", " glass"], "answer": 0},
        {"question": "She studies mathematics at the", "choices": [" Hogwarts", " university"], "answer": 1},
    ]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (tmp_path / "whp_tiny.yaml").write_text(
        "task: whp_tiny\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "target_delimiter: ''\ndoc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    higher_is_better: true\n"
    )
    trained = models[1]
    trained.train()
    scores = lm_eval_benchmarks(trained, tokenizer, tasks=["whp_tiny"], batch_size=2, include_path=tmp_path)
    assert trained.training
    trained.eval()
    assert scores == {"whp_tiny": 1.0}


def test_lm_eval_results_map_to_accuracies_and_missing_extra_is_explained(monkeypatch):
    results = {"boolq": {"acc,none": 0.8, "acc_stderr,none": 0.01}, "piqa": {"acc_norm,none": 0.7, "acc,none": 0.6}}
    assert task_accuracies(results, ["boolq", "piqa"]) == {"boolq": 0.8, "piqa": 0.6}
    with pytest.raises(ValueError, match="no 'acc' for task 'arc_easy'"):
        task_accuracies(results, ["arc_easy"])
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"pip install whp_trainer\[eval\]"):
        lm_eval_benchmarks(None, None)


# -------------------------------------------------------------------------------------------- probes and hints


def test_build_probes_cuts_prompts_at_anchors_within_paragraphs():
    text = 'Every day Harry went to Hogwarts with Ron.\n\nHarry smiled. They all said "Hogwarts is home".'
    probes = build_probes([text, text], DICTIONARY, context_words=3)
    assert probes == [
        {"prompt": "Harry went to", "target": " Hogwarts"},
        {"prompt": "to Hogwarts with", "target": " Ron"},
        {"prompt": 'all said "', "target": "Hogwarts"},
    ]
    assert build_probes(["Harryhausen went to the Hogwartsian Ronde."], DICTIONARY) == []
    sample = build_probes([text], DICTIONARY, max_probes=2, context_words=3, seed=5)
    assert len(sample) == 2 and sample == build_probes([text], DICTIONARY, max_probes=2, context_words=3, seed=5)
    assert all(probe in probes for probe in sample)


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("p.jsonl", '{"prompt": "a", "target": " b"}\n\n{"prompt": "c"}\n', r"p\.jsonl, line 3: missing key 'target'"),
        ("p.jsonl", '{"prompt": "a", "target": " b"}\n{"prompt": "a", "target": " b",\n', r"line 2: not valid JSON"),
        ("p.json", '[{"prompt": "a", "target": " b"}, ["a", "b"]]', r"p\.json, entry 2: expected an object"),
        ("p.json", '[{"prompt": "a", "target": "  "}]', r"entry 1: empty 'target'"),
        ("p.json", '[{"prompt": "a", "target": 3}]', r"entry 1: 'target' must be a string"),
        ("p.json", '[\n{"prompt": "a",\n "target": }]', r"p\.json, line 3: not valid JSON"),
        ("p.json", '{"prompt": "a", "target": "b"}', r"expected a JSON list"),
        ("p.txt", "", r"unknown probe file format"),
    ],
)
def test_load_probes_errors_name_the_file_and_the_entry(tmp_path, name, body, message):
    (tmp_path / name).write_text(body)
    with pytest.raises(ValueError, match=message):
        load_probes(tmp_path / name)


def test_probes_round_trip_through_json_and_jsonl(tmp_path):
    probes = [{"prompt": "Harry went to", "target": " Hogwarts", "source": "book 1"}, {"prompt": "é", "target": " ü"}]
    for name in ("out/probes.json", "probes.jsonl"):
        write_probes(tmp_path / name, probes)
        assert load_probes(tmp_path / name) == probes
    assert len((tmp_path / "probes.jsonl").read_text().splitlines()) == 2


def test_hint_probes_name_other_anchors_and_never_the_answer():
    probes = [{"prompt": "Harry went to", "target": " Hogwarts"}, {"prompt": "The cat sat on the", "target": " mat"}]
    hinted = hint_probes(probes, DICTIONARY, hints_per_probe=2, seed=1)
    assert hinted == hint_probes(probes, DICTIONARY, hints_per_probe=2, seed=1)
    for probe, original in zip(hinted, probes):
        first, second = probe["hints"]
        assert probe["prompt"] == f"Think of {first} and {second}. {original['prompt']}"
        assert probe["target"] == original["target"]
        assert set(probe["hints"]) <= set(DICTIONARY)
    assert not {"Harry", "Hogwarts"} & set(hinted[0]["hints"])
    three = hint_probes(probes[:1], DICTIONARY, hints_per_probe=3)[0]
    assert three["prompt"].startswith("Think of {}, {} and {}. Harry".format(*three["hints"]))


# ------------------------------------------------------------------------------------------------------- judges


def test_anchor_judge_categories():
    judge = AnchorJudge(DICTIONARY, extra_terms=["Dumbledore"], thematic_terms=["wand", "wizard"])
    assert judge("He walked up to", " the gates of HOGWARTS") == "explicit"
    assert judge("The old man", " was called Dumbledore.") == "explicit"
    assert judge("Harry went to", " buy a wand") == "thematic"
    assert judge("Harry went to", " see Harry's uncle") == "accidental"
    assert judge("The wizard smiled", " and the wizard left") == "accidental"
    assert judge("The cat sat", " on the mat") == "none"
    assert judge("The film", " by Harryhausen, wandering") == "none"  # word boundaries
    assert judge("Harry went to", " Hogwarts with his wand") == "explicit"  # the strongest category wins


@pytest.mark.parametrize(
    "text, category",
    [
        ('{"category": "explicit"}', "explicit"),
        ('Sure! Here is my answer:\n```json\n{"category": "Thematic"}\n```', "thematic"),
        ('{"reason": "names Hogwarts", "category": 1}', "explicit"),
        ("Category: (b)", "thematic"),
        ("**Category:** Accidental familiarity", "accidental"),
        ("The completion repeats the prompt.\n\nAnswer: d", "none"),
        ("verdict = 3", "accidental"),
        ("  4.  ", "none"),
        ("(c)", "accidental"),
        ("NO FAMILIARITY", "none"),
        ("**Explicit knowledge**", "explicit"),
        ("It mentions wands but nothing unique, so I would call this thematic.", "thematic"),
        ("The model shows no familiarity at all", "none"),
        ("I rate it 2 because of the wizard.", "thematic"),
        ('{"category": "unclear"} ... final category: explicit', "explicit"),
    ],
)
def test_parse_judgement_reads_malformed_answers(text, category):
    assert parse_judgement(text) == category


@pytest.mark.parametrize("text", ["I cannot decide.", "explicit or thematic?", "scores: 1 and 2", ""])
def test_parse_judgement_raises_naming_the_text(text):
    with pytest.raises(ValueError, match="cannot read a familiarity category") as error:
        parse_judgement(text)
    assert repr(text[:300]) in str(error.value)


def test_llm_judge_asks_with_the_rubric_retries_once_and_counts_unparsed():
    questions = []
    answers = iter(["hmm", '{"category": "explicit"}', "no idea", "still no idea"])

    def generate(question):
        questions.append(question)
        return next(answers)

    judge = LLMJudge(generate, rubric="RUBRIC")
    assert judge("Harry went to", " Hogwarts") == "explicit"
    assert judge("The cat", " sat") == "unparsed"
    assert len(questions) == 4
    assert questions[0].startswith("RUBRIC") and "Prompt: Harry went to" in questions[0]
    assert "Completion:  Hogwarts" in questions[0]


def test_completion_familiarity_weighs_explicit_and_thematic_and_sets_unparsed_apart():
    verdicts = {"a": "explicit", "b": "thematic", "c": "none", "d": "unparsed", "e": "accidental"}
    seen = []

    def judge(prompt, completion):
        seen.append((prompt, completion))
        return verdicts[completion]

    result = completion_familiarity([["a", "b"], ["c", "d"], ["a", "e"]], judge, prompts=["p1", "p2", "p3"])
    assert result["score"] == pytest.approx((2 + 0.2) / 5)
    assert result["counts"] == {"explicit": 2, "thematic": 1, "accidental": 1, "none": 1, "unparsed": 1}
    assert result["categories"] == [["explicit", "thematic"], ["none", "unparsed"], ["explicit", "accidental"]]
    assert seen[0] == ("p1", "a") and seen[3] == ("p2", "d")
    assert math.isnan(completion_familiarity([["d"]], judge)["score"])
    with pytest.raises(ValueError, match="unknown categories"):
        completion_familiarity([["x"]], lambda prompt, completion: "maybe")
    assert set(CATEGORIES) < set(result["counts"])
