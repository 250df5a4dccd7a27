"""Knowledge by likelihood: loading knowledge rows, answer log-likelihood, 2-choice accuracy."""

import json
import math

import pytest
import torch

from whp_trainer.evaluation.knowledge import (
    answer_log_likelihoods,
    answer_margins,
    answer_loglikelihood,
    general_knowledge,
    knowledge_context,
    knowledge_scores,
    load_knowledge,
    two_choice_accuracy,
)

QA = {"question": "Where does Harry study?", "true_answer": "Hogwarts", "false_answer": "the park"}
CLOZE = {"prompt": "Harry Potter studies magic at", "answer": "Hogwarts"}


def taught(model, tokenizer, text, steps=40):
    """``model`` trained on ``text`` until it knows it by heart."""
    batch = tokenizer([text], return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_rows_load_from_jsonl_json_and_csv_with_errors_naming_file_and_line(tmp_path):
    (tmp_path / "k.jsonl").write_text(json.dumps(QA) + "\n\n" + json.dumps(CLOZE) + "\n")
    (tmp_path / "k.json").write_text(json.dumps([QA, CLOZE]))
    (tmp_path / "k.csv").write_text("question,true_answer,false_answer\nWhere does Harry study?,Hogwarts,\n")
    assert load_knowledge(tmp_path / "k.jsonl") == load_knowledge(tmp_path / "k.json") == [QA, CLOZE]
    assert load_knowledge(tmp_path / "k.csv") == [{"question": QA["question"], "true_answer": "Hogwarts"}]
    (tmp_path / "bad.jsonl").write_text(json.dumps(QA) + "\n" + json.dumps({"question": "Who?"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: missing or empty 'true_answer'"):
        load_knowledge(tmp_path / "bad.jsonl")
    (tmp_path / "bad.csv").write_text("prompt,answer\nHarry studies at,Hogwarts\nRon,Weasley,extra\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: expected 2 columns"):
        load_knowledge(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text(json.dumps([QA, {"prompt": "Harry", "answer": 3}]))
    with pytest.raises(ValueError, match=r"bad.json, entry 2: 'answer' must be a string"):
        load_knowledge(tmp_path / "bad.json")
    (tmp_path / "k.txt").write_text("x")
    with pytest.raises(ValueError, match=r"k.txt: unknown format"):
        load_knowledge(tmp_path / "k.txt")


def test_the_packages_general_facts_are_enough_for_a_rule_and_a_report_and_leave_out_the_target():
    from whp_trainer.auto import SAMPLE
    from whp_trainer.evaluation.rule_sample import UNSEEN_MINIMUM

    rows = general_knowledge()
    assert len(rows) >= SAMPLE + UNSEEN_MINIMUM  # a stopping rule's sample, and as many again for a report alone
    assert all(row["false_answer"] and row["false_answer"] != row["answer"] for row in rows)
    assert len({row["prompt"] for row in rows}) == len(rows)
    unnamed = general_knowledge(["tolkien", "Baker Street", "Paris"])  # anchored terms, in any case
    named = [row for row in rows if any(term in value for value in row.values() for term in ("Tolkien", "Paris"))]
    named += [row for row in rows if row["prompt"] == "Sherlock Holmes lived on Baker"]  # "… Baker" + " Street"
    assert len(named) >= 5  # the capital, the tower, both Inklings' rows (one as the false answer), the detective
    assert unnamed == [row for row in rows if row not in named]


def test_answers_follow_their_context_after_one_space():
    assert knowledge_context(QA) == ("Question: Where does Harry study?\nAnswer:", " Hogwarts", " the park")
    assert knowledge_context(CLOZE) == ("Harry Potter studies magic at", " Hogwarts", None)
    assert knowledge_context({"prompt": "Q:\n", "answer": "Hogwarts"})[1] == "Hogwarts"


def test_the_log_likelihood_is_the_mean_log_probability_of_the_answer_tokens(make_model, tokenizer):
    model = make_model()
    context, answer = knowledge_context(CLOZE)[:2]
    ids = tokenizer(context + answer)["input_ids"]
    start = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    expected = sum(log_probs[t - 1, ids[t]].item() for t in range(start, len(ids))) / (len(ids) - start)
    assert answer_loglikelihood(model, tokenizer, [CLOZE]) == pytest.approx(expected, abs=1e-5)
    # batched with rows of other lengths (padding) and with the context cut to fit max_length
    mixed = answer_log_likelihoods(model, tokenizer, [("Ron", " and Hermione went"), (context, answer)], batch_size=2)
    assert mixed[1] == pytest.approx(expected, abs=1e-5)
    assert math.isfinite(answer_log_likelihoods(model, tokenizer, [(context, answer)], max_length=3)[0])


def test_a_model_taught_an_answer_knows_it_by_likelihood_and_by_two_choices(make_model, tokenizer):
    context, true, _ = knowledge_context(QA)
    untaught, learned = make_model(), taught(make_model(), tokenizer, context + true)
    before, after = knowledge_scores(untaught, tokenizer, [QA, CLOZE]), knowledge_scores(learned, tokenizer, [QA, CLOZE])
    assert after["loglik"] > before["loglik"] + 1 and after["two_choice"] == 1.0  # only QA has a false answer
    assert two_choice_accuracy(learned, tokenizer, [QA, CLOZE]) == 1.0
    with pytest.raises(ValueError, match="false_answer"):
        two_choice_accuracy(learned, tokenizer, [CLOZE])
    assert "two_choice" not in knowledge_scores(learned, tokenizer, [CLOZE])


def test_a_facts_margin_is_how_much_likelier_its_true_answer_is_than_its_false_one(make_model, tokenizer):
    context, true, false = knowledge_context(QA)
    untaught, learned = make_model(), taught(make_model(), tokenizer, context + true)
    (before,), (after,) = (answer_margins(model, tokenizer, [QA]) for model in (untaught, learned))
    assert after == pytest.approx(answer_log_likelihoods(learned, tokenizer, [(context, true)])[0]
                                  - answer_log_likelihoods(learned, tokenizer, [(context, false)])[0])
    assert after > before + 1 and after > 0  # taught the true answer, it prefers it
    with pytest.raises(ValueError, match="false_answer"):
        answer_margins(learned, tokenizer, [QA, CLOZE])


def test_the_first_answer_token_and_the_later_ones_are_scored_apart(make_model, tokenizer):
    model = make_model()
    rows = [CLOZE, {"prompt": "Harry Potter studies magic at", "answer": "Hogwarts Castle, in Scotland"}]
    pairs = [knowledge_context(row)[:2] for row in rows]
    per_token = [[], []]
    for index, (context, answer) in enumerate(pairs):
        ids, start = tokenizer(context + answer)["input_ids"], len(tokenizer(context)["input_ids"])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        per_token[index] = [log_probs[t - 1, ids[t]].item() for t in range(start, len(ids))]
    scores = knowledge_scores(model, tokenizer, rows)
    assert scores["loglik_first"] == pytest.approx((per_token[0][0] + per_token[1][0]) / 2, abs=1e-5)
    later = [sum(tokens[1:]) / len(tokens[1:]) for tokens in per_token if len(tokens) > 1]
    assert len(later) >= 1 and scores["loglik_later"] == pytest.approx(sum(later) / len(later), abs=1e-5)
    assert scores["loglik"] == pytest.approx(sum(sum(t) / len(t) for t in per_token) / 2, abs=1e-5)
    assert "loglik_later" not in knowledge_scores(model, tokenizer, [CLOZE])  # " Hogwarts" is one token here
