"""Trust, tried as an adversary would: no upload path sends the reinforced adapter, optimizer state or a token; no
flag deletes or writes into what whp did not make; ``--overwrite`` really starts over; a killed or failed run never
blocks the rerun; the same seed gives the same adapter."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LORA
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects
from peft import LoraConfig
from safetensors.torch import load_file
from test_cli import ANCHORS, TRAINING, files, run_main  # noqa: F401  (files is a fixture)
from test_trainer import dataset, lora_state, make_trainer  # noqa: F401  (dataset is a fixture)

from whp_trainer import UnlearnConfig, UnlearnTrainer, cli
from whp_trainer.runs import STAGE_FILE, STARTED_FILE, begin_stage

SENTINEL = "hf_SentinelTokenThatMustNeverBeWritten0123"
FORBIDDEN = ("reinforced/", "optimizer.pt", "scheduler.pt", "whp_reinforced.json", "whp_stage.json",
             "whp_rule_sample.json")


class RecordingHub:
    """``HfApi`` with its network methods replaced by recorders; uploads are resolved into file lists with
    huggingface_hub's own ``filter_repo_objects``, as ``upload_folder`` resolves them."""

    def __init__(self, monkeypatch):
        self.uploaded: dict[str, Path] = {}  # path in repo -> local file
        hub = self

        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, allow_patterns=None,
                          ignore_patterns=None, run_as_future=False, **kwargs):
            folder = Path(folder_path)
            files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
            ignore = [*(ignore_patterns or []), ".git/*", ".cache/huggingface/*"]
            for relative in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore):
                hub.uploaded[f"{path_in_repo}/{relative}" if path_in_repo else relative] = folder / relative
            return done_future() if run_as_future else "commit"

        def create_commit(self, repo_id, operations, **kwargs):
            for operation in operations:
                source = operation.path_or_fileobj
                hub.uploaded[operation.path_in_repo] = Path(source) if isinstance(source, str) else source
            return "commit"

        for name, method in [("create_repo", create_repo), ("upload_folder", upload_folder),
                             ("create_commit", create_commit), ("create_branch", lambda self, *a, **k: None)]:
            monkeypatch.setattr(HfApi, name, method)
        monkeypatch.setattr(HfApi, "upload_file", lambda self, *a, **k: pytest.fail("upload_file is not expected"))

    def forbidden(self) -> list[str]:
        return sorted(path for path in self.uploaded if any(bad in path for bad in FORBIDDEN))

    def with_token(self) -> list[str]:
        return sorted(path for path, source in self.uploaded.items() if SENTINEL.encode() in content(source))


def done_future():
    future = concurrent.futures.Future()
    future.set_result("commit")
    return future


def content(source) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else bytes(source)


def files_containing(root: Path, needle: str) -> list[str]:
    return sorted(str(path) for path in root.rglob("*") if path.is_file() and needle.encode() in path.read_bytes())


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the recorder answers; nothing reaches the network
    return RecordingHub(monkeypatch)


# ------------------------------------------------------------------------------------------------------- uploads


@pytest.mark.parametrize("strategy", ["end", "every_save", "checkpoint", "all_checkpoints"])
def test_no_trainer_push_uploads_the_reinforced_adapter_or_optimizer_state(
    make_model, reinforced_path, dataset, tmp_path, hub, strategy
):
    trainer = make_trainer(
        make_model, reinforced_path, dataset, tmp_path, max_steps=2, save_strategy="steps", save_steps=1,
        push_to_hub=True, hub_model_id="someone/whp-tiny", hub_strategy=strategy, hub_token=SENTINEL,
    )
    trainer.train()
    trainer.push_to_hub()
    trainer._finish_current_push()

    assert {"adapter_model.safetensors", "README.md", "whp_run.json"} <= set(hub.uploaded)
    if strategy in ("checkpoint", "all_checkpoints"):
        assert any(path.endswith("trainer_state.json") for path in hub.uploaded)  # the checkpoint went up, filtered
    assert hub.forbidden() == [] and hub.with_token() == []
    assert files_containing(tmp_path, SENTINEL) == []


def test_whp_unlearn_and_whp_push_upload_no_reinforced_file_and_write_no_token(files, tmp_path, hub, capsys):
    out = tmp_path / "unlearned"
    reinforced = tmp_path / "reinforced"
    cli.main(["reinforce", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
              "--output_dir", str(reinforced), "--lora_r", "4", *flags(TRAINING)])
    cli.main([
        "unlearn", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
        "--anchors", str(files / "anchors.yaml"), "--reinforced_adapter", str(reinforced),
        "--output_dir", str(out), "--lora_r", "4", *flags({**TRAINING, "save_strategy": "steps", "save_steps": 1}),
        "--push_to_hub", "true", "--hub_model_id", "someone/whp-tiny", "--hub_strategy", "checkpoint",
        "--hub_token", SENTINEL,
    ])
    assert "adapter_model.safetensors" in hub.uploaded
    assert hub.forbidden() == [] and hub.with_token() == []

    hub.uploaded.clear()
    cli.main(["push", "--folder", str(out), "--repo_id", "someone/whp-tiny", "--token", SENTINEL])
    assert "adapter_model.safetensors" in hub.uploaded and "training_args.bin" in hub.uploaded
    assert "whp_run.json" in hub.uploaded  # the run record goes up with the model: checked for the token below
    assert hub.forbidden() == [] and hub.with_token() == []
    assert files_containing(tmp_path, SENTINEL) == []


def test_the_fingerprints_of_the_holdout_text_alpha_auto_read_stay_local(files, tmp_path, hub):
    out, reinforced = tmp_path / "unlearned", tmp_path / "reinforced"
    (tmp_path / "holdout.txt").write_text((files / "retain.txt").read_text())
    cli.main(["reinforce", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
              "--output_dir", str(reinforced), "--lora_r", "4", *flags(TRAINING)])
    cli.main(["unlearn", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
              "--anchors", str(files / "anchors.yaml"), "--reinforced_adapter", str(reinforced),
              "--output_dir", str(out), "--lora_r", "4", *flags({**TRAINING, "max_length": 16}), "--alpha", "auto",
              "--auto_alphas", "5", "--auto_reinforce_rounds", "0", "--auto_eval_steps", "1",
              "--holdout_data", str(tmp_path / "holdout.txt"), "--retain_data", str(files / "retain.txt")])
    assert (out / "whp_rule_sample.json").is_file()
    cli.main(["push", "--folder", str(out), "--repo_id", "someone/whp-tiny", "--token", SENTINEL])
    assert "adapter_model.safetensors" in hub.uploaded and hub.forbidden() == []


def flags(options: dict) -> list[str]:
    return [item for key, value in options.items() if value != [] for item in (f"--{key}", str(value))]


# ---------------------------------------------------------------------------------------------------- overwrite


def unlearn_argv(files: Path, out: Path, *extra: str) -> list[str]:
    return [
        "unlearn", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
        "--anchors", str(files / "anchors.yaml"), "--output_dir", str(out), "--lora_r", "4",
        *flags({**TRAINING, "save_strategy": "steps", "save_steps": 1}), *extra,
    ]


def adapter(folder: Path) -> dict:
    return load_file(folder / "adapter_model.safetensors")


def test_overwrite_starts_from_scratch_and_the_card_describes_the_weights(files, reinforced_path, tmp_path):
    out = tmp_path / "unlearned"
    reinforced = ("--reinforced_adapter", str(reinforced_path))
    cli.main(unlearn_argv(files, out, *reinforced, "--alpha", "5"))
    first = adapter(out)
    (out / "my_notes.txt").write_text("mine")

    cli.main(unlearn_argv(files, out, *reinforced, "--alpha", "1", "--learning_rate", "0.05", "--overwrite"))
    second = adapter(out)
    assert any(not torch.equal(first[key], second[key]) for key in first)  # trained again, not resumed
    state = json.loads((out / f"checkpoint-{TRAINING['max_steps']}" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]  # every step ran
    record = json.loads((out / "whp_run.json").read_text())  # the run record the card is rendered from
    assert record["method"]["alpha"] == 1.0 and record["training"]["learning_rate"] == 0.05
    assert "| α (reinforced boost weight) | 1.0 |" in (out / "README.md").read_text()
    assert (out / "my_notes.txt").read_text() == "mine"  # not whp's: kept


def test_a_stage_never_replaces_another_stages_output(files, tmp_path, capsys):
    out = tmp_path / "reinforced"
    cli.main(["reinforce", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
              "--output_dir", str(out), "--lora_r", "4", *flags(TRAINING)])
    before = adapter(out)
    error = run_main(capsys, *unlearn_argv(files, out, "--overwrite"))
    assert "holds the output of `whp reinforce`" in error and "never replaces another stage" in error
    assert all(torch.equal(before[key], adapter(out)[key]) for key in before)


@pytest.mark.parametrize("command", ["unlearn", "export"])
def test_no_flag_writes_into_or_deletes_a_folder_whp_did_not_make(files, tmp_path, capsys, command):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    (mine / "sub" / "data.csv").write_text("1,2")
    if command == "unlearn":
        argv = unlearn_argv(files, mine, "--overwrite")
    else:
        adapter_dir = tmp_path / "adapter"
        cli.main(unlearn_argv(files, adapter_dir))
        argv = ["export", "--folder", str(adapter_dir), "--merged_dir", str(mine), "--overwrite", "true"]
    error = run_main(capsys, *argv)
    assert "non-empty folder that whp did not create" in error
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == ["sub", "sub/data.csv", "thesis.txt"]


# ---------------------------------------------------------------------------------------- kills and failed starts


KILL_WHILE_WRITING_CHECKPOINT_2 = """
import os, signal, sys
from transformers import Trainer
from whp_trainer import cli

save_rng_state = Trainer._save_rng_state
def killed_at_step_2(self, output_dir):
    if self.state.global_step == 2:  # weights and optimizer written, trainer_state.json not yet
        os.kill(os.getpid(), signal.SIGKILL)
    save_rng_state(self, output_dir)
Trainer._save_rng_state = killed_at_step_2
cli.main(sys.argv[1:])
"""


def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(files, tmp_path, caplog):
    out = tmp_path / "unlearned"
    argv = unlearn_argv(files, out)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING_CHECKPOINT_2, *argv], env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (out / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert not (out / "checkpoint-2" / "trainer_state.json").exists() and not (out / STAGE_FILE).exists()

    cli.main(argv)  # the same command again
    assert "checkpoint-2 is incomplete" in caplog.text
    assert json.loads((out / STAGE_FILE).read_text())["stage"] == "unlearn"
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_a_run_that_failed_on_bad_input_leaves_nothing_that_blocks_the_fixed_rerun(files, tmp_path, capsys):
    data = tmp_path / "forget.jsonl"
    data.write_text('{"text": "Harry went to Hogwarts."}\n{"text": broken\n', encoding="utf-8")
    out = tmp_path / "unlearned"
    argv = unlearn_argv(files, out)
    argv[argv.index(str(files / "forget.txt"))] = str(data)
    error = run_main(capsys, *argv)
    assert f"{data}, line 2" in error
    data.write_text('{"text": "Harry went to Hogwarts."}\n{"text": "Hermione and Ron played Quidditch."}\n')
    cli.main(argv)
    assert (out / "adapter_model.safetensors").exists()


def test_a_start_that_failed_after_the_marker_does_not_block_other_settings(tmp_path):
    folder = tmp_path / "out"
    assert begin_stage(folder, "unlearn", "settings-a")  # ... then the model failed to load: no checkpoint
    assert (folder / STARTED_FILE).exists()
    assert begin_stage(folder, "unlearn", "settings-b")
    assert json.loads((folder / STARTED_FILE).read_text())["fingerprint"] == "settings-b"


# ---------------------------------------------------------------------------------------------------------- seed


def test_the_same_seed_gives_a_bit_identical_adapter(make_model, reinforced_path, dataset, tmp_path):
    adapters = []
    for run in ("a", "b"):
        torch.manual_seed(len(adapters) + 123)  # whatever the global RNG state was before
        trainer = make_trainer(make_model, reinforced_path, dataset, tmp_path / run, max_steps=2, seed=7)
        trainer.train()
        adapters.append(lora_state(trainer.model, "default"))
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][key], adapters[1][key]) for key in adapters[0])


# -------------------------------------------------------------------------------------------- bad input, API side


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_at_construction(make_model, tokenizer, dataset, tmp_path):
    model = make_model()
    model.resize_token_embeddings(100)
    with pytest.raises(ValueError, match="tokenizer has 400 tokens but the model embeds only 100"):
        UnlearnTrainer(
            model=model, args=UnlearnConfig(output_dir=str(tmp_path), report_to=[]),
            peft_config=LoraConfig(**LORA), anchors=ANCHORS, train_dataset=dataset, processing_class=tokenizer,
        )


def test_standard_batches_and_lists_of_token_ids_train(make_model, reinforced_path, tokenizer, tmp_path):
    from transformers import default_data_collator

    blocks = [ids[:12] for ids in tokenizer(["Harry went up to him and said hi to Ron at Hogwarts again"] * 8)["input_ids"]]
    rows = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in blocks]
    for rows_or_ids, collator in ((rows, default_data_collator), (blocks, None)):
        trainer = UnlearnTrainer(
            model=make_model(), reinforced_adapter=reinforced_path, peft_config=LoraConfig(**LORA),
            args=UnlearnConfig(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True,
                               per_device_train_batch_size=4, max_length=16),
            train_dataset=rows_or_ids, data_collator=collator, processing_class=tokenizer,
        )
        assert trainer.train().training_loss > 0
