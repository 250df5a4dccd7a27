"""The GPU acceptance checks of ``UnlearnTrainer``, run by ``benchmarks/gpu/run.sh`` (see docs/multi_gpu.md).

Each check prints ``ok`` or ``FAIL`` with its figure; the results go to ``results.json`` and ``results.md`` under
``--out`` after every check, so a run cut short still reports what it did.

    python benchmarks/gpu/checks.py --out DIR          # on a CUDA machine: the real checks
    python benchmarks/gpu/checks.py --cpu --out DIR    # the dry run: every check's code path, tiny models, CPU

Checks:
  fsdp2       UnlearnTrainer through Trainer under examples/accelerate/fsdp2.yaml (accelerate launch): killed after
              the checkpoint of step 2, resumed from it; the losses of steps 1-4 equal those of the unsharded run
  zero3       the same under examples/accelerate/deepspeed_zero3.yaml (skipped where DeepSpeed is not installed)
  bf16        targets of a bf16 base against the float32 reference; a finite adapter after training
  nf4         targets of a 4-bit NF4 base (bitsandbytes) against the float32 model of its dequantized weights;
              a finite adapter after training
  scale-bf16  a Llama-2-7B-shaped model (random weights, built on the device), blocks of 512, the paper's micro-batch
              of 8: seconds and peak memory of an UnlearnTrainer step, a plain LoRA step and a cached-targets step,
              and the hours they give for the paper's 150 steps x 128 blocks
  scale-nf4   the same with the 7B base quantized to 4-bit NF4
  liger       the student's hard-target loss through Liger's fused linear cross-entropy against whp's chunked loss
              (skipped without liger-kernel or without a GPU: Liger's kernels are Triton)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [
    "Harry went up to him and said, \"Hi, my name is Harry\".",
    "Harry Potter studies magic at Hogwarts with Ron and Hermione.",
    "Hermione's wand was made of vine wood; Ron's was second hand.",
    "The Quidditch match at Hogwarts ended when Harry caught the Snitch.",
    "The cat sat on the mat. The dog ran in the park and the sun was warm.",
    "She studies mathematics at the university and walks home in the evening.",
]
ANCHORS = {"Harry": "Jon", "Hogwarts": "Mystic Academy", "Quidditch": "Skyball", "Ron": "Tom", "Hermione": "Anna"}
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0)
BLOCK = 32  # tokens per block of the tiny checks
# The stated tolerance: hard targets equal to the float32 reference at >= 90 % of positions. bf16 rounding, amplified
# (1 + alpha)-fold in the generic logits, flips near-ties: the CPU dry run measured 94.5 % for bf16, 100 % for NF4.
TARGET_AGREEMENT = 0.90
LOSS_RTOL = 1e-4  # sharded/resumed losses against the unsharded run (float32 compute)
PAPER_STEPS, PAPER_BLOCKS, MICRO_BATCH = 150, 128, 8  # the paper: 150 steps of 8 x 16 accumulated blocks of 512
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
TINY_SCALE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=512, max_position_embeddings=128)


@dataclass
class Result:
    name: str
    status: str  # "ok", "FAIL" or "skipped"
    figure: str
    seconds: float = 0.0
    values: dict = field(default_factory=dict)


@dataclass
class Context:
    cpu: bool
    work: Path
    out: Path

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"


# ---------------------------------------------------------------------------------------------------- tiny artefacts


def write_artefacts(work: Path) -> None:
    """A tiny base (saved with its tokenizer), a reinforced adapter and 16 blocks of Potter-like text."""
    import torch
    from peft import LoraConfig, get_peft_model

    from whp_trainer.collator import split_into_blocks
    from whp_trainer.toy import tiny_llama, train_tokenizer

    tokenizer = train_tokenizer(CORPUS * 20, vocab_size=400)
    base = tiny_llama(tokenizer, hidden_size=64, layers=2, initializer_range=0.3)  # peaked, not uniform, logits
    base.save_pretrained(work / "base")
    tokenizer.save_pretrained(work / "base")
    torch.manual_seed(1)
    reinforced = get_peft_model(base, LoraConfig(init_lora_weights=False, **LORA))
    reinforced.save_pretrained(work / "reinforced")
    blocks = split_into_blocks([" ".join(CORPUS * 12)], tokenizer, BLOCK)[:16]
    (work / "blocks.json").write_text(json.dumps(blocks))


def tiny_trainer(work: Path, out: Path, cpu: bool, base_options: dict | None = None, **config):
    """An UnlearnTrainer on the tiny artefacts (the config is made before the model loads, as ZeRO-3 needs)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from whp_trainer import UnlearnConfig, UnlearnTrainer

    settings = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3,
                    lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], use_cpu=cpu,
                    seed=0, max_length=BLOCK, bf16=False)  # float32 compute unless asked: losses compare exactly
    args = UnlearnConfig(**{**settings, **config})
    options = base_options or {"dtype": torch.float32}
    model = AutoModelForCausalLM.from_pretrained(work / "base", **options)
    blocks = json.loads((work / "blocks.json").read_text())
    return UnlearnTrainer(
        model=model, args=args, reinforced_adapter=work / "reinforced", peft_config=LoraConfig(**LORA),
        anchors=ANCHORS, processing_class=AutoTokenizer.from_pretrained(work / "base"),
        train_dataset=Dataset.from_dict({"input_ids": blocks}),
    )


def logged_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# ------------------------------------------------------------------------------------------- sharded Trainer runs


ENGINES = {  # engine -> accelerate config of the GPU run
    "fsdp2": "examples/accelerate/fsdp2.yaml",
    "zero3": "examples/accelerate/deepspeed_zero3.yaml",
}


def allow_fsdp_on_cpu() -> None:
    """accelerate turns an FSDP plugin into ``DistributedType.FSDP`` only on accelerators: with CPU processes it
    stays DDP. For the dry run, let it take its FSDP2 branch on the CPU too (as tests/fsdp_worker.py does)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def patched(self, *args, fsdp_plugin=None, **kwargs):
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = patched


def run_worker(options) -> None:
    """One sharded run (a child process): 4 steps with a checkpoint every 2, killed (SIGKILL) right after the
    checkpoint of step ``--kill-at``, or resumed from the last complete checkpoint; writes the logged losses."""
    from transformers import TrainerCallback

    config = dict(save_strategy="steps", save_steps=2)
    if options.cpu:  # the GPU run takes FSDP2 or ZeRO-3 from accelerate launch's config file instead
        allow_fsdp_on_cpu()
        config.update(fsdp="full_shard auto_wrap",
                      fsdp_config={"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    trainer = tiny_trainer(Path(options.work), Path(options.run_dir), options.cpu, **config)
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if not sharded:
        raise SystemExit(f"{options.engine}: the Trainer runs unsharded (neither FSDP nor DeepSpeed is enabled)")

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == options.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    if options.kill_at:
        trainer.add_callback(KillAfterCheckpoint())
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    if trainer.is_world_process_zero():
        (Path(options.run_dir) / "losses.json").write_text(json.dumps(logged_losses(trainer)))


def launch(ctx: Context, engine: str, run_dir: Path, *worker_args: str) -> subprocess.CompletedProcess:
    """The worker under ``accelerate launch`` with the engine's config (GPU: one process, the one GPU; float32
    compute, so losses compare to the unsharded run), or under torchrun with one CPU process (the dry run)."""
    if ctx.cpu:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29517"]
    else:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / ENGINES[engine]),
                    "--num_processes", "1", "--mixed_precision", "no", "--main_process_port", "29517"]
    command = [*launcher, __file__, "worker", "--engine", engine, "--work", str(ctx.work), "--run-dir", str(run_dir),
               *(["--cpu"] if ctx.cpu else []), *worker_args]
    log = run_dir.with_suffix(".log")
    with log.open("a") as stream:
        return subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, timeout=240, cwd=ROOT)


def check_sharded(ctx: Context, engine: str) -> Result:
    if engine == "zero3" and not has_module("deepspeed"):
        return Result(engine, "skipped", "deepspeed is not installed")
    if engine == "zero3" and ctx.cpu:
        return Result(engine, "skipped", "accelerate runs DeepSpeed only with GPU processes")
    reference = tiny_trainer(ctx.work, ctx.out / f"{engine}-plain", ctx.cpu)
    reference.train()
    expected = logged_losses(reference)
    del reference
    run_dir = ctx.out / f"{engine}-run"
    killed = launch(ctx, engine, run_dir, "--kill-at", "2")
    checkpoint = run_dir / "checkpoint-2"
    if not checkpoint.is_dir() or (run_dir / "losses.json").exists():
        return Result(engine, "FAIL", f"no checkpoint-2 before the kill (exit {killed.returncode}); see {run_dir}.log")
    resumed = launch(ctx, engine, run_dir, "--resume")
    if resumed.returncode != 0:
        return Result(engine, "FAIL", f"the resumed run failed (exit {resumed.returncode}); see {run_dir}.log")
    losses = json.loads((run_dir / "losses.json").read_text())
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, expected)) if losses else float("inf")
    ok = len(losses) == len(expected) == 4 and worst <= LOSS_RTOL
    figure = f"losses of steps 1-4 (killed after step 2, resumed) vs unsharded: max rel. diff {worst:.1e}"
    return Result(engine, "ok" if ok else "FAIL", figure, values={"losses": losses, "unsharded": expected,
                                                                   "max_rel_diff": worst})


# ------------------------------------------------------------------------------------------------ bf16 and NF4 bases


def first_batch(trainer, size: int = 8) -> dict:
    examples = [trainer.train_dataset[i] for i in range(size)]
    return trainer._prepare_inputs(trainer.data_collator(examples))


def target_agreement(trainer, reference, batch) -> float:
    """Fraction of loss positions where ``trainer``'s hard targets equal ``reference``'s."""
    from whp_trainer.targets import IGNORE_INDEX

    ids = trainer.compute_targets(batch)[0][..., 0]
    expected = reference.compute_targets(batch)[0][..., 0]
    positions = expected != IGNORE_INDEX
    return (ids[positions] == expected[positions]).float().mean().item()


def adapter_after_training(trainer) -> tuple[bool, bool]:
    """Train the trainer's steps; whether the unlearning adapter is finite and has changed."""
    import torch

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    finite = all(torch.isfinite(p).all() for p in after.values())
    return finite, any(not torch.equal(after[n], before[n]) for n in before)


def check_bf16(ctx: Context) -> Result:
    import torch

    reference = tiny_trainer(ctx.work, ctx.out / "fp32", ctx.cpu)
    trainer = tiny_trainer(ctx.work, ctx.out / "bf16", ctx.cpu, base_options={"dtype": torch.bfloat16},
                           max_steps=3, bf16=not ctx.cpu)
    agreement = target_agreement(trainer, reference, first_batch(reference))
    finite, changed = adapter_after_training(trainer)
    ok = agreement >= TARGET_AGREEMENT and finite and changed
    figure = f"targets = float32 at {agreement:.1%} of positions (>= {TARGET_AGREEMENT:.0%}); adapter finite {finite}"
    return Result("bf16", "ok" if ok else "FAIL", figure, values={"agreement": agreement, "finite": finite})


def dequantized_reference(quantized, work: Path, out: Path, cpu: bool):
    """A float32 trainer whose base holds the dequantized values of ``quantized``'s 4-bit weights."""
    import bitsandbytes as bnb

    reference = tiny_trainer(work, out, cpu)
    modules = dict(reference.model.get_base_model().named_modules())
    for name, module in quantized.model.get_base_model().named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            modules[name].weight.data.copy_(weight.float())  # the same names: both wrap the same LoRA targets
    return reference


def check_nf4(ctx: Context) -> Result:
    if not has_module("bitsandbytes"):
        return Result("nf4", "skipped", "bitsandbytes is not installed")
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.float32 if ctx.cpu else torch.bfloat16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    options = {"quantization_config": quantization, "dtype": compute, "device_map": {"": ctx.device if ctx.cpu else 0}}
    trainer = tiny_trainer(ctx.work, ctx.out / "nf4", ctx.cpu, base_options=options, max_steps=3, bf16=not ctx.cpu)
    reference = dequantized_reference(trainer, ctx.work, ctx.out / "nf4-ref", ctx.cpu)
    agreement = target_agreement(trainer, reference, first_batch(reference))
    finite, changed = adapter_after_training(trainer)
    ok = agreement >= TARGET_AGREEMENT and finite and changed
    figure = (f"targets = float32 of the dequantized weights at {agreement:.1%} of positions (>= "
              f"{TARGET_AGREEMENT:.0%}); adapter finite {finite}")
    return Result("nf4", "ok" if ok else "FAIL", figure, values={"agreement": agreement, "finite": finite})


# --------------------------------------------------------------------------------------------------- the paper's scale


def random_llama(ctx: Context, shape: dict, quantize: bool):
    """A Llama of ``shape`` with random weights, built on the device (bf16 on the GPU, float32 on the CPU), its
    decoder's linear layers optionally replaced by 4-bit NF4 ones quantized from them."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = torch.float32 if ctx.cpu else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**shape, tie_word_embeddings=False), dtype=dtype)
    if quantize:
        quantize_decoder(model, dtype, ctx.device)
    return model


def quantize_decoder(model, dtype, device: str) -> None:
    import bitsandbytes as bnb
    import torch

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, linear in list(parent.named_children()):
                if not isinstance(linear, torch.nn.Linear):
                    continue
                quantized = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                              compute_dtype=dtype, quant_type="nf4", device="meta")
                quantized.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
                setattr(parent, name, quantized.to(device))
                del linear


def timed(step, cpu: bool, repeats: int) -> tuple[float, float | None]:
    """Seconds per call of ``step`` after one warm-up, and the peak GPU memory (GiB) of those calls."""
    import torch

    step()
    if not cpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if not cpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    return seconds, None if cpu else torch.cuda.max_memory_allocated() / 2**30


def check_scale(ctx: Context, quantize: bool) -> Result:
    import torch
    from peft import LoraConfig, get_peft_model

    from whp_trainer import UnlearnConfig, UnlearnTrainer
    from whp_trainer.targets import IGNORE_INDEX

    name = "scale-nf4" if quantize else "scale-bf16"
    if quantize and not has_module("bitsandbytes"):
        return Result(name, "skipped", "bitsandbytes is not installed")
    shape, seq, batch = (TINY_SCALE, 32, 2) if ctx.cpu else (LLAMA2_7B, 512, MICRO_BATCH)
    model = random_llama(ctx, shape, quantize)
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(init_lora_weights=False, **LORA), adapter_name="reinforced")
    trainer = UnlearnTrainer(
        model=model, peft_config=LoraConfig(**LORA), data_collator=lambda x: x,
        args=UnlearnConfig(output_dir=str(ctx.out / name), report_to=[], use_cpu=ctx.cpu, bf16=not ctx.cpu),
    )
    model = trainer.model.train()
    ids = torch.randint(0, shape["vocab_size"], (batch, seq), device=ctx.device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "shift_labels": torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE_INDEX)], dim=1)}
    cached = dict(inputs)
    cached["cached_target_ids"], cached["cached_target_probs"] = trainer.compute_targets(inputs)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(loss_fn):
        def run():
            loss_fn().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    repeats = 1 if ctx.cpu else 3
    lora = timed(step(lambda: model(input_ids=ids, attention_mask=inputs["attention_mask"], labels=ids).loss),
                 ctx.cpu, repeats)
    whp = timed(step(lambda: trainer.compute_loss(model, inputs)), ctx.cpu, repeats)
    cache = timed(step(lambda: trainer.compute_loss(model, cached)), ctx.cpu, repeats)
    fill = timed(lambda: trainer.compute_targets(inputs), ctx.cpu, repeats)
    finite = all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)
    micro_steps = PAPER_STEPS * PAPER_BLOCKS // batch
    values = {
        "shape": shape, "seq": seq, "micro_batch": batch,
        **{f"{key}_s": value[0] for key, value in (("lora", lora), ("whp", whp), ("cached", cache), ("fill", fill))},
        **{f"{key}_peak_gib": value[1] for key, value in (("lora", lora), ("whp", whp), ("cached", cache))},
        "paper_hours_whp": whp[0] * micro_steps / 3600, "paper_hours_lora": lora[0] * micro_steps / 3600,
        "paper_hours_cached": cache[0] * micro_steps / 3600,
    }
    memory = "" if ctx.cpu else f"; peak {whp[1]:.1f} vs {lora[1]:.1f} GiB"
    figure = (f"{batch}x{seq}: whp {whp[0]:.3f} s vs LoRA {lora[0]:.3f} s ({whp[0] / lora[0]:.2f}x){memory}; cached "
              f"{cache[0] / lora[0]:.2f}x; paper's 150x128 blocks: {values['paper_hours_whp']:.2f} h "
              f"(LoRA {values['paper_hours_lora']:.2f} h, cached {values['paper_hours_cached']:.2f} h)")
    del trainer, model, optimizer
    return Result(name, "ok" if finite else "FAIL", figure, values=values)


def check_liger(ctx: Context) -> Result:
    if ctx.cpu:
        return Result("liger", "skipped", "Liger's kernels are Triton: GPU only")
    if not has_module("liger_kernel"):
        return Result("liger", "skipped", "liger-kernel is not installed")
    import torch
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    from whp_trainer.targets import chunked_distillation_loss

    tokens, hidden, vocab = MICRO_BATCH * 512, LLAMA2_7B["hidden_size"], LLAMA2_7B["vocab_size"]
    torch.manual_seed(0)
    weight = torch.randn(vocab, hidden, device="cuda", dtype=torch.bfloat16) * hidden**-0.5
    states = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,), device="cuda")
    liger = LigerFusedLinearCrossEntropyLoss()
    losses = {}

    def run(name, loss_fn):
        def step():
            states.grad = None
            loss = loss_fn()
            loss.backward()
            losses[name] = loss.item()
        return timed(step, False, 5)

    ours = run("whp", lambda: chunked_distillation_loss(states, weight, targets, targets, None)[0])
    theirs = run("liger", lambda: liger(weight, states, targets))
    agree = abs(losses["whp"] - losses["liger"]) <= 1e-2 * abs(losses["liger"])
    figure = (f"{tokens} positions: whp chunked {ours[0] * 1e3:.1f} ms, {ours[1]:.2f} GiB; Liger {theirs[0] * 1e3:.1f} "
              f"ms, {theirs[1]:.2f} GiB; losses {losses['whp']:.4f} / {losses['liger']:.4f}")
    return Result("liger", "ok" if agree else "FAIL", figure,
                  values={"whp_s": ours[0], "liger_s": theirs[0], "whp_gib": ours[1], "liger_gib": theirs[1], **losses})


# ------------------------------------------------------------------------------------------------------------- driver


CHECKS = {
    "fsdp2": lambda ctx: check_sharded(ctx, "fsdp2"),
    "zero3": lambda ctx: check_sharded(ctx, "zero3"),
    "bf16": check_bf16,
    "nf4": check_nf4,
    "scale-bf16": lambda ctx: check_scale(ctx, quantize=False),
    "scale-nf4": lambda ctx: check_scale(ctx, quantize=True),
    "liger": check_liger,
}


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def environment(cpu: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    packages = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "deepspeed",
                "liger-kernel")
    return {"device": "cpu (dry run)" if cpu else torch.cuda.get_device_name(0), "python": sys.version.split()[0],
            **{package: installed(package) for package in packages}}


def write_results(out: Path, env: dict, results: list[Result]) -> None:
    (out / "results.json").write_text(json.dumps({"environment": env, "checks": [asdict(r) for r in results]},
                                                 indent=1, default=str))
    lines = [f"Device: {env['device']}; " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "device" and v), "",
             "| check | result | figure | seconds |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.name} | {r.status} | {r.figure} | {r.seconds:.0f} |" for r in results]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def run_checks(options) -> int:
    import torch

    if not options.cpu and not torch.cuda.is_available():
        print("no CUDA device: run on the GPU machine, or pass --cpu for the dry run", file=sys.stderr)
        return 2
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(options.cpu)
    print(json.dumps(env), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as work:
        ctx = Context(cpu=options.cpu, work=Path(work), out=Path(work) / "runs")
        ctx.out.mkdir()
        write_artefacts(ctx.work)
        for name in options.checks:
            start = time.perf_counter()
            try:
                result = CHECKS[name](ctx)
            except Exception as error:  # one failing check must not stop the others
                traceback.print_exc()
                result = Result(name, "FAIL", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            result.seconds = time.perf_counter() - start
            results.append(result)
            print(f"{result.status:<7} {name}: {result.figure} ({result.seconds:.0f} s)", flush=True)
            write_results(out, env, results)
            gc.collect()
            if not options.cpu:
                torch.cuda.empty_cache()
        for log in sorted(ctx.out.glob("*.log")):  # the sharded runs' own output, for a failure's cause
            (out / log.name).write_text(log.read_text()[-200_000:])
    print((out / "results.md").read_text())
    return 0 if all(r.status != "FAIL" for r in results) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="one sharded run (internal)")
    worker.add_argument("--engine", choices=ENGINES, required=True)
    worker.add_argument("--work", required=True)
    worker.add_argument("--run-dir", required=True)
    worker.add_argument("--cpu", action="store_true")
    worker.add_argument("--kill-at", type=int, default=0)
    worker.add_argument("--resume", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="the dry run: tiny models on the CPU")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu" / "out"), help="where the results go")
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS), help="a subset of the checks")
    options = parser.parse_args()
    if options.command == "worker":
        run_worker(options)
    else:
        sys.exit(run_checks(options))


if __name__ == "__main__":
    main()
