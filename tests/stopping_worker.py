"""The stopping rule on scripted measurements in each process of a torchrun launch, the second process reading a
budget over where the first reads it within (a reading that differs by a kernel's rounding at a budget's edge);
writes each process's history and decision (test_ddp.py)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch.distributed as dist  # noqa: E402
from conftest import CORPUS, train_tokenizer  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from test_auto import ScriptedStopping, fake_trainer, metrics, run_steps  # noqa: E402

from whp_trainer.toy import tiny_llama  # noqa: E402

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = get_peft_model(tiny_llama(train_tokenizer(CORPUS * 20, vocab_size=400), seed=0),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    edge = 10.29 if rank == 0 else 10.31  # the base's 10.0 + 3 %: within in the first process, over in the second
    script = [metrics(0.95, 0.5, 10.0), metrics(0.8, 0.3, 10.1), metrics(0.6, 0.15, edge), metrics(0.55, 0.12, 10.5)]
    callback = ScriptedStopping(fake_trainer(model), script, every_n_steps=1, backtrack=False, budget_patience=1)
    run_steps(callback, model, steps=3)
    Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps({"history": callback.history,
                                                                   "decision": callback.decision}))
    dist.destroy_process_group()
