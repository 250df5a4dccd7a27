"""Bible knowledge no stopping rule read: does the known book's neighbour budget hold beyond its 20 rows?

`known_book.py`'s `alpha: auto` reads its neighbour budget on 20 facts (Genesis, Exodus, general knowledge), and its
report reads the same 20. This scores 120 clauses of Genesis and Exodus that end on a name (the rule of
`forget_quality.corpus_cloze_rows`, on those books) under the pretrained base and each kept adapter, and prints the
mean answer log-likelihood change with its standard error. Used in docs/results.md::

    python benchmarks/known_book.py --cache_dir CACHE --output_dir known --settings auto
    python benchmarks/known_book_unseen.py --cache_dir CACHE known/auto
"""

from __future__ import annotations

import argparse

import torch
from forget_quality import corpus_cloze_rows
from real_model import pretrained
from transformers import AutoModelForCausalLM, AutoTokenizer
from unseen_neighbours import print_changes

from whp_trainer.demo import cache_root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", help="Folders of kept unlearning adapters of known_book.py.")
    parser.add_argument("--cache_dir", default=None, help="Where real_model.py caches SmolLM2 (default: $WHP_CACHE).")
    args = parser.parse_args(argv)
    rows = [{"prompt": prompt, "answer": answer, "false_answer": false}
            for prompt, answer, false in corpus_cloze_rows(books=("GENESIS", "EXODUS"))]
    base_dir = pretrained(cache_root(args.cache_dir) / "real_model" / "v1")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    print_changes(model, tokenizer, rows, args.adapters, 16, "rows no run read")


if __name__ == "__main__":
    main()
