"""One UnlearnTrainer step under DeepSpeed ZeRO-2 or ZeRO-3 on CPU processes (gloo), against the same step
unsharded; run under torchrun by test_deepspeed.py."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import deepspeed  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from datasets import Dataset  # noqa: E402
from deepspeed.utils import safe_get_full_grad  # noqa: E402
from peft import LoraConfig  # noqa: E402
from conftest import LORA  # noqa: E402
from test_trainer import hand_collate  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from whp_trainer import UnlearnConfig, UnlearnTrainer  # noqa: E402
from whp_trainer.models import is_sharded  # noqa: E402
from whp_trainer.targets import IGNORE_INDEX  # noqa: E402


def deepspeed_step(work: Path, out: Path, stage: int, mode: str) -> float:
    """The whole batch unsharded on every process, then the engine's step with half the batch per process."""
    torch.manual_seed(0)
    examples = json.loads((work / "examples.json").read_text())
    trainer = UnlearnTrainer(
        model=AutoModelForCausalLM.from_pretrained(work / "base"),
        reinforced_adapter=work / "reinforced",
        peft_config=LoraConfig(**LORA),
        args=UnlearnConfig(output_dir=str(out), report_to=[], use_cpu=True, target_mode=mode, logits_chunk_size=5,
                           average_tokens_across_devices=True),
        train_dataset=Dataset.from_list(examples),
        data_collator=hand_collate,
    )
    model = trainer.model.train()
    whole = hand_collate(examples)
    expected_loss = trainer.compute_loss(model, whole)
    expected_loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    trainable = [p for p in model.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(trainable, lr=0.0), config=config)
    assert is_sharded(engine.module) == (stage == 3)
    rank, world = dist.get_rank(), dist.get_world_size()
    count = (whole["shift_labels"] != IGNORE_INDEX).sum()
    loss = trainer.compute_loss(engine, hand_collate(examples[rank::world]), num_items_in_batch=count)
    engine.backward(loss)
    dist.all_reduce(total := loss.detach().clone())
    torch.testing.assert_close(total / world, expected_loss.detach(), rtol=1e-5, atol=1e-6)
    grads = {name: safe_get_full_grad(p) for name, p in engine.module.named_parameters() if p.requires_grad}
    assert grads.keys() == expected.keys() and all(grads[n].abs().sum() > 0 for n in grads if "lora_B" in n)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    for key, (unsharded, sharded) in trainer._metrics["train"].items():
        assert abs(sharded - unsharded) < 1e-5, (key, sharded, unsharded)
    if stage == 3:  # the cache is computed by the main process alone: refused before any teacher pass
        trainer.args.cache_targets = True
        with pytest.raises(ValueError, match="cache_targets needs the whole model in every process"):
            trainer.train()
    return (total / world).item()


if __name__ == "__main__":
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    losses = {f"zero{stage}-{mode}": deepspeed_step(work, out, stage, mode)
              for stage, mode in [(2, "argmax"), (3, "argmax"), (3, "soft")]}
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "losses.json").write_text(json.dumps(losses))
