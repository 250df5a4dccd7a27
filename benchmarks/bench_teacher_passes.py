"""CPU time of each teacher pass of ``UnlearnTrainer`` against the passes of a second, merged model (the copy
approach of ``bench_step.py``), on bench_step's model and batch, interleaved over rounds (medians printed):

    python benchmarks/bench_teacher_passes.py --rounds 3

  whp-baseline    the shared base with adapters disabled, hidden states only (no LM head)
  whp-reinforced  the shared base with the reinforced LoRA adapter active, hidden states only
  whp-fused       both in one forward of twice the batch (PEFT mixed batch, ``fused_teacher_pass=True``)
  copy-baseline   the copy approach's baseline pass: the adapter disabled, with the full-batch logits
  copy-teacher    the copy approach's teacher: a second model with the reinforced adapter merged, with logits
  merged-body     that second model without its LM head: what ``whp-reinforced`` computes, without LoRA
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_step import build  # noqa: E402


def passes(args, tmp: Path) -> dict:
    import torch

    from whp_trainer import UnlearnConfig, UnlearnTrainer
    from whp_trainer.models import BASELINE, final_hidden_states, using_adapter

    base, lora, ids, mask, LoraConfig, get_peft_model = build(args)
    teacher = get_peft_model(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **lora))
    teacher.save_pretrained(tmp / "reinforced")
    merged = teacher.merge_and_unload().eval()
    trainer = UnlearnTrainer(
        model=base, reinforced_adapter=tmp / "reinforced", peft_config=LoraConfig(**lora),
        args=UnlearnConfig(output_dir=str(tmp / "out"), report_to=[], use_cpu=True, gradient_checkpointing=False,
                           fused_teacher_pass=True),
        data_collator=lambda x: x,
    )
    model = trainer.model.train()
    rows, cols = torch.ones(ids.shape[0], ids.shape[1] - 1).nonzero(as_tuple=True)

    def whp(adapter):
        with using_adapter(model, adapter):
            final_hidden_states(model, ids, mask)

    def copy_baseline():
        with torch.no_grad(), model.disable_adapter():
            model.eval()
            model(input_ids=ids, attention_mask=mask).logits
            model.train()

    def no_grad(module):
        with torch.no_grad():
            module(input_ids=ids, attention_mask=mask)

    return {
        "whp-baseline": lambda: whp(BASELINE),
        "whp-reinforced": lambda: whp("reinforced"),
        "whp-fused": lambda: trainer._teacher_hidden_states(model, {"input_ids": ids, "attention_mask": mask},
                                                            rows, cols),
        "copy-baseline": copy_baseline,
        "copy-teacher": lambda: no_grad(merged),
        "merged-body": lambda: no_grad(merged.model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        functions = passes(args, Path(tmp))
        seconds = {name: [] for name in functions}
        for function in functions.values():  # warm-up
            function()
        for _ in range(args.rounds):
            for name, function in functions.items():
                start = time.process_time()
                function()
                seconds[name].append(time.process_time() - start)
    print(f"{'pass':<16}{'CPU s':>8}  rounds")
    for name, values in seconds.items():
        print(f"{name:<16}{statistics.median(values):>8.3f}  {', '.join(f'{v:.3f}' for v in values)}")


if __name__ == "__main__":
    main()
