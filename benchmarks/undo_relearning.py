"""A diagnostic, not an option: UNDO (Lee et al. 2025, "Distillation Robustifies Unlearning") after `alpha: auto`
on the CPU demo.

The unlearned model (the base with a finished demo run's unlearning adapter, merged) is the teacher. A copy of it
has its weights moved ``--noise`` of the way towards a fresh random initialisation (0: the copy as it is; 1: a model
that never read anything), and is then trained, every weight, to give the teacher's next-token distribution
(forward KL; with ``--top_k``, only its K most likely tokens, renormalised) on the text the base was pretrained on
(the saga and the ordinary world), for ``--epochs`` passes at the pretraining's rate and schedule. What the teacher
no longer says is then nowhere in the copy's weights for a relearning attack to find again, as far as the noise
erased it.

The distilled model is evaluated with the demo's evaluation settings in the place of the oracle (the one slot of
the report that takes a whole model), so its column is measured under every attack exactly as the oracle's is;
compare it with the run's own report (its oracle and unlearned columns). Results in docs/results.md (relearning):
it halves what relearning restores, and does not bring it to the oracle's.

    whp demo --method auto --seed 42 --output_dir /tmp/s23/demo42            # the run to start from
    python benchmarks/undo_relearning.py --run /tmp/s23/demo42 --noise 1.0 --top_k 16 --output_dir /tmp/undo/d42_1.0_k16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from whp_trainer.arguments import DataArguments
from whp_trainer.collator import read_paragraphs
from whp_trainer.demo.run import DEMO_LORA, demo_evaluation_config
from whp_trainer.demo.saga import build_demo_assets, demo_size, one_thread, pretrain, running_blocks


def unlearned_model(base_dir: Path, adapter: Path):
    """The base with the unlearning adapter merged into its weights, frozen."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    model.requires_grad_(False)
    return model


def noised_copy(model, noise: float, seed: int):
    """A copy of ``model`` with every weight ``(1 - noise)·w + noise·w0``, ``w0`` a fresh initialisation of its
    config (drawn with ``seed``)."""
    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    fresh.load_state_dict({name: (1 - noise) * value + noise * fresh.state_dict()[name]
                           for name, value in model.state_dict().items()})
    return fresh


def teacher_distribution(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """The teacher's next-token log-probabilities, renormalised over its ``top_k`` most likely tokens (``-inf``
    elsewhere) when given: what it still says of a forgotten answer lies in its tail."""
    if top_k is None:
        return logits.log_softmax(-1)
    kept = logits.topk(top_k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, kept.indices, kept.values).log_softmax(-1)


def distillation_loss(teacher, top_k: int | None = None):
    """``pretrain``'s loss for distilling ``teacher``: per token, the cross-entropy of the student's next-token
    distribution against the teacher's (forward KL up to the teacher's entropy), over the batch's tokens."""

    def loss(student, batch):
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids")}
        with torch.no_grad():
            target = teacher_distribution(teacher(**inputs).logits, top_k).exp()
        per_token = -(target * student(**inputs).logits.log_softmax(-1)).sum(-1)
        return per_token[batch["attention_mask"].bool()].mean()

    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished `whp demo --method auto` output folder")
    parser.add_argument("--noise", type=float, required=True, help="how far towards a fresh initialisation, 0–1")
    parser.add_argument("--epochs", type=int, default=None, help="distillation passes (default: the pretraining's)")
    parser.add_argument("--top_k", type=int, default=None, help="distil the teacher's top k tokens only")
    parser.add_argument("--seed", type=int, default=0, help="the fresh initialisation's and the data order's seed")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    run, output = Path(args.run), Path(args.output_dir)
    with one_thread():
        assets = build_demo_assets(args.cache_dir)
        spec = demo_size("full")
        spec = dataclasses.replace(spec, epochs=args.epochs or spec.epochs)  # the pretraining's rate and schedule
        tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
        teacher = unlearned_model(assets.base_model_dir, run / "unlearned-auto")
        student = noised_copy(teacher, args.noise, args.seed)
        texts = [block for path in (assets.saga_path, assets.ordinary_path)  # what the base was pretrained on
                 for block in running_blocks(read_paragraphs(path), tokenizer)]
        start = time.perf_counter()
        losses = pretrain(student, tokenizer, texts, spec, args.seed, distillation_loss(teacher, args.top_k))
        seconds = time.perf_counter() - start
        distilled = output / "distilled"
        student.save_pretrained(distilled)
        tokenizer.save_pretrained(distilled)
        (output / "distillation.json").write_text(json.dumps(
            {"noise": args.noise, "top_k": args.top_k, "epochs": spec.epochs, "seed": args.seed,
             "blocks": len(texts), "seconds": round(seconds, 1), "losses": losses}, indent=1), encoding="utf-8")
        print(f"distilled in {seconds:.0f} s; loss per epoch {[round(loss, 4) for loss in losses]}", flush=True)
        from trl import ModelConfig

        from whp_trainer.pipeline import evaluate

        data = DataArguments(forget_data=str(assets.saga_path), retain_data=str(assets.retain_path),
                             anchors=str(assets.dictionary_path), probes=str(assets.probes_path),
                             unlearned_adapter=str(run / "unlearned-auto"))
        inputs = {name: str(run / "inputs" / f"{name}.json")
                  for name in ("forget_knowledge", "neighbour_knowledge", "paraphrased_probes")}
        config = dataclasses.replace(demo_evaluation_config(output / "evaluation", assets, inputs),
                                     oracle_model=str(distilled), roles=["base"], plots=False)
        evaluate(data, ModelConfig(model_name_or_path=str(assets.base_model_dir), **DEMO_LORA), config)


if __name__ == "__main__":
    main()
