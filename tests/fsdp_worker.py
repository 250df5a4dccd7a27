"""Trains UnlearnTrainer for two steps under FSDP2 (or, with ``--no-fsdp``, in one plain process); see test_fsdp.py."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from conftest import LORA  # noqa: E402
from test_trainer import hand_collate  # noqa: E402
from accelerate.state import AcceleratorState, PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from whp_trainer import UnlearnConfig, UnlearnTrainer  # noqa: E402

# FSDP2 the way a user turns it on through the Trainer (transformers builds accelerate's FSDP plugin from these)
# --8<-- [start:fsdp2]
FSDP = dict(
    fsdp="full_shard auto_wrap",
    fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]},
)  # UnlearnConfig(..., **FSDP)
# --8<-- [end:fsdp2]


def allow_fsdp_on_cpu() -> None:
    """accelerate 1.15 turns a given FSDP plugin into ``DistributedType.FSDP`` only on accelerator devices (GPU, XPU,
    NPU, ...): with ``use_cpu=True`` it silently stays ``MULTI_CPU`` (plain DDP). Let it take the FSDP branch on the CPU
    too, so the model is sharded by accelerate's own FSDP2 preparation, as on GPUs."""
    init = AcceleratorState.__init__

    def patched(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = patched


def main(work: Path, out: Path, per_device_batch: int, fsdp: bool) -> None:
    if fsdp:
        allow_fsdp_on_cpu()
    torch.manual_seed(0)
    trainer = UnlearnTrainer(
        model=AutoModelForCausalLM.from_pretrained(work / "base"),
        reinforced_adapter=work / "reinforced",
        peft_config=LoraConfig(**LORA),
        args=UnlearnConfig(
            output_dir=str(out), per_device_train_batch_size=per_device_batch, max_steps=2, learning_rate=1e-2,
            optim="sgd", lr_scheduler_type="constant", save_strategy="no", report_to=[], use_cpu=True,
            train_sampling_strategy="sequential", logging_steps=1, **(FSDP if fsdp else {}),
        ),
        train_dataset=Dataset.from_list(json.loads((work / "examples.json").read_text())),
        data_collator=hand_collate,
    )
    assert trainer.is_fsdp_enabled == fsdp
    frozen = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    sharded = [name for name, p in model.named_parameters() if isinstance(p, DTensor)]
    assert len(sharded) == (len(list(model.parameters())) if fsdp else 0), "FSDP2 did not shard every parameter"
    params = dict(model.named_parameters())
    for name, before in frozen.items():  # base and reinforced adapter untouched (gathered when sharded)
        after = params[name].full_tensor() if isinstance(params[name], DTensor) else params[name]
        assert torch.equal(after, before), name
    trainer.save_model()
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (out / "losses.json").write_text(json.dumps(losses))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), "--no-fsdp" not in sys.argv[4:])
