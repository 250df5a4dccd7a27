"""A lead, not yet an option: the reinforced boost never lowers the retain text's commonest tokens.

On the forget text the reinforced model is surer of everything, the full stop after a memorized fact and the
newline among it, and the generic targets take that certainty away: the student learns to avoid the commonest
tokens of any text (docs/results.md, "Where the damage to ordinary text comes from"). This experiment zeroes the boost
``ReLU(v_reinforced − v_baseline)`` of the tokens that make up half of the retain text (its most frequent first),
in every place the package builds generic logits (the trainer's targets, the teacher and ``alpha: auto``'s sweep,
by patching ``generic_logits`` where it is imported), then runs a benchmark's automatic setting as it is.

    python benchmarks/spared_tokens.py real --seed 0 --output_dir /tmp/gb/real-c0 --cache_dir /tmp/real/cache
    python benchmarks/spared_tokens.py natural --seed 0 --output_dir /tmp/gb/fq-c0 --cache_dir /tmp/fq/cache
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

AUTO = {"natural": "auto (recommended objective; α, reinforcement and stopping chosen, no oracle)", "real": "auto"}


def commonest_tokens(ids: list[int], share: float) -> list[int]:
    """The most frequent of ``ids``, in order, until they make up ``share`` of them."""
    chosen, covered = [], 0
    for token, count in collections.Counter(ids).most_common():
        if covered >= share * len(ids):
            break
        chosen.append(token)
        covered += count
    return chosen


def spare(tokens: list[int]) -> None:
    """Every ``generic_logits`` the package calls leaves ``tokens`` at the baseline's logits."""
    import torch

    import whp_trainer.evaluation.autotune as autotune
    import whp_trainer.evaluation.teacher as teacher
    import whp_trainer.targets as targets
    import whp_trainer.trainer as trainer

    spared = torch.tensor(tokens)

    def generic_logits(baseline, reinforced, alpha, relu=True):
        boost = reinforced - baseline
        if relu:
            boost.clamp_(min=0)
        boost[..., spared.to(boost.device)] = 0
        return torch.sub(baseline, boost, alpha=alpha)

    for module in (targets, trainer, teacher, autotune):
        module.generic_logits = generic_logits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=list(AUTO))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--cache_dir", required=True, help="The benchmark's cache (its base, oracle and texts).")
    parser.add_argument("--share", type=float, default=0.5, help="Share of the retain text's tokens spared.")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    if args.benchmark == "real":
        import real_model as benchmark

        root = Path(args.cache_dir) / "real_model" / "v1"
    else:
        import forget_quality as benchmark

        root = Path(args.cache_dir) / "forget_quality" / "v1-repeats5"
    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    ids = tokenizer((root / "texts" / "retain.txt").read_text(encoding="utf-8"))["input_ids"]
    tokens = commonest_tokens(ids, args.share)
    print(f"spared_tokens: {len(tokens)} tokens, {args.share:.0%} of the retain text's {len(ids)}:",
          [tokenizer.decode([token]) for token in tokens], flush=True)
    spare(tokens)
    benchmark.main(["--cache_dir", args.cache_dir, "--output_dir", args.output_dir, "--seed", str(args.seed),
                    "--settings", AUTO[args.benchmark], *(["--no_step_cost"] if args.benchmark == "real" else [])])


if __name__ == "__main__":
    main()
