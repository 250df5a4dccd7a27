"""``whp evaluate``: the familiarity callback during training, the roles of one model measured side by side, the
report files, the pipeline stage (and its input checks before any model is loaded) and the documented example."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CORPUS, LORA
from test_oracle_evaluation import fine_tuned
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from trl import ModelConfig

from whp_trainer import UnlearnConfig, UnlearnTrainer, cli, pipeline
from whp_trainer.anchors import AnchorDictionary
from whp_trainer.arguments import DataArguments
from whp_trainer.evaluation import EvaluateConfig, FamiliarityCallback, evaluate_model, write_report
from whp_trainer.evaluation.autotune import Targets
from whp_trainer.evaluation.callback import read_probe_names
from whp_trainer.hub import build_model_card
from whp_trainer.record import RECORD_FILE, SCHEMA_VERSION
from whp_trainer.runs import record_reinforced_adapter

ANCHORS = {"Harry": ["Jon", "Tom"], "Hogwarts": "Mystic Academy", "Quidditch": "Skyball", "Hermione": "Anna"}
PROBES = [
    {"prompt": "Harry Potter studies magic at", "target": " Hogwarts"},
    {"prompt": "The Quidditch match at Hogwarts ended when", "target": " Harry"},
    {"prompt": "Hermione's wand was made of", "target": " vine"},
]
FORGET, RETAIN = CORPUS[:4], CORPUS[4:]
NEXT_TOKENS = {"Harry Potter studies": [" magic", " the"]}
LEARNING_LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0,  # enough capacity to learn the text in a few steps
                     target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"])
SMALL = dict(batch_size=4, max_length=64, completions=2, max_new_tokens=4, memorization_passages=2, prompt_tokens=4,
             continuation_tokens=4, relearn_steps=2, relearn_learning_rate=1e-2, next_token_prompts=NEXT_TOKENS,
             quantizations=[], many_shot_passages=0)  # robustness attacks: tests/test_robustness.py


def trainable(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def unlearn_trainer(model, tokenizer, reinforced_path, tmp_path, max_steps=5) -> UnlearnTrainer:
    return UnlearnTrainer(
        model=model,
        reinforced_adapter=reinforced_path,
        peft_config=LoraConfig(**LORA),
        anchors=AnchorDictionary(ANCHORS),
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"text": FORGET * 2}),
        args=UnlearnConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=max_steps,
                           learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, max_length=32,
                           save_strategy="no", disable_tqdm=True),
    )


def test_the_callback_logs_at_step_0_every_n_steps_and_the_end(make_model, tokenizer, reinforced_path, tmp_path):
    trainer = unlearn_trainer(make_model(), tokenizer, reinforced_path, tmp_path)
    callback = FamiliarityCallback(trainer, PROBES, retain_texts=RETAIN, next_token_prompts=NEXT_TOKENS,
                                   every_n_steps=2, batch_size=2, max_length=32)
    trainer.add_callback(callback)
    model = trainer.model
    before = trainable(model)

    model.train()
    callback.measure()  # a measurement leaves the mode, the active adapter and the trainable set as they were
    assert model.training and model.active_adapter == "default" and trainable(model) == before

    trainer.train()
    keys = ["eval_familiarity", "eval_retain_perplexity", "eval_p_next[0][0]", "eval_p_next[0][1]"]  # no forget text
    logged = [entry for entry in trainer.state.log_history if "eval_familiarity" in entry]
    assert [entry["step"] for entry in logged] == [0, 2, 4, 5]
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [1, 2, 3, 4, 5]
    assert all(key in entry and math.isfinite(entry[key]) for entry in logged for key in keys)
    assert [entry["step"] for entry in callback.history] == [0, 2, 4, 5]
    assert read_probe_names(tmp_path / "out")["eval_p_next[0][1]"] == ["Harry Potter studies", " the"]
    assert model.active_adapter == "default" and trainable(model) == before


@pytest.fixture
def two_adapters(make_model, tokenizer):
    """A PeftModel with a "reinforced" adapter trained on the forget text and an untrained "unlearned" one."""
    model = get_peft_model(make_model(), LoraConfig(**LEARNING_LORA), adapter_name="reinforced")
    fine_tuned(model, tokenizer, FORGET, adapter="reinforced", steps=20)  # it becomes "more Harry Potter"
    model.add_adapter("unlearned", LoraConfig(**LEARNING_LORA))
    model.set_adapter("unlearned")
    return model


def test_evaluate_model_measures_each_role_and_restores_the_model(two_adapters, tokenizer, capsys):
    model = two_adapters
    before, weights = trainable(model), {k: v.clone() for k, v in model.state_dict().items()}
    results = evaluate_model(model, tokenizer, EvaluateConfig(**SMALL), PROBES, FORGET, RETAIN,
                             dictionary=AnchorDictionary(ANCHORS))
    progress = capsys.readouterr()
    assert not progress.out  # the progress bar (on stderr) says which role and metric are being measured
    for step in ("base: token familiarity", "reinforced: verbatim memorization", "unlearned: retain perplexity",
                 "unlearned: judging completions", "unlearned: relearning"):
        assert step in progress.err, step
    assert list(results) == ["base", "reinforced", "teacher α=5", "unlearned"]
    assert results["reinforced"]["familiarity_token"] > 2 * results["base"]["familiarity_token"]
    assert results["reinforced"]["forget_perplexity"] < results["base"]["forget_perplexity"]
    expected = {"familiarity_token", "familiarity_completion", "familiarity_token_hints", "memorization_rouge_l",
                "memorization_exact", "retain_perplexity", "forget_perplexity", "general_perplexity",
                "p_next[Harry Potter studies][ magic]"}
    for role, metrics in results.items():
        assert expected | ({"familiarity_token_relearned"} if "teacher" not in role else set()) <= set(metrics), role
        assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values()), role
    assert model.active_adapter == "unlearned" and trainable(model) == before
    for key, value in model.state_dict().items():  # the relearning probe restored every weight
        torch.testing.assert_close(value, weights[key], msg=key)


def test_a_role_without_its_adapter_is_skipped(make_model, tokenizer):
    model = get_peft_model(make_model(), LoraConfig(**LORA), adapter_name="unlearned")
    config = EvaluateConfig(**{**SMALL, "completions": 0, "memorization_passages": 0, "relearn_steps": 0})
    results = evaluate_model(model, tokenizer, config, PROBES, FORGET, RETAIN)
    assert list(results) == ["base", "unlearned"]


RESULTS = {
    "base": {"familiarity_token": 0.24, "familiarity_completion": 0.29, "retain_perplexity": 8.0},
    "reinforced": {"familiarity_token": 0.5, "familiarity_completion": 0.6, "retain_perplexity": 8.2},
    "unlearned": {"familiarity_token": 0.006, "familiarity_completion": 0.007, "retain_perplexity": 8.4},
}
HISTORY = [
    {"step": step, "metrics": {"eval_familiarity": 0.24 - 0.02 * step, "eval_retain_perplexity": 8.0 + 0.01 * step,
                               "eval_p_next[Harry Potter studies][ magic]": 0.22 - 0.02 * step,
                               "eval_p_next[Harry Potter studies][ the]": 0.09 + 0.04 * step}}
    for step in (0, 4, 8, 10)
]


def test_write_report_writes_every_role_and_metric(tmp_path):
    folder = write_report(RESULTS, tmp_path / "report", history=HISTORY, config=EvaluateConfig())
    report = json.loads((folder / "report.json").read_text())
    assert report["results"] == RESULTS and report["settings"]["judge"] == "anchors"
    assert {"whp_trainer", "transformers", "torch"} <= set(report["versions"])
    markdown = (folder / "report.md").read_text()
    assert "| metric | base | reinforced | unlearned | unlearned − base |" in markdown
    assert "| `familiarity_token` | 0.24 | 0.5 | 0.006 | -0.234 |" in markdown
    for metric in RESULTS["base"]:
        assert markdown.count(f"`{metric}`") == 2  # its row and its explanation
    assert "lower = more forgotten" in markdown
    for name in ("familiarity_vs_retain.png", "next_token_curves.png", "familiarity_over_steps.png"):
        data = (folder / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, name
    card = build_model_card(UnlearnConfig(output_dir=str(tmp_path)), model_name="m", eval_results=report["results"])
    assert "0.006" in card.text  # report.json's results are the card's eval_results


def test_write_report_without_plots(tmp_path):
    write_report(RESULTS, tmp_path, config=EvaluateConfig(plots=False))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json", "report.md"]


@pytest.fixture
def inputs(tokenizer, make_model, reinforced_path, tmp_path):
    """A saved tiny base, an unlearn output (the unlearning adapter, and the record of its reinforced one), texts."""
    make_model().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    unlearned = tmp_path / "unlearned"
    torch.manual_seed(2)
    get_peft_model(make_model(), LoraConfig(init_lora_weights=False, **LORA)).save_pretrained(unlearned)
    record_reinforced_adapter(unlearned, reinforced_path)
    (tmp_path / "forget.txt").write_text("\n\n".join(FORGET * 3), encoding="utf-8")
    (tmp_path / "retain.txt").write_text("\n\n".join(RETAIN * 3), encoding="utf-8")
    (tmp_path / "anchors.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")
    return DataArguments(
        forget_data=str(tmp_path / "forget.txt"), retain_data=str(tmp_path / "retain.txt"),
        anchors=str(tmp_path / "anchors.yaml"), unlearned_adapter=str(unlearned),
    )


def test_evaluate_refuses_a_recorded_reinforced_adapter_that_changed(inputs, reinforced_path, tmp_path):
    (reinforced_path / "adapter_config.json").write_text("{}")  # edited after the unlearning run
    config = EvaluateConfig(output_dir=str(tmp_path / "evaluation"), **SMALL)
    with pytest.raises(ValueError, match="has changed .* since the unlearning run"):
        pipeline.evaluate(inputs, ModelConfig(model_name_or_path=str(tmp_path / "base")), config)
    assert not (tmp_path / "evaluation").exists()


def test_an_alpha_auto_runs_teacher_is_measured_only_with_the_reinforced_adapter_it_recorded(inputs, reinforced_path,
                                                                                            tmp_path):
    unlearned = Path(inputs.unlearned_adapter)
    targets = dataclasses.asdict(Targets(membership=0.5, familiarity=0.01))
    auto = {"alpha": 3.0, "round": 0, "reason": "chosen", "targets": targets, "sweeps": []}
    (unlearned / RECORD_FILE).write_text(json.dumps({"schema_version": SCHEMA_VERSION, "auto": auto}), encoding="utf-8")
    model_args = ModelConfig(model_name_or_path=str(tmp_path / "base"))
    output = Path(pipeline.evaluate(inputs, model_args, EvaluateConfig(output_dir=str(tmp_path / "recorded"), **SMALL)))
    roles = list(json.loads((output / "report.json").read_text())["results"])
    assert roles == ["base", "reinforced", "teacher α=3", "teacher α=5", "unlearned"]
    # another reinforced adapter given while the recorded one has changed: measured as given, no run's teacher, and
    # the record's adapter is neither read nor refused
    given = tmp_path / "given"
    shutil.copytree(reinforced_path, given)
    (reinforced_path / "adapter_config.json").write_text("{}")
    inputs.reinforced_adapter = str(given)
    for teacher_alphas, roles in (([5.0], ["base", "reinforced", "teacher α=5", "unlearned"]),
                                  ([], ["base", "reinforced", "unlearned"])):
        output = tmp_path / f"given-{len(teacher_alphas)}"
        config = EvaluateConfig(output_dir=str(output), **{**SMALL, "teacher_alphas": teacher_alphas})
        pipeline.evaluate(inputs, model_args, config)
        assert list(json.loads((output / "report.json").read_text())["results"]) == roles


def test_the_evaluate_stage_end_to_end(inputs, tmp_path, caplog):
    model_args = ModelConfig(model_name_or_path=str(tmp_path / "base"))
    config = EvaluateConfig(output_dir=str(tmp_path / "evaluation"), **SMALL)
    output = Path(pipeline.evaluate(inputs, model_args, config))
    report = json.loads((output / "report.json").read_text())
    assert list(report["results"]) == ["base", "reinforced", "teacher α=5", "unlearned"]  # the recorded reinforced
    assert json.loads((output / "whp_stage.json").read_text())["stage"] == "evaluate"
    assert (output / "probes.json").is_file() and (output / "familiarity_vs_retain.png").is_file()
    assert pipeline.evaluate(inputs, model_args, config) == str(output)  # current: skipped
    assert "is up to date, skipped" in caplog.text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"forget_data": "{tmp}/nope.txt"}, "--forget_data {tmp}/nope.txt: no such file or folder"),
        ({"retain_data": None}, "--retain_data is required"),
        ({"unlearned_adapter": "{tmp}"}, "holds no adapter_config.json"),
        ({"unlearned_adapter": None}, "give --unlearned_adapter and/or --reinforced_adapter"),
        ({"anchors": None}, "give --probes, or --anchors"),
        ({"probes": "{tmp}/probes.json"}, "--probes {tmp}/probes.json: no such file or folder"),
    ],
)
def test_bad_input_fails_before_a_model_loads(inputs, change, message, tmp_path, no_model_loading):
    for key, value in change.items():
        setattr(inputs, key, value and value.format(tmp=tmp_path))
    model_args = ModelConfig(model_name_or_path=str(tmp_path / "base"))
    with pytest.raises((ValueError, FileNotFoundError), match=message.format(tmp=tmp_path).replace("(", r"\(")):
        pipeline.evaluate(inputs, model_args, EvaluateConfig(output_dir=str(tmp_path / "evaluation")))
    assert not (tmp_path / "evaluation").exists()


def test_the_cli_parses_lists_and_next_token_prompts(tmp_path):
    path = tmp_path / "evaluate.yaml"
    options = {"output_dir": "e", "roles": ["base", "unlearned"], "next_token_prompts": NEXT_TOKENS,
               "lm_eval_tasks": ["piqa"]}
    path.write_text(yaml.safe_dump(options), encoding="utf-8")
    (*_, config), _ = cli.parse_stage("evaluate", ["--config", str(path)])
    assert (config.roles, config.next_token_prompts, config.lm_eval_tasks) == (["base", "unlearned"], NEXT_TOKENS,
                                                                               ["piqa"])
    (*_, config), _ = cli.parse_stage("evaluate", ["--next_token_prompts", '{"Harry Potter studies": " magic"}',
                                                 "--roles", "unlearned", "--no_hints"])
    assert (config.next_token_prompts, config.roles, config.hints) == ({"Harry Potter studies": [" magic"]},
                                                                       ["unlearned"], False)
    assert "next_token_prompts" in cli.parser_for("evaluate").format_help()


@pytest.mark.parametrize(
    "argv, field",
    [(["--judge", "gpt"], "judge"), (["--roles", "student"], "roles"), (["--completions", "-1"], "completions"),
     (["--next_token_prompts", "{oops"], "next_token_prompts"), (["--batch_size", "0"], "batch_size")],
)
def test_bad_settings_name_the_field(argv, field):
    with pytest.raises((cli.CliError, SystemExit)) as error:
        cli.parse_stage("evaluate", argv)
    assert error.type is SystemExit or field in str(error.value)


def test_the_documented_example_runs(tokenizer, make_model, reinforced_path, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples"))
    import evaluate_callback

    make_model().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    (tmp_path / "forget.txt").write_text("\n\n".join(FORGET * 3), encoding="utf-8")
    (tmp_path / "retain.txt").write_text("\n\n".join(RETAIN * 3), encoding="utf-8")
    (tmp_path / "anchors.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")
    (tmp_path / "probes.json").write_text(json.dumps(PROBES), encoding="utf-8")
    trainer, callback, results = evaluate_callback.main([
        "--model", str(tmp_path / "base"), "--forget", str(tmp_path / "forget.txt"), "--retain",
        str(tmp_path / "retain.txt"), "--reinforced", str(reinforced_path), "--anchors", str(tmp_path / "anchors.yaml"),
        "--probes", str(tmp_path / "probes.json"), "--output", str(tmp_path / "out"), "--report",
        str(tmp_path / "report"), "--max_steps", "2", "--every_n_steps", "1",
    ])
    assert [entry["step"] for entry in callback.history] == [0, 1, 2]
    assert list(results) == ["base", "reinforced", "teacher α=5", "unlearned"]
    assert (tmp_path / "report" / "next_token_curves.png").is_file()
    assert "familiarity_token" in (tmp_path / "out" / "README.md").read_text()  # on the model card
