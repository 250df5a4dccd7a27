"""Two-process DDP on CPU (gloo) gives the adapter of one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from conftest import LORA, torchrun
from test_trainer import make_example

WORKER = Path(__file__).parent / "ddp_worker.py"


METRICS = ("loss", "target_changed_fraction", "student_original_token_prob")


@pytest.mark.slow
def test_two_processes_train_and_log_as_one(make_model, tokenizer, tmp_path):
    make_model().save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    get_peft_model(make_model(), LoraConfig(init_lora_weights=False, **LORA)).save_pretrained(tmp_path / "reinforced")
    examples = [make_example(seed, 10 + seed % 4, len(tokenizer)) for seed in range(8)]
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"))

    subprocess.run([sys.executable, WORKER, tmp_path, tmp_path / "single", "8"], check=True, env=env, timeout=600)
    subprocess.run([*torchrun(), WORKER, tmp_path, tmp_path / "ddp", "4"], check=True, env=env, timeout=600)
    # the target cache, computed by the main process first and read by both (2 steps of 8 = 2 epochs)
    subprocess.run([*torchrun(), WORKER, tmp_path, tmp_path / "cached", "4", "--cache"], check=True, env=env,
                   timeout=600)
    assert len(list((tmp_path / "hf-datasets" / "whp_targets").glob("whp-targets-*.arrow"))) == 1

    single = load_file(tmp_path / "single" / "adapter_model.safetensors")
    logged = {run: [e for e in json.loads((tmp_path / run / "log.json").read_text()) if "loss" in e]
              for run in ("single", "ddp", "cached")}
    assert len(logged["single"]) == 2
    for run in ("ddp", "cached"):
        adapter = load_file(tmp_path / run / "adapter_model.safetensors")
        assert single.keys() == adapter.keys()
        for key in single:
            torch.testing.assert_close(adapter[key], single[key], rtol=1e-4, atol=1e-6)
        # every logged metric is that of the whole global batch, not of the main process's half
        for one, two in zip(logged["single"], logged[run], strict=True):
            assert {key: two[key] for key in METRICS} == pytest.approx({key: one[key] for key in METRICS}, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("step", [[], ["--project"], ["--sam"]], ids=["plain", "projected", "sharpness-aware"])
def test_two_processes_with_retain_loss_and_accumulation_train_as_one(make_model, tokenizer, tmp_path, step):
    """The retain loss reads the global batch's share of retain blocks in each process, and the steps that take
    gradients apart (retain_projection, sam_rho) average each part over the processes, as DDP averages a plain
    step's: two processes of two blocks, two micro-batches a step, give the adapter of one process of four, in
    every process."""
    make_model().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    get_peft_model(make_model(), LoraConfig(init_lora_weights=False, **LORA)).save_pretrained(tmp_path / "reinforced")
    examples = [make_example(seed, 10 + seed % 4, len(tokenizer)) for seed in range(8)]
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    retain = torch.randint(5, len(tokenizer), (16, 12), generator=torch.Generator().manual_seed(2)).tolist()
    (tmp_path / "retain.json").write_text(json.dumps(retain))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"))
    flags = ["--retain", "--accumulate", *step]

    subprocess.run([sys.executable, WORKER, tmp_path, tmp_path / "single", "4", *flags], check=True, env=env,
                   timeout=600)
    subprocess.run([*torchrun(), WORKER, tmp_path, tmp_path / "ddp", "2", *flags], check=True, env=env, timeout=600)

    single = load_file(tmp_path / "single" / "rank0.safetensors")
    for rank in (0, 1):
        adapter = load_file(tmp_path / "ddp" / f"rank{rank}.safetensors")
        assert single.keys() == adapter.keys()
        for key in single:
            torch.testing.assert_close(adapter[key], single[key], rtol=1e-4, atol=1e-6)


def test_whp_leaves_the_process_group_a_launcher_made_when_it_ends(tmp_path, monkeypatch):
    import torch.distributed as dist

    from whp_trainer import cli

    freed_while_the_group_was_registered = []

    class Trainer:  # what a failed stage's frames hold (a DDP model's reducer must not outlive the group's registry)
        def __del__(self):
            freed_while_the_group_was_registered.append(dist.is_initialized())

    def failing_stage(command, rest):
        trainer = Trainer()  # noqa: F841 (held by this frame, which the error's traceback keeps)
        raise ValueError("the stage failed")

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(cli, "run_stage", failing_stage)
    with pytest.raises(SystemExit):  # an error ends it too
        cli.main(["unlearn", "--forget_data", str(tmp_path / "missing.txt")])
    assert not dist.is_initialized()
    assert freed_while_the_group_was_registered == [True]
