"""The oracle as the reference of every forget metric, MUSE's metrics, and the generic-logit teacher as a model."""

import json
import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import CORPUS
from peft import LoraConfig, get_peft_model

from whp_trainer.anchors import AnchorDictionary
from whp_trainer.evaluation import EvaluateConfig, evaluate_model, write_report
from whp_trainer.evaluation.familiarity import sample_completions
from whp_trainer.evaluation.knowledge import first_mention_probes, knowledge_memorization, load_qa, qa_prompt
from whp_trainer.evaluation.membership import auc, auc_standard_error, membership_auc, min_k, privleak
from whp_trainer.evaluation import markdown_report, oracle_comparison
from whp_trainer.evaluation.markdown import verdict_summary
from whp_trainer.evaluation.report import evaluation_record
from whp_trainer.evaluation.teacher import GenericTeacher

FORGET, HOLDOUT = CORPUS[:3], CORPUS[3:6]
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
SMALL = dict(batch_size=4, max_length=64, completions=0, memorization_passages=2, prompt_tokens=4,
             continuation_tokens=4, relearn_steps=2, relearn_learning_rate=1e-2, membership_texts=0,
             quantizations=[], many_shot_passages=0)  # robustness attacks: tests/test_robustness.py
PROBES = [{"prompt": "Harry Potter studies magic at", "target": " Hogwarts"}]


def fine_tuned(model, tokenizer, texts, adapter=None, steps=30, batch=None):
    """``model`` (or its ``adapter``) trained on ``texts`` (or a tokenized ``batch``) until it knows them by heart."""
    if adapter:
        model.set_adapter(adapter)
    batch = batch or tokenizer(list(texts), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


def test_auc_min_k_and_privleak_follow_their_definitions():
    assert auc([3, 4], [1, 2]) == 1.0 and auc([1, 2], [3, 4]) == 0.0 and auc([1, 2], [1, 2]) == 0.5
    assert min_k(torch.tensor([-5.0, -1.0, -3.0, -2.0]), 0.5) == -4.0  # the two least likely tokens
    assert min_k(torch.tensor([-5.0, -1.0]), 0.1) == -5.0  # at least one token
    assert privleak(0.5, 0.5) == 0.0
    # MUSE's AUC labels the holdout as members: a model that still recognises the forget text is negative
    assert privleak(0.9, 0.5) == pytest.approx(-80.0) and privleak(0.25, 0.5) == pytest.approx(50.0)


@pytest.mark.parametrize("members, non_members", [(6, 5), (40, 40), (64, 30)])
def test_an_aucs_standard_error_is_its_spread_over_samples_of_that_size(members, non_members):
    # with no signal: the exact variance of the Mann-Whitney AUC; with one: the spread over 2,000 drawn samples
    null = auc_standard_error(0.5, members, non_members)
    assert null == pytest.approx(((members + non_members + 1) / (12 * members * non_members)) ** 0.5, rel=0.01)
    generator = torch.Generator().manual_seed(0)
    drawn = torch.tensor([auc(torch.randn(members, generator=generator) + 1.0,
                              torch.randn(non_members, generator=generator)) for _ in range(2000)])
    assert auc_standard_error(drawn.mean().item(), members, non_members) == pytest.approx(drawn.std().item(), rel=0.15)


def test_membership_auc_recognises_the_text_a_model_read(make_model, tokenizer):
    untrained = membership_auc(make_model(), tokenizer, FORGET, HOLDOUT, k=0.4)
    trained = membership_auc(fine_tuned(make_model(), tokenizer, FORGET), tokenizer, FORGET, HOLDOUT, k=0.4)
    assert trained["membership_auc_mink"] == 1.0 and trained["membership_auc_minkpp"] > untrained["membership_auc_minkpp"]
    assert trained["membership_auc_minkpp"] >= 0.8
    assert trained["membership_auc_minkpp_se"] == auc_standard_error(trained["membership_auc_minkpp"], len(FORGET),
                                                                     len(HOLDOUT))


def test_membership_scores_of_a_padded_batch_are_each_texts_own(make_model, tokenizer):
    from whp_trainer.evaluation.membership import token_scores

    model = make_model()
    texts = FORGET + HOLDOUT  # of several lengths: the shorter ones padded in a batch
    together, alone = token_scores(model, tokenizer, texts, batch_size=8), token_scores(model, tokenizer, texts,
                                                                                         batch_size=1)
    for batched, single in zip(together, alone, strict=True):  # log-probabilities, then standardised scores
        for row, own in zip(batched, single, strict=True):
            torch.testing.assert_close(row, own, rtol=1e-3, atol=1e-3)  # padding changes the forward in its last digits


def test_first_mentions_skip_later_mentions_and_short_contexts():
    texts = ["Then Harry and Ron went to Hogwarts, and Harry said hi.\n\nHarry was late for Hogwarts again."]
    probes = first_mention_probes(texts, ["Harry", "Hogwarts", "Ron"])
    assert probes == [
        {"prompt": "Then Harry and", "target": " Ron"},
        {"prompt": "Then Harry and Ron went to", "target": " Hogwarts"},
        {"prompt": "Harry was late for", "target": " Hogwarts"},
    ]  # "Harry" opens both passages (fewer than 3 words before it); its second mention may be copied


def test_knowmem_is_the_rouge_l_recall_of_the_answer(make_model, tokenizer, tmp_path):
    qa = [{"question": "Where does Harry study?", "answer": "Hogwarts"}]
    # the answer, then MUSE's stop: without an end, greedy decoding runs on into the word ("Hogwartser")
    ids = tokenizer(qa_prompt(qa[0]["question"]))["input_ids"] + tokenizer("Hogwarts\n\nQuestion:")["input_ids"]
    taught = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    learned = fine_tuned(make_model(), tokenizer, None, steps=40, batch=taught)
    assert knowledge_memorization(learned, tokenizer, qa, max_new_tokens=8) == 1.0
    assert knowledge_memorization(make_model(), tokenizer, qa, max_new_tokens=8) < 1.0
    (tmp_path / "qa.jsonl").write_text(json.dumps(qa[0]) + "\n" + json.dumps({"question": "?"}) + "\n")
    with pytest.raises(ValueError, match="qa.jsonl, line 2"):
        load_qa(tmp_path / "qa.jsonl")


@pytest.fixture
def reinforced_model(make_model, tokenizer):
    model = get_peft_model(make_model(), LoraConfig(**LORA), adapter_name="reinforced")
    fine_tuned(model, tokenizer, FORGET, adapter="reinforced")
    model.add_adapter("unlearned", LoraConfig(**LORA))
    model.set_adapter("unlearned")
    return model


def test_the_teacher_is_the_base_at_alpha_0_and_pushes_down_what_reinforcement_raised(reinforced_model, tokenizer):
    model = reinforced_model
    batch = tokenizer(FORGET[:1], return_tensors="pt")
    with torch.no_grad(), model.disable_adapter():
        base = model(**batch).logits
    model.set_adapter("reinforced")
    with torch.no_grad():
        reinforced = model(**batch).logits
    model.set_adapter("unlearned")
    torch.testing.assert_close(GenericTeacher(model, "reinforced", 0.0)(**batch).logits, base)
    teacher = GenericTeacher(model, "reinforced", 5.0)(**batch).logits
    torch.testing.assert_close(teacher, base - 5 * (reinforced - base).clamp(min=0))
    greedy = sample_completions(GenericTeacher(model, "reinforced", 0.0), tokenizer, ["Harry Potter"], temperature=0)
    with model.disable_adapter():
        assert greedy == sample_completions(model, tokenizer, ["Harry Potter"], temperature=0)
    assert model.active_adapter == "unlearned"


def test_the_oracle_column_relearns_and_every_forget_metric_is_compared_with_it(reinforced_model, make_model,
                                                                                tokenizer, tmp_path):
    oracle = fine_tuned(make_model(seed=0), tokenizer, HOLDOUT, steps=5)
    weights = {key: value.clone() for key, value in oracle.state_dict().items()}
    config = EvaluateConfig(**SMALL, teacher_alphas=[2.0, 10.0])
    results = evaluate_model(reinforced_model, tokenizer, config, PROBES, FORGET, HOLDOUT,
                             dictionary=AnchorDictionary({"Hogwarts": ["Mystic Academy"], "Ron": ["Tom"]}),
                             oracle=oracle, holdout_texts=CORPUS[4:])
    assert list(results) == ["base", "oracle", "reinforced", "teacher α=2", "teacher α=10", "unlearned"]
    for metric in ("familiarity_token_relearned", "membership_auc_mink", "verbmem_forget", "entity_first_mention"):
        assert math.isfinite(results["oracle"][metric]), metric
    assert results["oracle"]["privleak_mink"] == 0.0
    assert results["reinforced"]["membership_auc_mink"] > results["oracle"]["membership_auc_mink"]
    for key, value in oracle.state_dict().items():  # relearning through a fresh adapter left the oracle as it was
        torch.testing.assert_close(value, weights[key], msg=key)

    comparison = oracle_comparison(results)
    assert "oracle" not in comparison
    reinforced = comparison["reinforced"]["membership_auc_mink"]
    assert reinforced["verdict"] == "above" and reinforced["meaning"] == "knowledge left"
    write_report(results, tmp_path, config=config)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["oracle_comparison"] == comparison
    teacher = report["teacher_reaching_the_oracle"]  # measured teachers, judged against the measured oracle
    assert [row["alpha"] for row in teacher["teachers"]] == [2.0, 10.0]
    assert teacher["oracle"] == results["oracle"]["membership_auc_mink"]
    assert "## Against the oracle" in (tmp_path / "report.md").read_text()
    assert "The teacher reaches the oracle's `membership_auc_mink`" in (tmp_path / "report.md").read_text()


def test_verdicts_say_above_at_or_below_the_oracle_and_what_it_means():
    results = {"base": {"verbmem_forget": 0.5, "forget_perplexity": 2.0, "retain_perplexity": 10.0,
                        "general_perplexity": 30.0},
               "oracle": {"verbmem_forget": 0.10, "forget_perplexity": 20.0, "retain_perplexity": 10.0},
               "unlearned": {"verbmem_forget": 0.11, "forget_perplexity": 40.0, "retain_perplexity": 10.5,
                             "general_perplexity": 30.6}}
    comparison = oracle_comparison(results)
    assert comparison["base"]["verbmem_forget"]["meaning"] == "knowledge left"
    assert comparison["base"]["forget_perplexity"] == {"value": 2.0, "oracle": 20.0, "difference": -18.0,
                                                      "verdict": "below", "meaning": "knowledge left"}
    assert comparison["unlearned"]["verbmem_forget"]["verdict"] == "at"
    assert comparison["unlearned"]["forget_perplexity"]["meaning"] == "over-forgotten"
    assert comparison["unlearned"]["retain_perplexity"]["meaning"] == "damaged"  # +5 % > 3 %
    assert comparison["unlearned"]["general_perplexity"]["meaning"] == "retained"  # +2 %, the same tolerance
    summary = verdict_summary(comparison)
    assert "- retain perplexity +5.0% against the base's: damaged" in summary
    assert "- general perplexity +2.0% against the base's: retained" in summary
    table = markdown_report(evaluation_record(results))
    assert "| metric | base | oracle | unlearned | unlearned − base | unlearned − oracle |" in table
    assert "| `verbmem_forget` | above (+0.4): knowledge left | at (+0.01): as the oracle |" in table


def test_every_role_is_read_on_the_packages_general_text_less_what_names_the_target(tokenizer):
    from whp_trainer.collator import text_blocks
    from whp_trainer.evaluation.retain import general_text
    from whp_trainer.evaluation.runner import evaluation_data

    config = EvaluateConfig(**{**SMALL, "retain_texts": 20})
    data = evaluation_data(config, tokenizer, PROBES, FORGET, HOLDOUT)
    assert len(data.texts["general"]) == 20 and set(data.texts["general"]) <= set(
        text_blocks(general_text(), tokenizer, config.max_length))
    without = EvaluateConfig(**{**SMALL, "retain_texts": 20, "general_text": False})
    assert data.texts["retain"] == evaluation_data(without, tokenizer, PROBES, FORGET, HOLDOUT).texts["retain"]
    unread = evaluation_data(EvaluateConfig(**{**SMALL, "retain_texts": 0}), tokenizer, PROBES, FORGET, HOLDOUT,
                             dictionary=AnchorDictionary({"hedgehog": ["rabbit"]}))
    assert unread.texts["general"] and not any("hedgehog" in block.lower() for block in unread.texts["general"])
    assert "general" not in evaluation_data(EvaluateConfig(**{**SMALL, "general_text": False}), tokenizer, PROBES,
                                            FORGET, HOLDOUT).texts


def relearned_familiarity(model, tokenizer, config, adapter):
    """Token familiarity on PROBES after the role relearns on FORGET."""
    from whp_trainer.evaluation.runner import evaluation_data, relearned_metrics

    data = evaluation_data(config, tokenizer, PROBES, FORGET, HOLDOUT)
    return relearned_metrics(model, tokenizer, config, data, adapter, FORGET)["familiarity_token"]


def test_a_role_without_adapter_relearns_through_a_seeded_fresh_adapter(reinforced_model, tokenizer):
    config = EvaluateConfig(**SMALL)
    twice = [relearned_familiarity(reinforced_model, tokenizer, config, None) for _ in range(2)]
    assert twice[0] == twice[1] and set(reinforced_model.peft_config) == {"reinforced", "unlearned"}
    assert reinforced_model.active_adapter == "unlearned"


def test_a_role_with_an_adapter_relearns_through_a_fresh_adapter_on_top_of_its_own(reinforced_model, tokenizer):
    """Every role relearns through the same new parameters: the role's adapter stays active but frozen (a published
    model is fine-tuned as it is), and is left as it was."""
    model = reinforced_model
    config = EvaluateConfig(**{**SMALL, "relearn_steps": 3})
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    moved = []
    original_step = torch.optim.AdamW.step

    def recording_step(optimizer, *args, **kwargs):  # which parameters the probe trains
        moved.append({id(p) for group in optimizer.param_groups for p in group["params"]})
        return original_step(optimizer, *args, **kwargs)

    with mock.patch.object(torch.optim.AdamW, "step", recording_step):
        on_reinforced = relearned_familiarity(model, tokenizer, config, "reinforced")
    names = {id(p): name for name, p in model.named_parameters()}
    assert moved and all(".relearn" in names.get(p, ".relearn") for p in moved[0])  # the fresh adapter alone trains
    on_base = relearned_familiarity(model, tokenizer, config, None)
    assert on_reinforced != on_base  # the role's adapter took part
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == trainable
    assert model.active_adapter == "unlearned"


@pytest.fixture
def stage_inputs(tokenizer, make_model, tmp_path):
    """A saved tiny base and an oracle of the same tokenizer, an unlearning adapter, texts and questions."""
    from whp_trainer.arguments import DataArguments

    for name, seed in (("base", 0), ("oracle", 1)):
        make_model(seed=seed).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    get_peft_model(make_model(), LoraConfig(**LORA)).save_pretrained(tmp_path / "unlearned")
    for name, texts in (("forget", FORGET), ("retain", CORPUS[3:]), ("holdout", CORPUS[4:])):
        (tmp_path / f"{name}.txt").write_text("\n\n".join(texts), encoding="utf-8")
    (tmp_path / "qa.json").write_text(json.dumps([{"question": "Where does Harry study?", "answer": "Hogwarts"}]))
    (tmp_path / "probes.json").write_text(json.dumps(PROBES))
    return DataArguments(forget_data=str(tmp_path / "forget.txt"), retain_data=str(tmp_path / "retain.txt"),
                         probes=str(tmp_path / "probes.json"), unlearned_adapter=str(tmp_path / "unlearned"))


def test_whp_evaluate_with_an_oracle_holdout_and_questions(stage_inputs, tmp_path):
    from trl import ModelConfig

    from whp_trainer import pipeline

    (tmp_path / "knowledge.csv").write_text("question,true_answer,false_answer\nWhere does Harry study?,Hogwarts,home\n")
    (tmp_path / "neighbour.jsonl").write_text(json.dumps({"prompt": "The cat sat on the", "answer": "mat"}) + "\n")
    config = EvaluateConfig(output_dir=str(tmp_path / "evaluation"), oracle_model=str(tmp_path / "oracle"),
                            holdout_data=str(tmp_path / "holdout.txt"), knowledge_qa=str(tmp_path / "qa.json"),
                            forget_knowledge=str(tmp_path / "knowledge.csv"),
                            neighbour_knowledge=str(tmp_path / "neighbour.jsonl"),
                            relearn_data=str(tmp_path / "holdout.txt"), paraphrased_probes=str(tmp_path / "probes.json"),
                            **{**SMALL, "relearn_steps": 1, "quantizations": ["nf4"]})
    output = pipeline.evaluate(stage_inputs, ModelConfig(model_name_or_path=str(tmp_path / "base")), config)
    report = json.loads((tmp_path / "evaluation" / "report.json").read_text())
    assert list(report["results"]) == ["base", "oracle", "unlearned"]
    assert {"knowmem_forget", "membership_auc_minkpp", "privleak_minkpp", "knowledge_forget_two_choice",
            "knowledge_selectivity", "knowledge_forget_loglik@relearn_neighbour", "familiarity_token@paraphrased",
            "verbmem_forget@nf4"} <= set(report["results"]["oracle"]) & set(report["results"]["unlearned"])
    assert set(report["oracle_comparison"]) == {"base", "unlearned"}
    assert "| `membership_auc_mink` |" in (Path(output) / "report.md").read_text()


def test_an_oracle_of_another_tokenizer_is_refused_before_a_model_loads(stage_inputs, tmp_path, monkeypatch):
    from trl import ModelConfig

    from whp_trainer import pipeline
    from whp_trainer.toy import train_tokenizer

    train_tokenizer(["other words entirely"] * 20, vocab_size=300).save_pretrained(tmp_path / "oracle")
    monkeypatch.setattr(pipeline, "load_base_model", lambda *a: pytest.fail("a model was loaded before the check"))
    config = EvaluateConfig(output_dir=str(tmp_path / "evaluation"), oracle_model=str(tmp_path / "oracle"))
    with pytest.raises(ValueError, match="--oracle_model .* has another tokenizer"):
        pipeline.evaluate(stage_inputs, ModelConfig(model_name_or_path=str(tmp_path / "base")), config)
    config = EvaluateConfig(output_dir=str(tmp_path / "evaluation"), knowledge_qa=str(tmp_path / "forget.txt"))
    with pytest.raises(ValueError, match="unknown format"):
        pipeline.evaluate(stage_inputs, ModelConfig(model_name_or_path=str(tmp_path / "base")), config)
    (tmp_path / "knowledge.jsonl").write_text('{"prompt": "Harry studies at", "answer": "Hogwarts"}\n{"prompt": "Ron"}\n')
    config = EvaluateConfig(output_dir=str(tmp_path / "evaluation"), neighbour_knowledge=str(tmp_path / "knowledge.jsonl"))
    with pytest.raises(ValueError, match="knowledge.jsonl, line 2: missing or empty 'answer'"):
        pipeline.evaluate(stage_inputs, ModelConfig(model_name_or_path=str(tmp_path / "base")), config)


def test_roles_are_ordered_teachers_by_alpha_whatever_follows_it():
    from whp_trainer.evaluation.comparison import ordered_roles

    roles = ["unlearned", "teacher α=10", "teacher α=5 (strong reinforcement)", "base", "mine", "oracle"]
    assert ordered_roles(dict.fromkeys(roles)) == [
        "base", "oracle", "teacher α=5 (strong reinforcement)", "teacher α=10", "unlearned", "mine"]


def test_the_report_names_the_smallest_alpha_whose_teacher_reaches_the_oracles_membership(tmp_path):
    """From the record alone (as the card renders it from JSON): the α to train with, or that none reaches it."""
    from whp_trainer.evaluation.markdown import markdown_report
    from whp_trainer.evaluation.report import evaluation_record

    results = {"base": {"membership_auc_mink": 1.0}, "oracle": {"membership_auc_mink": 0.6},
               "teacher α=5": {"membership_auc_mink": 0.94}, "teacher α=10": {"membership_auc_mink": 0.15},
               "teacher α=7": {"membership_auc_mink": 0.64}, "teacher α=3 (other)": {"membership_auc_mink": 0.1},
               "unlearned": {"membership_auc_mink": 0.7}}
    record = json.loads(json.dumps(evaluation_record(results)))
    assert record["teacher_reaching_the_oracle"]["alpha"] == 7.0  # 0.64 is within 0.05 of 0.6; 0.94 is not
    assert "reaches the oracle's `membership_auc_mink` at α = 7 (0.64 against 0.6" in markdown_report(record)
    results["teacher α=7"]["membership_auc_mink"] = results["teacher α=10"]["membership_auc_mink"] = 0.9
    record = json.loads(json.dumps(evaluation_record(results)))
    assert record["teacher_reaching_the_oracle"]["alpha"] is None
    assert "at none of the α measured (5, 7, 10; lowest 0.9 against the oracle's 0.6)" in markdown_report(record)
    assert "teacher_reaching_the_oracle" not in evaluation_record({"oracle": {}, "unlearned": {}})
