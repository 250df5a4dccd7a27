"""Two-process DDP on CPU (gloo) gives the adapter of one process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from conftest import LORA, torchrun
from test_cli import TRAINING, files, write_config  # noqa: F401 (files: a fixture)
from test_trainer import make_example

from whp_trainer import cli
from whp_trainer.runs import STAGE_FILE

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
    """The retain loss reads the global batch's share of retain blocks (of unequal lengths) in each process and is a
    mean over all processes' positions, and the steps that take gradients apart (retain_projection, sam_rho) average
    each part over the processes, as DDP averages a plain step's: two processes of two blocks, two micro-batches a
    step, give the adapter of one process of four, in every process."""
    make_model().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    get_peft_model(make_model(), LoraConfig(init_lora_weights=False, **LORA)).save_pretrained(tmp_path / "reinforced")
    examples = [make_example(seed, 10 + seed % 4, len(tokenizer)) for seed in range(8)]
    (tmp_path / "examples.json").write_text(json.dumps(examples))
    retain = torch.randint(5, len(tokenizer), (16, 12), generator=torch.Generator().manual_seed(2)).tolist()
    (tmp_path / "retain.json").write_text(json.dumps([ids[:4 + index % 9] for index, ids in enumerate(retain)]))
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


def stage_config(files: Path, output_dir: Path, **options) -> dict:
    """A one-stage config of the tiny inputs of ``files``."""
    return {"model_name_or_path": str(files / "base"), "lora_r": 4, "lora_alpha": 8,
            "lora_target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, "forget_data": str(files / "forget.txt"),
            "retain_data": str(files / "retain.txt"), "anchors": str(files / "anchors.yaml"),
            "probes": str(files / "probes.json"), "output_dir": str(output_dir), **options}


@pytest.mark.slow
def test_alpha_auto_in_two_processes_chooses_stops_and_trains_as_one(files, tmp_path):
    """``whp unlearn --alpha auto`` under torchrun: the sweep, the stopping rule (its measurements, a raised retain
    weight, the search on a line it ends with) and training in two processes of two blocks end where one process of
    four does, and what the run prints comes once, from the first process."""
    cli.run_stage("reinforce", ["--config", str(write_config(tmp_path / "reinforce.yaml", stage_config(
        files, tmp_path / "reinforced", **{**TRAINING, "max_steps": 4})))])
    auto = {**TRAINING, "max_steps": 8, "optim": "sgd", "alpha": "auto", "auto_alphas": [5, 40],
            "auto_reinforce_rounds": 0, "auto_eval_steps": 2, "retain_weight": 1.0, "original_cap_weight": 1.0,
            "target_mode": "soft", "retain_budget": 0.001, "holdout_data": str(files / "retain.txt"),
            "budget_data": str(files / "forget.txt")}
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    runs = {"single": [sys.executable, "-m", "whp_trainer.cli"], "ddp": [*torchrun(), "-m", "whp_trainer.cli"]}
    printed = {}
    for run, command in runs.items():
        shutil.copytree(tmp_path / "reinforced", tmp_path / f"reinforced-{run}")
        config = stage_config(files, tmp_path / run, **{**auto, "per_device_train_batch_size": 2 if run == "ddp" else 4,
                                                        "reinforced_adapter": str(tmp_path / f"reinforced-{run}")})
        path = write_config(tmp_path / f"{run}.yaml", config)
        printed[run] = subprocess.run([*command, "unlearn", "--config", str(path)], env=env, timeout=600,
                                      capture_output=True, text=True)
        # a budget this tight keeps weights next to the base's: a run that did not unlearn, in every process alike
        assert printed[run].returncode != 0 and "the run did not unlearn" in printed[run].stderr, printed[run].stderr
        assert not (tmp_path / run / STAGE_FILE).exists()
    for line in ("whp unlearn: alpha auto: α = ", "whp: warning: whp unlearn: alpha auto: membership is read on"):
        assert printed["ddp"].stdout.count(line) + printed["ddp"].stderr.count(line) == 1  # from the first process

    records = {run: json.loads((tmp_path / run / "whp_run.json").read_text())["auto"] for run in runs}
    single, ddp = records["single"], records["ddp"]
    assert ddp["alpha"] == single["alpha"]
    for alpha, measured in single["sweeps"][0].items():
        assert ddp["sweeps"][0][alpha] == pytest.approx(measured)
    assert [entry["step"] for entry in ddp["stopping"]["history"]] == [e["step"] for e in single["stopping"]["history"]]
    for fact in ("best_step", "best_scale", "backtracks", "reason"):
        assert ddp["stopping"][fact] == single["stopping"][fact]
    assert any(entry["retain_weight"] > 1 for entry in single["stopping"]["history"])  # the rule acted
    adapters = {run: load_file(tmp_path / run / "adapter_model.safetensors") for run in runs}
    for key in adapters["single"]:
        torch.testing.assert_close(adapters["ddp"][key], adapters["single"][key], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_stopping_rules_decisions_are_the_first_processs_in_every_process(tmp_path):
    """Readings that differ across processes at a budget's edge (within in the first, over in the second) give every
    process the first one's measurements, decisions and kept point."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    subprocess.run([*torchrun(), Path(__file__).parent / "stopping_worker.py", tmp_path], check=True, env=env,
                   timeout=600)
    first, second = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert first["history"][1]["within_budget"] and first["history"][1]["metrics"]["retain_perplexity"] == 10.29
    assert second == first


@pytest.mark.slow
def test_the_readings_taken_during_training_are_shared_out_among_the_processes(tmp_path):
    """The targets, a reinforcement's fit, the teacher sweep, the stopping rule's measurement (every signal and
    budget, neighbour rows included) and `FamiliarityCallback`'s in two processes: each reads about half the rows
    one process reads, and both get the one process's figures."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    found = {}
    for processes in (1, 2):
        folder = tmp_path / str(processes)
        folder.mkdir()
        subprocess.run([*torchrun(processes), Path(__file__).parent / "shares_worker.py", folder], check=True,
                       env=env, timeout=600)
        found[processes] = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(processes)]
    (alone,), shared = found[1], found[2]
    assert sum(process["rows"] for process in shared) == alone["rows"]
    assert all(process["rows"] <= alone["rows"] * 0.6 for process in shared)
    for process in shared:
        assert process["in_order"] == [[0, 10, 20, 30, 40, 50, 60], [0]]  # one result per item, in the items' order
        assert process["measured"] == pytest.approx(alone["measured"], rel=1e-5)
        assert process["targets"] == pytest.approx(alone["targets"], rel=1e-5)
        for alpha, metrics in alone["sweep"].items():
            assert process["sweep"][alpha] == pytest.approx(metrics, rel=1e-5)


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
