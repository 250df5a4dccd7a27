"""Wall time of `alpha: auto`'s readings in a multi-process run, shared out among the processes (each reads every
N-th item and all gather the results, as the package does) against every process reading every item (as it did),
interleaved over rounds in the same processes (medians printed by the first process):

    python benchmarks/bench_shared_readings.py --processes 2 --rounds 3

  measurement  one measurement of the stopping rule: 64 probes, 64 first mentions, 64 + 64 membership blocks,
               64 budget blocks and 64 neighbour rows, as the rule samples them
  sweep        the teacher sweep over α 2, 3, 5, 10 on the same probes, budget and membership blocks

On a machine of N cores give each process one thread (``--threads 1``, the default) so that the processes do not
compete for cores.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

SAMPLE = 64
WORDS = [f"w{index}" for index in range(3000)]


def texts(rng: random.Random, count: int, words: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=words)) for _ in range(count)]


def readings(args):
    """The two readings, each a function of whether it is shared out."""
    import torch
    from peft import LoraConfig, get_peft_model

    from whp_trainer import auto, models
    from whp_trainer.evaluation import autotune
    from whp_trainer.toy import tiny_llama, train_tokenizer

    rng = random.Random(0)
    tokenizer = train_tokenizer(texts(rng, 2000, 20), vocab_size=args.vocab)
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(tokenizer, hidden_size=args.hidden, layers=args.layers, heads=args.hidden // 64),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
                           adapter_name="reinforced")
    probes = [{"prompt": prompt, "target": " w7"} for prompt in texts(rng, SAMPLE, 24)]
    blocks = texts(rng, SAMPLE, args.words)
    membership = (texts(rng, SAMPLE, args.words), texts(rng, SAMPLE, args.words))
    rows = [{"prompt": prompt, "answer": " w1 w2 w3"} for prompt in texts(rng, SAMPLE, 24)]
    trainer = SimpleNamespace(model=model, processing_class=tokenizer, add_callback=lambda callback: None)
    options = SimpleNamespace(max_length=args.max_length, auto_eval_steps=8, auto_max_measurements=12,
                              retain_budget=0.03, neighbour_budget=0.1, budget_confidence=0.95, budget_patience=3,
                              budget_backtrack=True, budget_drop_cap=True, budget_end_search=True)
    inputs = auto.AutoInputs(probes, probes, blocks, membership, neighbour_rows=rows)
    callback = auto.stop_at_targets(trainer, {"targets": {"membership": 0.5, "familiarity": 0.1}}, inputs, options,
                                    tokenizer)
    shared = models.read_in_shares

    def sharing(on: bool):
        models.read_in_shares = shared if on else models.read_whole

    def measurement(on: bool):
        sharing(on)
        callback.measure(model)

    def sweep(on: bool):
        sharing(on)
        autotune.teacher_sweep(model, tokenizer, [2, 3, 5, 10], probes, blocks, membership,
                               max_length=args.max_length)

    return {"measurement": measurement, "sweep": sweep}


def timed(function, on: bool) -> float:
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    function(on)
    dist.barrier()
    return time.perf_counter() - start


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    functions = readings(args)
    seconds = {(name, on): [] for name in functions for on in (True, False)}
    for name, function in functions.items():  # warm-up
        timed(function, True)
    for _ in range(args.rounds):
        for (name, on), values in seconds.items():
            values.append(timed(functions[name], on))
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} processes, {args.threads} thread(s) each")
        print(f"{'reading':<12}{'shared s':>10}{'every process s':>17}{'ratio':>8}  rounds (shared; every process)")
        for name in functions:
            mine, every = statistics.median(seconds[name, True]), statistics.median(seconds[name, False])
            rounds = ", ".join(f"{value:.2f}" for value in seconds[name, True])
            rounds += "; " + ", ".join(f"{value:.2f}" for value in seconds[name, False])
            print(f"{name:<12}{mine:>10.2f}{every:>17.2f}{every / mine:>8.2f}  {rounds}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--words", type=int, default=120, help="words per membership and budget block")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.processes), "--standalone"]
    subprocess.run([*launch, str(Path(__file__).resolve()), "--worker", *sys.argv[1:]], check=True)


if __name__ == "__main__":
    main()
