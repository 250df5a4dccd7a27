"""Neighbour knowledge the stopping rule did not read: does the neighbour budget hold beyond its sample?

`whp demo --method auto` reads its neighbour budget on the demo's ordinary-world cloze rows (6 people, seed 0). This
draws the same kind of rows for every generic person with other seeds (1-3; rows the rule read are left out, about
4,300) and prints, per kept adapter, the mean answer log-likelihood change against the demo's base with its
standard error. Used in docs/results.md::

    whp demo --method auto --seed 42 --output_dir whp-demo-42
    python benchmarks/unseen_neighbours.py whp-demo-42/unlearned-auto
"""

from __future__ import annotations

import argparse
from statistics import fmean, stdev

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from whp_trainer.demo.saga import build_demo_assets, generic_people, neighbour_knowledge
from whp_trainer.evaluation.knowledge import row_log_likelihoods


def unseen_rows(seeds: tuple[int, ...] = (1, 2, 3)) -> list[dict[str, str]]:
    """The demo's neighbour rows for every generic person drawn with ``seeds``, less those the rule reads."""
    seen = {row["prompt"] + row["answer"] for row in neighbour_knowledge()}
    return [row for seed in seeds for row in neighbour_knowledge(len(generic_people()), seed)
            if row["prompt"] + row["answer"] not in seen]


def print_changes(model, tokenizer, rows: list[dict], adapters: list[str], batch_size: int, what: str) -> None:
    """Print the mean answer log-likelihood of ``rows`` under ``model`` (the base; ``what`` says what the rows are),
    then each of ``adapters``' mean change against it on the same rows, with its standard error."""
    base = row_log_likelihoods(model, tokenizer, rows, batch_size=batch_size)
    print(f"{len(rows)} {what}; the base: {fmean(base):.4f} nats")
    for folder in adapters:
        model = PeftModel.from_pretrained(model, folder).eval()
        changes = [score - before for score, before in
                   zip(row_log_likelihoods(model, tokenizer, rows, batch_size=batch_size), base)]
        print(f"{folder}: change {fmean(changes):+.4f} ± {stdev(changes) / len(changes) ** 0.5:.4f} nats", flush=True)
        model = model.unload()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", help="Folders of kept unlearning adapters of the demo's base.")
    parser.add_argument("--cache_dir", default=None, help="The demo's cache (default: WHP_CACHE or ~/.cache).")
    args = parser.parse_args(argv)
    assets = build_demo_assets(args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.base_model_dir, dtype=torch.float32).eval()
    print_changes(model, tokenizer, unseen_rows(), args.adapters, 32, "rows the rule did not read")

if __name__ == "__main__":
    main()
