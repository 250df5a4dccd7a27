"""Publishing an unlearned model: its model card, the merged export and the Hub push (as TRL's trainers publish).

Two forms leave a run:

- ``"adapter"``: what ``UnlearnTrainer.save_model()`` writes: the unlearning adapter alone (loads with
  ``PeftModel.from_pretrained(base, folder)``); the reinforced adapter stays where it was, recorded in
  ``whp_reinforced.json``, which is never uploaded;
- ``"merged"``: :func:`export_merged`, the unlearning adapter merged into the full-precision base (loads with
  ``AutoModelForCausalLM.from_pretrained(folder)``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import filter_repo_objects, validate_repo_id
from peft import PeftConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .config import UnlearnConfig
from .runs import (
    MARKERS, REINFORCED_RECORD, begin_stage, file_digest, finish_stage, fingerprint, recorded_reinforced_adapter,
)

logger = logging.getLogger(__name__)

FORMS = ("adapter", "merged")
CARD_METADATA_KEY = "whp_trainer"  # the run's settings in the card's YAML, so a card can be re-rendered in another form
EVAL_ROLE = "unlearned"  # the role in ``eval_results`` whose metrics are this model's (the card's ``model-index``)
DICTIONARY_KEYS = ("size", "hash", "path")
REINFORCED_SUBFOLDER = "reinforced"
OPTIMIZER_STATE_PATTERNS = ("*optimizer.pt", "*optimizer.bin", "*optim_states.pt", "*scheduler.pt", "*scaler.pt")
EXTRAS_FOLDER = "whp"  # where push_to_hub puts the dictionary and the evaluation report in the repo
TEMPLATE = resources.files("whp_trainer") / "templates" / "model_card.md"
CITATION = """@misc{eldan2023whos,
  title         = {Who's Harry Potter? Approximate Unlearning in LLMs},
  author        = {Ronen Eldan and Mark Russinovich},
  year          = {2023},
  eprint        = {2310.02238},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CL},
  url           = {https://arxiv.org/abs/2310.02238}
}"""


# ----------------------------------------------------------------------------------------------------- model card


def build_model_card(
    args: UnlearnConfig,
    *,
    model_name: str,
    base_model: str | None = None,
    reinforced_adapter: str | os.PathLike | None = None,
    dictionary: dict | None = None,
    dataset_description: str | None = None,
    peft_config: PeftConfig | None = None,
    eval_results: dict[str, dict[str, float]] | None = None,
    form: str = "adapter",
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
    tracker_urls: dict[str, str] | None = None,
) -> ModelCard:
    """The model card of an unlearning run, in ``form`` ``"adapter"`` or ``"merged"``.

    Args:
        args: the run's :class:`UnlearnConfig` (method settings and hyper-parameters).
        model_name: the model's name; ``args.hub_model_id`` (else this) is the repo id in the loading snippet.
        base_model: Hub id or path of the base; only a Hub id goes into the ``base_model`` metadata.
        reinforced_adapter: path or Hub id of the reinforced adapter (recorded, never published).
        dictionary: the anchor dictionary's ``{"size": int, "hash": str, "path": str}`` (any subset).
        dataset_description: free text describing the forget data.
        peft_config: the unlearning adapter's config (LoRA r, alpha, dropout, target modules).
        eval_results: flat ``metric -> value`` per role, e.g. ``{"unlearned": {...}, "base": {...}}``. All roles
            appear in the card's table; the ``"unlearned"`` role's finite values become the ``model-index`` metadata
            (a metric that was not measured, NaN, is left out: the Hub accepts numbers only).
        tags: extra Hub tags.
        datasets: Hub ids of the training (forget) data, for the ``datasets`` metadata (local paths are left out).
        tracker_urls: tracker name -> the run's page (``"wandb"``, ``"trackio"``, ``"comet"``), linked from the card
            as TRL's cards do; default: none (the trainer passes [`tracker_urls`][whp_trainer.hub.tracker_urls]).
    """
    run = {
        "model_name": model_name,
        "base_model": None if base_model is None else str(base_model),
        "hub_model_id": args.hub_model_id,
        "method": method_settings(args),
        "training": training_hyperparameters(args),
        "lora": adapter_settings(peft_config),
        "dictionary": checked_dictionary(dictionary),
        "reinforced_adapter": None if reinforced_adapter is None else str(reinforced_adapter),
        "dataset_description": dataset_description,
        "eval_results": checked_eval_results(eval_results),
        "tags": list(tags or []),
        "datasets": [dataset for dataset in datasets or [] if hub_repo_id(dataset)],
        "trackers": dict(tracker_urls or {}),
        "whp_trainer_version": package_version("whp_trainer"),
    }
    return render_model_card(run, form)


def write_model_card(output_dir: str | os.PathLike, args: UnlearnConfig, **card_kwargs) -> Path:
    """Write :func:`build_model_card` ``(args, **card_kwargs)`` to ``output_dir/README.md``; return that path."""
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_model_card(args, **card_kwargs).save(path)
    return path


def render_model_card(run: dict, form: str) -> ModelCard:
    """Render the card template from a run record (what :func:`build_model_card` stores in the card's metadata)."""
    check_form(form)
    card_data = ModelCardData(
        base_model=hub_base_model(run["base_model"]),
        library_name="peft" if form == "adapter" else "transformers",
        pipeline_tag="text-generation",
        model_name=run["model_name"],
        tags=card_tags(run, form),
        datasets=run.get("datasets") or None,
        eval_results=model_index_results(run) or None,
        **{CARD_METADATA_KEY: run},
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        run=run,
        form=form,
        repo_id=run["hub_model_id"] or run["model_name"],
        eval_table=evaluation_table(run["eval_results"]),
        versions=framework_versions(),
        citation=CITATION,
    )


def method_settings(args: UnlearnConfig) -> dict:
    return {
        "alpha": args.alpha,
        "relu": args.relu,
        "target_mode": args.target_mode,
        "temperature": args.temperature,
        "exclude_repeated_anchors": args.exclude_repeated_anchors,
        "suppress_used_translations": args.suppress_used_translations,
        "suppression_penalty": args.suppression_penalty,
    }


def training_hyperparameters(args: UnlearnConfig) -> dict:
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


def adapter_settings(peft_config: PeftConfig | None) -> dict | None:
    """The unlearning adapter's type and, for LoRA, r / alpha / dropout / target modules."""
    if peft_config is None:
        return None
    target_modules = getattr(peft_config, "target_modules", None)
    return {
        "peft_type": getattr(peft_config.peft_type, "value", str(peft_config.peft_type)),
        "r": getattr(peft_config, "r", None),
        "lora_alpha": getattr(peft_config, "lora_alpha", None),
        "lora_dropout": getattr(peft_config, "lora_dropout", None),
        "target_modules": sorted(target_modules) if isinstance(target_modules, (set, list, tuple)) else target_modules,
    }


def checked_dictionary(dictionary: dict | None) -> dict | None:
    if dictionary is None:
        return None
    unknown = set(dictionary) - set(DICTIONARY_KEYS)
    if unknown:
        raise ValueError(f"dictionary has unknown keys {sorted(unknown)}; expected a subset of {DICTIONARY_KEYS}")
    return {key: None if dictionary.get(key) is None else _plain(dictionary[key]) for key in DICTIONARY_KEYS}


def checked_eval_results(eval_results: dict | None) -> dict[str, dict[str, float]] | None:
    """``{role: {metric: float}}``, with an error naming the entry that is not a number; a value that is not finite
    (NaN: not measured) becomes ``None``, which YAML writes as ``null`` and the card's table as ``—``."""
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


def model_index_results(run: dict) -> list[EvalResult]:
    """The ``"unlearned"`` role's finite metrics as ``EvalResult``s (the other roles are not this model's results)."""
    metrics = {metric: value for metric, value in ((run["eval_results"] or {}).get(EVAL_ROLE, {})).items()
               if value is not None and math.isfinite(value)}
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type="whp_trainer-evaluation",
            dataset_name="whp_trainer unlearning evaluation",
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for metric, value in metrics.items()
    ]


def evaluation_table(eval_results: dict | None) -> dict:
    """Roles as columns, metrics as rows (values as text, ``—`` where a role lacks the metric)."""
    if not eval_results:
        return {"roles": [], "rows": []}
    roles = sorted(eval_results, key=lambda role: role != EVAL_ROLE)  # this model's column first
    metrics = list(dict.fromkeys(metric for role in roles for metric in eval_results[role]))
    rows = [[metric, *(_format_number(eval_results[role].get(metric)) for role in roles)] for metric in metrics]
    return {"roles": roles, "rows": rows}


def card_tags(run: dict, form: str) -> list[str]:
    tags = ["whp_trainer", "unlearning"]
    tags += ["peft"] if form == "adapter" else ["merged"]
    tags += ["lora"] if run["lora"] and run["lora"]["peft_type"] == "LORA" else []
    tags += [f"trackio:{url}" for name, url in (run.get("trackers") or {}).items() if name == "trackio"]  # as TRL
    return list(dict.fromkeys(tags + run["tags"]))


def tracker_urls() -> dict[str, str]:
    """The pages of the trackers running now (W&B run, Trackio Space, Comet experiment), found as TRL finds them."""
    from transformers.integrations import is_wandb_available
    from trl.trainer.utils import get_comet_experiment_url, get_trackio_space_url

    urls = {"trackio": get_trackio_space_url(), "comet": get_comet_experiment_url()}
    if is_wandb_available():
        import wandb

        urls["wandb"] = wandb.run.url if wandb.run is not None else None
    return {name: url for name, url in urls.items() if url}


def hub_base_model(base_model: str | None) -> str | None:
    """``base_model`` when it names a Hub repo; ``None`` for a local path (the Hub rejects those in metadata)."""
    return base_model if base_model is not None and hub_repo_id(base_model) else None


def hub_repo_id(name: str) -> bool:
    """Whether ``name`` can be a Hub repo id rather than a local path."""
    if os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def framework_versions() -> dict[str, str]:
    return {name: package_version(name) for name in ("transformers", "peft", "torch", "huggingface_hub")}


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form={form!r}: expected one of {FORMS}")


def _plain(value):
    return value if isinstance(value, (int, float, bool)) else str(value)


def _format_number(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


# -------------------------------------------------------------------------------------------------- merged export


def export_merged(
    base_model: str | os.PathLike | torch.nn.Module | None,
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | str = "auto",
    overwrite: bool = False,
    tokenizer=None,
    card: ModelCard | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Merge the unlearning adapter in ``adapter_dir`` into the full-precision base and save a plain model.

    Args:
        base_model: Hub id or path of the base, loaded unquantized even when the adapter was trained on a 4-bit or
            8-bit one; or an unquantized base model in memory (its weights are modified in place); ``None``: the
            ``base_model_name_or_path`` of the adapter's config.
        adapter_dir: folder with the unlearning adapter at its root (``adapter_config.json``); no other adapter
            is ever applied.
        output_dir: where the merged model, tokenizer and card go: a new or empty folder, or an earlier export's
            (skipped when made from the same inputs). A non-empty folder whp did not make is never written into.
        dtype: dtype of the loaded base (``"auto"``: the checkpoint's).
        overwrite: replace an earlier export made from other inputs (only the files that export wrote are
            deleted; see `whp_trainer.runs`).
        tokenizer: saved with the model; default: the one in ``adapter_dir``, else the base's.
        card: the card to write; default: ``adapter_dir``'s whp_trainer card re-rendered in the merged form.
        trust_remote_code: allow a base (and tokenizer) that ships its own code.

    Returns the output folder, which loads with ``AutoModelForCausalLM.from_pretrained``.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter_dir={str(adapter_dir)!r} has no adapter_config.json")
    output_dir = Path(output_dir)
    base_source = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path if base_model is None else base_model
    check_export_inputs(output_dir, inputs=[adapter_dir, base_source])
    in_memory = isinstance(base_source, torch.nn.Module)
    print_ = fingerprint("export", file_digest(adapter_dir), id(base_source) if in_memory else str(base_source), str(dtype))
    if not begin_stage(output_dir, "export", print_, overwrite):
        return output_dir
    merged = PeftModel.from_pretrained(load_full_precision_base(base_source, dtype, trust_remote_code), adapter_dir)
    merged = merged.merge_and_unload(progressbar=True)  # loading and saving show transformers' bars
    merged.save_pretrained(output_dir)
    tokenizer = find_tokenizer(adapter_dir, base_source, trust_remote_code) if tokenizer is None else tokenizer
    save_tokenizer(tokenizer, output_dir)
    save_card(merged_model_card(adapter_dir) if card is None else card, output_dir)
    finish_stage(output_dir, "export", print_)
    return output_dir


def check_export_inputs(output_dir: Path, inputs: list) -> None:
    """Refuse an ``output_dir`` that is, or holds, an input of the export."""
    for source in inputs:
        if isinstance(source, (str, os.PathLike)) and Path(source).exists():
            source = Path(source).resolve()
            if source == output_dir.resolve() or output_dir.resolve() in source.parents:
                raise ValueError(f"output_dir={str(output_dir)!r} holds the export's input {str(source)!r}")


def load_full_precision_base(
    source: str | os.PathLike | torch.nn.Module, dtype: torch.dtype | str, trust_remote_code: bool = False
) -> torch.nn.Module:
    """The base model unquantized: loaded from ``source`` without any quantization config, or checked if in memory."""
    if isinstance(source, torch.nn.Module):
        if getattr(source, "is_quantized", False):
            raise ValueError(
                "base_model is a quantized model; pass its name or path so that it loads in full precision"
            )
        if isinstance(source, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in source.modules()):
            raise ValueError("base_model already holds adapter layers; pass the bare base model or its name or path")
        return source
    if getattr(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code), "quantization_config", None):
        raise ValueError(
            f"base_model={str(source)!r} is a pre-quantized checkpoint; pass the full-precision checkpoint it was "
            "quantized from"
        )
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)


def find_tokenizer(adapter_dir: Path, base_source, trust_remote_code: bool = False):
    """The tokenizer saved beside the adapter, else the base's (``None`` when the base is only in memory)."""
    for source in (adapter_dir, base_source):
        if not isinstance(source, (str, os.PathLike)):
            continue
        if not Path(source).is_dir() or (Path(source) / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    return None


def save_tokenizer(tokenizer, output_dir: Path) -> None:
    if tokenizer is None:
        logger.warning("no tokenizer found beside the adapter or the base; %s holds none (pass tokenizer=)", output_dir)
    else:
        tokenizer.save_pretrained(output_dir)


def merged_model_card(adapter_dir: Path) -> ModelCard | None:
    """``adapter_dir``'s whp_trainer card re-rendered in the merged form; ``None`` if it has no such card."""
    readme = adapter_dir / "README.md"
    if not readme.is_file():
        return None
    run = ModelCard.load(readme).data.to_dict().get(CARD_METADATA_KEY)
    return render_model_card(run, "merged") if run else None


def save_card(card: ModelCard | None, output_dir: Path) -> None:
    if card is None:
        logger.warning("no whp_trainer model card beside the adapter; %s holds none (pass card=)", output_dir)
    else:
        card.save(output_dir / "README.md")


# ------------------------------------------------------------------------------------------------------------ push


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    form: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dictionary_file: str | os.PathLike | None = None,
    eval_report: str | os.PathLike | dict | None = None,
    include_reinforced: bool = False,
    reinforced_subfolder: str = REINFORCED_SUBFOLDER,
    api: HfApi | None = None,
):
    """Upload an ``"adapter"`` or ``"merged"`` folder to the Hub model repo ``repo_id`` in one commit.

    Never uploads the reinforced adapter (it knows MORE about the target than the base) unless
    ``include_reinforced`` (then the recorded one goes to ``reinforced_subfolder``), nor optimizer state, whp's local
    records, hidden entries or ``checkpoint-*`` folders (see `local_only_patterns`). ``dictionary_file`` and
    ``eval_report`` (a file, or a dict written as JSON) go under ``whp/``; a report with ``results`` (as
    ``whp evaluate`` writes it) also puts them in the uploaded model card. The repo is created if absent
    (``private`` applies only then), and the ``revision`` branch too. The token is ``token``, else ``HF_TOKEN`` or
    the cached login. Everything is checked before the first request. Returns the ``CommitInfo``.
    """
    check_repo_id(repo_id)
    folder = Path(folder)
    check_folder_form(folder, form)
    token = resolve_token(token)
    operations = upload_operations(folder, include_reinforced, reinforced_subfolder)
    operations += extra_operations(dictionary_file, eval_report)
    card = card_with_results(folder, form, eval_report)
    if card is not None:  # the uploaded card shows the report's results; the local README.md is left as it is
        operations = [op for op in operations if op.path_in_repo != "README.md"]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    api = api or HfApi()
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or f"Upload Who's Harry Potter unlearned model ({form})",
        revision=revision,
        token=token,
    )


def card_with_results(folder: Path, form: str, eval_report: str | os.PathLike | dict | None) -> ModelCard | None:
    """``folder``'s whp_trainer card re-rendered with the ``results`` of an evaluation report (``whp evaluate``'s
    report.json: role -> metric -> value); ``None`` without a report, without results, or without such a card."""
    if eval_report is None or not (folder / "README.md").is_file():
        return None
    report = eval_report if isinstance(eval_report, dict) else json.loads(Path(eval_report).read_text(encoding="utf-8"))
    run = ModelCard.load(folder / "README.md").data.to_dict().get(CARD_METADATA_KEY)
    if not run or "results" not in report:
        return None
    return render_model_card({**run, "eval_results": checked_eval_results(report["results"])}, form)


def check_repo_id(repo_id: str | None) -> None:
    if not repo_id:
        raise ValueError("repo_id is required, e.g. 'your-username/model-name'")
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"repo_id={repo_id!r} is not a valid Hub repo id: {error}") from error


def check_folder_form(folder: Path, form: str) -> None:
    """The folder exists and holds what ``form`` promises: an adapter config, or a plain model config."""
    check_form(form)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder={str(folder)!r} is not a directory")
    has_adapter = (folder / "adapter_config.json").is_file()
    if form == "adapter" and not has_adapter:
        raise ValueError(f"form='adapter' but folder={str(folder)!r} has no adapter_config.json")
    if form == "merged" and (has_adapter or not (folder / "config.json").is_file()):
        raise ValueError(
            f"form='merged' but folder={str(folder)!r} is not a merged model (needs config.json, no "
            "adapter_config.json); make one with export_merged"
        )


def resolve_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise ValueError(
            "no Hugging Face token: pass token=..., set the HF_TOKEN environment variable, or run `hf auth login`"
        )
    return token


def upload_operations(folder: Path, include_reinforced: bool, reinforced_subfolder: str) -> list[CommitOperationAdd]:
    """One ``CommitOperationAdd`` per file of ``folder`` that belongs in the repo (sorted by path): nothing of
    :func:`local_only_patterns`, no ``checkpoint-*`` folder; the reinforced adapter only with ``include_reinforced``."""
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    ignored = ["checkpoint-*", *local_only_patterns(reinforced_subfolder)]
    operations = [
        CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(folder / relative))
        for relative in filter_repo_objects(files, ignore_patterns=ignored)
    ]
    return operations + (reinforced_operations(folder, reinforced_subfolder) if include_reinforced else [])


def reinforced_operations(folder: Path, reinforced_subfolder: str) -> list[CommitOperationAdd]:
    """The reinforced adapter of the run in ``folder`` (its recorded source), uploaded to ``reinforced_subfolder``."""
    source = recorded_reinforced_adapter(folder)
    source = Path(source) if source else folder / reinforced_subfolder
    if not (source / "adapter_config.json").is_file():
        raise FileNotFoundError(f"include_reinforced=True, but {folder} records no local reinforced adapter")
    warnings.warn(
        f"include_reinforced=True: uploading {source}, the REINFORCED adapter. It knows MORE about the forget target "
        "than the base model; anyone can load it and undo the unlearning.",
        UserWarning,
        stacklevel=4,
    )
    files = sorted(path.relative_to(source).as_posix() for path in source.iterdir() if path.is_file())
    return [
        CommitOperationAdd(path_in_repo=f"{reinforced_subfolder}/{name}", path_or_fileobj=str(source / name))
        for name in filter_repo_objects(files, allow_patterns=["adapter_config.json", "adapter_model.*"])
    ]


def local_only_patterns(reinforced_subfolder: str = REINFORCED_SUBFOLDER) -> list[str]:
    """What no upload may send (fnmatch patterns, as ``huggingface_hub`` applies them): the reinforced adapter (it
    knows MORE about the target than the base), optimizer state, and whp's local records (markers, the reinforced
    adapter's local path)."""
    return [f"{reinforced_subfolder}/*", *OPTIMIZER_STATE_PATTERNS, REINFORCED_RECORD, *MARKERS, ".*"]


def extra_operations(dictionary_file, eval_report) -> list[CommitOperationAdd]:
    """The dictionary and the evaluation report (a file, or a dict uploaded as ``eval_report.json``), under ``whp/``."""
    operations = []
    if isinstance(eval_report, dict):
        content = json.dumps(eval_report, indent=2, sort_keys=True).encode()
        operations.append(CommitOperationAdd(path_in_repo=f"{EXTRAS_FOLDER}/eval_report.json", path_or_fileobj=content))
        eval_report = None
    for argument, source in (("dictionary_file", dictionary_file), ("eval_report", eval_report)):
        if source is None:
            continue
        if not Path(source).is_file():
            raise FileNotFoundError(f"{argument}={str(source)!r} is not a file")
        path_in_repo = f"{EXTRAS_FOLDER}/{Path(source).name}"
        operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(source)))
    return operations
