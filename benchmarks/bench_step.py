"""Step time and peak memory of an UnlearnTrainer step against a plain LoRA SFT step, side by side.

Each variant runs in its own process (so peak memory is its own), the variants alternate over several rounds (the
machine is shared and noisy), and the ratios against the reference are printed: wall-clock and CPU time per step
(the process's own CPU time, less sensitive to other load on a shared machine) and peak resident memory.

    python benchmarks/bench_step.py                       # Llama-like model, vocabulary 32k
    python benchmarks/bench_step.py --vocab 128256        # a Llama-3-sized vocabulary
    python benchmarks/bench_step.py --model FOLDER        # a real model (benchmarks/real_model.py measures SmolLM2)

Variants:
  sft        plain LoRA SFT step (the reference): student forward + cross-entropy + backward + AdamW step
  whp        UnlearnTrainer.compute_loss: two teacher passes on the shared base, chunked targets, student step
             with the chunked student loss (no B×T×V student logits)
  whp-logits the same with the student's full logits (chunked_student_loss=False)
  whp-fused  the same with both teachers in one forward (PEFT mixed-batch adapter_names)
  whp-full   the same with one chunk for all positions (teacher logits held for the whole batch at once)
  whp-cap    the recommended setting's student loss: soft targets, alpha 20, original_cap_weight 1 (chunked too)
  whp-cached a later epoch with UnlearnConfig.cache_targets: the targets are read from the cache, no teacher pass
  copy       what existing re-implementations do: a second full model (reinforced, merged) as the teacher,
             full-batch logits for both teachers
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RECOMMENDED_LOSS = dict(target_mode="soft", alpha=20.0, original_cap_weight=1.0)
VARIANTS = ("sft", "whp", "whp-logits", "whp-fused", "whp-full", "whp-cap", "whp-cached", "copy")


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def build(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if args.model:  # a real model folder (e.g. benchmarks/real_model.py's base) instead of a random Llama
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    else:
        config = LlamaConfig(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
            num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
            num_key_value_heads=args.hidden // 64, tie_word_embeddings=False,
        )
        base = LlamaForCausalLM(config)
    lora = dict(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    return base, lora, ids, mask, LoraConfig, get_peft_model


def make_step(variant, args, tmp):
    """Build the variant's models and return a function doing one optimizer step."""
    import torch

    from whp_trainer import UnlearnConfig, UnlearnTrainer
    from whp_trainer.targets import IGNORE_INDEX

    base, lora, ids, mask, LoraConfig, get_peft_model = build(args)
    labels = ids.clone()
    shift_labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE_INDEX)], dim=1)
    if variant == "sft":
        model = get_peft_model(base, LoraConfig(**lora))

        def loss_fn():
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss

    elif variant.startswith("whp"):
        reinforced = get_peft_model(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **lora))
        reinforced.save_pretrained(tmp / "reinforced")
        del reinforced
        chunk = args.batch * args.seq if variant == "whp-full" else args.chunk
        trainer = UnlearnTrainer(
            model=base, reinforced_adapter=tmp / "reinforced", peft_config=LoraConfig(**lora),
            args=UnlearnConfig(output_dir=str(tmp / "out"), report_to=[], use_cpu=True, logits_chunk_size=chunk,
                              gradient_checkpointing=False,  # as the sft reference: compare the same step
                              fused_teacher_pass=variant == "whp-fused", chunked_student_loss=variant != "whp-logits",
                              **(RECOMMENDED_LOSS if variant == "whp-cap" else {})),
            data_collator=lambda x: x,
        )
        model = trainer.model
        batch = {"input_ids": ids, "attention_mask": mask, "shift_labels": shift_labels}
        if variant == "whp-cached":  # what CachedTargetsCollator adds to a batch, computed during set-up
            batch["cached_target_ids"], batch["cached_target_probs"] = trainer.compute_targets(batch)

        def loss_fn():
            return trainer.compute_loss(model, batch)

    elif variant == "copy":
        teacher = get_peft_model(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **lora)).merge_and_unload()
        teacher.eval()
        model = get_peft_model(base, LoraConfig(**lora))
        from whp_trainer.targets import distillation_loss, generic_logits

        def loss_fn():
            with torch.no_grad(), model.disable_adapter():
                model.eval()
                baseline = model(input_ids=ids, attention_mask=mask).logits.float()
                model.train()
                reinforced = teacher(input_ids=ids, attention_mask=mask).logits.float()
                targets = generic_logits(baseline, reinforced, 5.0).argmax(-1)
                del baseline, reinforced
            targets[:, -1] = IGNORE_INDEX
            student = model(input_ids=ids, attention_mask=mask).logits
            return distillation_loss(student, targets)

    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() * p.element_size() for p in base.parameters())


def run_worker(args) -> None:
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    import whp_trainer  # noqa: F401  (imports counted before the baseline RSS)

    resting = current_rss_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        step, weight_bytes = make_step(args.worker, args, Path(tmp))
        reset_peak_rss()  # set-up (saving the reinforced adapter, ...) is not part of a step
        step()  # warm-up
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step()
        seconds = (time.perf_counter() - start) / args.steps
        cpu_seconds = (time.process_time() - start_cpu) / args.steps
    print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "peak": peak_rss_bytes() - resting, "weights": weight_bytes}))


def run_side_by_side(args) -> None:
    forwarded = [f"--{k}={getattr(args, k)}" for k in ("vocab", "hidden", "layers", "batch", "seq", "steps", "threads")]
    forwarded += [f"--model={args.model}"] if args.model else []
    forwarded += [f"--chunk={args.chunk}"] if args.chunk else []
    results = {variant: [] for variant in args.variants}
    for _ in range(args.rounds):
        for variant in args.variants:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", variant, *forwarded], capture_output=True, text=True, check=True
            )
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    reference = results["sft"]
    ref_time = statistics.median(r["seconds"] for r in reference)
    ref_peak = statistics.median(r["peak"] for r in reference)
    print(f"model weights {reference[0]['weights'] / 2**20:.0f} MiB; vocab {args.vocab}, batch {args.batch}×{args.seq}")
    ref_cpu = statistics.median(r["cpu"] for r in reference)
    print(f"{'variant':<11}{'s/step':>10}{'× sft':>8}{'CPU s/step':>12}{'× sft':>8}{'peak MiB':>10}{'× sft':>8}")
    for variant, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        peak = statistics.median(r["peak"] for r in runs)
        print(
            f"{variant:<11}{seconds:>10.3f}{seconds / ref_time:>8.2f}{cpu:>12.3f}{cpu / ref_cpu:>8.2f}"
            f"{peak / 2**20:>10.0f}{peak / ref_peak:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--model", help="A model folder to measure (a Llama-like architecture) instead of a random one")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, help="UnlearnConfig.logits_chunk_size of the whp variants (default: its own)")
    args = parser.parse_args()
    if args.model:
        from transformers import AutoConfig

        args.vocab = AutoConfig.from_pretrained(args.model).vocab_size
    if args.worker:
        run_worker(args)
    else:
        if "sft" not in args.variants:
            args.variants.insert(0, "sft")
        run_side_by_side(args)


if __name__ == "__main__":
    main()
