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
import math
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from whp_trainer.arguments import DataArguments
from whp_trainer.batching import padded_batch
from whp_trainer.collator import read_paragraphs
from whp_trainer.demo.run import DEMO_LORA, demo_evaluation_config
from whp_trainer.demo.saga import build_demo_assets, demo_size, one_thread, running_blocks, warmup_cosine
from whp_trainer.toy import tiny_llama


def unlearned_model(base_dir: Path, adapter: Path):
    """The base with the unlearning adapter merged into its weights, frozen."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    model.requires_grad_(False)
    return model


def noised_copy(model, tokenizer, spec, noise: float, seed: int):
    """A copy of ``model`` with every weight ``(1 - noise)·w + noise·w0``, ``w0`` a fresh initialisation."""
    fresh = tiny_llama(tokenizer, hidden_size=spec.hidden_size, layers=spec.layers, heads=spec.heads, seed=seed)
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


def distil(student, teacher, tokenizer, texts: list[str], spec, epochs: int, seed: int,
           top_k: int | None = None) -> list[float]:
    """Every weight of ``student`` trained towards ``teacher``'s next-token distribution on ``texts`` (cross-entropy
    against it per token: forward KL up to the teacher's entropy), AdamW with warm-up and cosine decay at the
    pretraining's rate; returns each epoch's mean loss."""
    sequences = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    total = math.ceil(len(sequences) / spec.batch_size) * epochs
    optimizer = torch.optim.AdamW(student.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    student.train()
    for _ in range(epochs):
        order, epoch_losses = torch.randperm(len(sequences), generator=generator).tolist(), []
        for start in range(0, len(order), spec.batch_size):
            batch = padded_batch([sequences[i] for i in order[start : start + spec.batch_size]],
                                 tokenizer.pad_token_id)
            inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids")}
            with torch.no_grad():
                target = teacher_distribution(teacher(**inputs).logits, top_k).exp()
            predicted = student(**inputs).logits.log_softmax(-1)
            per_token = -(target * predicted).sum(-1)
            mask = batch["attention_mask"].bool()
            loss = per_token[mask].mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_losses.append(loss.item())
        losses.append(sum(epoch_losses) / len(epoch_losses))
    student.eval()
    return losses


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
        tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
        teacher = unlearned_model(assets.base_model_dir, run / "unlearned-auto")
        student = noised_copy(teacher, tokenizer, spec, args.noise, args.seed)
        texts = [block for path in (assets.saga_path, assets.ordinary_path)  # what the base was pretrained on
                 for block in running_blocks(read_paragraphs(path), tokenizer)]
        start = time.perf_counter()
        losses = distil(student, teacher, tokenizer, texts, spec, args.epochs or spec.epochs, args.seed,
                        args.top_k)
        seconds = time.perf_counter() - start
        distilled = output / "distilled"
        student.save_pretrained(distilled)
        tokenizer.save_pretrained(distilled)
        (output / "distillation.json").write_text(json.dumps(
            {"noise": args.noise, "top_k": args.top_k, "epochs": args.epochs or spec.epochs, "seed": args.seed,
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
