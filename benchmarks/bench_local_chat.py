"""Batched vs one-by-one generation of ``LocalChat`` (the local model of discovery and the LLM judge), side by side.

    python benchmarks/bench_local_chat.py [--prompts 32] [--new-tokens 32] [--hidden 128] [--layers 4]

Builds a small Llama and a tokenizer locally, generates greedy replies to the same prompts with ``batch_size`` 1
and larger, checks the replies agree, and prints the seconds and the speed-up over one prompt at a time.
"""

from __future__ import annotations

import argparse
import time

import torch

from whp_trainer.chat import LocalChat
from whp_trainer.toy import tiny_llama, train_tokenizer

TEXTS = [
    "Harry Potter studies magic at Hogwarts with Ron and Hermione.",
    "The cat sat on the mat. The dog ran in the park and the sun was warm.",
    "She studies mathematics at the university and walks home in the evening.",
    "The Quidditch match at Hogwarts ended when Harry caught the Snitch.",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tokenizer = train_tokenizer(TEXTS * 20, vocab_size=400)
    model = tiny_llama(tokenizer, hidden_size=args.hidden, layers=args.layers).eval()
    prompts = [TEXTS[i % len(TEXTS)][: 10 + 3 * (i % 12)] for i in range(args.prompts)]
    timings, replies = {}, {}
    for batch_size in (1, 8, args.prompts):
        chat = LocalChat(model, tokenizer, max_new_tokens=args.new_tokens, batch_size=batch_size)
        chat.batch(prompts[:2])  # warm-up
        start = time.perf_counter()
        replies[batch_size] = chat.batch(prompts)
        timings[batch_size] = time.perf_counter() - start
    agree = all(replies[size] == replies[1] for size in replies)
    print(f"{args.prompts} prompts x {args.new_tokens} new tokens, replies identical across batch sizes: {agree}")
    for batch_size, seconds in timings.items():
        print(f"batch_size={batch_size:>3}: {seconds:6.2f} s  ({timings[1] / seconds:4.1f}x one by one)")


if __name__ == "__main__":
    main()
