"""Knowledge rows under a base and its adapters: each adapter's mean answer log-likelihood change, with its error.

By default the rows are the package's 160 general facts (`whp_trainer.evaluation.general_knowledge`), which
``alpha: auto`` without ``--neighbour_knowledge`` budgets and the evaluation reads: on adapters trained without that
budget, whether it would have held them back. ``--rows`` scores a knowledge file instead (``.jsonl``/``.json``/
``.csv``, as ``--neighbour_knowledge``). Prints the base's mean answer log-likelihood and two-choice accuracy, then
each adapter's change against the base on the same rows. Used in docs/results.md::

    python benchmarks/known_book.py --cache_dir /tmp/real/cache --output_dir /tmp/known --settings auto paper
    python benchmarks/knowledge_change.py /tmp/real/cache/real_model/v1/smollm2 /tmp/known/auto /tmp/known/paper
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from unseen_neighbours import print_changes

from whp_trainer.evaluation import general_knowledge, load_knowledge, two_choice_accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="The base model's folder.")
    parser.add_argument("adapters", nargs="*", help="Folders of adapters of that base.")
    parser.add_argument("--rows", default=None, help="A knowledge file (default: the package's general facts).")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    rows = load_knowledge(args.rows) if args.rows else general_knowledge()
    print(f"two-choice accuracy of the base: {two_choice_accuracy(model, tokenizer, rows):.3f}")
    print_changes(model, tokenizer, rows, args.adapters, 16, args.rows or "general facts")


if __name__ == "__main__":
    main()
