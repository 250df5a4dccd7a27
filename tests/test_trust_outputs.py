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
from test_trust import flags, unlearn_argv
from transformers import Trainer

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


@pytest.mark.parametrize("retain_weight", [0.0, 1.0])
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(make_model, reinforced_path, dataset, tokenizer,
                                                                 tmp_path, retain_weight):
    retain = Dataset.from_list([{"input_ids": make_example(100 + seed, 9, len(tokenizer))["input_ids"]}
                                for seed in range(5)])  # 5 blocks, batches of 4: passes overlap batches

    def trainer(folder: Path):
        return UnlearnTrainer(
            model=make_model(), reinforced_adapter=reinforced_path, peft_config=LoraConfig(**LORA),
            train_dataset=dataset, data_collator=hand_collate, processing_class=tokenizer,
            retain_dataset=retain if retain_weight else None,
            args=UnlearnConfig(output_dir=str(folder), per_device_train_batch_size=4, learning_rate=1e-2,
                               max_steps=6, save_strategy="steps", save_steps=3, report_to=[], use_cpu=True, seed=0,
                               data_seed=0, retain_weight=retain_weight, lr_scheduler_type="constant"),
        )

    straight = trainer(tmp_path / "straight")
    straight.train()
    interrupted = trainer(tmp_path / "resumed")
    interrupted.add_callback(StopAfter(3))
    interrupted.train()
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=True)
    a, b = lora_state(straight.model, "default"), lora_state(resumed.model, "default")
    assert all(torch.equal(a[key], b[key]) for key in a)
