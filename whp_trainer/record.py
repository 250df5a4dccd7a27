"""The run record, `whp_run.json`: the one machine-readable file of an unlearning run's facts (settings, adapter,
data, evaluation, versions), from which the model card is rendered.

It is written beside the adapter (and copied beside a merged export) and uploaded with the model: it holds what the
card shows, no token and no secret. Its keys (`SCHEMA_VERSION` 1):

- `schema_version`: 1;
- `model_name`, `base_model`, `hub_model_id`: names (`base_model`: a Hub id or a path, as given);
- `method`: α, ReLU, target mode and temperature, the anchor heuristics, and `beyond_paper`: the settings of the
  objective beyond the paper that the run used, each at a value other than its default (the paper's): the
  original-token cap and its depth, the retain loss (weight and kind), targets left out where unchanged, several
  translations per block, bootstrapped positions, sharpness-aware steps (`{}`: the paper's objective);
- `training`: learning rate and schedule, epochs or steps planned, batch sizes, max length, seed, and
  `steps_trained`: the optimizer steps these weights had (a checkpoint's: its own; `null` if unknown);
- `lora`: the unlearning adapter's PEFT type, r, alpha, dropout, target modules, and `all_linear_default` (true when
  PEFT had no default targets for the architecture and every linear layer of the decoder was trained) (`null` if
  unknown);
- `dictionary`: the anchor dictionary's `size`, `hash`, `path` (`null` without one);
- `reinforced_adapter`: path or Hub id of the reinforced adapter (the adapter itself is never uploaded);
- `dataset_description`, `datasets`: free text; Hub ids of the forget data;
- `tags`, `trackers`: extra Hub tags; tracker name -> the run's page;
- `versions`: `whp_trainer` and the frameworks at training time;
- `auto`: `null`, or with `alpha: auto` what was chosen and why: `alpha`, `round` (strengthenings of the
  reinforcement), `reached`, `reason`, `targets`, `sweeps` (α -> teacher metrics, per reinforcement),
  `reinforced_adapter`, and `stopping` (`stopped_at`, `best_step`, `best_scale`, `reason`, `base`, `best`, `history`);
- `adapter_sha256` (a merged export's record only): the hash of the adapter merged (`runs.adapter_digest`), which
  an evaluation report must have measured for its results to go on the card;
- `evaluation`: `null`, or `results` (role -> metric -> value, `null` where not measured) and, with an oracle,
  `oracle_comparison` (role -> metric -> value, oracle, difference, verdict, meaning), as in `report.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from huggingface_hub.utils import validate_repo_id

from .config import UnlearnConfig
from .dictionary import read_json_object

RECORD_FILE = "whp_run.json"
SCHEMA_VERSION = 1
DICTIONARY_KEYS = ("size", "hash", "path")
FRAMEWORKS = ("whp_trainer", "transformers", "peft", "torch", "huggingface_hub")


def run_record(
    args,
    *,
    model_name: str,
    base_model: str | None = None,
    reinforced_adapter: str | os.PathLike | None = None,
    dictionary: dict | None = None,
    dataset_description: str | None = None,
    peft_config=None,
    all_linear_default: bool = False,
    evaluation: dict | None = None,
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
    tracker_urls: dict[str, str] | None = None,
    auto: dict | None = None,
    steps_trained: int | None = None,
    base_quantization: str | None = None,
) -> dict:
    """The record of a run trained with `args` (an `UnlearnConfig`); the arguments are those of
    [`build_model_card`][whp_trainer.hub.build_model_card], with `evaluation` as described above."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model_name": model_name,
        "base_model": None if base_model is None else str(base_model),
        "hub_model_id": args.hub_model_id,
        "method": method_settings(args),
        "training": {**training_hyperparameters(args), "steps_trained": steps_trained,
                     "base_quantization": base_quantization},
        "lora": adapter_settings(peft_config, all_linear_default),
        "dictionary": checked_dictionary(dictionary),
        "reinforced_adapter": None if reinforced_adapter is None else str(reinforced_adapter),
        "dataset_description": dataset_description,
        "datasets": [dataset for dataset in datasets or [] if hub_repo_id(dataset)],
        "tags": list(tags or []),
        "trackers": dict(tracker_urls or {}),
        "versions": framework_versions(),
        "auto": auto,
        "evaluation": evaluation,
    }


def write_record(record: dict, folder: str | os.PathLike) -> Path:
    """Write `record` to `folder/whp_run.json`; return that path."""
    path = Path(folder) / RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record_json(record), encoding="utf-8")
    return path


def record_json(record: dict) -> str:
    """The record as strict JSON (a NaN would not parse elsewhere; not measured is `null`)."""
    return json.dumps(record, indent=2, allow_nan=False) + "\n"


def read_record(folder: str | os.PathLike) -> dict | None:
    """The record in `folder`, or `None` when it holds none; a record of another schema is refused by name."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    record = read_json_object(path)
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version={record.get('schema_version')!r}; this whp_trainer reads "
                         f"{SCHEMA_VERSION}")
    return record


def method_settings(args) -> dict:
    return {
        "alpha": args.alpha,
        "relu": args.relu,
        "target_mode": args.target_mode,
        "temperature": args.temperature,
        "exclude_repeated_anchors": args.exclude_repeated_anchors,
        "suppress_used_translations": args.suppress_used_translations,
        "suppression_penalty": args.suppression_penalty,
        "beyond_paper": beyond_paper(args),
    }


BEYOND_PAPER = ("original_cap_weight", "original_cap_depth", "retain_weight", "skip_unchanged_targets",
                "translations_per_block", "bootstrap_untranslated", "sam_rho", "retain_projection",
                "spare_common_tokens")


def beyond_paper(args) -> dict:
    """The settings beyond the paper's objective that ``args`` use: those of `BEYOND_PAPER` not at their default
    (each default is the paper's), and the retain loss's kind with its weight."""
    paper = {field.name: field.default for field in dataclasses.fields(UnlearnConfig) if field.name in BEYOND_PAPER}
    used = {name: getattr(args, name) for name in BEYOND_PAPER if getattr(args, name, paper[name]) != paper[name]}
    if "retain_weight" in used:
        used["retain_loss"] = args.retain_loss
    return used


def training_hyperparameters(args) -> dict:
    return {
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", str(args.lr_scheduler_type)),
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "effective_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "max_length": args.max_length,
        "seed": args.seed,
    }


def adapter_settings(peft_config, all_linear_default: bool = False) -> dict | None:
    """The unlearning adapter's type and, for LoRA, r / alpha / dropout / target modules, and whether those were
    every linear layer of the decoder because PEFT has no default for the architecture."""
    if peft_config is None:
        return None
    target_modules = getattr(peft_config, "target_modules", None)
    return {
        "peft_type": getattr(peft_config.peft_type, "value", str(peft_config.peft_type)),
        "r": getattr(peft_config, "r", None),
        "lora_alpha": getattr(peft_config, "lora_alpha", None),
        "lora_dropout": getattr(peft_config, "lora_dropout", None),
        "target_modules": sorted(target_modules) if isinstance(target_modules, (set, list, tuple)) else target_modules,
        "all_linear_default": all_linear_default,
    }


def checked_dictionary(dictionary: dict | None) -> dict | None:
    if dictionary is None:
        return None
    unknown = set(dictionary) - set(DICTIONARY_KEYS)
    if unknown:
        raise ValueError(f"dictionary has unknown keys {sorted(unknown)}; expected a subset of {DICTIONARY_KEYS}")
    return {key: None if dictionary.get(key) is None else _plain(dictionary[key]) for key in DICTIONARY_KEYS}


def checked_eval_results(eval_results: dict | None) -> dict[str, dict[str, float | None]] | None:
    """`{role: {metric: float}}`, with an error naming the entry that is not a number; a value that is not finite
    (NaN: not measured) becomes `None` (`null` in the record and the card's YAML, `—` in its table)."""
    if not eval_results:
        return None
    checked = {}
    for role, metrics in eval_results.items():
        if not isinstance(metrics, dict):
            raise ValueError(f"eval_results[{role!r}] must be a dict metric -> value, got {type(metrics).__name__}")
        checked[str(role)] = {}
        for metric, value in metrics.items():
            try:
                number = float("nan") if value is None else float(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"eval_results[{role!r}][{metric!r}]={value!r} is not a number") from error
            checked[str(role)][str(metric)] = number if math.isfinite(number) else None
    return checked


def hub_repo_id(name: str) -> bool:
    """Whether `name` can be a Hub repo id rather than a local path."""
    if os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def framework_versions() -> dict[str, str]:
    """The installed versions of whp_trainer and the frameworks it runs on."""
    return {name: package_version(name) for name in FRAMEWORKS}


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _plain(value):
    return value if isinstance(value, (int, float, bool)) else str(value)
