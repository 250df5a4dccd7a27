"""A target cache for multi-epoch runs: the generic targets of every example, computed once with the teacher
passes and stored with the ``datasets`` cache, keyed by everything they depend on. Later epochs (and later runs
with the same settings) read them, so a step costs about as much as a plain LoRA step.

Hard targets are stored whole (one id per token); soft targets as the top ``k`` tokens of each position with their
probabilities, renormalised when read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import datasets
import torch

from .targets import IGNORE_INDEX

CACHE_COLUMNS = ("whp_target_ids", "whp_target_probs")


def adapter_fingerprint(model, adapter_name: str) -> str:
    """A hash of one adapter's weights (they identify the reinforced adapter better than its path)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if f".{adapter_name}." in name:
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_weights_digest(name_or_path: str | os.PathLike | None) -> str | None:
    """sha256 over the weight files of a local model folder (or file), so that weights changed in place are a new
    model; None for a Hub id (its revision names it). Each file's hash is kept in a cache keyed by its path, size
    and modification time, so a model is read once, not at every run."""
    path = Path(name_or_path) if name_or_path else None
    if path is None or not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    known = read_cache(weights_cache_file())
    digest, changed = hashlib.sha256(), False
    for file in files:
        stat = file.stat()
        key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in known:
            known[key], changed = file_sha256(file), True
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}:{known[key]}".encode())
    if changed:
        write_json_atomically(weights_cache_file(), known)
    return digest.hexdigest()


def weights_cache_file() -> Path:
    """Where the weight files' hashes are kept: beside the datasets cache, as the target cache is."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "whp_weight_hashes.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_cache(path: Path) -> dict:
    """A JSON cache file's mapping; empty when it is absent or unreadable (a cache is rebuilt, never trusted)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json_atomically(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value), encoding="utf-8")
    os.replace(temporary, path)


def collator_fingerprint(collator) -> str:
    """The collator's ``repr`` without memory addresses (they differ between the processes of one run, which must
    share the cache), and, for a function, a hash of its code."""
    code = getattr(collator, "__code__", None)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(collator)) + (hashlib.sha256(code.co_code).hexdigest() if code else "")


def target_cache_key(trainer, dataset: datasets.Dataset) -> str:
    """Everything the cached targets depend on: base, reinforced adapter, dictionary, settings and data."""
    args = trainer.args
    base = trainer.model.get_base_model().config
    settings = {
        "base": [base._name_or_path, base.to_json_string(use_diff=False), model_weights_digest(base._name_or_path)],
        "reinforced": adapter_fingerprint(trainer.model, args.reinforced_adapter_name) if trainer.has_reinforced else None,
        "anchors": getattr(trainer.anchors, "content_hash", None),
        "data": dataset._fingerprint,
        "collator": collator_fingerprint(trainer.data_collator),
        **{
            name: getattr(args, name)
            for name in (
                "alpha", "relu", "target_mode", "temperature", "cache_top_k", "suppression_penalty",
                "exclude_repeated_anchors", "suppress_used_translations", "max_length", "seed",
                "translations_per_block", "bootstrap_untranslated",
            )
        },
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_file_for(dataset: datasets.Dataset, key: str) -> Path:
    """Beside the dataset's own cache files, or in the ``datasets`` cache directory for in-memory datasets."""
    folder = Path(dataset.cache_files[0]["filename"]).parent if dataset.cache_files else None
    folder = folder or Path(datasets.config.HF_DATASETS_CACHE) / "whp_targets"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"whp-targets-{key}.arrow"


def with_cached_targets(trainer, dataset: datasets.Dataset, batch_size: int) -> datasets.Dataset:
    """``dataset`` with the targets of every example as extra columns, computed once and then read from disk."""
    key = target_cache_key(trainer, dataset)
    collate = trainer.data_collator

    def add_targets(columns: dict) -> dict:
        examples = [dict(zip(columns, values)) for values in zip(*columns.values())]
        batch = trainer._prepare_inputs(collate(examples))
        ids, probs = trainer.compute_targets(batch)
        mask = batch["attention_mask"].bool()
        return {
            "whp_target_ids": [row[real].tolist() for row, real in zip(ids, mask)],
            "whp_target_probs": [row[real].tolist() for row, real in zip(probs, mask)],
        }

    return dataset.map(
        add_targets,
        batched=True,
        batch_size=batch_size,
        cache_file_name=str(cache_file_for(dataset, key)),
        new_fingerprint=key,
        load_from_cache_file=True,
        desc="whp: caching generic targets",
    )


class CachedTargetsCollator:
    """Wraps the data collator: batches as usual, plus ``cached_target_ids`` and ``cached_target_probs``
    (``(B, T, k)``) laid out like ``input_ids`` (padding gets ``-100`` and probability 0)."""

    def __init__(self, collator):
        self.collator = collator
        self.anchors = getattr(collator, "anchors", None)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        cached = [{column: example.pop(column) for column in CACHE_COLUMNS} for example in examples]
        batch = self.collator(examples)
        mask = batch["attention_mask"].bool()
        k = len(cached[0]["whp_target_ids"][0]) if cached[0]["whp_target_ids"] else 1
        ids = torch.full((*mask.shape, k), IGNORE_INDEX, dtype=torch.long)
        probs = torch.zeros((*mask.shape, k))
        for row, (real, entry) in enumerate(zip(mask, cached)):
            if int(real.sum()) != len(entry["whp_target_ids"]):
                raise ValueError(
                    "cached targets do not match the collator's blocks (a different max_length, tokenizer or "
                    "collator?); delete the cache or disable UnlearnConfig.cache_targets"
                )
            ids[row, real] = torch.tensor(entry["whp_target_ids"], dtype=torch.long).view(-1, k)
            probs[row, real] = torch.tensor(entry["whp_target_probs"], dtype=torch.float).view(-1, k)
        batch["cached_target_ids"], batch["cached_target_probs"] = ids, probs
        return batch

    def __repr__(self) -> str:
        return f"CachedTargetsCollator({self.collator!r})"
