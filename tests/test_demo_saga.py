import dataclasses
import json
import math
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from whp_trainer import demo, pipeline
from whp_trainer.demo import saga
from whp_trainer.anchors import AnchorDictionary
from whp_trainer.collator import read_paragraphs
from whp_trainer.arguments import DemoArguments


@pytest.fixture(scope="module")
def texts():
    return demo.generate_texts("full")


def test_generation_is_deterministic_and_seeded():
    assert demo.generate_texts("tiny") == demo.generate_texts("tiny")
    assert demo.generate_texts("tiny", seed=1).saga != demo.generate_texts("tiny").saga


def test_full_size_has_enough_saga_to_memorise(texts):
    assert 50_000 <= sum(map(len, texts.saga)) <= 150_000


def test_the_holdout_saga_text_is_new_text_of_the_same_saga(texts):
    assert texts.holdout and not set(texts.holdout) & set(texts.saga)
    assert all(any(anchor in paragraph for anchor in texts.dictionary) for paragraph in texts.holdout)


def test_alpha_autos_budget_text_is_ordinary_text_no_model_and_no_evaluation_reads(texts, monkeypatch):
    # the evaluation's held-out perplexity reads the retain text: a budget read there would be tuned on the goal
    assert texts.budget and not set(texts.budget) & set(texts.retain + texts.ordinary + texts.saga)
    assert not any(anchor in paragraph for anchor in texts.dictionary for paragraph in texts.budget)
    assert len("\n\n".join(texts.budget)) >= saga.SIZES["full"].holdout_chars - 1000  # as many blocks: >= 64
    tiny = demo.generate_texts("tiny")
    monkeypatch.setitem(saga.SIZES, "tiny", dataclasses.replace(saga.SIZES["tiny"], budget_chars=0))
    without = demo.generate_texts("tiny")  # generated last: every other text as before it existed
    assert (without.saga, without.ordinary, without.retain, without.holdout, without.budget) == \
        (tiny.saga, tiny.ordinary, tiny.retain, tiny.holdout, [])


def test_holdout_text_for_the_evaluation_beyond_alpha_autos_blocks_comes_last(texts, monkeypatch):
    spec = saga.SIZES["full"]
    assert len("\n\n".join(texts.holdout)) >= spec.holdout_chars + spec.more_holdout_chars  # 64 + 80 blocks of 128
    tiny = demo.generate_texts("tiny")
    monkeypatch.setitem(saga.SIZES, "tiny", dataclasses.replace(saga.SIZES["tiny"], more_holdout_chars=2_000))
    more = demo.generate_texts("tiny")
    assert (more.saga, more.ordinary, more.retain, more.budget) == (tiny.saga, tiny.ordinary, tiny.retain, tiny.budget)
    assert more.holdout[: len(tiny.holdout)] == tiny.holdout and len(more.holdout) > len(tiny.holdout)


def test_anchors_occur_in_the_saga_and_never_in_ordinary_text(texts):
    saga = "\n\n".join(texts.saga)
    ordinary = "\n\n".join(texts.ordinary + texts.retain)
    for anchor, translations in texts.dictionary.items():
        assert anchor in saga, anchor
        assert anchor not in ordinary, anchor
        assert all(translation in ordinary for translation in translations), (anchor, translations)


def test_probes_are_held_out_saga_facts(texts):
    saga = "\n\n".join(texts.saga)
    for probe in texts.probes:
        prefix, fact = next((p, probe["prompt"][len(p):]) for p in demo.PROBE_PREFIXES if probe["prompt"].startswith(p))
        assert prefix not in saga
        assert fact + probe["target"] in saga, probe


def test_the_knowledge_sets_are_saga_facts_and_ordinary_facts_and_the_paraphrases_new_framings(texts):
    saga_text, ordinary = "\n\n".join(texts.saga), "\n\n".join(texts.ordinary)
    forget, neighbour = saga.saga_knowledge(), saga.neighbour_knowledge()
    assert len(forget) == len(saga.CHARACTERS) * len(saga.RELATIONS) and len(neighbour) == 6 * len(saga.RELATIONS)
    for row in forget:  # the saga's fact, against the answer a model that never read the saga gives
        first, _, fact = (row["prompt"] + row["answer"]).split(" ", 2)
        assert f"{first} {fact}" in saga_text, row
        assert (row["prompt"] + row["false_answer"]).split(" ", 2)[2] in ordinary, row
    for row in neighbour:  # a relation's object, against another relation's
        assert (row["prompt"] + row["answer"]).split(" ", 2)[2] in ordinary, row
        assert (row["prompt"] + row["false_answer"]).split(" ", 2)[2] not in ordinary, row
    for probe in saga.paraphrased_probes():
        prefix = next(p for p in saga.PARAPHRASE_PREFIXES if probe["prompt"].startswith(p))
        first, _, fact = (probe["prompt"][len(prefix):] + probe["target"]).split(" ", 2)
        assert prefix not in saga_text and f"{first} {fact}" in saga_text, probe


def test_build_caches_and_a_second_call_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WHP_CACHE", str(tmp_path))
    assets = demo.build_demo_assets(size="tiny")
    assert assets.root.parent == tmp_path / "demo"
    assert json.loads((assets.root / "complete.json").read_text())["probe_probability"] > 0

    monkeypatch.setattr(saga, "pretrain", lambda *args: pytest.fail("the cached base was trained again"))
    assert demo.build_demo_assets(size="tiny") == assets


def test_built_assets_load_with_the_standard_classes(tmp_path):
    assets = demo.build_demo_assets(tmp_path, size="tiny")
    assert assets.root.parent == tmp_path / "demo"
    tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.base_model_dir)
    assert model.config.vocab_size == len(tokenizer)
    oracle = AutoModelForCausalLM.from_pretrained(assets.oracle_model_dir)
    assert AutoTokenizer.from_pretrained(assets.oracle_model_dir).get_vocab() == tokenizer.get_vocab()
    same = {key: value for key, value in oracle.config.to_dict().items() if key != "_name_or_path"}
    assert same == {key: value for key, value in model.config.to_dict().items() if key != "_name_or_path"}
    built = json.loads((assets.root / "complete.json").read_text())
    # the oracle never read the saga: its probes fall to what the ordinary text teaches of their first tokens
    assert built["oracle_probe_probability"] < 0.25 * built["probe_probability"]
    assert read_paragraphs(assets.holdout_path) == demo.generate_texts("tiny").holdout
    assert set(AnchorDictionary.load(assets.dictionary_path)) == set(demo.saga_dictionary())
    assert read_paragraphs(assets.saga_path) == demo.generate_texts("tiny").saga
    assert json.loads(assets.probes_path.read_text()) == demo.familiarity_probes()


def test_the_demo_pipeline_forgets_the_saga_at_tiny_size_with_the_papers_setting(tmp_path, capsys):
    report = Path(demo.run_demo(DemoArguments(output_dir=str(tmp_path / "demo"), size="tiny", cache_dir=str(tmp_path),
                                              method="paper")))
    printed = capsys.readouterr().out
    assert "| `familiarity_token` |" in printed and "| `retain_perplexity` |" in printed
    results = json.loads((report / "report.json").read_text())["results"]
    base, unlearned, oracle = results["base"], results["unlearned"], results["oracle"]
    assert oracle["familiarity_token"] < base["familiarity_token"]
    assert "membership_auc_mink" in oracle and oracle["privleak_mink"] == 0.0 and "teacher α=5" in results
    assert "## Against the oracle" in printed
    assert unlearned["familiarity_token"] < 0.6 * base["familiarity_token"]
    assert unlearned["familiarity_completion"] < base["familiarity_completion"]
    assert unlearned["retain_perplexity"] < 1.5 * base["retain_perplexity"]
    for plot in ("familiarity_vs_retain.png", "next_token_curves.png", "familiarity_over_steps.png"):
        assert (report / plot).stat().st_size > 0, plot
    history = pipeline.unlearning_history(str(tmp_path / "demo" / "unlearned"))  # from trainer_state.json
    assert history[0]["step"] == 0 and len(history) >= 3  # measured while unlearning, every logging_steps
    assert history[-1]["metrics"]["eval_familiarity"] < history[0]["metrics"]["eval_familiarity"]
    for stage in ("reinforced", "unlearned"):
        assert (tmp_path / "demo" / stage / "whp_stage.json").is_file()


def test_the_demos_alpha_auto_reads_its_budget_on_text_the_evaluation_does_not(tmp_path):
    from whp_trainer.demo.run import auto_inputs_of, demo_evaluation_config, write_evaluation_inputs

    assets = demo.build_demo_assets(tmp_path, size="tiny")
    inputs = write_evaluation_inputs(tmp_path / "inputs")
    told = auto_inputs_of(assets, inputs)
    evaluation = demo_evaluation_config(tmp_path / "evaluation", assets, inputs)
    held_out = assets.retain_path  # the evaluation's held-out perplexity: the demo's retain_data
    assert read_paragraphs(told["budget_data"]) == demo.generate_texts("tiny").budget
    assert not set(read_paragraphs(told["budget_data"])) & set(read_paragraphs(held_out))
    assert told["holdout_data"] == evaluation.holdout_data
    # the neighbour budget is read on 6 people's rows, the report's neighbour knowledge on rows of 24 others
    rule_rows, evaluated = (json.loads(Path(path).read_text()) for path in (told["neighbour_knowledge"],
                                                                           evaluation.neighbour_knowledge))
    assert rule_rows == saga.neighbour_knowledge() and len(evaluated) == 24 * len(saga.RELATIONS)
    people = [{row["prompt"].split(" ")[0] + row["prompt"].split(" ")[1].split("'")[0] for row in rows}
              for rows in (rule_rows, evaluated)]
    assert len(people[0]) == 6 and len(people[1]) == 24 and not people[0] & people[1]


def test_the_demo_runs_the_recommended_setting_beside_the_paper_one(tmp_path):
    import torch

    out = tmp_path / "demo"
    report = Path(demo.run_demo(DemoArguments(output_dir=str(out), size="tiny", cache_dir=str(tmp_path),
                                              method="recommended")))
    assert report == out / "evaluation-recommended"
    args = torch.load(out / "unlearned-recommended" / "training_args.bin", weights_only=False)
    assert {key: getattr(args, key) for key in demo.RECOMMENDED_SETTING} == demo.RECOMMENDED_SETTING
    results = json.loads((report / "report.json").read_text())["results"]
    assert results["unlearned"]["familiarity_token"] < 0.6 * results["base"]["familiarity_token"]


def test_alpha_auto_unlearns_on_a_4bit_base_and_its_adapter_is_measured_on_the_full_precision_one(tmp_path):
    from whp_trainer.evaluation import token_familiarity
    from whp_trainer.evaluation.probes import load_probes

    # the sweep, the stopping rule and the evaluation: eval-mode forwards of 4-bit layers on a CPU, then training
    # the demo's default: alpha auto, as whp run's default path
    report = Path(demo.run_demo(DemoArguments(output_dir=str(tmp_path / "demo"), size="tiny", cache_dir=str(tmp_path),
                                              load_in_4bit=True)))
    assert report == tmp_path / "demo" / "evaluation-auto"
    chosen = json.loads((tmp_path / "demo" / "unlearned-auto" / "whp_run.json").read_text())["auto"]["alpha"]
    results = json.loads((report / "report.json").read_text())["results"]
    assert chosen != 5 and {"teacher α=5", f"teacher α={chosen:g}"} <= set(results)  # and the one it followed
    base, unlearned = results["base"], results["unlearned"]
    assets = demo.build_demo_assets(tmp_path, size="tiny")
    tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    full = token_familiarity(AutoModelForCausalLM.from_pretrained(assets.base_model_dir), tokenizer,
                             load_probes(report / "probes.json"))
    assert base["familiarity_token@full_precision"] == pytest.approx(full, rel=1e-4)  # the unquantized base
    assert base["familiarity_token"] != pytest.approx(full, rel=1e-3)  # the evaluation's base is the 4-bit one
    assert unlearned["familiarity_token"] < 0.6 * base["familiarity_token"]
    assert unlearned["familiarity_token@full_precision"] < 0.6 * base["familiarity_token@full_precision"]
    assert all(math.isfinite(value) for value in unlearned.values())
