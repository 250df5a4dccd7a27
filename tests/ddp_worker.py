"""Trains UnlearnTrainer for two steps from saved artefacts (``--cache``: with cache_targets); run alone or under
torchrun (test_ddp.py). Saves the adapter and, from the main process, the logged metrics."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from conftest import LORA  # noqa: E402
from test_trainer import hand_collate  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from whp_trainer import UnlearnConfig, UnlearnTrainer  # noqa: E402
from whp_trainer.cli import leave_process_group  # noqa: E402


def two_sgd_steps_trainer(work: Path, out: Path, per_device_batch: int, **config) -> UnlearnTrainer:
    """A trainer of two plain SGD steps on ``work``'s artefacts, in a fixed order (the runs compared must agree)."""
    torch.manual_seed(0)
    return UnlearnTrainer(
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


def train_and_save(work: Path, out: Path, per_device_batch: int, cache: bool) -> None:
    trainer = two_sgd_steps_trainer(work, out, per_device_batch, cache_targets=cache)
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        (out / "log.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    train_and_save(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), "--cache" in sys.argv[4:])
    leave_process_group()  # as `whp` does, once the trainer is out of scope
