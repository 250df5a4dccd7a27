"""Where the student's forgetting and its cost come from: variants of the unlearning objective, measured as they train.

A diagnostic on the natural-text benchmark (`forget_quality.py`, which builds the base and the texts into the same
cache): `UnlearnTrainer` on Ruth from the base, with a given reinforced adapter, in each variant; every
``--measure_every`` steps the perplexity change against the base on 64 blocks each of the budget's text (2 Samuel
7-12), the forget text (Ruth) and the membership holdout (Esther), the Min-K% membership AUC of Ruth's passages
against Esther's, and the probability of the dictionary's entities at their first mention in Ruth. A variant is
``NAME=JSON``: `UnlearnConfig` fields, and ``"lora"`` for `LoraConfig` fields (``"layers": "late"`` / ``"early"``
for the later / earlier half of the layers).

    python benchmarks/forget_quality.py --cache_dir /tmp/fq/cache --output_dir /tmp/fq/bt0 --seed 0 \\
        --settings "auto, reinforcement keeping the retain text (retain_weight 3)"
    python benchmarks/student_objective.py --cache_dir /tmp/fq/cache \\
        --reinforced_adapter /tmp/fq/bt0/reinforced-retain-kept-round1 --steps 8
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from whp_trainer import UnlearnConfig, UnlearnTrainer
from whp_trainer.collator import split_into_blocks, text_blocks
from whp_trainer.demo import cache_root, one_thread
from whp_trainer.evaluation.familiarity import token_familiarity
from whp_trainer.evaluation.knowledge import first_mention_probes
from whp_trainer.evaluation.membership import membership_auc
from whp_trainer.evaluation.retain import perplexity

RECOMMENDED = {"target_mode": "soft", "alpha": 7.0, "retain_weight": 1.0, "original_cap_weight": 1.0,
               "learning_rate": 2e-3}
VARIANTS = {  # name -> changes to RECOMMENDED ("lora": LoraConfig fields)
    "recommended (soft, α 7, cap 1, retain 1, lr 2e-3)": {},
    "cap 0": {"original_cap_weight": 0.0},
    "cap 0.25": {"original_cap_weight": 0.25},
    "cap 1, lr/2": {"learning_rate": 1e-3},
    "cap 0, lr×4": {"original_cap_weight": 0.0, "learning_rate": 8e-3},
    "cap at most 1 nat below the base": {"original_cap_depth": 1.0},
    "cap at most 2 nats below the base": {"original_cap_depth": 2.0},
    "projected off the retain text's gradient": {"retain_projection": True},
    "projected, cap at most 1 nat below the base": {"retain_projection": True, "original_cap_depth": 1.0},
    "LoRA on the MLP only": {"lora": {"target_modules": ["gate_proj", "up_proj", "down_proj"]}},
    "LoRA on attention only": {"lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
    "LoRA on the later half of the layers": {"lora": {"layers": "late"}},
    "LoRA on the earlier half of the layers": {"lora": {"layers": "early"}},
    "LoRA rank 2": {"lora": {"r": 2, "lora_alpha": 4}},
    "LoRA rank 32": {"lora": {"r": 32, "lora_alpha": 64}},
    "LoRA rank 32, lr/4": {"learning_rate": 5e-4, "lora": {"r": 32, "lora_alpha": 64}},
}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "task_type": "CAUSAL_LM",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
BLOCK = 128


class Measurements(TrainerCallback):
    """Prints the student's measurements every ``every`` steps, as changes against the base's."""

    def __init__(self, measure, every: int, base: dict):
        self.measure, self.every, self.base = measure, every, base

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            model.eval()
            print(f"  step {state.global_step:3d}: {shown(self.measure(model), self.base)}", flush=True)
            model.train()


def shown(values: dict, base: dict) -> str:
    changes = "  ".join(f"{name} {values[name] / base[name] - 1:+.1%}" for name in ("budget", "forget", "holdout"))
    return f"{changes}  AUC {values['auc']:.3f}  entity {values['entity']:.4f}"


def lora_config(changes: dict, layers: int) -> LoraConfig:
    fields = {**LORA, **changes}
    half = fields.pop("layers", None)
    if half is not None:
        fields["layers_to_transform"] = list(range(layers // 2, layers) if half == "late" else range(layers // 2))
    return LoraConfig(**fields)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default=None, help="forget_quality.py's cache (default: $WHP_CACHE).")
    parser.add_argument("--reinforced_adapter", required=True, help="A reinforced adapter of that base, on Ruth.")
    parser.add_argument("--steps", type=int, default=8, help="Training steps per variant (the rate decays to 0).")
    parser.add_argument("--measure_every", type=int, default=8, help="Steps between measurements.")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="Names of VARIANTS, or NAME=JSON.")
    parser.add_argument("--retain_text", default="retain", choices=["retain", "corpus"],
                        help="The retain loss's text: Judges (the benchmark's), or all the base read but Ruth "
                             "(Judges and 1 Samuel).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with one_thread():
        run(args)


def run(args) -> None:
    root = cache_root(args.cache_dir) / "forget_quality" / "v1-repeats5"
    texts = root / "texts"

    def read(name: str) -> str:
        return (texts / f"{name}.txt").read_text()

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    rng = random.Random(args.seed)
    blocks = {name: text_blocks([read(file)], tokenizer, BLOCK)
              for name, file in (("budget", "budget"), ("forget", "target"), ("holdout", "holdout"))}
    blocks = {name: rng.sample(found, min(64, len(found))) for name, found in blocks.items()}
    passages = {name: [part.strip() for part in read(name).split("\n\n") if part.strip()]
                for name in ("target", "holdout")}
    mentions = first_mention_probes([read("target")], json.loads((texts / "anchors.json").read_text()))

    @torch.no_grad()
    def measure(model) -> dict:
        values = {name: perplexity(model, tokenizer, found, BLOCK) for name, found in blocks.items()}
        values["auc"] = membership_auc(model, tokenizer, passages["target"], passages["holdout"], max_length=256)[
            "membership_auc_mink"]
        values["entity"] = token_familiarity(model, tokenizer, mentions)
        return values

    base = measure(AutoModelForCausalLM.from_pretrained(root / "base").eval())
    print(f"base: perplexity budget {base['budget']:.1f}, forget {base['forget']:.1f}, holdout {base['holdout']:.1f}"
          f"; AUC {base['auc']:.3f}; entity {base['entity']:.4f}", flush=True)
    for entry in args.variants:
        name, _, given = entry.partition("=")
        changes = json.loads(given) if given else VARIANTS[name]
        settings = {**RECOMMENDED, **changes}
        lora = settings.pop("lora", {})
        config = UnlearnConfig(
            output_dir=str(root.parent / "student-objective"), max_steps=args.steps, per_device_train_batch_size=8,
            max_length=BLOCK, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=args.seed,
            logging_steps=10_000, gradient_checkpointing=False, **settings,
        )
        model = AutoModelForCausalLM.from_pretrained(root / "base")
        print(f"{name}:", flush=True)
        trainer = UnlearnTrainer(
            model, config, processing_class=tokenizer, reinforced_adapter=args.reinforced_adapter,
            train_dataset=Dataset.from_dict({"input_ids": split_into_blocks([read("target")], tokenizer, BLOCK)}),
            peft_config=lora_config(lora, model.config.num_hidden_layers), anchors=str(texts / "anchors.json"),
            retain_dataset=[read(args.retain_text)], callbacks=[Measurements(measure, args.measure_every, base)],
        )
        trainer.train()


if __name__ == "__main__":
    main()
