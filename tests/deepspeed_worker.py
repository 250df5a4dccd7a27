"""One UnlearnTrainer step under DeepSpeed ZeRO-2 or ZeRO-3 on CPU processes (gloo), against the same step
unsharded; run under torchrun by test_deepspeed.py."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from deepspeed.utils import safe_get_full_grad  # noqa: E402
from fsdp_worker import check_sharded_step, unsharded_reference  # noqa: E402

from whp_trainer.cli import leave_process_group  # noqa: E402
from whp_trainer.models import is_sharded  # noqa: E402


def deepspeed_step(work: Path, out: Path, stage: int, mode: str) -> float:
    """The whole batch unsharded on every process, then the engine's step with half the batch per process."""
    trainer, *reference = unsharded_reference(work, out, mode)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=trainer.model, optimizer=torch.optim.SGD(trainable, lr=0.0), config=config)
    assert is_sharded(engine.module) == (stage == 3)
    return check_sharded_step(trainer, engine, reference, engine.backward, safe_get_full_grad, refuses_cache=stage == 3)


if __name__ == "__main__":
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    losses = {f"zero{stage}-{mode}": deepspeed_step(work, out, stage, mode)
              for stage, mode in [(2, "argmax"), (3, "argmax"), (3, "soft")]}
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "losses.json").write_text(json.dumps(losses))
    leave_process_group()  # as `whp` does, once the trainers are out of scope
