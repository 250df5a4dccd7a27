"""What the student's steps cost on a book the pretrained model already knows: objectives side by side.

A diagnostic on the known-book pilot (`known_book.py`, whose texts and reinforced adapter it reuses): the student
trained a fixed number of steps (16 by default, the learning rate decaying to 0 over them) from the same teacher
(α 2 of the given reinforcement, the one ``alpha: auto`` chooses there) in each variant of the objective, then the
perplexity change against the base on every block of the budget's text (Exodus 1-4), the held-out text (Ruth), the
retain text (Genesis 37-45) and the forget text, and the change of the forget and neighbour facts' answer
log-likelihood. A variant is ``NAME=JSON`` of `UnlearnConfig` fields, or one of `VARIANTS` by name.

    python benchmarks/known_book.py --cache_dir /tmp/real/cache --output_dir /tmp/known --settings auto
    python benchmarks/known_book_objectives.py --cache_dir /tmp/real/cache --output_dir /tmp/known
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from known_book import write_texts  # noqa: E402
from real_model import BLOCK, LORA, TRAINING, UNLEARN, pretrained  # noqa: E402

RECOMMENDED = {"target_mode": "soft", "alpha": 2.0, "retain_weight": 1.0, "original_cap_weight": 1.0}
VARIANTS = {  # name -> changes to RECOMMENDED
    "recommended (soft, α 2, cap 1, retain 1)": {},
    "cap 0": {"original_cap_weight": 0.0},
    "cap 0.25": {"original_cap_weight": 0.25},
    "cap at most 1 nat below the base": {"original_cap_depth": 1.0},
    "projected off the retain text's gradient": {"retain_projection": True},
    "cap 0, projected": {"original_cap_weight": 0.0, "retain_projection": True},
    "retain 4 (alpha auto's ceiling)": {"retain_weight": 4.0},
    "the paper (hard targets, α 5, no retain loss)": {"target_mode": "argmax", "alpha": 5.0, "retain_weight": 0.0,
                                                      "original_cap_weight": 0.0},
}
TEXTS = ("budget", "held_out", "retain", "forget")


def measure(model, tokenizer, texts: Path) -> dict[str, float]:
    from whp_trainer.data import load_texts
    from whp_trainer.evaluation import knowledge_scores, perplexity
    from whp_trainer.evaluation.knowledge import load_knowledge

    scores = {name: perplexity(model, tokenizer, load_texts(texts / f"{name}.txt")["text"], BLOCK) for name in TEXTS}
    for name in ("forget", "neighbour"):
        rows = load_knowledge(texts / f"{name}_knowledge.jsonl")
        scores[f"{name} facts"] = knowledge_scores(model, tokenizer, rows)["loglik"]
    return scores


def main(argv: list[str] | None = None) -> list[dict]:
    from trl import ModelConfig

    from whp_trainer import UnlearnConfig, pipeline
    from whp_trainer.arguments import DataArguments
    from whp_trainer.demo import cache_root
    from whp_trainer.loading import load_base_model, load_tokenizer, with_adapters

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default=None, help="Where real_model.py caches SmolLM2 (default: $WHP_CACHE).")
    parser.add_argument("--output_dir", default="known-book", help="known_book.py's output folder (its reinforced "
                        "adapter is used); the students go to objectives/ there.")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="Names of VARIANTS, or NAME=JSON.")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    texts = write_texts(out / "texts")
    model_args = ModelConfig(model_name_or_path=str(pretrained(cache_root(args.cache_dir) / "real_model" / "v1")),
                             **LORA)
    tokenizer = load_tokenizer(model_args)
    data = DataArguments(forget_data=str(texts / "forget.txt"), retain_data=str(texts / "retain.txt"),
                         anchors=str(texts / "anchors.json"), reinforced_adapter=str(out / "reinforced"))
    assert (out / "reinforced").is_dir(), f"{out / 'reinforced'}: run known_book.py first"
    base = measure(load_base_model(model_args), tokenizer, texts)
    rows = []
    for variant in args.variants:
        name, _, options = variant.partition("=")
        changes = json.loads(options) if options else VARIANTS[name]
        folder = out / "objectives" / f"{len(rows)}-steps{args.steps}-seed{args.seed}"
        config = UnlearnConfig(output_dir=str(folder), **{**TRAINING, **UNLEARN, "seed": args.seed,
                                                           "max_steps": args.steps, **RECOMMENDED, **changes})
        start = time.perf_counter()
        adapter = pipeline.unlearn(data, model_args, config, overwrite=True)
        seconds = time.perf_counter() - start
        model = with_adapters(load_base_model(model_args), {"student": Path(adapter)})
        model.set_adapter("student")
        scores = measure(model, tokenizer, texts)
        rows.append({"variant": name, "seconds": seconds, **scores})
        print(f"known_book_objectives: {name}: " + " · ".join(
            f"{key} {scores[key] / base[key] - 1:+.1%}" for key in TEXTS) + " · " + " · ".join(
            f"{key} {scores[key] - base[key]:+.3f} nats" for key in ("forget facts", "neighbour facts")), flush=True)
    header = "| objective | " + " | ".join(TEXTS) + " | forget facts | neighbour facts |"
    print("\n" + header + "\n|" + " --- |" * (len(TEXTS) + 3))
    for row in rows:
        print(f"| {row['variant']} | " + " | ".join(f"{row[key] / base[key] - 1:+.1%}" for key in TEXTS) + " | " +
              " | ".join(f"{row[key] - base[key]:+.3f}" for key in ("forget facts", "neighbour facts")) + " |")
    print(f"known_book_objectives: {args.steps} steps, seed {args.seed}; base: " + json.dumps(base))
    (out / "objectives").mkdir(parents=True, exist_ok=True)
    (out / "objectives" / f"steps{args.steps}-seed{args.seed}.json").write_text(json.dumps({"base": base,
                                                                                          "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
