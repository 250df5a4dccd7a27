"""Trains UnlearnTrainer for two steps under FSDP2 (or, with ``--no-fsdp``, in one plain process; ``--cache``: with
cache_targets), or, with ``--hand``,
compares one step on a model sharded by hand with torch's ``fully_shard`` with the unsharded step, and its
familiarity read by ``whp_trainer.models.reader_for``'s reader; see test_fsdp.py."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from conftest import LORA  # noqa: E402
from ddp_worker import two_sgd_steps_trainer  # noqa: E402
from test_trainer import hand_collate  # noqa: E402
from accelerate.state import AcceleratorState, PartialState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from whp_trainer import UnlearnConfig, UnlearnTrainer  # noqa: E402
from whp_trainer.cli import leave_process_group  # noqa: E402
from whp_trainer.evaluation import token_familiarity  # noqa: E402
from whp_trainer.models import reader_for  # noqa: E402
from whp_trainer.targets import IGNORE_INDEX  # noqa: E402

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


def main(work: Path, out: Path, per_device_batch: int, fsdp: bool, cache: bool) -> None:
    if fsdp:
        allow_fsdp_on_cpu()
    trainer = two_sgd_steps_trainer(
        work, out, per_device_batch, **(FSDP if fsdp else {}), cache_targets=cache,
        logits_chunk_size=5,  # processes then run different numbers of chunks through the sharded LM head
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


def unsharded_reference(work: Path, out: Path, mode: str, **config):
    """A trainer on ``work``'s artefacts and its step on the whole batch, unsharded (every process alike): the
    trainer, the examples, that batch, its loss and its gradients."""
    torch.manual_seed(0)
    examples = json.loads((work / "examples.json").read_text())
    trainer = UnlearnTrainer(
        model=AutoModelForCausalLM.from_pretrained(work / "base"),
        reinforced_adapter=work / "reinforced",
        peft_config=LoraConfig(**LORA),
        args=UnlearnConfig(output_dir=str(out), report_to=[], use_cpu=True, target_mode=mode, logits_chunk_size=5,
                           average_tokens_across_devices=True, **config),
        train_dataset=Dataset.from_list(examples),
        data_collator=hand_collate,
    )
    model = trainer.model.train()
    whole = hand_collate(examples)
    loss = trainer.compute_loss(model, whole)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return trainer, examples, whole, loss.detach(), grads


def check_sharded_step(trainer, sharded, reference, backward, full_grad, refuses_cache: bool = True) -> float:
    """One step of ``sharded`` (the sharded model, or the engine holding it) with half the batch per process gives
    the ``reference`` loss, gradients (``full_grad(parameter)``) and metrics; returns the mean loss."""
    examples, whole, expected_loss, expected = reference
    rank, world = dist.get_rank(), dist.get_world_size()
    count = (whole["shift_labels"] != IGNORE_INDEX).sum()
    loss = trainer.compute_loss(sharded, hand_collate(examples[rank::world]), num_items_in_batch=count)
    backward(loss)
    dist.all_reduce(total := loss.detach().clone())
    torch.testing.assert_close(total / world, expected_loss, rtol=1e-5, atol=1e-6)
    module = getattr(sharded, "module", sharded)
    grads = {name: full_grad(p) for name, p in module.named_parameters() if p.requires_grad}
    assert grads.keys() == expected.keys() and all(grads[n].abs().sum() > 0 for n in grads if "lora_B" in n)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    for key, (unsharded, sharded_value) in trainer._metrics["train"].items():  # sums over both processes' halves
        assert abs(sharded_value - unsharded) < 1e-5, (key, sharded_value, unsharded)
    if refuses_cache:  # the cache is computed by the main process alone: refused before any teacher pass
        trainer.args.cache_targets = True
        with pytest.raises(ValueError, match="cache_targets needs the whole model in every process"):
            trainer.train()
    return (total / world).item()


def sharded_familiarity(work: Path, out: Path) -> None:
    """Token familiarity of a model sharded with ``fully_shard``, on probes two processes would share unequally (two
    and one): every process reads every probe, in the same forwards, and gets the unsharded figure."""
    trainer, *_ = unsharded_reference(work, out, "soft")
    model, tokenizer = trainer.model, AutoTokenizer.from_pretrained(work / "base")
    probes = [{"prompt": prompt, "target": " the"} for prompt in ("The cat sat on", "The dog ran in", "She walks")]
    expected = token_familiarity(model, tokenizer, probes, batch_size=1)
    for layer in model.get_base_model().model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert token_familiarity(model, tokenizer, probes, 1, reader_for(model)) == pytest.approx(expected, rel=1e-5)


def hand_sharded_step(work: Path, out: Path, mode: str, chunked: bool) -> float:
    """One step on the whole batch unsharded (every process alike), then one with ``fully_shard`` on every decoder
    layer and the root, each process holding half the batch: the same loss, gradients and metrics."""
    trainer, *reference = unsharded_reference(work, out, mode, chunked_student_loss=chunked)
    model = trainer.model
    for layer in model.get_base_model().model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    return check_sharded_step(trainer, model, reference, lambda loss: loss.backward(), lambda p: p.grad.full_tensor())


if __name__ == "__main__":
    if sys.argv[3] == "--hand":
        losses = {f"{mode}-{chunked}": hand_sharded_step(Path(sys.argv[1]), Path(sys.argv[2]), mode, chunked)
                  for mode, chunked in [("argmax", True), ("soft", True), ("argmax", False)]}
        sharded_familiarity(Path(sys.argv[1]), Path(sys.argv[2]))
        if dist.get_rank() == 0:
            Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
            (Path(sys.argv[2]) / "losses.json").write_text(json.dumps(losses))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), "--no-fsdp" not in sys.argv[4:], "--cache" in sys.argv[4:])
    leave_process_group()  # as `whp` does, once the trainers are out of scope
