"""Peak memory of the readings `alpha: auto` and the evaluation take of whole blocks — perplexity (`block_nlls`),
membership scores (`token_scores`) and the teacher sweep (`block_nlls_by_alpha`, `membership_by_alpha`) — against
the same readings taken one batch at once (the vocabulary-sized float tensors of every row together, as the package
read them before), side by side on one model with a large vocabulary, each in a fresh process:

    python benchmarks/bench_reading_memory.py --vocab 128256 --batch 8 --length 256

Prints, per reading, the extra peak resident memory each way (what the reading adds to the process's peak once the
model and the batch are in memory), their ratio, and the largest difference between the two ways' results.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

READINGS = ("perplexity", "membership", "sweep")
ALPHAS = (2.0, 5.0, 10.0)


def build(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from whp_trainer.evaluation import GenericTeacher

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=args.length)
    model = get_peft_model(LlamaForCausalLM(config).eval(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                       init_lora_weights=False), "reinforced")
    rows = [torch.randint(1, args.vocab, (args.length - 3 * index,)).tolist() for index in range(args.batch)]
    return model, GenericTeacher(model, "reinforced", alpha=0.0), rows


def package(reading: str, model, teacher, rows, batch: int):
    from types import SimpleNamespace

    from whp_trainer.evaluation.autotune import block_nlls_by_alpha, membership_by_alpha
    from whp_trainer.evaluation.membership import token_scores_of_ids
    from whp_trainer.evaluation.retain import nlls_of_blocks

    if reading == "perplexity":
        tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=None)  # the rows are ids already: the padding id
        return [value for value, _ in nlls_of_blocks(model, tokenizer, rows, batch)]
    if reading == "membership":
        return [value for scores in token_scores_of_ids(model, rows, 0, batch) for row in scores for value in
                row.tolist()]
    return [value for pair in block_nlls_by_alpha(teacher, rows, ALPHAS, 0, batch) for value, _ in pair] + \
        [value for row in membership_by_alpha(teacher, rows, ALPHAS, 0, 0.2, batch) for pair in row for value in pair]


def one_batch_at_once(reading: str, model, teacher, rows, batch: int):
    """The same readings with every row's float tensors of vocabulary size held together."""
    import torch
    import torch.nn.functional as F

    from whp_trainer.batching import padded_batch
    from whp_trainer.evaluation.membership import min_k
    from whp_trainer.targets import generic_logits

    def nlls(logits, labels):
        labels = labels[:, 1:]
        return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels, reduction="none").sum(dim=1).tolist()

    def scores(logits, ids):
        distribution = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        probabilities = distribution.exp()
        mean = (probabilities * distribution).sum(-1)
        spread = ((probabilities * distribution.square()).sum(-1) - mean.square()).clamp(min=1e-12).sqrt()
        chosen = distribution.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return [(chosen[row, : len(rows[row]) - 1], ((chosen - mean) / spread)[row, : len(rows[row]) - 1])
                for row in range(len(rows))]

    with torch.no_grad():
        data = padded_batch(rows, 0)
        if reading == "perplexity":
            labels = data.pop("labels")
            return nlls(model(**data).logits, labels)
        if reading == "membership":
            pairs = scores(model(**data).logits, data["input_ids"])
            return [value for part in (0, 1) for pair in pairs for value in pair[part].tolist()]
        baseline, reinforced = teacher.role_logits(data["input_ids"], data["attention_mask"], data["position_ids"])
        sweep = [generic_logits(baseline, reinforced, alpha) for alpha in ALPHAS]
        found = [value for row in zip(*(nlls(values, data["labels"]) for values in sweep)) for value in row]
        columns = [[(min_k(plain, 0.2), min_k(plus, 0.2)) for plain, plus in scores(values, data["input_ids"])]
                   for values in sweep]
        return found + [value for row in zip(*columns) for pair in row for value in pair]


def measure(args) -> None:
    """In this process: one reading one way, its extra peak memory (MiB) and its results, as JSON on stdout."""
    import torch

    model, teacher, rows = build(args)
    with torch.no_grad():
        model(input_ids=torch.tensor([rows[0][:8]]))  # every lazy allocation of a forward, before the peak is read
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        results = (package if args.way == "package" else one_batch_at_once)(args.reading, model, teacher, rows,
                                                                             args.batch)
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({"extra_mib": extra, "results": results}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=128256, help="Vocabulary size (Llama 3's by default).")
    parser.add_argument("--batch", type=int, default=8, help="Rows read at once.")
    parser.add_argument("--length", type=int, default=256, help="Tokens per row.")
    parser.add_argument("--reading", choices=READINGS, help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=("package", "batch"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reading:
        return measure(args)
    shape = ["--vocab", str(args.vocab), "--batch", str(args.batch), "--length", str(args.length)]
    print(f"vocabulary {args.vocab:,}, {args.batch} rows of up to {args.length} tokens; extra peak RSS, MiB")
    print("| reading | the package (row by row) | one batch at once | ratio | largest difference |")
    print("| --- | --- | --- | --- | --- |")
    for reading in READINGS:
        found = {}
        for way in ("package", "batch"):
            command = [sys.executable, __file__, *shape, "--reading", reading, "--way", way]
            found[way] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        difference = max(abs(a - b) for a, b in zip(found["package"]["results"], found["batch"]["results"],
                                                    strict=True))
        package_mib, batch_mib = found["package"]["extra_mib"], found["batch"]["extra_mib"]
        print(f"| {reading} | {package_mib:,.0f} | {batch_mib:,.0f} | {package_mib / batch_mib:.2f} | "
              f"{difference:.2e} |", flush=True)


if __name__ == "__main__":
    main()
