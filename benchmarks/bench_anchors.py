"""Compiling a large anchor dictionary: time and memory of ``AnchorDictionary.compile`` for private-data scale.

The paper's dictionary has ~1,500 entries; a corpus of private documents brings tens of thousands (every name in
it). This compiles N invented anchors (single and multi-word names, possessives, some with several translations)
for the Llama-2 tokenizer shipped by ``mistral-common`` (``pip install mistral-common sentencepiece``), or, without
it, for a byte-level BPE trained here, and prints the compile time (wall clock, and CPU time: the machine may be
shared) and the memory it added (peak RSS of a fresh
process, minus the RSS after the tokenizer loaded). Goal: 50,000 anchors in under 10 s and under 1 GB.

    python benchmarks/bench_anchors.py --anchors 50000
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

from whp_trainer import AnchorDictionary

SYLLABLES = "ka ro mi zen tal vor qui lys dra nor bel fin gar hul ix om ur sey tho wen ast ela brin cor".split()
GENERIC = "Tom Anna Ben Clara David Emma Frank Grace Henry Ivy Jack Kate Leo Mia Nick Olga Paul Rose Sam Tina".split()


def invented_dictionary(size: int, seed: int = 0) -> AnchorDictionary:
    rng = random.Random(seed)
    entries = {}
    while len(entries) < size:
        word = lambda: "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()  # noqa: E731
        anchor = " ".join(word() for _ in range(rng.choice((1, 1, 1, 2, 3))))
        entries[anchor] = rng.sample(GENERIC, rng.choice((1, 1, 2)))
    return AnchorDictionary(entries)


def llama2_tokenizer():
    """Llama-2's SentencePiece model from mistral-common (``tokenizer.model.v1``), as a fast tokenizer."""
    import mistral_common
    from transformers import LlamaTokenizerFast

    model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    folder = Path(tempfile.mkdtemp())
    shutil.copy(model, folder / "tokenizer.model")
    return LlamaTokenizerFast.from_pretrained(folder, legacy=False), "Llama-2 (SentencePiece, 32k)"


def fallback_tokenizer():
    from whp_trainer.toy import train_tokenizer

    text = [" ".join(GENERIC + SYLLABLES)] * 50
    return train_tokenizer(text, vocab_size=2000), "byte-level BPE trained here (2k)"


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=50_000)
    args = parser.parse_args()
    try:
        tokenizer, name = llama2_tokenizer()
    except ImportError:
        tokenizer, name = fallback_tokenizer()
    dictionary = invented_dictionary(args.anchors)
    before = rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    compiled = dictionary.compile(tokenizer)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"tokenizer: {name}")
    print(f"{len(dictionary):,} anchors, {len(compiled.pattern_anchor):,} surface forms")
    print(f"compile: {seconds:.1f} s wall clock ({cpu:.1f} s of CPU time, all threads), memory added: {max(peak - before, 0):.0f} MiB (peak RSS {peak:.0f} MiB)")


if __name__ == "__main__":
    main()
