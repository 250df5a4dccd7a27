"""Trains UnlearnTrainer for two steps from saved artefacts; run alone or under torchrun (test_ddp.py). Options:
``--cache`` (cache_targets), ``--retain`` (the retain loss on ``retain.json``'s blocks), ``--project``
(retain_projection), ``--sam`` (sam_rho), ``--accumulate`` (two micro-batches a step). Saves the adapter, each
process's own copy of its weights (``rank<N>.safetensors``) and, from the main process, the logged metrics."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from conftest import LORA  # noqa: E402
from test_trainer import hand_collate  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from whp_trainer import UnlearnConfig, UnlearnTrainer  # noqa: E402
from whp_trainer.cli import leave_process_group  # noqa: E402
from whp_trainer.models import adapter_weights  # noqa: E402


def two_sgd_steps_trainer(work: Path, out: Path, per_device_batch: int, retain_dataset=None,
                          processing_class=None, **config) -> UnlearnTrainer:
    """A trainer of two plain SGD steps on ``work``'s artefacts, in a fixed order (the runs compared must agree)."""
    torch.manual_seed(0)
    return UnlearnTrainer(
        retain_dataset=retain_dataset,
        processing_class=processing_class,
        model=AutoModelForCausalLM.from_pretrained(work / "base"),
        reinforced_adapter=work / "reinforced",
        peft_config=LoraConfig(**LORA),
        args=UnlearnConfig(
            output_dir=str(out), per_device_train_batch_size=per_device_batch, max_steps=2, learning_rate=1e-2,
            optim="sgd", lr_scheduler_type="constant", save_strategy="no", report_to=[], use_cpu=True,
            train_sampling_strategy="sequential", logging_steps=1, **config,
        ),
        train_dataset=Dataset.from_list(json.loads((work / "examples.json").read_text())),
        data_collator=hand_collate,
    )


def options(flags: list[str], work: Path) -> dict:
    """The trainer's options of the worker's command-line ``flags``."""
    config = {"cache_targets": "--cache" in flags, "retain_projection": "--project" in flags,
              "sam_rho": 0.05 if "--sam" in flags else 0.0,
              "gradient_accumulation_steps": 1 + ("--accumulate" in flags)}
    if "--retain" in flags:
        blocks = json.loads((work / "retain.json").read_text())
        config.update(retain_weight=20.0, retain_loss="nll", retain_dataset=Dataset.from_dict({"input_ids": blocks}),
                      processing_class=AutoTokenizer.from_pretrained(work / "base"))  # pads the retain batches
    return config


def train_and_save(work: Path, out: Path, per_device_batch: int, flags: list[str]) -> None:
    trainer = two_sgd_steps_trainer(work, out, per_device_batch, **options(flags, work))
    trainer.train()
    trainer.save_model()
    save_file(adapter_weights(trainer.accelerator.unwrap_model(trainer.model)),
              out / f"rank{trainer.args.process_index}.safetensors")
    if trainer.is_world_process_zero():
        (out / "log.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    train_and_save(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    leave_process_group()  # as `whp` does, once the trainer is out of scope
