"""The package's general facts under a base and its adapters: what a run without ``--neighbour_knowledge`` budgets.

``alpha: auto`` without ``--neighbour_knowledge`` holds its student within 0.1 nat on a sample of the package's 160
general facts (`whp_trainer.evaluation.general_knowledge`), and the evaluation reads them too. This prints their mean
answer log-likelihood under a base model, their two-choice accuracy, and each adapter's mean change against the
base with its standard error — on adapters trained without that budget, whether it would have held them back.
Used in docs/results.md::

    python benchmarks/known_book.py --cache_dir /tmp/real/cache --output_dir /tmp/known --settings auto paper
    python benchmarks/general_facts.py /tmp/real/cache/real_model/v1/smollm2 /tmp/known/auto /tmp/known/paper
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from unseen_neighbours import print_changes

from whp_trainer.evaluation import general_knowledge, two_choice_accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="The base model's folder.")
    parser.add_argument("adapters", nargs="*", help="Folders of adapters of that base.")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    rows = general_knowledge()
    print(f"two-choice accuracy of the base: {two_choice_accuracy(model, tokenizer, rows):.3f}")
    print_changes(model, tokenizer, rows, args.adapters, 16, "general facts")


if __name__ == "__main__":
    main()
