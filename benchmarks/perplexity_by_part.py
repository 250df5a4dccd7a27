"""Where an unlearned adapter costs ordinary text: the perplexity change against its base on whole texts, by part.

Each text is read as one document cut into blocks of ``--block_size`` tokens, as the stopping rule and the
evaluation read it; the change is given for the whole text (with the spread of the per-block change and the 95 %
bound the stopping rule would read on these blocks) and for consecutive parts of ``--part_blocks`` blocks. Used in
docs/results.md to compare a run's budget text with its held-out text::

    python benchmarks/perplexity_by_part.py --base /tmp/real/cache/real_model/v1/base --adapter /tmp/real/bound0/auto \\
        /tmp/real/cache/real_model/v1/texts/budget-2samuel-4-24.txt /tmp/real/cache/real_model/v1/texts/held_out.txt
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from whp_trainer.collator import split_into_blocks
from whp_trainer.evaluation import perplexity
from whp_trainer.evaluation.retain import perplexity_of, summed_nll
from whp_trainer.evaluation.stopping import perplexity_bound


def block_nlls_in_order(model, blocks: list[list[int]]) -> list[tuple[float, int]]:
    """Per block, in the text's order: summed negative log-likelihood and predicted tokens."""
    with torch.no_grad():
        return [summed_nll(model(torch.tensor([block])).logits, torch.tensor([block])) for block in blocks]


def change(blocks: list[tuple[float, int]], base: list[tuple[float, int]]) -> float:
    return perplexity_of(blocks) / perplexity_of(base) - 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="The base model's folder (with its tokenizer).")
    parser.add_argument("--adapter", required=True, help="The unlearned adapter's folder.")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--part_blocks", type=int, default=8, help="Blocks per part.")
    parser.add_argument("texts", nargs="+", help="Plain-text files, each read as one document.")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    texts = {path: Path(path).read_text(encoding="utf-8") for path in args.texts}
    blocks = {path: split_into_blocks([text], tokenizer, args.block_size) for path, text in texts.items()}
    base = {path: block_nlls_in_order(model, ids) for path, ids in blocks.items()}
    model = PeftModel.from_pretrained(model, args.adapter).eval()
    for path, ids in blocks.items():
        unlearned = block_nlls_in_order(model, ids)
        library = perplexity(model, tokenizer, [texts[path]], max_length=args.block_size)
        # the package's own reading (batched with padding: the same within float noise, 1e-4 here)
        if not math.isclose(perplexity_of(unlearned), library, rel_tol=1e-3):
            raise RuntimeError(f"{path}: {perplexity_of(unlearned):.6g} per block, {library:.6g} by perplexity()")
        per_block = [(nll - base_nll) / count for (nll, count), (base_nll, _) in zip(unlearned, base[path])]
        parts = [change(unlearned[start:start + args.part_blocks], base[path][start:start + args.part_blocks])
                 for start in range(0, len(ids), args.part_blocks)]
        bound = perplexity_bound(unlearned, base[path], 0.95) / perplexity_of(base[path]) - 1
        print(f"{Path(path).name}: {len(ids)} blocks, change {change(unlearned, base[path]):+.2%} (95 % bound "
              f"{bound:+.2%}; per-block sd {statistics.stdev(per_block):.2%}); by part of {args.part_blocks} blocks: "
              + ", ".join(f"{part:+.1%}" for part in parts))


if __name__ == "__main__":
    main()
