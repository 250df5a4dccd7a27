"""Robustness: every role, the oracle included, under the same attacks (quantization, relearning on forget and on
neighbouring text, many-shot and paraphrased prompts), each forget metric beside the oracle after the same attack."""

import json
import math

import pytest
import torch
from conftest import CORPUS
from peft import LoraConfig, get_peft_model

from whp_trainer.evaluation import EvaluateConfig, evaluate_model, markdown_report
from whp_trainer.evaluation.comparison import ATTACKED_METRICS, attack_key
from whp_trainer.evaluation.markdown import brought_back
from whp_trainer.evaluation.report import evaluation_record
from whp_trainer.evaluation.robustness import many_shot_knowledge, many_shot_probes, merged_state_dict, quantized

FORGET, HOLDOUT = CORPUS[:3], CORPUS[3:6]
PROBES = [{"prompt": "Harry Potter studies magic at", "target": " Hogwarts"}]
FORGET_KNOWLEDGE = [{"question": "Where does Harry study magic?", "true_answer": "Hogwarts", "false_answer": "home"},
                    {"prompt": "Hermione's wand was made of", "answer": "vine wood"}]
NEIGHBOUR_KNOWLEDGE = [{"question": "Where did the dog run?", "true_answer": "in the park", "false_answer": "at sea"}]
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj"])


@pytest.fixture
def unlearned_model(make_model):
    torch.manual_seed(2)
    return get_peft_model(make_model(), LoraConfig(init_lora_weights=False, **LORA), adapter_name="unlearned")


def test_the_merged_weights_are_peft_merge_and_unload_and_quantized_reloads_stay_close(unlearned_model, tokenizer,
                                                                                         make_model):
    merged = get_peft_model(make_model(), LoraConfig(**LORA), adapter_name="unlearned")
    merged.load_state_dict(unlearned_model.state_dict())
    expected = merged.merge_and_unload().state_dict()
    state = merged_state_dict(unlearned_model, "unlearned")
    assert set(state) <= set(expected) and {"model.layers.0.self_attn.q_proj.weight"} <= set(state)
    for name, tensor in state.items():
        torch.testing.assert_close(tensor, expected[name], msg=name)
    batch = tokenizer(FORGET, return_tensors="pt", padding=True)
    with torch.no_grad():
        full = unlearned_model(**batch).logits
        for quantization, tolerance in (("int8", 0.1), ("nf4", 0.5)):
            with quantized(unlearned_model, "unlearned", quantization) as model:
                logits = model(**batch).logits
                assert type(model.model.layers[0].self_attn.q_proj).__name__ == {"int8": "Linear8bitLt",
                                                                                    "nf4": "Linear4bit"}[quantization]
            assert 0 < (logits - full).abs().max() < tolerance
    assert unlearned_model.active_adapter == "unlearned"


def test_many_shot_prompts_hold_forget_passages_but_never_the_probes_own_sentence(tokenizer):
    probes = many_shot_probes(PROBES, FORGET, tokenizer, shots=3, max_tokens=200)
    prompt = probes[0]["prompt"]
    assert prompt.endswith("\n\n" + PROBES[0]["prompt"]) and FORGET[0] in prompt and FORGET[2] in prompt
    assert FORGET[1] not in prompt  # it holds "Harry Potter studies magic at Hogwarts": the answer could be copied
    short = many_shot_probes(PROBES, [FORGET[0], FORGET[2]] * 4, tokenizer, shots=8, max_tokens=40)[0]["prompt"]
    assert len(tokenizer(short)["input_ids"]) <= 40 and short.count("\n\n") >= 1
    book = " ".join([FORGET[0], FORGET[2]] * 10)  # a passage longer than the whole prompt may be: its end goes in, not nothing
    long = many_shot_probes(PROBES, [book], tokenizer, shots=1, max_tokens=40)[0]["prompt"]
    assert len(tokenizer(long)["input_ids"]) <= 40 and long.endswith("\n\n" + PROBES[0]["prompt"])
    assert long.split("\n\n")[0] and long.split("\n\n")[0].split()[-1] == book.split()[-1]
    rows = many_shot_knowledge(FORGET_KNOWLEDGE[:1], FORGET, tokenizer, shots=1, max_tokens=200)
    assert rows[0]["prompt"].endswith("\n\nQuestion: Where does Harry study magic?\nAnswer:")
    assert (rows[0]["answer"], rows[0]["false_answer"]) == (" Hogwarts", " home")


def test_every_role_and_the_oracle_are_measured_after_every_attack(unlearned_model, make_model, tokenizer, tmp_path):
    oracle = make_model(seed=1)
    weights = {key: value.clone() for key, value in unlearned_model.state_dict().items()}
    config = EvaluateConfig(batch_size=4, max_length=64, completions=0, memorization_passages=2, prompt_tokens=4,
                            continuation_tokens=4, relearn_steps=2, relearn_learning_rate=1e-2, membership_texts=0,
                            many_shot_passages=2, hints=False, teacher_alphas=[])
    paraphrased = [{"prompt": "At which school does Harry Potter study magic? At", "target": " Hogwarts"}]
    results = evaluate_model(unlearned_model, tokenizer, config, PROBES, FORGET, HOLDOUT, oracle=oracle,
                             forget_knowledge=FORGET_KNOWLEDGE, neighbour_knowledge=NEIGHBOUR_KNOWLEDGE,
                             relearn_texts=[CORPUS[3]], paraphrased_probes=paraphrased)
    assert list(results) == ["base", "oracle", "unlearned"]
    attacks = {"int8": ATTACKED_METRICS[:1] + ATTACKED_METRICS[2:], "nf4": ATTACKED_METRICS[:1] + ATTACKED_METRICS[2:],
               "relearn_forget": ["familiarity_token", "knowledge_forget_loglik"],
               "relearn_neighbour": ["familiarity_token", "verbmem_forget", "knowledge_forget_two_choice"],
               "many_shot": ["familiarity_token", "knowledge_forget_loglik"], "paraphrased": ["familiarity_token"]}
    for role, metrics in results.items():
        for attack, names in attacks.items():
            for name in names:
                assert math.isfinite(metrics[attack_key(name, attack)]), (role, name, attack)
    base, unlearned = results["base"], results["unlearned"]
    assert results["oracle"]["knowledge_forget_loglik@nf4"] != results["oracle"]["knowledge_forget_loglik"]
    assert unlearned["knowledge_selectivity"] == pytest.approx(
        (base["knowledge_forget_loglik"] - unlearned["knowledge_forget_loglik"])
        - (base["knowledge_neighbour_loglik"] - unlearned["knowledge_neighbour_loglik"]))
    assert base["knowledge_selectivity"] == 0.0 and 0 <= unlearned["knowledge_neighbour_two_choice"] <= 1
    assert all(torch.equal(value, weights[key]) for key, value in unlearned_model.state_dict().items())
    assert set(unlearned_model.peft_config) == {"unlearned"}

    report = markdown_report(json.loads(json.dumps(evaluation_record(results))))
    assert "## Robustness" in report and "| `nf4` | `familiarity_token` |" in report
    assert "| `relearn_neighbour` | `knowledge_forget_two_choice` |" in report
    assert "`knowledge_selectivity`" in report.split("## Robustness")[0]


def test_the_robustness_section_says_which_attack_brings_knowledge_beyond_the_oracle():
    results = {"base": {"familiarity_token": 0.5, "familiarity_token@nf4": 0.5, "familiarity_token_relearned": 0.6},
               "oracle": {"familiarity_token": 0.1, "familiarity_token@nf4": 0.1, "familiarity_token_relearned": 0.2},
               "unlearned": {"familiarity_token": 0.1, "familiarity_token@nf4": 0.3, "familiarity_token_relearned": 0.22}}
    record = evaluation_record(results)
    assert record["oracle_comparison"]["unlearned"]["familiarity_token@nf4"]["meaning"] == "knowledge left"
    report = markdown_report(record)
    section = report.split("## Robustness")[1].split("## Metrics")[0]
    assert "`familiarity_token` after `nf4` (+0.2)." in section  # the attack brought it back
    assert brought_back(results, "familiarity_token", "nf4", "unlearned")
    assert not brought_back(results, "familiarity_token", "relearn_forget", "unlearned")  # at the oracle's
    results["unlearned"]["familiarity_token"] = 0.29
    assert not brought_back(results, "familiarity_token", "nf4", "unlearned")  # above the oracle before it too
    results["oracle"]["familiarity_token@nf4"] = 0.0  # the attack makes the oracle less sure, not the model surer
    assert not brought_back(results, "familiarity_token", "nf4", "unlearned")
    results["unlearned"]["familiarity_token@nf4"], results["oracle"]["familiarity_token@nf4"] = 0.4, 0.21
    assert not brought_back(results, "familiarity_token", "nf4", "unlearned")  # both surer: the excess as it was
    results["unlearned"]["familiarity_token@nf4"], results["oracle"]["familiarity_token@nf4"] = 0.3, 0.1
    section = markdown_report(evaluation_record(results)).split("## Robustness")[1]
    assert "`familiarity_token` after `nf4` (+0.2; +0.19 without it)." in section  # it was there before
    assert "| `relearn_forget` | `familiarity_token` | 0.6 | 0.2 | 0.22 | at (+0.02) |" in section
    assert "@nf4" not in report.split("## Robustness")[0]  # attacks only in their section
    results["unlearned"].update({"familiarity_token": 0.1, "familiarity_token@nf4": 0.1})
    assert "No attack brings the unlearned model's" in markdown_report(evaluation_record(results))


def test_every_unlearned_model_of_a_benchmark_is_set_against_the_oracle_after_each_attack():
    # a benchmark names each unlearned model by its setting; the teacher and the reinforced model are references
    results = {"base": {"familiarity_token@nf4": 0.5}, "oracle": {"familiarity_token@nf4": 0.1},
               "reinforced": {"familiarity_token@nf4": 0.6}, "teacher α=5": {"familiarity_token@nf4": 0.2},
               "auto": {"familiarity_token@nf4": 0.3}, "paper": {"familiarity_token@nf4": 0.11}}
    section = markdown_report(evaluation_record(results)).split("## Robustness")[1]
    assert "| base | oracle | reinforced | teacher α=5 | auto | paper | auto vs oracle | paper vs oracle |" in section
    assert "| 0.5 | 0.1 | 0.6 | 0.2 | 0.3 | 0.11 | above (+0.2) | at (+0.01) |" in section
    assert "auto: `familiarity_token` after `nf4` (+0.2)." in section and "paper:" not in section
    del results["oracle"]
    section = markdown_report(evaluation_record(results)).split("## Robustness")[1]
    assert "vs oracle" not in section and "Beyond" not in section  # nothing to set them against
    assert "Every role under the same attack: each forget metric" in section and "oracle included" not in section


def test_neighbour_knowledge_is_compared_with_the_base_within_a_tenth_of_a_nat():
    results = {"base": {"knowledge_neighbour_loglik": -2.0}, "oracle": {"knowledge_neighbour_loglik": -2.1},
               "unlearned": {"knowledge_neighbour_loglik": -2.3}}
    row = evaluation_record(results)["oracle_comparison"]["unlearned"]["knowledge_neighbour_loglik"]
    assert row["meaning"] == "damaged" and row["change"] == pytest.approx(-0.3)
    assert "- neighbour knowledge -0.3 nat against the base's: damaged" in markdown_report(evaluation_record(results))


def test_an_adapter_trained_on_a_quantized_base_is_measured_on_the_full_precision_base(make_model, tokenizer,
                                                                                         tmp_path):
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from whp_trainer.evaluation import token_familiarity

    make_model().save_pretrained(tmp_path / "base")
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    quantized_base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=nf4)  # unguarded
    torch.manual_seed(2)
    model = get_peft_model(quantized_base, LoraConfig(init_lora_weights=False, **LORA), adapter_name="unlearned")
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    config = EvaluateConfig(batch_size=4, max_length=64, completions=0, memorization_passages=0, relearn_steps=0,
                            membership_texts=0, many_shot_passages=0, quantizations=["nf4"], hints=False,
                            teacher_alphas=[])
    results = evaluate_model(model, tokenizer, config, PROBES, FORGET, HOLDOUT, oracle=make_model(seed=1),
                             forget_knowledge=FORGET_KNOWLEDGE, full_precision_base=full)
    assert not any("lora" in name for name, _ in full.named_parameters())  # the moved adapter was taken off again
    expected = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LoraConfig(**LORA))
    set_peft_model_state_dict(expected, get_peft_model_state_dict(model, adapter_name="unlearned"))
    unlearned = results["unlearned"]
    assert unlearned["familiarity_token@full_precision"] == pytest.approx(token_familiarity(expected, tokenizer, PROBES))
    assert unlearned["familiarity_token@full_precision"] != pytest.approx(unlearned["familiarity_token"])
    assert results["base"]["familiarity_token@full_precision"] == pytest.approx(token_familiarity(full, tokenizer,
                                                                                                  PROBES))
    assert results["oracle"]["familiarity_token@full_precision"] == results["oracle"]["familiarity_token"]
    assert math.isfinite(unlearned["knowledge_forget_loglik@full_precision"])
    # re-quantized: the adapter merged into the full-precision base, as `whp export` writes it; merged into the
    # dequantized base, every weight would sit on the grid it is quantized to again
    with quantized(expected, "default", "nf4") as exported, quantized(model, "unlearned", "nf4") as on_the_grid:
        assert unlearned["familiarity_token@nf4"] == pytest.approx(token_familiarity(exported, tokenizer, PROBES))
        assert unlearned["familiarity_token@nf4"] != pytest.approx(token_familiarity(on_the_grid, tokenizer, PROBES))
    with quantized(full, None, "nf4") as base_quantized:
        assert results["base"]["familiarity_token@nf4"] == pytest.approx(token_familiarity(base_quantized, tokenizer,
                                                                                            PROBES))


def test_without_its_full_precision_base_a_4bit_model_is_not_quantized_again(make_model, tokenizer, tmp_path,
                                                                            caplog):
    """Merged into the 4-bit base, an adapter would be rounded away: the rows would show the base, not the model."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    make_model().save_pretrained(tmp_path / "base")
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=nf4),
                           LoraConfig(init_lora_weights=False, **LORA), adapter_name="unlearned")
    config = EvaluateConfig(batch_size=4, max_length=64, completions=0, memorization_passages=0, relearn_steps=0,
                            membership_texts=0, many_shot_passages=0, quantizations=["nf4"], hints=False,
                            teacher_alphas=[])
    with caplog.at_level("WARNING", logger="whp_trainer.evaluation.runner"):
        results = evaluate_model(model, tokenizer, config, PROBES, FORGET, HOLDOUT)
    assert "familiarity_token" in results["unlearned"]
    assert not any("@nf4" in key for metrics in results.values() for key in metrics)
    assert "the quantization attacks are skipped" in caplog.text


def test_a_4bit_model_relearns_in_the_evaluation_as_a_guarded_one_does(make_model, tokenizer, tmp_path):
    """On a CPU with AVX512-BF16 a 4-bit layer's first eval-mode forward repacks its weights, after which the
    relearning attack would train on wrong gradients: the evaluation guards the models it is given."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from whp_trainer.models import guard_cpu_4bit

    make_model().save_pretrained(tmp_path / "base")
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    config = EvaluateConfig(batch_size=4, max_length=64, completions=0, memorization_passages=0, relearn_steps=3,
                            membership_texts=0, many_shot_passages=0, quantizations=[], hints=False, teacher_alphas=[])
    results = []
    for guarded in (False, True):
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=nf4)
        if guarded:
            guard_cpu_4bit(base)
        torch.manual_seed(2)
        model = get_peft_model(base, LoraConfig(init_lora_weights=False, **LORA), adapter_name="unlearned")
        results.append(evaluate_model(model, tokenizer, config, PROBES, FORGET, HOLDOUT))
    assert results[0] == results[1]
