"""Trust, third pass (issue 22, cases 12-20): no stage hands back an "unlearned" model that is not one, bad input is
refused before any model loads with the file and key named, and cards describe the model they come with."""

import json
from pathlib import Path

import pytest
import torch
from conftest import LORA
from datasets import Dataset
from peft import LoraConfig
from test_cli import ANCHORS, TRAINING, files, run_main, write_config  # noqa: F401  (files is a fixture)
from test_trainer import StopAfter, dataset, hand_collate, lora_state, make_example  # noqa: F401  (dataset: fixture)
from test_trust import flags, hub, unlearn_argv  # noqa: F401  (hub is a fixture)
from transformers import Trainer, TrainerCallback

from whp_trainer import UnlearnConfig, UnlearnTrainer, cli
from whp_trainer.runs import STAGE_FILE


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """The model's weights must not load (its tokenizer may: these checks need it)."""
    from whp_trainer import pipeline

    monkeypatch.setattr(pipeline, "load_base_model", lambda *a, **k: pytest.fail("the model loaded before the check"))


# ------------------------------------------------------------------------- 12, 13: nothing that cannot train


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--learning_rate", "0"], "learning_rate=0.0: must be a finite number > 0"),
        (["--learning_rate", "-0.01"], "learning_rate=-0.01: must be a finite number > 0"),
        (["--learning_rate", "nan"], "learning_rate=nan: must be a finite number > 0"),
        (["--num_train_epochs", "0", "--max_steps", "-1"], "num_train_epochs=0.0 with max_steps=-1 trains no step"),
        (["--alpha", "nan"], "alpha=nan: must be a finite number"),
        (["--alpha", "inf"], "alpha=inf: must be a finite number"),
        (["--temperature", "nan"], "temperature=nan: must be a finite number"),
        (["--report_to", "tensorbord"], "report_to: unknown tracker(s) ['tensorbord']"),
    ],
)
def test_settings_that_cannot_train_are_refused_before_the_model_loads(extra, message, files, tmp_path, capsys,
                                                                        no_model_loading):
    error = run_main(capsys, *unlearn_argv(files, tmp_path / "out", *extra))
    assert error.startswith("whp: error: whp unlearn: ") and message in error, error
    assert not (tmp_path / "out").exists()


def test_reinforce_refuses_a_learning_rate_of_zero(files, tmp_path, capsys, no_model_loading):
    error = run_main(capsys, "reinforce", "--model_name_or_path", str(files / "base"), "--forget_data",
                     str(files / "forget.txt"), "--output_dir", str(tmp_path / "r"), "--learning_rate", "0")
    assert "ReinforceConfig.learning_rate=0.0: must be a finite number > 0" in error


def test_a_forget_text_made_of_anchors_only_is_refused_before_the_model_loads(files, tmp_path, capsys,
                                                                              no_weights_loaded):
    forget = tmp_path / "anchors_only.txt"
    forget.write_text("Hogwarts Hogwarts Hogwarts Hogwarts", encoding="utf-8")
    argv = unlearn_argv(files, tmp_path / "out")
    argv[argv.index(str(files / "forget.txt"))] = str(forget)
    error = run_main(capsys, *argv)
    assert "no position of the 1 training blocks gets a loss" in error, error


def test_a_forget_text_too_short_for_one_block_names_the_file(files, tmp_path, capsys, no_weights_loaded):
    forget = tmp_path / "one_word.txt"
    forget.write_text("a", encoding="utf-8")
    argv = unlearn_argv(files, tmp_path / "out")
    argv[argv.index(str(files / "forget.txt"))] = str(forget)
    error = run_main(capsys, *argv)
    assert f"--forget_data {forget}: too short, no block of 2 tokens or more" in error, error


def test_a_run_whose_adapter_did_not_move_is_not_marked_finished(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Trainer, "training_step", lambda self, *args, **kwargs: torch.tensor(0.0))  # no gradient
    out = tmp_path / "out"
    error = run_main(capsys, *unlearn_argv(files, out))
    assert "did not move from its initial weights" in error and "not marked finished" in error, error
    assert not (out / STAGE_FILE).exists()


def test_an_alpha_auto_run_that_did_not_unlearn_is_not_marked_finished(files, reinforced_path, tmp_path, capsys):
    out = tmp_path / "out"
    auto = ("--alpha", "auto", "--reinforced_adapter", str(reinforced_path), "--retain_data", str(files / "retain.txt"),
            "--probes", str(files / "probes.json"), "--auto_alphas", "5", "--auto_reinforce_rounds", "0",
            "--auto_eval_steps", "1", "--learning_rate", "1e-9")  # steps too small to move any reading
    error = run_main(capsys, *unlearn_argv(files, out, *auto))
    assert "the run did not unlearn: the weights it kept went less than 10% (familiarity_share) of the way from " \
           "the base to every target (familiarity_token 0%" in error, error
    assert f"are in {out}, not marked finished" in error and "The student stopped at step" in error
    assert not (out / STAGE_FILE).exists()
    record = json.loads((out / "whp_run.json").read_text())  # kept for the user to read why
    assert max(record["auto"]["stopping"]["moved"].values()) < 0.1
    error = run_main(capsys, "evaluate", "--model_name_or_path", str(files / "base"), "--unlearned_adapter", str(out),
                     "--forget_data", str(files / "forget.txt"), "--output_dir", str(tmp_path / "report"))
    assert "never finished (killed, failed, or refused" in error, error  # nor does anything export or push it


def test_a_refused_alpha_auto_run_is_refused_again_on_rerun_and_redone_with_overwrite(files, reinforced_path, tmp_path,
                                                                                      capsys):
    out = tmp_path / "out"
    auto = ("--alpha", "auto", "--reinforced_adapter", str(reinforced_path), "--retain_data", str(files / "retain.txt"),
            "--probes", str(files / "probes.json"), "--auto_alphas", "5", "--auto_reinforce_rounds", "0",
            "--auto_eval_steps", "1")
    refused = unlearn_argv(files, out, *auto, "--learning_rate", "1e-9")
    first = run_main(capsys, *refused)
    record = (out / "whp_run.json").read_text()
    again = run_main(capsys, *refused)  # the same command resumes the same run and comes to the same refusal
    assert "the run did not unlearn" in first and "the run did not unlearn" in again, again
    assert (out / "whp_run.json").read_text() == record and not (out / STAGE_FILE).exists()
    error = run_main(capsys, *unlearn_argv(files, out, *auto, "--learning_rate", "3e-2"))
    assert "holds the output of a run with other settings" in error and "--overwrite" in error, error
    cli.main(unlearn_argv(files, out, *auto, "--learning_rate", "3e-2", "--overwrite"))
    assert json.loads((out / STAGE_FILE).read_text())["stage"] == "unlearn"
    assert json.loads((out / "whp_run.json").read_text())["training"]["learning_rate"] == 3e-2


def test_a_diverged_run_is_not_marked_finished(files, tmp_path, capsys, monkeypatch):
    step = Trainer.training_step

    def diverging_step(self, model, *args, **kwargs):  # the loss overflowed: every gradient is NaN
        loss = step(self, model, *args, **kwargs)
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad.fill_(float("nan"))
        return loss

    monkeypatch.setattr(Trainer, "training_step", diverging_step)
    out = tmp_path / "out"
    error = run_main(capsys, *unlearn_argv(files, out, "--max_grad_norm", "0"))
    assert "holds NaN or infinite weights" in error and "the run diverged" in error, error
    assert not (out / STAGE_FILE).exists()


# ---------------------------------------------------------------------------------- 14: resume, bit-identical


class RaiseRetainWeight(TrainerCallback):
    """What alpha auto's stopping rule does when a budget is over: the trainer's retain weight raised mid-run."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.trainer.retain_weight = 4.0


@pytest.mark.parametrize("retain_weight, raised, projection",
                         [(0.0, False, False), (1.0, False, False), (1.0, True, False), (1.0, False, True)])
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(make_model, reinforced_path, dataset, tokenizer,
                                                                 tmp_path, retain_weight, raised, projection):
    retain = Dataset.from_list([{"input_ids": make_example(100 + seed, 9, len(tokenizer))["input_ids"]}
                                for seed in range(5)])  # 5 blocks, batches of 4: passes overlap batches

    def trainer(folder: Path):
        built = UnlearnTrainer(
            model=make_model(), reinforced_adapter=reinforced_path, peft_config=LoraConfig(**LORA),
            train_dataset=dataset, data_collator=hand_collate, processing_class=tokenizer,
            retain_dataset=retain if retain_weight else None,
            args=UnlearnConfig(output_dir=str(folder), per_device_train_batch_size=4, learning_rate=1e-2,
                               max_steps=4, save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, seed=0,
                               data_seed=0, retain_weight=retain_weight, lr_scheduler_type="constant",
                               retain_projection=projection),
        )
        if raised:
            built.add_callback(RaiseRetainWeight(built))
        return built

    straight = trainer(tmp_path / "straight")
    straight.train()
    interrupted = trainer(tmp_path / "resumed")
    interrupted.add_callback(StopAfter(2))
    interrupted.train()
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=True)
    a, b = lora_state(straight.model, "default"), lora_state(resumed.model, "default")
    assert all(torch.equal(a[key], b[key]) for key in a)


# ------------------------------------------------------------------------------ 17, 18: bad input, named early


@pytest.mark.parametrize(
    "command, options, message",
    [
        ("unlearn", {"dtype": "banana"}, "dtype: expected one of ['auto', 'bfloat16', 'float16', 'float32'], got 'banana'"),
        ("reinforce", {"packing_strategy": "banana"}, "packing_strategy: expected one of ['bfd', 'bfd_split', 'wrapped']"),
        ("anchors", {"method": "banana"}, "method: expected one of ['statistics', 'llm', 'both'], got 'banana'"),
        ("unlearn", {"learning_rate": -1.0}, "UnlearnConfig.learning_rate=-1.0: must be a finite number > 0"),
        ("unlearn", {"report_to": "tensorbord"}, "report_to: unknown tracker(s) ['tensorbord']"),
    ],
)
def test_a_config_files_bad_choice_or_range_names_the_file_and_the_key(command, options, message, tmp_path, capsys,
                                                                        no_model_loading):
    config = write_config(tmp_path / "config.yaml", {"output_dir": str(tmp_path / "out"), **options})
    error = run_main(capsys, command, "--config", str(config))
    assert error.startswith("whp: error: ") and f"{config}: " in error and message in error, error


def test_a_config_file_with_a_key_given_twice_is_refused(tmp_path, capsys, no_model_loading):
    config = tmp_path / "config.yaml"
    config.write_text("alpha: 5\nlearning_rate: 0.001\nalpha: 1\n", encoding="utf-8")
    error = run_main(capsys, "unlearn", "--config", str(config))
    assert f"{config}: not valid YAML at line 3" in error and "key 'alpha' given twice (lines 1 and 3)" in error
    run = tmp_path / "run.yaml"
    run.write_text("unlearn:\n  alpha: 5\nreinforce: {}\nunlearn:\n  alpha: 1\n", encoding="utf-8")
    assert "key 'unlearn' given twice (lines 1 and 4)" in run_main(capsys, "run", str(run))


def test_max_length_beyond_the_models_positions_is_refused_before_the_model_loads(files, tmp_path, capsys,
                                                                                  no_model_loading):
    error = run_main(capsys, *unlearn_argv(files, tmp_path / "out", "--max_length", "4096"))
    assert "--max_length 4096 is beyond the model's 1024 positions" in error, error


def test_an_unreachable_llm_url_is_one_clear_error(files, tmp_path, capsys, no_model_loading):
    error = run_main(capsys, "anchors", "--method", "llm", "--llm_url", "http://127.0.0.1:9/v1", "--forget_data",
                     str(files / "forget.txt"), "--output", str(tmp_path / "candidates.yaml"))
    assert error.startswith("whp: error: whp anchors: --llm_url http://127.0.0.1:9/v1: cannot be reached"), error
    assert not (tmp_path / "candidates.yaml").exists()


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"Harry": "Jon", "Jon": "Bob"}, "translation 'Jon' of 'Harry' is itself an anchor"),
        ({"Hogwarts": "Hogwarts School"}, "translation 'Hogwarts School' contains its anchor 'Hogwarts'"),
    ],
)
def test_a_translation_that_is_an_anchor_or_holds_its_anchor_is_refused(entries, message, files, tmp_path, capsys,
                                                                        no_model_loading):
    dictionary = write_config(tmp_path / "anchors.yaml", entries)
    argv = unlearn_argv(files, tmp_path / "out")
    argv[argv.index(str(files / "anchors.yaml"))] = str(dictionary)
    error = run_main(capsys, *argv)
    assert f"{dictionary}, line" in error and message in error, error


# ------------------------------------------------------------------- 16: an oracle and a base that fit the model


@pytest.fixture(scope="module")
def unlearned(files, tmp_path_factory):
    """A finished `whp unlearn` output on the `files` base."""
    out = tmp_path_factory.mktemp("unlearned") / "out"
    cli.main(unlearn_argv(files, out))
    return out


@pytest.fixture(scope="module")
def other_bases(files, tokenizer, tmp_path_factory):
    """Bases that do not fit the `files` one: fewer embeddings than its tokenizer has tokens, and more."""
    from whp_trainer.toy import tiny_llama

    root = tmp_path_factory.mktemp("other_bases")
    for name, rows in (("smaller", 100), ("larger", 512)):
        model = tiny_llama(tokenizer, seed=3)
        model.resize_token_embeddings(rows)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def evaluate_argv(files: Path, tmp_path: Path, unlearned: Path, oracle: Path | None = None) -> list[str]:
    return ["evaluate", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
            "--retain_data", str(files / "retain.txt"), "--probes", str(files / "probes.json"), "--unlearned_adapter",
            str(unlearned), *(["--oracle_model", str(oracle)] if oracle else []), "--output_dir",
            str(tmp_path / "evaluation")]


def test_an_adapter_folder_or_another_vocabulary_is_refused_as_the_oracle(files, unlearned, other_bases, tmp_path,
                                                                          capsys, no_weights_loaded):
    error = run_main(capsys, *evaluate_argv(files, tmp_path, unlearned, unlearned))
    assert f"--oracle_model {unlearned} is a PEFT adapter (adapter_config.json), not a full model" in error, error
    error = run_main(capsys, *evaluate_argv(files, tmp_path, unlearned, other_bases / "larger"))
    assert "has a vocabulary of 512 tokens, --model_name_or_path 400" in error, error
    assert not (tmp_path / "evaluation").exists()


@pytest.mark.parametrize("base, message", [
    ("smaller", "has 100 embeddings but the tokenizer saved with the export has 400 tokens"),
    ("larger", "(vocabulary 512, hidden size 64) is not like"),
])
def test_export_refuses_a_base_that_does_not_fit_the_adapter(base, message, files, unlearned, other_bases, tmp_path,
                                                             capsys, no_weights_loaded):
    error = run_main(capsys, "export", "--folder", str(unlearned), "--merged_dir", str(tmp_path / "merged"),
                     "--base_model", str(other_bases / base))
    assert message in error, error
    assert not (tmp_path / "merged").exists()


# ------------------------------------------------------------------------- 15: a local base is its weights


def test_a_base_whose_weights_changed_in_place_is_not_up_to_date(files, tokenizer, tmp_path, capsys, caplog):
    import shutil

    from whp_trainer.toy import tiny_llama

    base = tmp_path / "base"
    shutil.copytree(files / "base", base)
    argv = unlearn_argv(files, tmp_path / "out")
    argv[argv.index(str(files / "base"))] = str(base)
    cli.main(argv)
    cli.main(argv)
    assert "is up to date, skipped" in caplog.text
    caplog.clear()
    tiny_llama(tokenizer, seed=5).save_pretrained(base)  # same path, same config, other weights
    error = run_main(capsys, *argv)
    assert "up to date" not in caplog.text and "holds the output of a run with other settings" in error, error


def test_the_target_cache_key_follows_a_local_bases_weights(files, tokenizer, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    from whp_trainer.cache import target_cache_key
    from whp_trainer.toy import tiny_llama

    base = tmp_path / "base"
    shutil.copytree(files / "base", base)
    blocks = Dataset.from_dict({"text": ["Harry went to Hogwarts with Ron and Hermione."] * 4})

    def key() -> str:
        trainer = UnlearnTrainer(
            model=AutoModelForCausalLM.from_pretrained(base), anchors=ANCHORS, peft_config=LoraConfig(**LORA),
            processing_class=tokenizer, train_dataset=blocks,
            args=UnlearnConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, max_length=32),
        )
        return target_cache_key(trainer, blocks)

    before = key()
    assert key() == before
    tiny_llama(tokenizer, seed=5).save_pretrained(base)
    assert key() != before


# ---------------------------------------------------------------------------- 19: every error names its file


@pytest.fixture
def unlearned_copy(unlearned, tmp_path):
    import shutil

    return Path(shutil.copytree(unlearned, tmp_path / "unlearned"))


def test_a_corrupt_json_the_package_reads_is_named(files, unlearned_copy, tmp_path, capsys, no_weights_loaded):
    (unlearned_copy / "whp_reinforced.json").write_text('{"source": ', encoding="utf-8")
    error = run_main(capsys, *evaluate_argv(files, tmp_path, unlearned_copy))
    assert f"{unlearned_copy / 'whp_reinforced.json'}: not valid JSON (line 1, column 12" in error, error

    report = tmp_path / "report.json"
    report.write_text("{results: 1}", encoding="utf-8")
    error = run_main(capsys, "push", "--folder", str(unlearned_copy), "--repo_id", "me/model", "--token", "hf_x",
                     "--eval_report", str(report))
    assert f"{report}: not valid JSON (line 1, column 2" in error, error

    (unlearned_copy / "whp_run.json").write_text("[1, 2]", encoding="utf-8")
    error = run_main(capsys, "export", "--folder", str(unlearned_copy), "--merged_dir", str(tmp_path / "merged"))
    assert f"{unlearned_copy / 'whp_run.json'}: expected a JSON object, got list" in error, error


def test_a_corrupt_record_of_what_alpha_autos_rule_read_is_named_before_any_model_loads(
        files, unlearned_copy, tmp_path, capsys, no_weights_loaded):
    (unlearned_copy / "whp_rule_sample.json").write_text('{"max_length": ', encoding="utf-8")
    error = run_main(capsys, *evaluate_argv(files, tmp_path, unlearned_copy))
    assert f"{unlearned_copy / 'whp_rule_sample.json'}: not valid JSON" in error, error


def test_a_folder_without_data_files_and_a_corrupt_parquet_are_named(files, tmp_path, capsys, no_model_loading):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "chapter1.md").write_text("# Harry went to Hogwarts", encoding="utf-8")
    parquet = tmp_path / "forget.parquet"
    parquet.write_bytes(b"PAR1 this is not a parquet file")
    for source, message in ((notes, f"{notes}: a folder without a data file whp reads"),
                            (parquet, f"{parquet}: not a readable .parquet file (ArrowInvalid")):
        argv = unlearn_argv(files, tmp_path / "out")
        argv[argv.index(str(files / "forget.txt"))] = str(source)
        error = run_main(capsys, *argv)
        assert message in error and "it holds .md" in error if source == notes else message in error, error


# ------------------------------------------------------------------- 20: cards describe the model they come with


def test_an_export_into_another_base_names_that_base(files, unlearned, tmp_path):
    import shutil

    other = Path(shutil.copytree(files / "base", tmp_path / "other-base"))  # fits the adapter; another checkpoint
    merged = tmp_path / "merged"
    cli.main(["export", "--folder", str(unlearned), "--merged_dir", str(merged), "--base_model", str(other)])
    assert json.loads((merged / "whp_run.json").read_text())["base_model"] == str(other)
    card = (merged / "README.md").read_text()
    assert "| base model | `other-base` (a local folder, not on the Hub) |" in card and str(files / "base") not in card


def test_a_checkpoints_card_gives_the_steps_it_trained(files, tmp_path):
    out = tmp_path / "out"
    cli.main(unlearn_argv(files, out))  # max_steps 3, a checkpoint every step
    assert "| steps | 3 |" in (out / "checkpoint-1" / "README.md").read_text()
    assert "| steps trained (these weights) | 1 |" in (out / "checkpoint-1" / "README.md").read_text()
    assert json.loads((out / "checkpoint-1" / "whp_run.json").read_text())["training"]["steps_trained"] == 1
    assert "| steps trained (these weights) | 3 |" in (out / "README.md").read_text()


def test_a_push_takes_only_its_own_adapters_results_and_names_its_repo(files, unlearned, tmp_path, capsys, hub):
    from test_cli import EVALUATION

    from whp_trainer.runs import adapter_digest

    evaluation = tmp_path / "evaluation"
    cli.main(["evaluate", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
              "--retain_data", str(files / "retain.txt"), "--probes", str(files / "probes.json"), "--unlearned_adapter",
              str(unlearned), "--roles", "base", "unlearned", "--output_dir", str(evaluation), *flags(EVALUATION)])
    report = json.loads((evaluation / "report.json").read_text())
    assert report["measured_adapters"] == {"unlearned": adapter_digest(unlearned)}

    other = tmp_path / "other_report.json"
    other.write_text(json.dumps({**report, "measured_adapters": {"unlearned": "0" * 64}}), encoding="utf-8")
    push = ["push", "--folder", str(unlearned), "--repo_id", "me/whp-model", "--token", "hf_x"]
    error = run_main(capsys, *push, "--eval_report", str(other))
    assert f"{other}: the report measured another adapter" in error and hub.uploaded == {}, error

    cli.main([*push, "--eval_report", str(evaluation / "report.json")])
    card = hub.uploaded["README.md"]
    card = card.read_text() if isinstance(card, Path) else bytes(card).decode()
    assert 'PeftModel.from_pretrained(base, "me/whp-model")' in card and str(unlearned) not in card
    assert "familiarity" in card
