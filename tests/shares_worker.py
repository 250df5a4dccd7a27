"""The readings taken during training in each process of a torchrun launch (`alpha: auto`'s no-oracle familiarity
target, a reinforcement's fit, the teacher sweep, one measurement of the stopping rule with its neighbour rows, and
one of `FamiliarityCallback`), with the rows every forward of this process read; writes them per process
(test_ddp.py)."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))

import torch.distributed as dist  # noqa: E402
from conftest import CORPUS, train_tokenizer  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from test_auto import PROBES, fake_trainer  # noqa: E402

from whp_trainer.auto import AutoInputs, stop_at_targets  # noqa: E402
from whp_trainer.evaluation import FamiliarityCallback  # noqa: E402
from whp_trainer.evaluation.autotune import reference_and_tolerance, teacher_sweep  # noqa: E402
from whp_trainer.evaluation.retain import block_nlls, perplexity_of  # noqa: E402
from whp_trainer.models import logits_head, read_in_shares, reader_for  # noqa: E402
from whp_trainer.toy import tiny_llama  # noqa: E402

NEIGHBOURS = [{"prompt": text[:12], "answer": text[12:24]} for text in CORPUS]

if __name__ == "__main__":
    dist.init_process_group("gloo")
    tokenizer = train_tokenizer(CORPUS * 20, vocab_size=400)
    model = get_peft_model(tiny_llama(tokenizer, seed=0), LoraConfig(r=2, target_modules=["q_proj"],
                                                                     init_lora_weights=False), adapter_name="reinforced")
    logits_head(model)  # its one check of the rebuilt logits, in every process, before the rows are counted
    rows = []
    model.get_base_model().register_forward_pre_hook(lambda module, args, kwargs: rows.append(
        len(kwargs["input_ids"])), with_kwargs=True)
    probes = PROBES * 3
    membership = (CORPUS[:4] * 2, CORPUS[4:] * 2)
    reference = reference_and_tolerance(model, tokenizer, probes, {"Harry": ("Jon",), "Quidditch": ("Skyball",)},
                                        tolerance=0.02, share=0.1)
    fit = perplexity_of(block_nlls(model, tokenizer, CORPUS * 2, max_length=16, reader=reader_for(model)))
    sweep = teacher_sweep(model, tokenizer, [2, 5], probes, CORPUS * 2, membership, max_length=16, batch_size=2)
    trainer = fake_trainer(model)
    trainer.processing_class, trainer.add_callback = tokenizer, lambda callback: None
    args = SimpleNamespace(max_length=16, auto_eval_steps=1, auto_max_measurements=12, retain_budget=0.03,
                           neighbour_budget=0.1, budget_confidence=0.95, budget_patience=1, budget_backtrack=True,
                           budget_drop_cap=True, budget_end_search=True)
    inputs = AutoInputs(probes, probes[:3], CORPUS * 2, membership, neighbour_rows=NEIGHBOURS)
    callback = stop_at_targets(trainer, {"targets": {"membership": 0.5, "familiarity": 0.1}}, inputs, args, tokenizer)
    measured = callback.measure(model)
    logged = FamiliarityCallback(trainer, probes, retain_texts=CORPUS * 2, max_length=16).measure()
    Path(sys.argv[1], f"rank{dist.get_rank()}.json").write_text(json.dumps(
        {"targets": [*reference, fit], "sweep": sweep, "measured": {**measured, **logged}, "rows": sum(rows),
         "in_order": [read_in_shares(list(range(count)), lambda part: [10 * item for item in part]) for count in (7, 1)]}))
    dist.destroy_process_group()
