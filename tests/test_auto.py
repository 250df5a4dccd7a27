"""``alpha: auto``: the teacher sweep measures what the metrics measure, the choice of α follows the targets and the
retain cost, the stopping rule stops at the targets or a budget and ends on the best weights, and ``whp run`` records
what it chose and why."""

import json
from pathlib import Path
from statistics import fmean
from types import SimpleNamespace

import pytest
import torch
from conftest import CORPUS
from peft import PeftModel
from test_cli import EVALUATION, TRAINING, files, run_config, write_config  # noqa: F401 (files: a fixture)

from whp_trainer import UnlearnConfig, UnlearnTrainer, cli
from whp_trainer.evaluation import GenericTeacher, membership_auc, perplexity, token_familiarity
from whp_trainer.evaluation.autotune import (
    KNOWLEDGE, Targets, choose_alpha, familiarity_reference, membership_error, reference_and_tolerance, teacher_sweep,
    translated_probes,
)
from whp_trainer.evaluation.markdown import stopping_summary
from whp_trainer.evaluation.retain import perplexity_of
from whp_trainer.evaluation.stopping import (
    GENERAL, GENERAL_BOUND, HOLDOUT, HOLDOUT_BOUND, LINE_SEARCH, NEIGHBOUR_BOUND, RETAIN_BOUND, STATE_FILE,
    TargetStoppingCallback, knowledge_bound, perplexity_bound, t_quantile, trainable_weights,
)
from whp_trainer.toy import tiny_llama
from whp_trainer.trainer import RETAIN_STATE

PROBES = [{"prompt": "Harry Potter studies magic at", "target": " Hogwarts"},
          {"prompt": "The Quidditch match ended when", "target": " Harry"}]


def test_the_sweep_measures_each_teacher_as_the_metrics_do(make_model, reinforced_path, tokenizer):
    model = PeftModel.from_pretrained(make_model(), reinforced_path, adapter_name="reinforced")
    forget, holdout = CORPUS[:4], CORPUS[4:8]
    sweep = teacher_sweep(model, tokenizer, [5, 20], PROBES, CORPUS[4:], (forget, holdout), max_length=32,
                          batch_size=3)
    assert sorted(sweep) == [0.0, 5.0, 20.0]  # 0: the base, from the same passes
    for alpha in (0.0, 5.0, 20.0):
        teacher = GenericTeacher(model, "reinforced", alpha)
        expected = {"familiarity_token": token_familiarity(teacher, tokenizer, PROBES),
                    "retain_perplexity": perplexity(teacher, tokenizer, CORPUS[4:], max_length=32),
                    **membership_auc(teacher, tokenizer, forget, holdout, max_length=32)}
        assert sweep[alpha] == pytest.approx(expected, rel=1e-4)


def test_the_sweep_measures_the_teacher_that_spares_the_common_tokens_when_told(make_model, reinforced_path,
                                                                               tokenizer):
    model = PeftModel.from_pretrained(make_model(), reinforced_path, adapter_name="reinforced")
    spared = torch.tensor(tokenizer(" the . ,")["input_ids"])
    sweep = teacher_sweep(model, tokenizer, [20], PROBES, CORPUS[4:], max_length=32, spared=spared)
    teacher = GenericTeacher(model, "reinforced", 20.0, spared=spared)
    assert sweep[20.0]["retain_perplexity"] == pytest.approx(perplexity(teacher, tokenizer, CORPUS[4:], max_length=32),
                                                             rel=1e-4)
    assert sweep[20.0]["retain_perplexity"] != pytest.approx(
        teacher_sweep(model, tokenizer, [20], PROBES, CORPUS[4:], max_length=32)[20.0]["retain_perplexity"])


def test_on_the_probes_the_swept_teacher_reads_them_anchor_translated(make_model, reinforced_path, tokenizer):
    model = PeftModel.from_pretrained(make_model(), reinforced_path, adapter_name="reinforced")
    anchors = {"Harry": ("Jon",), "Quidditch": ("Skyball",)}
    translated = translated_probes(PROBES, anchors)
    sweep = teacher_sweep(model, tokenizer, [40], PROBES, CORPUS[4:], translated=translated, max_length=32)
    assert sweep[0.0]["familiarity_token"] == pytest.approx(familiarity_reference(model, tokenizer, PROBES, anchors))
    bootstrapped = GenericTeacher(model, "reinforced", 40.0)  # the reinforced adapter still reads the original
    assert sweep[40.0]["familiarity_token"] != pytest.approx(token_familiarity(bootstrapped, tokenizer, PROBES))


def test_without_an_oracle_a_model_that_puts_little_probability_on_the_names_is_not_forgotten_before_training(
        make_model, reinforced_path, tokenizer):
    model = PeftModel.from_pretrained(make_model(), reinforced_path, adapter_name="reinforced")
    anchors = {"Harry": ("Jon",), "Quidditch": ("Skyball",)}
    reference, tolerance = reference_and_tolerance(model, tokenizer, PROBES, anchors, tolerance=0.02, share=0.1)
    assert reference == pytest.approx(familiarity_reference(model, tokenizer, PROBES, anchors))
    with model.disable_adapter():
        base = token_familiarity(model, tokenizer, PROBES)
    assert tolerance == pytest.approx(min(0.02, 0.1 * max(base - reference, 0.0)))
    # a pretrained model's scale (the known-book pilot): base 0.0147, reference 0.0009
    targets = Targets(None, familiarity=0.0009, familiarity_tolerance=min(0.02, 0.1 * (0.0147 - 0.0009)))
    assert targets.shortfalls({"familiarity_token": 0.0147}, {"familiarity_token": 0.0147})["familiarity_token"] > 0.8
    assert targets.shortfalls({"familiarity_token": 0.0020}, {"familiarity_token": 0.0147}) == {"familiarity_token": 0}
    # the entity target has its own tolerance
    entity = Targets(None, None, entity=0.2, familiarity_tolerance=0.02, entity_tolerance=0.002)
    assert entity.shortfalls({"entity_first_mention": 0.21}, {"entity_first_mention": 0.27})["entity_first_mention"] > 0


def test_translated_probes_ask_about_the_generic_names():
    translated = translated_probes(PROBES, {"Harry": ("Jon",), "Quidditch": ("Skyball", "Ball"), "Hogwarts": ("X",)})
    assert translated == [{"prompt": "Jon Potter studies magic at", "target": " Hogwarts"},
                          {"prompt": "The Skyball match ended when", "target": " Harry"}]


def sweep(*rows):
    """{α: metrics} from (α, membership AUC, familiarity, retain perplexity) rows; α 0 is the base."""
    return {alpha: {"membership_auc_mink": auc, "familiarity_token": familiarity, "retain_perplexity": ppl}
            for alpha, auc, familiarity, ppl in rows}


BASE = (0.0, 0.95, 0.5, 10.0)


def test_the_alpha_reaching_every_target_at_the_least_retain_cost_is_chosen():
    targets = Targets(membership=0.5, familiarity=0.1)
    first = sweep(BASE, (5.0, 0.7, 0.05, 11.0), (10.0, 0.52, 0.09, 12.0), (20.0, 0.3, 0.02, 15.0))
    choice = choose_alpha([first], targets)
    assert (choice["alpha"], choice["round"], choice["reached"]) == (10.0, 0, True)  # 20 goes past: reached, dearer
    assert "reaches every target" in choice["reason"]

    missing = sweep(BASE, (5.0, 0.9, 0.4, 11.0), (10.0, 0.8, 0.3, 12.0))
    stronger = sweep(BASE, (5.0, 0.53, 0.1, 13.0), (10.0, 0.45, 0.05, 12.5))
    assert (choose_alpha([missing, stronger], targets)["alpha"], choose_alpha([missing, stronger], targets)["round"]) \
        == (10.0, 1)  # the stronger reinforcement's cheapest teacher that reaches both

    closest = choose_alpha([missing], targets)  # none reaches: the closest, said so
    assert (closest["alpha"], closest["reached"]) == (10.0, False) and "no teacher reaches" in closest["reason"]


def test_a_teacher_over_its_budget_does_not_count_and_a_stronger_reinforcement_is_preferred():
    targets = Targets(membership=0.5, familiarity=0.1)
    dear = sweep(BASE, (5.0, 0.9, 0.4, 11.0), (14.0, 0.48, 0.05, 130.0))  # reaches the targets at 13× perplexity
    cheaper = sweep(BASE, (5.0, 0.53, 0.1, 16.0), (10.0, 0.45, 0.05, 30.0))
    assert choose_alpha([dear], targets)["alpha"] == 14.0  # no budget: reached, at any cost
    assert not choose_alpha([dear], targets, teacher_budget=1.0)["reached"]  # 130 > 2 × 10: strengthen
    choice = choose_alpha([dear, cheaper], targets, teacher_budget=1.0)
    assert (choice["alpha"], choice["round"], choice["reached"]) == (5.0, 1, True)


def test_when_no_teacher_reaches_the_targets_within_its_budget_the_closest_within_it_is_chosen():
    targets = Targets(membership=0.5, familiarity=0.1)
    mild = sweep(BASE, (2.0, 0.8, 0.3, 15.0), (5.0, 0.6, 0.2, 19.0), (14.0, 0.55, 0.15, 400.0))
    choice = choose_alpha([mild], targets, teacher_budget=1.0)  # 14 comes closer, at 40× the base's perplexity
    assert (choice["alpha"], choice["reached"]) == (5.0, False) and "the closest within it is α=5" in choice["reason"]
    assert choose_alpha([mild], targets)["alpha"] == 14.0  # no budget: the closest at any cost
    dear = sweep(BASE, (5.0, 0.9, 0.4, 25.0), (14.0, 0.6, 0.2, 130.0))
    choice = choose_alpha([dear], targets, teacher_budget=1.0)
    assert choice["alpha"] == 14.0 and "none is within it; the closest is α=14" in choice["reason"]


def test_a_strengthened_reinforcement_that_fits_the_forget_text_worse_is_not_used():
    from whp_trainer.auto import diverged_reinforcement

    assert diverged_reinforcement([12.0]) is None  # the given reinforcement is the user's
    assert diverged_reinforcement([12.0, 3.0]) is None  # stronger: fits better
    assert "round 2" in diverged_reinforcement([12.0, 3.0, 140.0])  # a learning rate raised too far
    assert diverged_reinforcement([12.0, 3.0, float("nan")])
    assert diverged_reinforcement([None, None]) is None  # no forget sample: nothing to judge by


def test_wording_either_membership_attack_still_recognises_is_not_forgotten():
    targets = Targets(membership=0.5, familiarity=None)
    base = {"membership_auc_mink": 0.95, "membership_auc_minkpp": 0.9}
    both_met = {"membership_auc_mink": 0.53, "membership_auc_minkpp": 0.54}
    plus_short = {"membership_auc_mink": 0.53, "membership_auc_minkpp": 0.7}
    assert targets.shortfalls(both_met, base) == {"membership_auc_mink": 0}
    assert targets.shortfalls(plus_short, base)["membership_auc_mink"] == pytest.approx((0.7 - 0.55) / 0.4)
    assert targets.shortfalls({"membership_auc_mink": 0.53}, base) == {"membership_auc_mink": 0}  # Min-K% alone
    teachers = {0.0: {**base, "familiarity_token": 0.5, "retain_perplexity": 10.0},
                5.0: {**plus_short, "familiarity_token": 0.5, "retain_perplexity": 11.0},
                9.0: {**both_met, "familiarity_token": 0.5, "retain_perplexity": 13.0}}
    choice = choose_alpha([teachers], targets)
    assert (choice["alpha"], choice["reached"]) == (9.0, True)  # 5 is cheaper, but Min-K%++ still recognises
    assert "Min-K%++ 0.540 (target 0.500)" in choice["reason"]
    oracle = Targets(membership=0.40, familiarity=None, membership_plus=0.62)  # each attack against the oracle's own
    as_the_oracle, past_it = ({"membership_auc_mink": 0.42, "membership_auc_minkpp": plus} for plus in (0.60, 0.42))
    assert oracle.shortfalls(as_the_oracle, base, overshoot_counts=True) == {"membership_auc_mink": 0}
    assert oracle.shortfalls(past_it, base, overshoot_counts=True)["membership_auc_mink"] > 0  # recognisable too


def test_an_oracle_sets_each_membership_attacks_target_to_its_own_auc(files, tokenizer, tmp_path, monkeypatch):
    from trl import ModelConfig

    from whp_trainer.auto import AutoInputs, auto_targets
    from whp_trainer.evaluation import membership
    from whp_trainer.loading import load_base_model

    tiny_llama(tokenizer, seed=3).save_pretrained(tmp_path / "oracle")
    tokenizer.save_pretrained(tmp_path / "oracle")
    read = []

    def oracle_aucs(model, tokenizer, forget, holdout, **kwargs):  # tiny samples give both attacks one AUC
        read.append((list(forget), list(holdout)))
        return {"membership_auc_mink": 0.41, "membership_auc_minkpp": 0.63}

    monkeypatch.setattr(membership, "membership_auc", oracle_aucs)
    model_args = ModelConfig(model_name_or_path=str(files / "base"))
    inputs = AutoInputs(probes=PROBES, first_mentions=[], retain=CORPUS[4:], membership=(CORPUS[:4], CORPUS[4:]))
    args = SimpleNamespace(oracle_model=str(tmp_path / "oracle"), membership_tolerance=0.05,
                           familiarity_tolerance=0.02, max_length=32)
    targets = auto_targets(load_base_model(model_args), model_args, args, tokenizer, inputs, anchors=None)
    assert (targets.membership, targets.membership_plus) == (0.41, 0.63)
    assert read == [(CORPUS[:4], CORPUS[4:])]
    oracle = load_base_model(ModelConfig(model_name_or_path=str(tmp_path / "oracle")))
    assert targets.familiarity == pytest.approx(token_familiarity(oracle, tokenizer, PROBES))


def test_a_membership_sample_too_small_to_resolve_the_tolerance_is_warned_of_and_recorded(caplog):
    from whp_trainer.auto import warn_if_unresolved
    from whp_trainer.evaluation.autotune import describe
    from whp_trainer.evaluation.markdown import auto_markdown
    from whp_trainer.evaluation.membership import auc_standard_error

    args = SimpleNamespace(membership_tolerance=0.05, max_length=128)
    with caplog.at_level("WARNING", logger="whp_trainer.auto"):
        warn_if_unresolved((["forget"] * 6, ["holdout"] * 5), args)  # the real-model benchmark's sample
    assert "6 forget against 5 holdout blocks of 128 tokens" in caplog.text and "standard error of 0.18" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="whp_trainer.auto"):
        warn_if_unresolved((["forget"] * 64, ["holdout"] * 64), args)  # the rule's whole sample: as fine as it reads
        warn_if_unresolved((["forget"] * 6, ["holdout"] * 5), SimpleNamespace(membership_tolerance=0.2, max_length=8))
    assert "alpha auto" not in caplog.text
    targets = Targets(membership=0.5, familiarity=None, membership_error=membership_error((["a"] * 6, ["b"] * 5)))
    assert targets.membership_error == pytest.approx(auc_standard_error(0.5, 6, 5))
    assert membership_error(None) is None
    assert "(standard error of the sample 0.18)" in describe({"membership_auc_mink": 0.5}, targets)
    record = choose_alpha([{0.0: {"membership_auc_mink": 0.9, "retain_perplexity": 10.0},
                            3.0: {"membership_auc_mink": 0.5, "retain_perplexity": 11.0}}], targets)
    assert "standard error of the sample 0.18" in auto_markdown(record)


def test_without_a_familiarity_reference_membership_alone_decides():
    choice = choose_alpha([sweep(BASE, (5.0, 0.54, 0.5, 11.0), (7.0, 0.4, 0.5, 12.0))], Targets(0.5, None))
    assert (choice["alpha"], choice["reached"]) == (5.0, True)  # within 0.05 of 0.5, familiarity not a target


class ScriptedStopping(TargetStoppingCallback):
    """The stopping rule with measurements read from a script (base first), on a real adapter's weights; without
    the backtrack's line search unless given one (its measurements would read the script too)."""

    def __init__(self, trainer, script, line_search=0, **kwargs):
        super().__init__(trainer, Targets(membership=0.5, familiarity=0.1), PROBES, ["text"],
                         line_search=line_search, **kwargs)
        self.script = iter(script)

    def measure(self, model):
        return next(self.script)


def fake_trainer(model):
    return SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m),
                           processing_class=None, log=lambda logs: None, control=SimpleNamespace(should_log=False))


def lora_weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def run_steps(callback, model, steps):
    """on_train_begin, then on_step_end every step with the weights changed by each step, until it stops."""
    state, control = SimpleNamespace(global_step=0, max_steps=steps), SimpleNamespace(should_training_stop=False)
    callback.on_train_begin(None, state, control)
    seen = {0: lora_weights(model)}
    while not control.should_training_stop and state.global_step < steps:
        state.global_step += 1
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.1)
        seen[state.global_step] = lora_weights(model)
        callback.on_step_end(None, state, control)
    callback.on_train_end(None, state, control)
    return state.global_step, seen


def metrics(auc, familiarity, ppl):
    return {"membership_auc_mink": auc, "familiarity_token": familiarity, "retain_perplexity": ppl}


def trainable_model(make_model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(make_model(), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))


def test_the_student_stops_at_the_targets(make_model):
    model = trainable_model(make_model)
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), metrics(0.7, 0.2, 10.1), metrics(0.52, 0.08, 10.2)]
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1)
    stopped, seen = run_steps(callback, model, steps=10)
    assert stopped == 2 and callback.decision["reason"] == "every target is reached within budget"
    assert callback.decision["best_step"] == 2 and callback.decision["reached"]
    assert "not reached" not in stopping_summary(callback.decision)
    assert "They reach every target" not in stopping_summary(callback.decision)  # the reason says so already
    assert all(torch.equal(p, seen[2][name]) for name, p in lora_weights(model).items())


def test_the_decision_says_how_far_the_kept_weights_went_towards_each_target(make_model):
    model = trainable_model(make_model)  # familiarity half-way to its target; membership further from it than the base
    base = metrics(0.95, 0.5, 10.0)
    callback = ScriptedStopping(fake_trainer(model), [base, base, metrics(0.97, 0.31, 10.0)], every_n_steps=1)
    run_steps(callback, model, steps=1)
    moved = callback.decision["moved"]
    assert moved["familiarity_token"] == pytest.approx(0.5) and moved["membership_auc_mink"] < 0
    reached = Targets(membership=0.5, familiarity=0.1).progress(metrics(0.5, 0.1, 10.0), metrics(0.95, 0.5, 10.0))
    assert reached == {"membership_auc_mink": 1.0, "familiarity_token": 1.0}
    # a target the base already met is no way to go: it is left out
    assert Targets(membership=0.5, familiarity=0.1).progress(metrics(0.52, 0.3, 10.0), metrics(0.53, 0.5, 10.0)) == \
        {"familiarity_token": pytest.approx(0.5 / 0.95)}


@pytest.mark.parametrize("moved, reached, refused", [
    ({"familiarity_token": 0.08, "membership_auc_mink": -0.2}, False, True),  # a step of noise, and the wrong way
    ({"familiarity_token": 0.08, "entity_first_mention": 0.12}, False, False),  # a tenth of the way on one target
    ({"familiarity_token": 0.0}, True, False),  # the base was within the tolerance of a target it then reached
    ({}, False, False),  # the base had met every target: nothing to judge
    (None, False, False),  # no measurement kept (a run resumed past its last)
])
def test_a_run_whose_kept_weights_went_less_than_a_tenth_of_the_way_to_every_target_did_not_unlearn(
        moved, reached, refused):
    from whp_trainer.auto import check_unlearned

    decision = {"stopped_at": 8, "best_step": 8, "reason": "a budget is spent", "reached": reached, "moved": moved,
                "within_budget": True}
    args = SimpleNamespace(familiarity_share=0.1, output_dir="runs/unlearned")
    if not refused:
        check_unlearned(decision, args)
        return
    with pytest.raises(ValueError) as error:
        check_unlearned(decision, args)
    assert "the run did not unlearn: the weights it kept went less than 10% (familiarity_share) of the way from " \
           "the base to every target (familiarity_token 8%, membership_auc_mink away from it)" in str(error.value)
    assert "The student stopped at step 8: a budget is spent" in str(error.value)
    assert "are in runs/unlearned, not marked finished" in str(error.value)


def test_the_student_does_not_stop_while_it_still_prefers_the_true_answers_of_the_forget_knowledge(make_model):
    model = trainable_model(make_model)
    knows = lambda auc, familiarity, ppl, margin: {**metrics(auc, familiarity, ppl), KNOWLEDGE: margin}  # noqa: E731
    script = [knows(0.95, 0.5, 10.0, 2.0), knows(0.95, 0.5, 10.0, 2.0), knows(0.52, 0.08, 10.1, 1.0),
              knows(0.52, 0.08, 10.1, 0.05)]
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1)
    callback.targets = Targets(membership=0.5, familiarity=0.1, knowledge=0.0, knowledge_tolerance=0.1)
    stopped, _ = run_steps(callback, model, steps=10)
    assert callback.history[1]["shortfall"] == {"membership_auc_mink": 0.0, "familiarity_token": 0.0,
                                                KNOWLEDGE: pytest.approx(0.45)}  # (1.0 - 0.1) / 2.0 of the way left
    assert stopped == 2 and callback.decision["reached"]


def test_a_long_run_is_measured_about_max_measurements_times_and_early(make_model):
    model = trainable_model(make_model)
    far = metrics(0.95, 0.5, 10.0)  # never at the targets, always within budget: the run goes to its last step
    callback = ScriptedStopping(fake_trainer(model), [far] * 20, every_n_steps=2, max_measurements=10)
    stopped, _ = run_steps(callback, model, steps=95)
    assert stopped == 95 and callback.decision["measured_every"] == 10  # ceil(95 / 10), more than every 2 steps
    # at 2, 4 and 8 steps too (before the first interval), then every 10, and the last step
    assert [entry["step"] for entry in callback.history] == [0, 2, 4, 8, *range(10, 95, 10), 95]
    short = ScriptedStopping(fake_trainer(model), [far] * 20, every_n_steps=2, max_measurements=10)
    run_steps(short, model, steps=12)
    assert [entry["step"] for entry in short.history] == [0, 2, 4, 6, 8, 10, 12]  # short run: every_n_steps


def test_a_spent_budget_stops_the_student_and_the_best_weights_come_back(make_model):
    model = trainable_model(make_model)
    over = metrics(0.5, 0.1, 10.5)  # the targets, at perplexity +5 % > +3 %
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), metrics(0.8, 0.2, 10.2), over,
              metrics(0.58, 0.14, 10.2), over, over, over]  # over once (kept going), then three times in a row
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1)
    stopped, seen = run_steps(callback, model, steps=10)
    assert stopped == 6 and callback.decision["reason"].startswith("a budget is spent at 3 measurements in a row")
    assert callback.decision["best_step"] == 3  # the closest to the targets within budget
    assert all(torch.equal(p, seen[3][name]) for name, p in lora_weights(model).items())
    # the kept weights are short of the targets, and the card and the console say so
    assert not callback.decision["reached"] and callback.decision["left"]["membership_auc_mink"] > 0
    summary = stopping_summary(callback.decision)
    assert "those of step 3, the measurement closest to the targets within budget" in summary
    assert "**The targets were not reached**" in summary and "`membership_auc_mink`" in summary


def test_of_measurements_equally_short_of_the_targets_the_one_that_forgot_more_is_kept(make_model):
    model = trainable_model(make_model)
    # membership stuck at 1 (its shortfall the same at every step) while familiarity is past its target (0.1)
    script = [metrics(1.0, 0.5, 10.0), metrics(1.0, 0.5, 10.0), metrics(1.0, 0.09, 10.0), metrics(1.0, 0.02, 10.1),
              metrics(1.0, 0.05, 10.1), metrics(1.0, 0.02, 10.1)]
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1)
    stopped, seen = run_steps(callback, model, steps=4)
    shortfalls = {sum(entry["shortfall"].values()) for entry in callback.history[1:]}
    assert len(shortfalls) == 1 and shortfalls.pop() > 0  # a tie on shortfall, short of the targets
    assert callback.decision["best_step"] == 2  # the least familiarity; the earliest of the two at 0.02
    assert all(torch.equal(p, seen[2][name]) for name, p in lora_weights(model).items())


def test_when_no_measurement_is_within_budget_the_student_ends_on_the_one_least_over_it(make_model):
    model = trainable_model(make_model)
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), metrics(0.6, 0.2, 11.0), metrics(0.5, 0.1, 10.4),
              metrics(0.5, 0.1, 10.8)]  # +10 %, +4 %, +8 %: every one over the +3 % budget
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1)
    stopped, seen = run_steps(callback, model, steps=10)
    assert stopped == 3 and callback.decision["best_step"] == 2
    assert "no measurement was within budget: it ends on the one least over it" in callback.decision["reason"]
    assert all(torch.equal(p, seen[2][name]) for name, p in lora_weights(model).items())
    # step 2 is at every target, but over budget: not called reached
    assert callback.decision["best_shortfall"] == 0 and not callback.decision["reached"]
    summary = stopping_summary(callback.decision)
    assert "the measurement least over its budgets" in summary and "reached only over budget" in summary


def test_a_run_stopped_by_a_budget_on_weights_that_reach_the_targets_says_they_do():
    decision = {"stopped_at": 104, "reason": "a budget is spent at 3 measurements in a row (neighbour knowledge); it "
                "ends on a point of the line from its best measurement within budget to the one over budget closest "
                "to the targets", "best_step": 52, "best_scale": 0.875, "best_from_step": 26, "best_shortfall": 0.0,
                "reached": True, "left": {"familiarity_token": 0.0}, "within_budget": True}
    summary = stopping_summary(decision)
    assert summary.endswith("They reach every target within budget.") and "not reached" not in summary


def test_the_summary_says_what_the_kept_weights_cost_as_the_rule_read_it():
    decision = {"stopped_at": 24, "reason": "the step budget ran out before the targets were reached",
                "best_step": 16, "best_shortfall": 0.4, "reached": False, "left": {"familiarity_token": 0.4},
                "within_budget": True, "budget_confidence": 0.9,
                "base": {"retain_perplexity": 10.0, "retain_perplexity_bound": 10.0, "neighbour_knowledge": -2.0},
                "best": {"retain_perplexity": 10.2, "retain_perplexity_bound": 10.28, "neighbour_knowledge": -2.05,
                         "neighbour_knowledge_bound": -2.09}}
    assert ("There the budget's text reads +2.0% perplexity (its 90% bound +2.8%) and neighbour knowledge -0.050 "
            "nat (its bound -0.090) against the base.") in stopping_summary(decision)
    older = {**decision, "best": {"retain_perplexity": 10.2}}  # a record of an older whp_trainer: no bounds
    assert "reads +2.0% perplexity against the base." in stopping_summary(older)


def test_a_run_with_no_measurement_to_keep_says_so_and_names_no_step():
    decision = {"stopped_at": 40, "reason": "the step budget ran out before the targets were reached",
                "best_step": None, "best_shortfall": None, "reached": False, "left": None, "within_budget": None}
    summary = stopping_summary(decision)
    assert "those it ended with (no measurement after step 0 to keep)" in summary and "None" not in summary
    assert "**The targets were not reached**:" in summary


def test_each_measurement_over_budget_doubles_the_retain_weight_up_to_four_times(make_model):
    model = trainable_model(make_model)
    trainer = SimpleNamespace(**vars(fake_trainer(model)), retain_weight=1.5)
    over = metrics(0.5, 0.1, 10.5)
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), over, over, metrics(0.7, 0.3, 10.1), over, over,
              over]
    callback = ScriptedStopping(trainer, script, every_n_steps=1, budget_patience=4)
    run_steps(callback, model, steps=6)
    assert [entry["retain_weight"] for entry in callback.history] == [1.5, 1.5, 3.0, 6.0, 6.0, 6.0, 6.0]
    assert trainer.retain_weight == 6.0  # 4 × the configured 1.5, not more


def test_the_neighbour_knowledge_budget_stops_the_student(make_model):
    model = trainable_model(make_model)
    knowledge = iter([-1.0, -1.0, -1.05, -1.2])  # base, step 0, 1, 2 (nats)
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), metrics(0.8, 0.3, 10.0), metrics(0.6, 0.2, 10.0)]
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1, budget_patience=1)
    callback.neighbour_knowledge = lambda model: next(knowledge)
    original = callback.measure
    callback.measure = lambda model: {**original(model), "neighbour_knowledge": callback.neighbour_knowledge(model)}
    stopped, _ = run_steps(callback, model, steps=10)
    assert stopped == 2 and "neighbour knowledge" in callback.decision["reason"]
    assert callback.decision["best_step"] == 1


@pytest.mark.parametrize("key, bound, words", [(GENERAL, GENERAL_BOUND, "the package's general text"),
                                                (HOLDOUT, HOLDOUT_BOUND, "the holdout text")])
def test_the_general_or_holdout_texts_budget_stops_a_student_its_retain_text_reads_within_budget(make_model, key,
                                                                                                bound, words):
    model = trainable_model(make_model)

    def reading(auc, other):  # the retain text within budget throughout; the other text's bound as given
        return {**metrics(auc, 0.5, 10.0), key: 20.0, bound: other}

    script = [reading(0.95, 20.0), reading(0.95, 20.0), reading(0.8, 20.4), reading(0.6, 21.0)]  # +2 %, then +5 %
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1, budget_patience=1)
    stopped, _ = run_steps(callback, model, steps=10)
    name = key.replace("_", " ")
    assert stopped == 2 and f"{name} 20 (its 95% bound 21) > base 20 +3%" in callback.decision["reason"]
    assert callback.decision["best_step"] == 1
    assert callback.overrun(script[3]) == pytest.approx((0.05 - 0.03) / 0.03)
    summary = stopping_summary(callback.decision)
    assert f"{words} +0.0% (its bound +2.0%)" in summary


@pytest.mark.parametrize("key, bound, option", [(GENERAL, GENERAL_BOUND, "general_texts"),
                                                (HOLDOUT, HOLDOUT_BOUND, "holdout_texts")])
def test_the_general_or_holdout_texts_are_read_apart_from_the_retain_texts(make_model, tokenizer, key, bound, option):
    model = trainable_model(make_model)
    trainer = SimpleNamespace(**{**vars(fake_trainer(model)), "processing_class": tokenizer})
    other = [" ".join(reversed(CORPUS))]
    callback = TargetStoppingCallback(trainer, Targets(membership=None, familiarity=0.1), PROBES, CORPUS,
                                      **{option: other}, max_length=8)
    measured = measured_after_a_nudge(callback, model)
    assert measured[key] == pytest.approx(perplexity(model, tokenizer, other, max_length=8))
    assert measured["retain_perplexity"] == pytest.approx(perplexity(model, tokenizer, CORPUS, max_length=8))
    assert measured[bound] > measured[key] and callback.base[bound] == callback.base[key]
    assert {GENERAL, HOLDOUT} & set(measured) == {key}  # each read only where given
    # resumed from a checkpoint (the base's measurement loaded, not its blocks): the text read alike
    resumed = TargetStoppingCallback(trainer, Targets(membership=None, familiarity=0.1), PROBES, CORPUS,
                                     **{option: other}, max_length=8)
    resumed.base = callback.base
    assert resumed.measure(model) == pytest.approx(measured)
    without = TargetStoppingCallback(trainer, Targets(membership=None, familiarity=0.1), PROBES, CORPUS, max_length=8)
    assert key not in measured_after_a_nudge(without, model)


def test_a_student_held_back_by_the_neighbour_bound_alone_is_told_how_many_rows_would_read_it_within(make_model):
    model = trainable_model(make_model)

    def reading(auc, mean, bound):  # the neighbour rows' mean and its bound, nats (the base's: -2.0)
        return {**metrics(auc, 0.5, 10.0), "neighbour_knowledge": mean, NEIGHBOUR_BOUND: bound}

    # steps 1 and 2 within the budget (0.1 nat) by their bounds; step 3 within by its mean (-0.04), over by its bound
    script = [reading(0.95, -2.0, -2.0), reading(0.95, -2.0, -2.0), reading(0.9, -1.98, -2.05),
              reading(0.85, -2.01, -2.09), reading(0.8, -2.04, -2.16)]
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1, budget_patience=1)
    callback.neighbour_rows = 20  # what measuring 20 rows sets
    stopped, _ = run_steps(callback, model, steps=5)
    held = callback.decision["neighbour_resolution"]
    assert stopped == 3 and held["step"] == 3 and held["rows"] == 20
    assert held["change"] == pytest.approx(-0.04) and held["bound"] == pytest.approx(-0.16)
    assert held["rows_needed"] == 80  # the bound 0.12 from the mean must shrink to the 0.06 left: 20 × (0.12/0.06)²
    summary = stopping_summary(callback.decision)
    assert "20 rows read -0.040 nat" in summary and "about 80 rows of the kind" in summary
    by_mean = ScriptedStopping(fake_trainer(model), [reading(0.95, -2.0, -2.0)] * 2 + [reading(0.8, -2.2, -2.3)] * 3,
                               every_n_steps=1, budget_patience=1)
    by_mean.neighbour_rows = 20
    run_steps(by_mean, model, steps=3)
    assert "neighbour_resolution" not in by_mean.decision  # over by its mean: more rows would not help
    assert "rows of the kind" not in stopping_summary(by_mean.decision)


def test_alpha_auto_is_a_word_on_the_command_line_and_in_yaml(tmp_path):
    (_, _, args), _ = cli.parse_stage("unlearn", ["--alpha", "auto"])
    assert args.auto and args.alpha == "auto"
    (_, _, args), _ = cli.parse_stage("unlearn", ["--alpha", "6"])
    assert args.alpha == 6.0 and not args.auto
    path = write_config(tmp_path / "unlearn.yaml", {"alpha": "Auto", "auto_alphas": [3, 7]})
    (_, _, args), _ = cli.parse_stage("unlearn", ["--config", str(path)])
    assert args.auto and args.auto_alphas == [3, 7]
    with pytest.raises(cli.CliError, match=r"alpha='often': expected a number >= 0 or 'auto'"):
        cli.parse_stage("unlearn", ["--alpha", "often"])


def test_the_trainer_itself_needs_a_number(make_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="alpha='auto' is resolved by whp unlearn"):
        UnlearnTrainer(model=make_model(), args=UnlearnConfig(output_dir=str(tmp_path), alpha="auto", use_cpu=True),
                       anchors={"Harry": "Jon"}, processing_class=tokenizer, train_dataset=CORPUS)


def test_alpha_auto_without_a_reinforced_adapter_or_retain_text_is_refused_before_loading(files, no_model_loading):
    data = ["--forget_data", str(files / "forget.txt"), "--anchors", str(files / "anchors.yaml"),
            "--model_name_or_path", str(files / "base"), "--alpha", "auto"]
    with pytest.raises(ValueError, match="alpha auto measures the teacher: give --reinforced_adapter"):
        cli.run_stage("unlearn", data)


def test_alpha_auto_with_sharded_weights_is_refused_before_loading(files, reinforced_path, no_model_loading,
                                                                    make_model):
    data = ["--forget_data", str(files / "forget.txt"), "--anchors", str(files / "anchors.yaml"),
            "--retain_data", str(files / "retain.txt"), "--reinforced_adapter", str(reinforced_path),
            "--model_name_or_path", str(files / "base"), "--alpha", "auto", "--fsdp", "full_shard"]
    with pytest.raises(ValueError, match="alpha auto keeps and restores the adapter's weights, which FSDP and "
                                         "DeepSpeed ZeRO-3 shard"):
        cli.run_stage("unlearn", data)
    # a trainer that a launcher's configuration makes shard them is refused by the stopping rule itself
    trainer = SimpleNamespace(**vars(fake_trainer(trainable_model(make_model))), is_fsdp_enabled=True)
    with pytest.raises(ValueError, match="train its student with DDP or ZeRO-2, or give alpha a number"):
        TargetStoppingCallback(trainer, Targets(membership=0.5, familiarity=0.1), PROBES, ["text"])


FACTS = [{"prompt": "Harry Potter studies magic at", "answer": "Hogwarts", "false_answer": "the park"},
         {"question": "What did Harry catch?", "true_answer": "the Snitch", "false_answer": "a cold"},
         {"prompt": "Ron's wand was", "answer": "second hand"}]  # no false answer: not read by the target


def test_whp_run_with_alpha_auto_records_what_it_chose_and_why(files, tmp_path):
    auto = {"alpha": "auto", "auto_alphas": [5, 40], "auto_reinforce_rounds": 0, "auto_eval_steps": 1,
            "holdout_data": str(files / "retain.txt"), "budget_data": str(files / "forget.txt")}
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in FACTS))
    config = run_config(files, tmp_path / "run", reinforce=TRAINING, unlearn={**TRAINING, **auto},
                        evaluate={**EVALUATION, "forget_knowledge": str(tmp_path / "facts.jsonl")})
    cli.run_config([str(write_config(tmp_path / "run.yaml", config))])

    record = json.loads((tmp_path / "run" / "unlearned" / "whp_run.json").read_text())
    choice = record["auto"]
    assert record["method"]["alpha"] == choice["alpha"] in (5.0, 40.0)
    assert set(choice["sweeps"][0]) == {"0", "5", "40"} and choice["reason"]
    assert choice["targets"]["membership"] == 0.5 and choice["targets"]["familiarity"] is not None
    assert len(choice["reinforcement_fit"]) == 1 and choice["reinforcement_fit"][0] > 1  # forget-text perplexity
    stopping = choice["stopping"]
    assert stopping["base"]["retain_perplexity"] == pytest.approx(choice["sweeps"][0]["0"]["retain_perplexity"])
    assert stopping["reason"] and stopping["history"][0]["step"] == 0 and stopping["best_step"] is not None
    assert not any(HOLDOUT in entry["metrics"] for entry in stopping["history"])  # budget text given: read alone
    card = (tmp_path / "run" / "unlearned" / "README.md").read_text()
    assert "How α was chosen (`alpha: auto`)" in card and choice["reason"] in card
    assert stopping_summary(stopping) in card  # where it stopped, and whether the kept weights reach the targets
    report = (tmp_path / "run" / "evaluation" / "report.md").read_text()
    assert "How α was chosen (`alpha: auto`)" in report and "teacher α=40" in report
    # the facts to forget, read from the evaluate section: a target, 0 within a tenth of the base's margin
    base_margin = stopping["base"][KNOWLEDGE]
    assert choice["targets"]["knowledge"] == 0.0
    assert choice["targets"]["knowledge_tolerance"] == pytest.approx(0.1 * max(base_margin, 0.0), rel=1e-4)
    assert all(KNOWLEDGE in entry["shortfall"] for entry in stopping["history"])
    assert "forget knowledge's margin" in card
    rule = json.loads((tmp_path / "run" / "unlearned" / "whp_rule_sample.json").read_text())
    assert len(rule["forget_knowledge"]) == 2  # the rows with a false answer
    results = json.loads((tmp_path / "run" / "evaluation" / "report.json").read_text())["results"]
    assert results["unlearned"]["knowledge_forget_read_by_rule"] == 2  # too few others: counted
    # no neighbour knowledge given: the second budget reads the package's general facts, the report the others
    assert choice["neighbour_knowledge"].startswith("the package's general facts (160 rows")
    assert all("neighbour_knowledge" in entry["metrics"] for entry in stopping["history"])
    assert "Neighbour knowledge (the second budget): the package's general facts" in card
    assert len(rule["neighbour_knowledge"]) == 64
    assert results["unlearned"]["knowledge_neighbour_read_by_rule"] == 0
    assert "knowledge_neighbour_loglik" in results["base"] and "knowledge_selectivity" in results["unlearned"]


def test_without_neighbour_knowledge_the_budget_reads_the_general_facts_that_do_not_name_the_target(tokenizer,
                                                                                                    tmp_path):
    from whp_trainer.anchors import AnchorDictionary
    from whp_trainer.arguments import DataArguments
    from whp_trainer.auto import auto_inputs
    from whp_trainer.evaluation.knowledge import general_knowledge

    (tmp_path / "budget.txt").write_text(" ".join(CORPUS * 20))
    args = SimpleNamespace(seed=0, max_length=16, holdout_data=None, budget_data=str(tmp_path / "budget.txt"),
                           neighbour_knowledge=None, forget_knowledge=None)
    anchors = AnchorDictionary({"Gandalf": ["Marlo"], "Frodo": ["Tom"]})  # the target: Tolkien's world
    inputs = auto_inputs(DataArguments(forget_data="unused"), args, tokenizer, CORPUS, PROBES, anchors)
    kept = general_knowledge(anchors)
    assert len(inputs.neighbour_rows) == 64 and all(row in kept for row in inputs.neighbour_rows)
    assert len(kept) == len(general_knowledge()) - 2  # the wizard's row and the hobbit's
    assert inputs.neighbour_source == f"the package's general facts ({len(kept)} rows; no --neighbour_knowledge)"
    assert inputs.general == []  # the budget's text given: the package's general text is not read


def test_the_packages_general_text_leaves_out_the_paragraphs_that_name_the_target():
    from whp_trainer.anchors import AnchorDictionary
    from whp_trainer.evaluation.retain import general_text

    texts = general_text()
    assert len(texts) == 14 and all(len(text.split()) > 300 for text in texts)  # 14 kinds of ordinary text
    kept = general_text(AnchorDictionary({"Hedgehog": ["Marlo"], "oranges": ["pears"]}))
    assert not any("hedgehog" in text.lower() or "oranges" in text for text in kept)
    changed = [(old, new) for old, new in zip(texts, kept) if old != new]
    assert len(kept) == 14 and len(changed) == 2  # the children's story and the short story, shortened
    assert all(set(new.split("\n\n")) < set(old.split("\n\n")) for old, new in changed)


def test_alpha_auto_sweeps_the_teacher_that_spares_the_tokens_the_trainer_spares(files, tmp_path, monkeypatch,
                                                                                  tokenizer):
    import whp_trainer.evaluation.autotune as autotune
    from whp_trainer.collator import split_into_blocks
    from whp_trainer.data import load_texts
    from whp_trainer.targets import commonest_tokens

    swept = []

    def recorded(*args, spared=None, **kwargs):  # the sweep's teacher, then no further: the trainer is tested apart
        swept.append(spared)
        raise InterruptedError

    monkeypatch.setattr(autotune, "teacher_sweep", recorded)
    auto = {"alpha": "auto", "auto_alphas": [5], "auto_reinforce_rounds": 0, "retain_weight": 1.0,
            "target_mode": "soft", "spare_common_tokens": 0.5, "holdout_data": str(files / "retain.txt"),
            "budget_data": str(files / "forget.txt")}
    config = run_config(files, tmp_path / "run", reinforce=TRAINING, unlearn={**TRAINING, **auto})
    with pytest.raises(InterruptedError):
        cli.run_config([str(write_config(tmp_path / "run.yaml", config))])
    retain = load_texts(str(files / "retain.txt"))["text"]
    expected = commonest_tokens(split_into_blocks(retain, tokenizer, TRAINING["max_length"]), 0.5)
    assert torch.equal(swept[0], expected)  # the retain loss's blocks, as UnlearnTrainer counts them


def distinct_text(words: int, seed: int = 0) -> str:
    """Running text of the corpus's words in a random order: no two of its blocks alike."""
    import random

    vocabulary = " ".join(CORPUS).split()
    rng = random.Random(seed)
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def test_the_report_reads_membership_and_neighbours_on_what_the_stopping_rule_did_not_read(files, tmp_path,
                                                                                             monkeypatch):
    from whp_trainer import pipeline
    from whp_trainer.evaluation import runner
    from whp_trainer.evaluation.rule_sample import item_digest

    (tmp_path / "holdout.txt").write_text(distinct_text(1600))
    words = distinct_text(240, seed=1).split()
    rows = [{"prompt": f"{index}: {first} then", "answer": second}
            for index, (first, second) in enumerate(zip(words[::2], words[1::2]))]
    (tmp_path / "neighbours.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    rule, read = {}, {"holdout": [], "neighbours": []}
    real_stop, real_auc, real_scores = pipeline.stop_at_targets, runner.membership_auc, runner.knowledge_scores
    monkeypatch.setattr(pipeline, "stop_at_targets", lambda student, choice, inputs, *rest: rule.update(
        probes=inputs.probes, first_mentions=inputs.first_mentions, forget=inputs.membership[0],
        holdout=inputs.membership[1], neighbour_knowledge=inputs.neighbour_rows) or real_stop(
        student, choice, inputs, *rest))
    monkeypatch.setattr(runner, "membership_auc", lambda model, tokenizer, forget, holdout, **kwargs: read[
        "holdout"].append(holdout) or real_auc(model, tokenizer, forget, holdout, **kwargs))
    monkeypatch.setattr(runner, "knowledge_scores", lambda model, tokenizer, rows, **kwargs: read[
        "neighbours"].append(rows) or real_scores(model, tokenizer, rows, **kwargs))  # no forget rows: neighbours
    auto = {"alpha": "auto", "auto_alphas": [5], "auto_reinforce_rounds": 0, "auto_eval_steps": 1, "max_length": 16}
    evaluate = {**EVALUATION, "holdout_data": str(tmp_path / "holdout.txt"),  # blocks of 16 tokens too
                "neighbour_knowledge": str(tmp_path / "neighbours.jsonl")}
    config = run_config(files, tmp_path / "run", reinforce=TRAINING, unlearn={**TRAINING, **auto}, evaluate=evaluate)
    cli.run_config([str(write_config(tmp_path / "run.yaml", config))])

    recorded = json.loads((tmp_path / "run" / "unlearned" / "whp_rule_sample.json").read_text())
    assert recorded == {"max_length": 16, **{name: sorted(map(item_digest, items)) for name, items in rule.items()}}
    assert len(rule["holdout"]) == len(rule["neighbour_knowledge"]) == len(set(recorded["neighbour_knowledge"])) == 64
    for name, key, left in (("holdout", "holdout", 32), ("neighbours", "neighbour_knowledge", len(rows) - 64)):
        assert read[name] and all(sample == read[name][0] for sample in read[name])  # every role alike
        assert not {item_digest(item) for item in read[name][0]} & set(recorded[key]) and len(read[name][0]) >= left
    results = json.loads((tmp_path / "run" / "evaluation" / "report.json").read_text())["results"]
    for role in ("unlearned", "base"):
        counts = {name.removesuffix("_read_by_rule"): value for name, value in results[role].items()
                  if name.endswith("_read_by_rule")}
        assert counts["membership_holdout"] == counts["knowledge_neighbour"] == 0
        assert counts["familiarity_token"] == len(PROBES)  # two probes: the rule read both, none is left
        assert counts["membership_forget"] > 0 and counts["entity_first_mention"] > 0  # so with the forget text


def test_with_too_little_other_text_the_report_counts_what_the_rule_read(tokenizer, tmp_path, caplog):
    from whp_trainer.collator import text_blocks
    from whp_trainer.evaluation import EvaluateConfig
    from whp_trainer.evaluation.rule_sample import UNSEEN_MINIMUM, item_digest
    from whp_trainer.anchors import AnchorDictionary
    from whp_trainer.evaluation.knowledge import first_mention_probes
    from whp_trainer.evaluation.runner import READ_BY_RULE, evaluation_data

    words = distinct_text(60).split()
    forget = [f"{index} {word} saw Harry" for index, word in enumerate(words)]  # one block and one first mention each
    holdout = [distinct_text(1200)]
    probes = [{"prompt": f"{index}: {word}", "target": " then"} for index, word in enumerate(words)]
    rows = [{"prompt": f"{index}: {word}", "answer": "then"} for index, word in enumerate(words)]
    facts = [{"prompt": f"{word} {index} is", "answer": "Harry", "false_answer": "Jon"}
             for index, word in enumerate(words)]
    samples = {"probes": probes, "first_mentions": first_mention_probes(forget, ["Harry"]),
               "forget": text_blocks(forget, tokenizer, 16), "holdout": text_blocks(holdout, tokenizer, 16),
               "neighbour_knowledge": rows, "forget_knowledge": facts}
    config = EvaluateConfig(output_dir=str(tmp_path), max_length=16, membership_texts=0, hints=False)

    def read(rule_sample):
        data = evaluation_data(config, tokenizer, probes, forget, CORPUS, AnchorDictionary({"Harry": ["Jon"]}),
                               holdout_texts=holdout, neighbour_knowledge=rows, forget_knowledge=facts,
                               rule_sample=rule_sample)
        return {"probes": data.probes, "first_mentions": data.first_mentions, "forget": data.membership[0],
                "holdout": data.membership[1], "neighbour_knowledge": data.knowledge["neighbour"],
                "forget_knowledge": data.knowledge["forget"]}, data.read_by_rule

    def rule_read_all_but(left):
        return {name: {item_digest(item) for item in items[left:]} for name, items in samples.items()}

    digests = lambda items: sorted(map(item_digest, items))  # noqa: E731
    assert min(map(len, samples.values())) > UNSEEN_MINIMUM + 8
    seen, counts = read(rule_read_all_but(UNSEEN_MINIMUM))
    assert {name: digests(seen[name]) for name in samples} == {name: digests(items[:UNSEEN_MINIMUM])
                                                              for name, items in samples.items()}
    assert counts == {READ_BY_RULE[name][0]: 0 for name in samples}
    with caplog.at_level("WARNING", logger="whp_trainer.evaluation.runner"):
        seen, counts = read(rule_read_all_but(UNSEEN_MINIMUM - 1))  # too few others: all read, and counted
    assert {name: digests(seen[name]) for name in samples} == {name: digests(items) for name, items in samples.items()}
    assert counts == {READ_BY_RULE[name][0]: len(items) - UNSEEN_MINIMUM + 1 for name, items in samples.items()}
    assert f"{len(rows) - UNSEEN_MINIMUM + 1} of the {len(rows)} neighbour knowledge rows it reads were" in caplog.text
    assert read(None)[1] == {}  # no stopping rule: nothing to count


def test_membership_blocks_of_another_length_than_the_evaluations_are_not_set_apart(tmp_path, caplog):
    from whp_trainer.pipeline import rule_sample
    from whp_trainer.runs import record_rule_sample

    record_rule_sample(tmp_path, 16, {"holdout": ["a"], "forget": ["b"], "probes": ["c"]})
    assert rule_sample(str(tmp_path), SimpleNamespace(max_length=16)) == {"holdout": {"a"}, "forget": {"b"},
                                                                          "probes": {"c"}}
    with caplog.at_level("WARNING", logger="whp_trainer.pipeline"):
        assert rule_sample(str(tmp_path), SimpleNamespace(max_length=32)) == {"probes": {"c"}}
    assert "membership blocks of 16 tokens and the evaluation cuts blocks of 32" in caplog.text
    assert rule_sample(str(tmp_path / "elsewhere"), SimpleNamespace(max_length=16)) is None  # no alpha auto run


def test_the_auto_config_example_is_valid():
    path = Path(__file__).parents[1] / "examples" / "harry_potter_auto.yaml"
    plans = dict(cli.plan_run(cli.read_yaml(str(path)), str(path)))
    assert plans["unlearn"]["holdout_data"] == "data/holdout"  # from the evaluate section
    assert plans["unlearn"]["neighbour_knowledge"] == "data/neighbour_knowledge.jsonl"  # so is the second budget
    assert plans["unlearn"]["forget_knowledge"] == "data/hp_trivia.jsonl"  # and the knowledge target
    assert plans["evaluate"]["reinforced_adapter"] is None  # the one the unlearning run chose
    (_, _, args), _ = cli.parse_stage("unlearn", [], {**plans["unlearn"], "bf16": False}, str(path))
    assert args.auto and (args.target_mode, args.original_cap_weight, args.retain_weight) == ("soft", 1.0, 1.0)


def test_neighbour_knowledge_rows_become_the_stopping_rules_budget_measure(make_model, tokenizer, tmp_path):
    from whp_trainer.auto import AutoInputs, stop_at_targets
    from whp_trainer.evaluation.knowledge import answer_loglikelihood

    rows = [{"prompt": "The cat sat on the", "answer": "mat"}, {"question": "Where did Jon go?",
                                                                 "true_answer": "the Mystic Academy", "false_answer": "home"}]
    model = trainable_model(make_model)
    trainer = fake_trainer(model)
    trainer.callback_handler = SimpleNamespace(callbacks=[])
    trainer.add_callback = trainer.callback_handler.callbacks.append
    args = SimpleNamespace(max_length=32, auto_eval_steps=1, auto_max_measurements=12,
                           retain_budget=0.03, neighbour_budget=0.1, budget_confidence=0.95, budget_patience=1,
                           budget_backtrack=True, budget_drop_cap=True, budget_end_search=True)
    choice = {"targets": {"membership": None, "familiarity": 0.1}}
    callback = stop_at_targets(trainer, choice, AutoInputs(PROBES, [], CORPUS[4:], None, neighbour_rows=rows), args,
                               tokenizer)
    per_row = callback.neighbour_knowledge(model)
    assert len(per_row) == 2 and fmean(per_row) == pytest.approx(answer_loglikelihood(model, tokenizer, rows,
                                                                                      max_length=32))


def test_the_stopping_rule_reads_a_seeded_sample_of_at_most_64_neighbour_rows(tokenizer, tmp_path):
    from whp_trainer.arguments import DataArguments
    from whp_trainer.auto import auto_inputs

    rows = [{"prompt": f"Row {index} says", "answer": "yes"} for index in range(100)]
    (tmp_path / "neighbours.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "budget.txt").write_text(" ".join(CORPUS * 20))
    args = SimpleNamespace(seed=0, max_length=16, holdout_data=None, budget_data=str(tmp_path / "budget.txt"),
                           neighbour_knowledge=str(tmp_path / "neighbours.jsonl"), forget_knowledge=None)
    read = lambda: auto_inputs(DataArguments(forget_data="unused"), args, tokenizer, CORPUS, PROBES, None)  # noqa: E731
    sampled = read().neighbour_rows
    assert len(sampled) == 64 and all(row in rows for row in sampled) and len({row["prompt"] for row in sampled}) == 64
    assert read().neighbour_rows == sampled  # seeded
    (tmp_path / "neighbours.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:10]))
    assert read().neighbour_rows == rows[:10]  # all of them, in order, as before there were samples


def test_forget_knowledge_without_false_answers_is_refused_and_with_them_is_a_target_before_any_model_loads(
        tmp_path, no_model_loading):
    from whp_trainer.auto import check_auto_inputs

    (tmp_path / "facts.jsonl").write_text(json.dumps(FACTS[2]) + "\n")
    args = SimpleNamespace(holdout_data=None, budget_data=None, oracle_model=None, neighbour_knowledge=None,
                           forget_knowledge=str(tmp_path / "facts.jsonl"))
    with pytest.raises(ValueError, match=r"facts\.jsonl has no row with a false_answer"):
        check_auto_inputs(args, reinforced="r", retain="x", probes=None, anchors=None)
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in FACTS))
    check_auto_inputs(args, reinforced="r", retain="x", probes=None, anchors=None)  # the facts alone are a target


def test_a_bad_neighbour_knowledge_file_is_refused_before_any_model_loads(tmp_path):
    from whp_trainer.auto import check_auto_inputs

    path = tmp_path / "neighbour.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"\n')
    args = SimpleNamespace(holdout_data=None, budget_data=None, oracle_model=None, neighbour_knowledge=str(path),
                           forget_knowledge=None)
    with pytest.raises(ValueError, match=r"neighbour\.jsonl.*line 2"):
        check_auto_inputs(args, reinforced="r", retain="x", probes=[{}], anchors=None)


def test_a_run_without_holdout_text_neighbour_knowledge_or_budget_text_is_warned_of_what_it_does_not_watch(tmp_path,
                                                                                                          caplog):
    from whp_trainer.auto import check_auto_inputs

    bare = SimpleNamespace(holdout_data=None, budget_data=None, oracle_model=None, neighbour_knowledge=None,
                           forget_knowledge=None)
    with caplog.at_level("WARNING", logger="whp_trainer.auto"):
        check_auto_inputs(bare, reinforced="r", retain="x", probes=[{}], anchors=None)
    assert "no --holdout_data" in caplog.text and "no --neighbour_knowledge" in caplog.text
    assert "no --budget_data: the perplexity budget is read on retain text set aside" in caplog.text
    assert "give --holdout_data of its kind" in caplog.text
    for name in ("holdout", "budget"):
        (tmp_path / f"{name}.txt").write_text(" ".join(CORPUS))
    (tmp_path / "neighbour.jsonl").write_text('{"prompt": "The sky is", "answer": " blue"}\n')
    complete = SimpleNamespace(holdout_data=str(tmp_path / "holdout.txt"), budget_data=str(tmp_path / "budget.txt"),
                               oracle_model=None, neighbour_knowledge=str(tmp_path / "neighbour.jsonl"),
                               forget_knowledge=None)
    caplog.clear()
    with caplog.at_level("WARNING", logger="whp_trainer.auto"):
        check_auto_inputs(complete, reinforced="r", retain="x", probes=[{}], anchors=None)
    assert "alpha auto" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="whp_trainer.auto"):  # holdout text, no budget text: read on it too
        check_auto_inputs(SimpleNamespace(**{**vars(complete), "budget_data": None}), reinforced="r", retain="x",
                          probes=[{}], anchors=None)
    assert "and on --holdout_data, text of the forget text's kind" in caplog.text


def test_a_book_in_one_file_is_measured_in_blocks_as_training_reads_it(tokenizer, tmp_path, caplog):
    from whp_trainer.arguments import DataArguments
    from whp_trainer.auto import auto_inputs

    book = " ".join(CORPUS * 20)  # one .txt file: one document, as a novel is
    (tmp_path / "holdout.txt").write_text(" ".join(reversed(CORPUS * 20)))
    (tmp_path / "budget.txt").write_text(" ".join(CORPUS[2:] * 20))
    args = SimpleNamespace(seed=0, max_length=16, holdout_data=str(tmp_path / "holdout.txt"),
                           budget_data=str(tmp_path / "budget.txt"), neighbour_knowledge=None, forget_knowledge=None)
    with caplog.at_level("WARNING", logger="whp_trainer.auto"):
        inputs = auto_inputs(DataArguments(forget_data="unused"), args, tokenizer, [book], PROBES, None)
    forget, holdout = inputs.membership
    assert len(forget) > 10 and len(holdout) > 10 and len(inputs.retain) > 10  # blocks, not one text each
    assert all(text in book for text in forget) and max(map(len, forget)) < len(book) / 10
    assert "budget's text" not in caplog.text  # 64 blocks or more: the rule's whole sample
    (tmp_path / "budget.txt").write_text(" ".join(CORPUS[2:]))
    with caplog.at_level("WARNING", logger="whp_trainer.auto"):
        auto_inputs(DataArguments(forget_data="unused"), args, tokenizer, [book], PROBES, None)
    assert "the budget's text is" in caplog.text and "fewer than the 64 the stopping rule reads" in caplog.text


def test_without_budget_text_the_budget_is_read_on_retain_blocks_the_retain_loss_does_not_read(tokenizer, tmp_path):
    from whp_trainer.arguments import DataArguments
    from whp_trainer.auto import auto_inputs
    from whp_trainer.collator import text_blocks
    from whp_trainer.evaluation.retain import general_text

    rng = torch.Generator().manual_seed(0)
    numbers = [str(number) for number in torch.randint(10**5, 10**6, (3000,), generator=rng).tolist()]
    (tmp_path / "retain.txt").write_text(" ".join(numbers))
    data = DataArguments(forget_data="unused", retain_data=str(tmp_path / "retain.txt"))
    args = SimpleNamespace(seed=0, max_length=16, holdout_data=None, budget_data=None, neighbour_knowledge=None,
                           forget_knowledge=None)
    blocks = text_blocks(data.retain_texts()["text"], tokenizer, 16)
    assert len(set(blocks)) == len(blocks) > 4 * 64  # each block its own text
    inputs = auto_inputs(data, args, tokenizer, [" ".join(CORPUS)], PROBES, None)
    assert len(inputs.retain) == 64 and not set(inputs.retain) & set(inputs.retain_training)
    assert sorted(inputs.retain + inputs.retain_training) == sorted(blocks)
    assert auto_inputs(data, args, tokenizer, [" ".join(CORPUS)], PROBES, None).retain == inputs.retain  # seeded
    general = text_blocks(general_text(), tokenizer, 16)
    assert len(inputs.general) == 64 and set(inputs.general) <= set(general)  # the package's text, read apart
    assert inputs.holdout_budget == []  # no holdout text
    (tmp_path / "retain.txt").write_text(" ".join(numbers[:200]))
    inputs = auto_inputs(data, args, tokenizer, [" ".join(CORPUS)], PROBES, None)
    assert len(inputs.retain) == len(text_blocks(data.retain_texts()["text"], tokenizer, 16)) // 4  # a quarter


def test_the_student_of_a_run_without_budget_text_keeps_its_budget_blocks_out_of_its_retain_loss(files, tmp_path,
                                                                                                monkeypatch):
    from transformers import AutoTokenizer

    from whp_trainer import pipeline, trainer
    from whp_trainer.arguments import DataArguments
    from whp_trainer.collator import text_blocks

    given = {}

    class Recording(UnlearnTrainer):
        def __init__(self, *args, retain_dataset=None, **kwargs):
            given["retain"] = retain_dataset
            super().__init__(*args, retain_dataset=retain_dataset, **kwargs)

    monkeypatch.setattr(trainer, "UnlearnTrainer", Recording)
    measured = {}
    real_stop = pipeline.stop_at_targets
    monkeypatch.setattr(pipeline, "stop_at_targets", lambda student, choice, inputs, *rest: measured.update(
        budget=inputs.retain, inputs=inputs) or real_stop(student, choice, inputs, *rest))
    auto = {"alpha": "auto", "auto_alphas": [5], "auto_reinforce_rounds": 0, "auto_eval_steps": 1,
            "retain_weight": 1.0, "max_length": 16, "holdout_data": str(files / "retain.txt")}
    config = run_config(files, tmp_path / "run", reinforce=TRAINING, unlearn={**TRAINING, **auto})
    cli.run_config([str(write_config(tmp_path / "run.yaml", config))])
    blocks = text_blocks(DataArguments(forget_data="unused", retain_data=str(files / "retain.txt")).retain_texts()[
        "text"], AutoTokenizer.from_pretrained(files / "base"), 16)
    assert len(measured["budget"]) == len(blocks) // 4 and len(given["retain"]) == len(blocks) - len(measured["budget"])
    assert sorted(measured["budget"] + list(given["retain"])) == sorted(blocks)
    # the holdout blocks membership reads hold the perplexity budget too, apart: text of the forget text's kind
    inputs = measured["inputs"]
    assert inputs.holdout_budget and inputs.holdout_budget == inputs.membership[1]
    stopping = json.loads((tmp_path / "run" / "unlearned" / "whp_run.json").read_text())["auto"]["stopping"]
    assert all("holdout_perplexity_bound" in entry["metrics"] for entry in stopping["history"])


def test_a_long_run_over_budget_from_its_first_steps_raises_the_retain_weight_before_its_first_interval(make_model):
    model = trainable_model(make_model)
    trainer = SimpleNamespace(**vars(fake_trainer(model)), retain_weight=1.0)
    over = metrics(0.95, 0.5, 19.0)  # +90 %: the budget spent within the first steps
    callback = ScriptedStopping(trainer, [metrics(0.95, 0.5, 10.0)] * 2 + [over] * 10, every_n_steps=8,
                                max_measurements=12)
    stopped, _ = run_steps(callback, model, steps=312)
    assert [entry["step"] for entry in callback.history][:4] == [0, 8, 16, 26]
    assert [entry["retain_weight"] for entry in callback.history][:4] == [1.0, 1.0, 2.0, 4.0]  # raised at 8 and 16
    assert stopped == 78  # at the ceiling from step 26: spent there, at 52 and at 78 (without the early ones: 130)


def test_a_budget_is_spent_only_once_the_retain_weight_is_at_its_ceiling(make_model):
    model = trainable_model(make_model)
    trainer = SimpleNamespace(**vars(fake_trainer(model)), retain_weight=1.0)
    over = metrics(0.5, 0.1, 10.5)
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0)] + [over] * 6
    callback = ScriptedStopping(trainer, script, every_n_steps=1, budget_patience=2)
    stopped, _ = run_steps(callback, model, steps=10)
    assert stopped == 4 and trainer.retain_weight == 4.0  # steps 1, 2 raise it (1 → 2 → 4); 3 and 4 count
    assert callback.decision["reason"].startswith("a budget is spent at 2 measurements in a row")


@pytest.mark.parametrize("confidence, coverage", [(0.95, (0.92, 0.98)), (0.5, (0.42, 0.58))])
def test_the_budgets_bound_covers_the_change_on_text_of_the_kind_at_its_confidence(confidence, coverage):
    """Text of the kind: 2,000 blocks whose per-token change against the base varies from block to block; the rule
    reads 64 of them. The bound of a sample is at least the whole text's change as often as its confidence says."""
    from random import Random
    from statistics import NormalDist

    rng = Random(0)
    counts = [rng.randint(60, 128) for _ in range(2000)]
    base = [(rng.uniform(2.5, 4.5) * count, count) for count in counts]
    student = [(nll + rng.gauss(0.02, 0.08) * count, count) for nll, count in base]
    change = perplexity_of(student) / perplexity_of(base)
    covered = 0
    for _ in range(600):
        drawn = rng.sample(range(len(base)), 64)
        sample, sample_base = [student[i] for i in drawn], [base[i] for i in drawn]
        covered += perplexity_bound(sample, sample_base, confidence) / perplexity_of(sample_base) >= change
    assert coverage[0] <= covered / 600 <= coverage[1]


def measured_after_a_nudge(callback, model):
    """The rule's base measured at training's start, then the rule's measurement of the adapter moved a little."""
    callback.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=10), SimpleNamespace())
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05)
    return callback.measure(model)


def test_the_perplexity_budget_holds_the_bound_not_the_samples_reading(make_model, tokenizer):
    model = trainable_model(make_model)
    texts = CORPUS * 3
    trainer = SimpleNamespace(**{**vars(fake_trainer(model)), "processing_class": tokenizer})
    callback = TargetStoppingCallback(trainer, Targets(membership=None, familiarity=0.1), PROBES, texts,
                                      max_length=8)
    measured = measured_after_a_nudge(callback, model)
    assert callback.base[RETAIN_BOUND] == callback.base["retain_perplexity"]  # the base against itself
    reading, bound = measured["retain_perplexity"], measured[RETAIN_BOUND]
    assert reading == pytest.approx(perplexity(model, tokenizer, texts, max_length=8))
    assert bound > reading != callback.base["retain_perplexity"]
    callback.retain_budget = (reading + bound) / 2 / callback.base["retain_perplexity"] - 1
    assert not callback.within_budget(measured)  # the sample reads within the budget, its bound does not
    assert f"bound {bound:.4g}" in callback.spent(measured)[0]
    # a rule resumed from a checkpoint (the base's measurement loaded, not its blocks) reads the same bound
    resumed = TargetStoppingCallback(trainer, Targets(membership=None, familiarity=0.1), PROBES, texts, max_length=8)
    resumed.base = callback.base
    assert resumed.measure(model) == pytest.approx(measured)
    at_half = TargetStoppingCallback(trainer, Targets(membership=None, familiarity=0.1), PROBES, texts, max_length=8,
                                     budget_confidence=0.5, retain_budget=callback.retain_budget)
    at_half.base = callback.base
    assert at_half.measure(model)[RETAIN_BOUND] == pytest.approx(reading)
    assert at_half.within_budget(at_half.measure(model))  # 0.5: the sample's reading itself


@pytest.mark.parametrize("confidence, coverage", [(0.95, (0.92, 0.98)), (0.5, (0.42, 0.58))])
def test_the_neighbour_bound_covers_the_drop_on_knowledge_of_the_kind_at_its_confidence(confidence, coverage):
    """Knowledge of the kind: 2,000 rows whose answers lose a varying share of their log-likelihood; the rule reads
    10 of them (few: the bound takes Student's t). The bound of a sample is at most the whole set's mean change as
    often as its confidence says."""
    from random import Random

    rng = Random(1)
    base = [rng.uniform(-6.0, -0.5) for _ in range(2000)]
    student = [row - rng.gauss(0.05, 0.2) for row in base]
    covered = 0
    for _ in range(600):
        drawn = rng.sample(range(len(base)), 10)
        bound = knowledge_bound([student[i] for i in drawn], [base[i] for i in drawn], confidence)
        covered += bound - fmean(base[i] for i in drawn) <= fmean(student) - fmean(base)
    assert coverage[0] <= covered / 600 <= coverage[1]


@pytest.mark.parametrize("confidence, degrees, exact", [(0.95, 5, 2.015), (0.95, 9, 1.833), (0.95, 19, 1.729),
                                                       (0.975, 9, 2.262), (0.9, 5, 1.476), (0.5, 3, 0.0)])
def test_the_bounds_take_students_t_quantile_of_their_degrees_of_freedom(confidence, degrees, exact):
    assert t_quantile(confidence, degrees) == pytest.approx(exact, abs=2e-3)  # the tables' values


def test_the_neighbour_budget_holds_the_bound_not_the_samples_reading(make_model, tokenizer):
    from whp_trainer.evaluation.knowledge import answer_log_likelihoods

    model = trainable_model(make_model)
    pairs = [("The cat sat on the", " mat"), ("Where did Jon go?", " the Mystic Academy"), ("The sky is", " blue"),
             ("Harry Potter studies magic at", " Hogwarts")]
    trainer = SimpleNamespace(**{**vars(fake_trainer(model)), "processing_class": tokenizer})

    def rule(**kwargs):
        return TargetStoppingCallback(trainer, Targets(membership=None, familiarity=0.1), PROBES, CORPUS, max_length=8,
                                      neighbour_knowledge=lambda m: answer_log_likelihoods(m, tokenizer, pairs),
                                      **kwargs)

    callback = rule()
    measured = measured_after_a_nudge(callback, model)
    assert callback.base[NEIGHBOUR_BOUND] == callback.base["neighbour_knowledge"]  # the base against itself
    reading, bound = measured["neighbour_knowledge"], measured[NEIGHBOUR_BOUND]
    assert callback.neighbour_rows == len(pairs)
    assert reading == pytest.approx(fmean(answer_log_likelihoods(model, tokenizer, pairs)))
    assert bound < reading != callback.base["neighbour_knowledge"]
    callback.retain_budget = 10.0  # only the neighbour budget can be spent
    callback.neighbour_budget = callback.base["neighbour_knowledge"] - (reading + bound) / 2
    assert callback.neighbour_budget > 0
    assert not callback.within_budget(measured)  # the sample reads within the budget, its bound does not
    assert f"bound {bound:.3f}" in callback.spent(measured)[0] and callback.overrun(measured) > 0
    resumed = rule()  # resumed from a checkpoint: the base's measurement loaded, its rows read again
    resumed.base = callback.base
    assert resumed.measure(model) == pytest.approx(measured)
    at_half = rule(budget_confidence=0.5)
    at_half.base = callback.base
    assert at_half.measure(model)[NEIGHBOUR_BOUND] == pytest.approx(reading)


def trainer_with_optimizer(model, learning_rate=1e-3):
    """A fake trainer holding a real AdamW (with moments) and a LambdaLR schedule over the model's adapter."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    optimizer.zero_grad()
    return SimpleNamespace(**vars(fake_trainer(model)), retain_weight=1.0, optimizer=optimizer,
                           lr_scheduler=scheduler)


def test_over_budget_at_the_ceiling_the_student_goes_back_to_its_best_and_halves_its_step(make_model):
    model = trainable_model(make_model)
    trainer = trainer_with_optimizer(model)
    over = metrics(0.6, 0.2, 10.5)  # +5 %: over the +3 % budget
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), metrics(0.8, 0.3, 10.1), over, over, over,
              metrics(0.7, 0.25, 10.2), over, over, over]
    callback = ScriptedStopping(trainer, script, every_n_steps=1, budget_patience=3)
    weights_at_backtrack = {}
    original = callback.backtrack_to_best

    def backtrack(model, state):
        original(model, state)
        weights_at_backtrack[callback.history[-1]["step"]] = lora_weights(model)

    callback.backtrack_to_best = backtrack
    stopped, seen = run_steps(callback, model, steps=20)
    # steps 2 and 3 raise the retain weight (1 → 2 → 4); step 4 is over at the ceiling: back to step 1, the best
    assert [entry["retain_weight"] for entry in callback.history][:5] == [1.0, 1.0, 1.0, 2.0, 4.0]
    assert callback.history[4]["backtracked_to"] == 1
    assert all(torch.equal(p, seen[1][name]) for name, p in weights_at_backtrack[4].items())
    assert not trainer.optimizer.state  # the moments that pointed over budget are gone
    # step 5 within budget and closer to the targets: the next backtracks (6, 7) go back to it; 8 stops (3 in a row)
    assert [entry.get("backtracked_to") for entry in callback.history[5:]] == [None, 5, 5, None]
    assert [entry["learning_rate_factor"] for entry in callback.history] == [1.0] * 5 + [0.5, 0.5, 0.25, 0.125]
    assert trainer.lr_scheduler.base_lrs == [1e-3 / 8] and trainer.optimizer.param_groups[0]["lr"] == 1e-3 / 8
    assert stopped == 8 and callback.decision["best_step"] == 5 and callback.decision["backtracks"] == 3
    summary = stopping_summary(callback.decision)
    assert "halved its learning rate 3 times" in summary and "more epochs" not in summary  # a budget stopped it


def test_without_backtracking_the_student_goes_on_from_where_it_is(make_model):
    model = trainable_model(make_model)
    trainer = trainer_with_optimizer(model)
    over = metrics(0.6, 0.2, 10.5)
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), metrics(0.8, 0.3, 10.1)] + [over] * 5
    callback = ScriptedStopping(trainer, script, every_n_steps=1, budget_patience=3, backtrack=False)
    stopped, _ = run_steps(callback, model, steps=20)
    assert stopped == 6 and trainer.optimizer.state and trainer.lr_scheduler.base_lrs == [1e-3]
    assert all("backtracked_to" not in entry for entry in callback.history)
    assert callback.decision["backtracks"] == 0 and "halved" not in stopping_summary(callback.decision)


def auto_student(make_model, tokenizer, reinforced_path, output_dir, **args) -> UnlearnTrainer:
    """A real UnlearnTrainer with a retain loss and a linear schedule, as `alpha: auto` trains the student."""
    from conftest import LORA
    from datasets import Dataset
    from peft import LoraConfig

    return UnlearnTrainer(
        model=make_model(), reinforced_adapter=reinforced_path, peft_config=LoraConfig(**LORA),
        anchors={"Harry": ["Jon"]}, processing_class=tokenizer, retain_dataset=CORPUS[4:],
        train_dataset=Dataset.from_dict({"text": CORPUS[:4] * 2}),
        args=UnlearnConfig(output_dir=str(output_dir), per_device_train_batch_size=2, learning_rate=1e-2,
                           lr_scheduler_type="linear", report_to=[], use_cpu=True, max_length=32, disable_tqdm=True,
                           logging_steps=1, retain_weight=1.0, **args),
    )


@pytest.mark.parametrize("backtrack", [True, False])
def test_a_backtrack_halves_the_trainers_own_learning_rate_schedule(make_model, tokenizer, reinforced_path, tmp_path,
                                                                     backtrack):
    trainer = auto_student(make_model, tokenizer, reinforced_path, tmp_path / "out", max_steps=5, save_strategy="no")
    over = metrics(0.6, 0.2, 10.5)  # the retain weight is at its ceiling (max_retain_factor 1): step 2 backtracks
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), metrics(0.8, 0.3, 10.1), over] + \
        [metrics(0.8, 0.3, 10.1)] * 3
    callback = ScriptedStopping(trainer, script, every_n_steps=1, max_retain_factor=1.0, backtrack=backtrack)
    trainer.add_callback(callback)
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    linear = [1e-2 * (5 - step) / 5 for step in range(5)]  # the rate each step trains with, as the Trainer logs it
    expected = linear[:2] + [rate / 2 for rate in linear[2:]] if backtrack else linear
    print([(e["step"], e["metrics"]["retain_perplexity"], e.get("backtracked_to"), e.get("dropped_cap"), e["learning_rate_factor"]) for e in callback.history])
    assert rates == pytest.approx(expected)
    assert (callback.history[2].get("backtracked_to") == 1) is backtrack


@pytest.mark.parametrize("drop_cap", [True, False])
def test_the_first_backtrack_drops_the_original_token_cap_and_keeps_the_rate(make_model, tokenizer, reinforced_path,
                                                                              tmp_path, drop_cap):
    trainer = auto_student(make_model, tokenizer, reinforced_path, tmp_path / "out", max_steps=6, save_strategy="no",
                           target_mode="soft", original_cap_weight=1.0)
    over, near = metrics(0.6, 0.2, 10.5), metrics(0.8, 0.3, 10.1)  # over budget at steps 2 and 4, at the ceiling
    callback = ScriptedStopping(trainer, [metrics(0.95, 0.5, 10.0)] * 2 + [near, over, near, over, near, near],
                                every_n_steps=1, max_retain_factor=1.0, drop_cap=drop_cap)
    trainer.add_callback(callback)
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    linear = [1e-2 * (6 - step) / 6 for step in range(6)]  # the rate each step trains with, as the Trainer logs it
    if drop_cap:  # step 2's backtrack drops the cap at the same rate; step 4's halves the rate
        expected = linear[:4] + [rate / 2 for rate in linear[4:]]
        summary = "2 times and dropped the original-token cap (step 2), then halved its learning rate once."
    else:
        expected = linear[:2] + [rate / 2 for rate in linear[2:4]] + [rate / 4 for rate in linear[4:]]
        summary = "2 times and halved its learning rate 2 times."
    assert rates == pytest.approx(expected)
    assert trainer.cap_weight == (0.0 if drop_cap else 1.0)
    assert [entry.get("dropped_cap", False) for entry in callback.history] == [False, False, drop_cap] + [False] * 4
    assert callback.decision["dropped_cap_at"] == (2 if drop_cap else None)
    assert summary in stopping_summary(callback.decision)


class StepScriptedStopping(ScriptedStopping):
    """The stopping rule measuring, at each step, what the script holds for that step (so a resumed run reads the
    same measurements as an uninterrupted one)."""

    def __init__(self, trainer, script, **kwargs):
        super().__init__(trainer, script, **kwargs)
        self.script = list(script)

    def measure(self, model):
        return self.script[self.trainer.state.global_step]


OVER, NEAR, NEARER = metrics(0.6, 0.2, 10.5), metrics(0.85, 0.4, 10.1), metrics(0.7, 0.25, 10.1)
START = [metrics(0.95, 0.5, 10.0), metrics(0.8, 0.3, 10.1), OVER, NEAR, NEAR, OVER]


@pytest.mark.parametrize("script, stops_at", [
    # step 1 is the best within budget until 8; steps 2, 5 and 7 are over at the ceiling and go back to it
    (START + [NEAR, OVER, NEARER], 8),
    # the targets are reached at step 6, where the checkpoint the run resumes from was written
    (START + [metrics(0.5, 0.05, 10.1), NEAR, NEAR], 6),
])
def test_a_run_resumed_after_a_backtrack_decides_and_ends_as_the_uninterrupted_run(make_model, tokenizer,
                                                                                    reinforced_path, tmp_path,
                                                                                    script, stops_at):

    def train(output_dir, resume_from_checkpoint=None):
        trainer = auto_student(make_model, tokenizer, reinforced_path, output_dir, max_steps=8,
                               save_strategy="steps", save_steps=3)
        callback = StepScriptedStopping(trainer, script, every_n_steps=1, max_retain_factor=1.0)
        trainer.add_callback(callback)
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        return callback, lora_weights(trainer.model)

    whole, whole_weights = train(tmp_path / "whole")
    resumed, resumed_weights = train(tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "whole/checkpoint-6"))
    assert [entry.get("backtracked_to") for entry in whole.history][:6] == [None, None, 1, None, None, 1]
    assert whole.decision["stopped_at"] == whole.decision["best_step"] == stops_at
    assert whole.decision["backtracks"] == (3 if stops_at == 8 else 2)
    assert resumed.history == whole.history and resumed.decision == whole.decision
    assert all(torch.equal(resumed_weights[name], weight) for name, weight in whole_weights.items())


class TravelStopping(ScriptedStopping):
    """The stopping rule measuring how far the real student's adapter has travelled from where the run began (the
    rule's own ``start``, which a checkpoint keeps), in units of its first measured distance: +5 % on the budget's
    text and 0.1 less familiarity per unit. A resumed run measures what the uninterrupted one did."""

    def measure(self, model):
        weights = trainable_weights(model)
        travelled = 0.0 if self.start is None else float(  # summed in the model's order, whatever the start's
            sum((weight - self.start[-1][name]).pow(2).sum() for name, weight in weights.items()).sqrt())
        unit = next((entry["metrics"]["travelled"] for entry in self.history if entry["metrics"]["travelled"]),
                    travelled) or 1.0
        return {**metrics(0.95, 0.5 - 0.1 * travelled / unit, 10.0 * (1 + 0.05 * travelled / unit)),
                "travelled": travelled}


@pytest.mark.parametrize("cap", [0.0, 1.0])
def test_a_run_resumed_after_a_line_search_keeps_and_returns_to_the_point_it_found(make_model, tokenizer,
                                                                                   reinforced_path, tmp_path, cap):
    def train(output_dir, resume_from_checkpoint=None):
        trainer = auto_student(make_model, tokenizer, reinforced_path, output_dir, max_steps=10,
                               save_strategy="steps", save_steps=4, target_mode="soft", original_cap_weight=cap)
        # measured every 2 steps; the retain weight doubles once (step 2, over budget), then step 4 is over at the
        # ceiling with nothing within budget yet: the line search (and, with a cap, the cap dropped)
        callback = TravelStopping(trainer, [], every_n_steps=2, max_retain_factor=2.0, line_search=LINE_SEARCH)
        trainer.add_callback(callback)
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        return callback, lora_weights(trainer.model)

    whole, whole_weights = train(tmp_path / "whole")
    saved = json.loads((tmp_path / "whole/checkpoint-4" / STATE_FILE).read_text())
    best = saved["history"][saved["kept"]["best"][-1]]
    assert (best["step"], 0 < best.get("scale", 1.0) < 1) == (4, True)  # the checkpoint keeps a searched point
    assert saved["history"][-1]["retain_weight"] == 2.0
    trainer_state = json.loads((tmp_path / "whole/checkpoint-4/trainer_state.json").read_text())
    assert trainer_state["stateful_callbacks"][RETAIN_STATE]["attributes"]["cap_weight"] == 0.0  # the trainer's own
    # after it, a backtrack goes back to that point (step 6, after the checkpoint); with a cap, step 4's dropped it
    trained = [(entry["step"], entry.get("backtracked_to")) for entry in whole.history if "scale" not in entry]
    assert trained[:4] == [(0, None), (2, None), (4, 0), (6, 4)]
    assert whole.decision["dropped_cap_at"] == (4 if cap else None) and whole.trainer.cap_weight == 0.0
    resumed, resumed_weights = train(tmp_path / "resumed", resume_from_checkpoint=str(tmp_path / "whole/checkpoint-4"))
    assert resumed.history == whole.history and resumed.decision == whole.decision
    assert resumed.trainer.cap_weight == 0.0
    assert all(torch.equal(resumed_weights[name], weight) for name, weight in whole_weights.items())


def test_with_no_measurement_within_budget_a_backtrack_goes_back_to_where_the_run_began(make_model):
    model = trainable_model(make_model)
    trainer = trainer_with_optimizer(model)
    trainer.retain_weight = 0.0  # no retain loss: the step size is the only lever
    start = lora_weights(model)
    script = [metrics(0.95, 0.5, 10.0), metrics(0.95, 0.5, 10.0), metrics(0.6, 0.2, 11.0), metrics(0.7, 0.3, 10.1)]
    callback = ScriptedStopping(trainer, script, every_n_steps=1)
    restored = {}
    original = callback.backtrack_to_best
    callback.backtrack_to_best = lambda model, state: (original(model, state), restored.update(lora_weights(model)))
    run_steps(callback, model, steps=2)
    assert callback.history[1]["backtracked_to"] == 0  # +10 % at step 1: back to the weights it began with
    assert all(torch.equal(p, start[name]) for name, p in restored.items())
    assert callback.history[2]["learning_rate_factor"] == 0.5 and callback.decision["best_step"] == 2
    # the steps ran out short of the targets at the halved rate: the summary says what gives it room
    assert "more epochs (`num_train_epochs`) give it room" in stopping_summary(callback.decision)


def first_lora_weight(model):
    return next(parameter for name, parameter in model.named_parameters() if "lora_" in name)


class DistanceStopping(ScriptedStopping):
    """The stopping rule measuring the adapter's weights themselves: ``x``, how many of `run_steps`' steps (+0.1 to
    every weight) they are from where the run began; familiarity falls with ``x`` and the budget's perplexity rises
    by ``cost`` per step's worth, so any point on a line between two weights measures what it is."""

    def __init__(self, trainer, cost, **kwargs):
        super().__init__(trainer, [], line_search=kwargs.pop("line_search", LINE_SEARCH), **kwargs)
        self.cost, self.origin = cost, None

    def measure(self, model):
        weight = first_lora_weight(model)
        self.origin = weight.detach().clone() if self.origin is None else self.origin
        x = float((weight - self.origin).mean()) / 0.1
        return metrics(0.95, 0.5 - 0.1 * x, 10.0 * (1 + self.cost * x))


def test_over_budget_with_nothing_within_it_yet_the_student_goes_back_only_as_far_as_its_budget_needs(make_model):
    model = trainable_model(make_model)
    trainer = trainer_with_optimizer(model)
    trainer.retain_weight = 0.0  # no retain loss: over budget backtracks at once
    # +5 % per step's worth on the budget's text, measured every 2 steps: step 2 (+10 %) is the first measured
    callback = DistanceStopping(trainer, cost=0.05, every_n_steps=2)
    run_steps(callback, model, steps=6)
    # no measurement within budget yet: bisect the way back to the start, 1/2 (+5 %) over, 1/4 (+2.5 %) within,
    # 3/8 (+3.75 %) over: the run goes on from 1/4 of the way
    measured = [(entry["step"], entry.get("scale"), entry["within_budget"], entry.get("backtracked_to"))
                for entry in callback.history]
    assert measured[1:5] == [(2, None, False, 0), (2, 0.5, False, None), (2, 0.25, True, None),
                             (2, 0.375, False, None)]
    # step 4 (+12.5 %) goes straight back to that point, the best within budget; step 6, the last, is over again;
    # at the end the line from the best to step 4 (the closest to the targets over budget) holds no point within it,
    # and the line from the start to step 4 none further than the best (1/8 of it: +1.6 %)
    assert measured[5:] == [(4, None, False, 2), (6, None, False, None), (4, 0.5, False, None),
                            (4, 0.25, False, None), (4, 0.125, False, None),
                            (4, 0.5, False, None), (4, 0.25, False, None), (4, 0.125, True, None)]
    assert (callback.decision["best_step"], callback.decision["best_scale"]) == (2, 0.25)
    assert torch.allclose(first_lora_weight(model), callback.origin + 0.05)
    assert "a point 0.25 of the way from where it began to step 2's" in stopping_summary(callback.decision)


@pytest.mark.parametrize("end_search", [True, False])
def test_a_run_short_of_its_targets_ends_on_the_furthest_point_within_budget_towards_the_closest_over(make_model,
                                                                                                      end_search):
    model = trainable_model(make_model)
    trainer = trainer_with_optimizer(model)
    trainer.retain_weight = 0.0
    # +1.8 % per step's worth: step 1 within budget (the best), steps 2 and 3 over (+3.6 %), each sent back to
    # step 1; step 4, over again, spends the budget (three in a row)
    callback = DistanceStopping(trainer, cost=0.018, every_n_steps=1, end_search=end_search)
    stopped, _ = run_steps(callback, model, steps=10)
    assert stopped == 4 and [entry.get("backtracked_to") for entry in callback.history[2:5]] == [1, 1, None]
    if not end_search:  # it ends on step 1, its best measurement, and kept no weights to search towards
        assert len(callback.history) == 5 and callback.decision["best_step"] == 1 and callback.closest_over is None
        assert torch.allclose(first_lora_weight(model), callback.origin + 0.1)
        return
    # at the end, the line from step 1's weights to step 2's (closer to the targets, over budget) is bisected:
    # 1/2 (+2.7 %) within, 3/4 (+3.15 %) over, 5/8 (+2.925 %) within; still short of membership, the line from
    # the start to step 2's too: 1/2 (+1.8 %) and 3/4 (+2.7 %) within, 7/8 (+3.15 %) over; the first's 5/8 is kept
    searched = [(entry["step"], entry["scale"], entry.get("from_step"), entry["within_budget"])
                for entry in callback.history[5:]]
    assert searched == [(2, 0.5, 1, True), (2, 0.75, 1, False), (2, 0.625, 1, True),
                        (2, 0.5, None, True), (2, 0.75, None, True), (2, 0.875, None, False)]
    decision = callback.decision
    assert (decision["best_step"], decision["best_scale"], decision["best_from_step"]) == (2, 0.625, 1)
    assert torch.allclose(first_lora_weight(model), callback.origin + 0.1625)
    summary = stopping_summary(decision)
    assert "a point 0.625 of the way from its best weights within budget before (step 1) to step 2's" in summary
    assert "the one over budget closest to the targets" in decision["reason"]
    # the demo (seed 42): sent back at step 24 to a point within budget on the way from the start, it ends between
    # that point and step 24's own weights, the closest to the targets
    again = stopping_summary({**decision, "best_step": 24, "best_from_step": 24, "best_scale": 0.375})
    assert "its weights are a point 0.375 of the way from the weights it went back to at step 24 (its best within " \
           "budget) to step 24's before it went back, the measurement closest" in again, again


class PlaneStopping(ScriptedStopping):
    """The stopping rule reading two of the adapter's weights, moved from where they began by ``(x, y)``:
    familiarity falls with ``x``; the budget's perplexity rises by 3 % per unit of ``y + x / 2``."""

    def __init__(self, trainer, **kwargs):
        super().__init__(trainer, [], line_search=LINE_SEARCH, **kwargs)
        self.origin = None

    def measure(self, model):
        weight = first_lora_weight(model).detach().flatten()[:2].clone()
        self.origin = weight if self.origin is None else self.origin
        x, y = (weight - self.origin).tolist()
        return metrics(0.95, 0.5 - 0.2 * x, 10.0 * (1 + 0.03 * (y + x / 2)))


def test_a_best_on_the_budgets_edge_leaves_the_last_search_the_line_from_where_the_run_began(make_model):
    model = trainable_model(make_model)
    callback = PlaneStopping(fake_trainer(model), every_n_steps=1)
    state, control = SimpleNamespace(global_step=0, max_steps=2), SimpleNamespace(should_training_stop=False)
    callback.on_train_begin(None, state, control)
    for step, (x, y) in enumerate([(0.2, 0.8), (1.8, -0.6)], start=1):  # to (0.2, 0.8): +2.7 %; (2, 0.2): +3.6 %
        with torch.no_grad():
            first_lora_weight(model).view(-1)[:2] += torch.tensor([x, y])
        state.global_step = step
        callback.on_step_end(None, state, control)
    callback.on_train_end(None, state, control)
    searched = [(entry["scale"], entry.get("from_step"), entry["within_budget"]) for entry in callback.history[3:]]
    # from step 1 (on the edge) towards step 2: within only up to 1/3 of the way (1/4 kept there, x 0.65); from
    # the start: up to 5/6 (3/4 kept, x 1.5: the least familiarity)
    assert searched == [(0.5, 1, False), (0.25, 1, True), (0.375, 1, False),
                        (0.5, None, True), (0.75, None, True), (0.875, None, False)]
    decision = callback.decision
    assert (decision["best_step"], decision["best_scale"], decision["best_from_step"]) == (2, 0.75, None)
    moved = (first_lora_weight(model).detach().flatten()[:2] - callback.origin).tolist()
    assert moved == pytest.approx([1.5, 0.15])
    assert decision["reason"].endswith("it ends on a point of the line from where it began to the one over budget "
                                       "closest to the targets")
    assert "a point 0.75 of the way from where it began to step 2's" in stopping_summary(decision)


def test_of_measurements_over_budget_equally_close_to_the_targets_the_least_over_is_searched_towards(make_model):
    model = trainable_model(make_model)
    # steps 2 and 3 are past the familiarity target, equally short of membership: +20 % and +4 % on the budget
    script = [metrics(0.95, 0.5, 10.0)] * 2 + [metrics(0.9, 0.3, 10.2), metrics(0.8, 0.05, 12.0),
                                               metrics(0.8, 0.05, 10.4)]
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1)  # no line search: nothing measured
    run_steps(callback, model, steps=3)
    assert callback.history[callback.closest_over[2]]["step"] == 3


@pytest.mark.parametrize("backtrack", [True, False])
def test_a_run_never_within_budget_ends_on_the_furthest_point_within_it_on_the_way_to_the_least_over(make_model,
                                                                                                   backtrack):
    model = trainable_model(make_model)
    trainer = trainer_with_optimizer(model)
    callback = DistanceStopping(trainer, cost=0.05, backtrack=backtrack)  # +5 % at step 1, its only step
    run_steps(callback, model, steps=1)
    first = first_lora_weight(model)
    origin = callback.origin
    if backtrack:  # half of the way from the start is +2.5 %: within budget, and kept (3/4 and 5/8 are over)
        assert [entry.get("scale") for entry in callback.history[2:]] == [0.5, 0.75, 0.625]
        assert callback.decision["within_budget"] and callback.decision["best_scale"] == 0.5
        assert "the furthest point within budget on the line" in callback.decision["reason"]
        assert torch.allclose(first, origin + 0.05)
    else:  # the least over, as measured
        assert not callback.decision["within_budget"] and callback.decision["best_scale"] == 1.0
        assert torch.allclose(first, origin + 0.1)


@pytest.mark.parametrize("line_search, cost, every, best", [
    (LINE_SEARCH, 0.05, 2, (2, 0.25)),  # step 2 over, the search's point 1/4 of the way to it the best
    (0, 0.01, 2, (2, None)),  # measured every 2 steps: step 2 (+2 %) the best, 4 and 6 over
])
def test_the_rules_kept_weights_come_back_from_a_checkpoint_as_they_were_kept(make_model, tmp_path, line_search,
                                                                               cost, every, best):
    model = trainable_model(make_model)
    trainer = trainer_with_optimizer(model)
    trainer.retain_weight = 0.0
    callback = DistanceStopping(trainer, cost=cost, every_n_steps=every, line_search=line_search)
    run_steps(callback, model, steps=3 * every)
    kept = callback.history[callback.best[1]]
    assert (kept["step"], kept.get("scale")) == best
    callback.neighbour_rows = 44  # what measuring 44 neighbour rows would have set: the resolution's count
    callback.save_to_checkpoint(tmp_path)
    if not line_search:  # a checkpoint of an older whp_trainer, which kept its measurements by step
        state = json.loads((tmp_path / STATE_FILE).read_text())
        del state["kept_by"], state["kept"]["closest_over"]
        for key in ("best", "least_over"):
            state["kept"][key] = state["kept"][key] and [*state["kept"][key][:-1],
                                                         callback.history[state["kept"][key][-1]]["step"]]
        (tmp_path / STATE_FILE).write_text(json.dumps(state))
    loaded = DistanceStopping(trainer, cost=cost, every_n_steps=every, line_search=line_search)
    loaded.load_from_checkpoint(tmp_path)
    assert loaded.history == callback.history and loaded.best[:2] == callback.best[:2]
    assert loaded.neighbour_rows == 44
    assert all(torch.equal(loaded.best[2][name], weight) for name, weight in callback.best[2].items())
    if line_search:  # the measurement over budget closest to the targets, which the end's search goes towards
        assert loaded.closest_over[:3] == callback.closest_over[:3] and all(
            torch.equal(loaded.closest_over[3][name], weight) for name, weight in callback.closest_over[3].items())
    else:  # an older whp_trainer kept none
        assert callback.closest_over is not None and loaded.closest_over is None


def test_a_strengthened_reinforcement_doubles_epochs_and_rate_and_stops_if_it_diverges(tmp_path, monkeypatch):
    from whp_trainer import pipeline
    from whp_trainer.auto import strengthened_reinforcement
    from whp_trainer.reinforce import DivergenceStop, ReinforceConfig

    source = tmp_path / "reinforced"
    source.mkdir()
    torch.save(ReinforceConfig(output_dir=str(source), learning_rate=1e-4, num_train_epochs=3, use_cpu=True,
                               report_to=[]), source / "training_args.bin")
    calls = []
    monkeypatch.setattr(pipeline, "reinforce", lambda data, model_args, args, overwrite, callbacks: calls.append(
        (args, callbacks)) or args.output_dir)
    args = SimpleNamespace(auto_reinforce_factor=2.0)
    assert strengthened_reinforcement(None, None, source, 2, args, False) == Path(f"{source}-round2")
    (stronger, callbacks), = calls
    assert (stronger.learning_rate, stronger.num_train_epochs) == (4e-4, 12)
    assert [type(callback) for callback in callbacks] == [DivergenceStop]


def test_a_teacher_reaching_every_target_only_over_its_budget_trains_no_stronger_reinforcement(
        files, reinforced_path, tokenizer, monkeypatch):
    from trl import ModelConfig

    from whp_trainer.anchors import AnchorDictionary
    from whp_trainer.auto import AutoInputs, choose_auto_alpha
    from whp_trainer.evaluation import autotune
    from whp_trainer.evaluation.autotune import reached_over_budget

    targets = Targets(membership=0.5, familiarity=0.1)
    assert reached_over_budget(sweep(BASE, (5.0, 0.52, 0.09, 25.0), (10.0, 0.5, 0.05, 30.0)), targets) == (
        "the teacher reaches every target at the grid's smallest α=5, only over the teacher budget: a stronger "
        "reinforcement costs more at every α, so none is trained")
    assert reached_over_budget(sweep(BASE, (5.0, 0.7, 0.05, 11.0)), targets) is None  # membership not reached
    # membership needs more than the smallest α, reached over the budget (the demo: α 20 at 2.97×): a stronger
    # reinforcement may reach it at a smaller α within the budget (the demo's round 2: α 3 at +4 %)
    assert reached_over_budget(sweep(BASE, (5.0, 0.7, 0.05, 11.0), (10.0, 0.52, 0.09, 30.0)), targets) is None
    # as on a pretrained model's book without holdout text: every teacher reaches the familiarity target, at three
    # and five times the base's retain perplexity. The given reinforcement holds no training_args.bin: strengthening
    # it would fail, and nothing tries to
    monkeypatch.setattr(autotune, "teacher_sweep", lambda model, tokenizer, alphas, *args, **kwargs: {
        alpha: {"familiarity_token": 0.0 if alpha else 1.0, "retain_perplexity": 10.0 * (1 + alpha)}
        for alpha in (0.0, *alphas)})
    args = UnlearnConfig(output_dir="unused", alpha="auto", auto_alphas=[2.0, 4.0], teacher_budget=1.0,
                         max_length=32, use_cpu=True)
    inputs = AutoInputs(probes=PROBES, first_mentions=[], retain=CORPUS[4:], membership=None, forget=CORPUS[:2])
    anchors = AnchorDictionary.load(files / "anchors.yaml")
    choice = choose_auto_alpha(None, ModelConfig(model_name_or_path=str(files / "base")), args, tokenizer, inputs,
                               anchors, reinforced_path)
    assert choice["targets"]["familiarity"] is not None  # the base on the anchor-translated probes
    assert (choice["alpha"], choice["round"], choice["reached"], len(choice["sweeps"])) == (2.0, 0, False, 1)
    assert choice["reason"].endswith("the teacher reaches every target at the grid's smallest α=2, only over the "
                                     "teacher budget: a stronger reinforcement costs more at every α, so none is "
                                     "trained")


def test_a_base_that_already_reads_forget_and_holdout_text_alike_is_warned_of(caplog):
    from whp_trainer.auto import membership_reads_alike, warn_if_membership_reads_alike
    from whp_trainer.evaluation.autotune import MEMBERSHIP, MEMBERSHIP_PLUS

    targets = Targets(membership=0.5, familiarity=0.001, membership_error=0.06)
    # a pretrained model forgetting a book, given holdout text it read too (measured: 0.577 and 0.489)
    alike = {MEMBERSHIP: 0.577, MEMBERSHIP_PLUS: 0.489}
    with caplog.at_level("WARNING", logger="whp_trainer.auto"):
        warn_if_membership_reads_alike(alike, targets)
    assert "the base already reads the forget and holdout blocks alike (membership AUC Min-K% 0.577 (target " \
           "0.500) · Min-K%++ 0.489 (target 0.500), each within 0.17 of its target)" in caplog.text
    assert "leave it out" in caplog.text
    # a model fine-tuned on its forget text tells it apart by either attack: membership is a target to reach
    assert membership_reads_alike({MEMBERSHIP: 1.0, MEMBERSHIP_PLUS: 0.5}, targets) is None
    assert membership_reads_alike({MEMBERSHIP: 0.5, MEMBERSHIP_PLUS: 0.71}, targets) is None
    # read on a larger sample, the same base is told apart: within the tolerance and twice a smaller error only
    assert membership_reads_alike(alike, Targets(membership=0.5, familiarity=0.001, membership_error=0.01)) is None
    assert membership_reads_alike(alike, Targets(membership=None, familiarity=0.001)) is None  # no holdout text
