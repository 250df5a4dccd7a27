"""Publishing an unlearned model: its model card, the merged export and the Hub push (as TRL's trainers publish).

The card is rendered from the run record, `whp_run.json` (see `whp_trainer.record`), written beside it; the record,
not the card's metadata, is what a merged export or a push re-renders the card from.

Two forms leave a run:

- `"adapter"`: what `UnlearnTrainer.save_model()` writes: the unlearning adapter alone (loads with
  `PeftModel.from_pretrained(base, folder)`); the reinforced adapter stays where it was, recorded in
  `whp_reinforced.json`, which is never uploaded;
- `"merged"`: [`export_merged`][whp_trainer.hub.export_merged], the unlearning adapter merged into the
  full-precision base (loads with `AutoModelForCausalLM.from_pretrained(folder)`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from importlib import resources
from pathlib import Path

import torch
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import filter_repo_objects, validate_repo_id
from peft import PeftConfig, PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .cache import model_weights_digest
from .config import UnlearnConfig
from .dictionary import read_json_object
from .evaluation.callback import PROBE_NAMES_FILE
from .evaluation.markdown import COMPARED, SAMPLE_SUFFIXES, auto_markdown, evaluation_markdown
from .evaluation.report import evaluation_record
from .loading import ModelArguments, load_base_model
from .record import (
    RECORD_FILE, checked_eval_results, hub_repo_id, read_record, record_json, run_record, write_record,
)
from .runs import (
    MARKERS, REINFORCED_RECORD, RULE_SAMPLE_FILE, adapter_digest, begin_stage, file_digest, finish_stage, fingerprint,
    recorded_reinforced_adapter, content_digest, reinforced_fingerprints, require_stage_output,
)

logger = logging.getLogger(__name__)

FORMS = ("adapter", "merged")
EVAL_ROLE = COMPARED[0]  # the role in `eval_results` whose metrics are this model's (the card's `model-index`)
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
    all_linear_default: bool = False,
    eval_results: dict[str, dict[str, float]] | None = None,
    form: str = "adapter",
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
    tracker_urls: dict[str, str] | None = None,
    auto: dict | None = None,
    steps_trained: int | None = None,
    base_quantization: str | None = None,
) -> ModelCard:
    """The model card of an unlearning run, in `form` `"adapter"` or `"merged"` (rendered from its
    [`run_record`][whp_trainer.record.run_record]).

    Args:
        args: the run's `UnlearnConfig` (method settings and hyper-parameters).
        model_name: the model's name; `args.hub_model_id` (else this) is the repo id in the loading snippet.
        base_model: Hub id or path of the base; only a Hub id goes into the `base_model` metadata.
        reinforced_adapter: path or Hub id of the reinforced adapter (recorded, never published).
        dictionary: the anchor dictionary's `{"size": int, "hash": str, "path": str}` (any subset).
        dataset_description: free text describing the forget data.
        peft_config: the unlearning adapter's config (LoRA r, alpha, dropout, target modules).
        all_linear_default: whether its target modules are every linear layer of the decoder because PEFT has no
            default for the architecture ([`default_lora_targets`][whp_trainer.models.default_lora_targets]).
        eval_results: flat `metric -> value` per role, e.g. `{"unlearned": {...}, "base": {...}}`. All roles
            appear in the card's table; with an `"oracle"` role, the card says which forget metrics are above, at
            or below it; the `"unlearned"` role's finite values become the `model-index` metadata (a metric that
            was not measured, NaN, is left out: the Hub accepts numbers only).
        tags: extra Hub tags.
        datasets: Hub ids of the training (forget) data, for the `datasets` metadata (local paths are left out).
        tracker_urls: tracker name -> the run's page (`"wandb"`, `"trackio"`, `"comet"`), linked from the card
            as TRL's cards do; default: none (the trainer passes [`tracker_urls`][whp_trainer.hub.tracker_urls]).
        auto: with ``alpha: auto``, what was chosen and why (the record's ``auto``, see `whp_trainer.record`).
        steps_trained: the optimizer steps the weights had when saved (a checkpoint's own count).
        base_quantization: how the base was quantized while the adapter trained
            ([`base_quantization`][whp_trainer.models.base_quantization]); `None`: full precision.
    """
    return render_model_card(build_run_record(args, model_name=model_name, base_model=base_model,
                                              reinforced_adapter=reinforced_adapter, dictionary=dictionary,
                                              dataset_description=dataset_description, peft_config=peft_config,
                                              all_linear_default=all_linear_default,
                                              eval_results=eval_results, tags=tags, datasets=datasets,
                                              tracker_urls=tracker_urls, auto=auto, steps_trained=steps_trained,
                                              base_quantization=base_quantization), form)


def build_run_record(args: UnlearnConfig, *, eval_results: dict | None = None, **facts) -> dict:
    """The run record of [`build_model_card`][whp_trainer.hub.build_model_card]'s arguments (but `form`), with the
    evaluation (results and their comparison with the oracle) made from `eval_results`."""
    return run_record(args, evaluation=evaluation_of(eval_results), **facts)


def write_model_card(output_dir: str | os.PathLike, args: UnlearnConfig, form: str = "adapter", **card_kwargs) -> Path:
    """Write the run record `output_dir/whp_run.json` and the card rendered from it, `output_dir/README.md`
    (arguments as [`build_model_card`][whp_trainer.hub.build_model_card]'s); return the card's path."""
    check_form(form)
    record = build_run_record(args, **card_kwargs)
    write_record(record, output_dir)
    path = Path(output_dir) / "README.md"
    render_model_card(record, form).save(path)
    return path


def evaluation_of(eval_results: dict | None) -> dict | None:
    """The record's `evaluation`: the checked results and, with an oracle, their verdicts; `None` without results."""
    results = checked_eval_results(eval_results)
    return None if results is None else evaluation_record(results)


def render_model_card(record: dict, form: str) -> ModelCard:
    """Render the card template from a run record (`whp_run.json`) in `form` `"adapter"` or `"merged"`."""
    check_form(form)
    evaluation = record["evaluation"]
    card_data = ModelCardData(
        base_model=hub_base_model(record["base_model"]),
        library_name="peft" if form == "adapter" else "transformers",
        pipeline_tag="text-generation",
        model_name=record["model_name"],
        tags=card_tags(record, form),
        datasets=record["datasets"] or None,
        eval_results=model_index_results(evaluation) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        run=record,
        form=form,
        repo_id=record["hub_model_id"] or record["model_name"],
        evaluation=None if evaluation is None else evaluation_markdown(evaluation, level=3),
        auto=None if not record.get("auto") else auto_markdown(record["auto"]),
        citation=CITATION,
        base=shown_name(record["base_model"]),
        reinforced=shown_name(record["reinforced_adapter"]),
        dictionary_file=shown_name((record["dictionary"] or {}).get("path")),
    )


def shown_name(name: str | None) -> dict | None:
    """How the card names a model, adapter or file: ``{"name", "local"}``, a Hub id as it is, a local path by its
    last part only (a card never shows where files lie on the machine that trained)."""
    if not name:
        return None
    if hub_repo_id(name):
        return {"name": name, "local": False}
    return {"name": Path(name).name or str(name), "local": True}


def model_index_results(evaluation: dict | None) -> list[EvalResult]:
    """The `"unlearned"` role's measured metrics as `EvalResult`s (the other roles are not this model's results; an
    AUC's standard error and the counts of items a stopping rule had read describe the sample, not the model)."""
    metrics = (evaluation or {}).get("results", {}).get(EVAL_ROLE, {})
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
        if value is not None and not metric.endswith(SAMPLE_SUFFIXES)
    ]


def card_tags(record: dict, form: str) -> list[str]:
    tags = ["whp_trainer", "unlearning"]
    tags += ["peft"] if form == "adapter" else ["merged"]
    tags += ["lora"] if record["lora"] and record["lora"]["peft_type"] == "LORA" else []
    tags += [f"trackio:{url}" for name, url in record["trackers"].items() if name == "trackio"]  # as TRL
    return list(dict.fromkeys(tags + record["tags"]))


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
    """`base_model` when it names a Hub repo; `None` for a local path (the Hub rejects those in metadata)."""
    return base_model if base_model is not None and hub_repo_id(base_model) else None


def check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form={form!r}: expected one of {FORMS}")


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
    gguf_file: str | None = None,
) -> Path:
    """Merge the unlearning adapter in `adapter_dir` into the full-precision base and save a plain model.

    Args:
        base_model: Hub id or path of the base, loaded unquantized even when the adapter was trained on a 4-bit or
            8-bit one; or an unquantized base model in memory (its weights are modified in place); `None`: the
            `base_model_name_or_path` of the adapter's config.
        adapter_dir: folder with the unlearning adapter at its root (`adapter_config.json`); no other adapter
            is ever applied.
        output_dir: where the merged model, tokenizer and card go: a new or empty folder, or an earlier export's
            (skipped when made from the same inputs). A non-empty folder whp did not make is never written into.
        dtype: dtype of the loaded base (`"auto"`: the checkpoint's).
        overwrite: replace an earlier export made from other inputs (only the files that export wrote are
            deleted; see `whp_trainer.runs`).
        tokenizer: saved with the model; default: the one in `adapter_dir`, else the base's.
        card: the card to write; default: `adapter_dir`'s whp_trainer card re-rendered in the merged form.
        trust_remote_code: allow a base (and tokenizer) that ships its own code.
        gguf_file: the base is this GGUF file in the `base_model` folder (or Hub repo), loaded dequantized.

    Returns the output folder, which loads with `AutoModelForCausalLM.from_pretrained`.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"adapter_dir={str(adapter_dir)!r} has no adapter_config.json")
    require_unlearned_adapter(adapter_dir, "whp export")
    output_dir = Path(output_dir)
    base_source = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path if base_model is None else base_model
    check_export_inputs(output_dir, inputs=[adapter_dir, base_source])
    tokenizer = find_tokenizer(adapter_dir, base_source, trust_remote_code) if tokenizer is None else tokenizer
    check_base_fits(base_source, adapter_dir, tokenizer, trust_remote_code, gguf_file)
    record = merged_record(read_record(adapter_dir), base_source, adapter_dir)
    warn_if_trained_quantized(record, adapter_dir)
    in_memory = isinstance(base_source, torch.nn.Module)
    base_identity = id(base_source) if in_memory else [str(base_source), model_weights_digest(base_source)]
    print_ = fingerprint("export", file_digest(adapter_dir), base_identity, str(dtype), *([gguf_file] if gguf_file else []))
    if not begin_stage(output_dir, "export", print_, overwrite):
        return output_dir
    base = load_full_precision_base(base_source, dtype, trust_remote_code, gguf_file)
    try:
        merged = PeftModel.from_pretrained(base, adapter_dir)
    except RuntimeError as error:  # shapes that do not match: an adapter trained on another architecture
        raise ValueError(f"the adapter in {adapter_dir} does not fit base_model={base_name(base_source)!r}: "
                         f"{str(error).strip().splitlines()[-1].strip()}") from None
    merged = merged.merge_and_unload(progressbar=True)  # loading and saving show transformers' bars
    merged.save_pretrained(output_dir)
    save_tokenizer(tokenizer, output_dir)
    save_merged_card(record, output_dir, card)
    finish_stage(output_dir, "export", print_)
    return output_dir


def merged_record(record: dict | None, base_source, adapter_dir: Path) -> dict | None:
    """The adapter's run record as the export's: the base it was merged into (which may not be the one it was trained
    on) and the hash of the adapter merged (what an evaluation report must have measured)."""
    if record is None:
        return None
    if isinstance(base_source, torch.nn.Module):
        base = getattr(base_source.config, "_name_or_path", None) or record["base_model"]
    else:
        base = str(base_source)
    return {**record, "base_model": base, "adapter_sha256": adapter_digest(adapter_dir)}


def warn_if_trained_quantized(record: dict | None, adapter_dir: Path) -> None:
    """An adapter trained on a quantized base is merged into the full-precision one, where it may forget less."""
    quantization = ((record or {}).get("training") or {}).get("base_quantization")
    if quantization:
        logger.warning("whp export: the adapter in %s was trained on the base quantized %s and is merged into the "
                       "full-precision base, where it may keep less of its forgetting (measured by `whp evaluate` on "
                       "the quantized base: its full_precision rows)", adapter_dir, quantization)


def check_base_fits(base_source, adapter_dir: Path, tokenizer, trust_remote_code: bool = False,
                    gguf_file: str | None = None) -> None:
    """Before any weights load: the base has an embedding for every token of the tokenizer saved with the export,
    and the vocabulary and hidden size of the base the adapter was trained on (when its config can be read)."""
    vocab, hidden = model_sizes(base_source, trust_remote_code, gguf_file)
    if tokenizer is not None and vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"base_model={base_name(base_source)!r} has {vocab} embeddings but the tokenizer saved with "
                         f"the export has {len(tokenizer)} tokens: the base does not belong to the adapter in "
                         f"{adapter_dir}")
    trained_on = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not trained_on or trained_on == base_source or not (Path(trained_on) / "config.json").is_file():
        return
    expected = model_sizes(trained_on, trust_remote_code)
    if expected != (vocab, hidden):
        raise ValueError(f"base_model={base_name(base_source)!r} (vocabulary {vocab}, hidden size {hidden}) is not "
                         f"like {trained_on!r}, the base the adapter in {adapter_dir} was trained on (vocabulary "
                         f"{expected[0]}, hidden size {expected[1]})")


def model_sizes(source, trust_remote_code: bool = False, gguf_file: str | None = None) -> tuple[int | None, int | None]:
    """``(vocabulary size, hidden size)`` of a model in memory or of a checkpoint's config (no weights loaded)."""
    config = source.config if isinstance(source, torch.nn.Module) else AutoConfig.from_pretrained(
        source, trust_remote_code=trust_remote_code, gguf_file=gguf_file)
    text = config.get_text_config()
    return getattr(text, "vocab_size", None), getattr(text, "hidden_size", None)


def base_name(source) -> str:
    return type(source).__name__ if isinstance(source, torch.nn.Module) else str(source)


def check_export_inputs(output_dir: Path, inputs: list) -> None:
    """Refuse an `output_dir` that is, or holds, an input of the export."""
    for source in inputs:
        if isinstance(source, (str, os.PathLike)) and Path(source).exists():
            source = Path(source).resolve()
            if source == output_dir.resolve() or output_dir.resolve() in source.parents:
                raise ValueError(f"output_dir={str(output_dir)!r} holds the export's input {str(source)!r}")


def load_full_precision_base(
    source: str | os.PathLike | torch.nn.Module, dtype: torch.dtype | str, trust_remote_code: bool = False,
    gguf_file: str | None = None,
) -> torch.nn.Module:
    """The base model unquantized: loaded from `source` without any quantization config (a GGUF file dequantized),
    or checked if in memory."""
    if isinstance(source, torch.nn.Module):
        if getattr(source, "is_quantized", False):
            raise ValueError(
                "base_model is a quantized model; pass its name or path so that it loads in full precision"
            )
        if isinstance(source, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in source.modules()):
            raise ValueError("base_model already holds adapter layers; pass the bare base model or its name or path")
        return source
    if gguf_file:
        return load_base_model(ModelArguments(model_name_or_path=str(source), gguf_file=gguf_file,
                                              dtype=None if dtype == "auto" else str(dtype).removeprefix("torch.")),
                               trust_remote_code)
    if getattr(AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code), "quantization_config", None):
        raise ValueError(
            f"base_model={str(source)!r} is a pre-quantized checkpoint; pass the full-precision checkpoint it was "
            "quantized from"
        )
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)


def find_tokenizer(adapter_dir: Path, base_source, trust_remote_code: bool = False):
    """The tokenizer saved beside the adapter, else the base's (`None` when the base is only in memory)."""
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


def save_merged_card(record: dict | None, output_dir: Path, card: ModelCard | None) -> None:
    """Write the adapter's run record beside the export, and `card`, else that record rendered in the merged form
    (none, with a warning, when the adapter has no record: e.g. PEFT's default README only)."""
    if record is not None:
        write_record(record, output_dir)
        card = render_model_card(record, "merged") if card is None else card
    if card is None:
        logger.warning("no whp_trainer run record (%s) beside the adapter; %s holds no card (pass card=)",
                       RECORD_FILE, output_dir)
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
    """Upload an `"adapter"` or `"merged"` folder to the Hub model repo `repo_id` in one commit.

    Takes only what whp made to publish (see `check_publishable`): a finished unlearn output (or a folder
    `UnlearnTrainer` saved) for `"adapter"`, a finished export for `"merged"`. Never uploads the reinforced adapter
    (it knows MORE about the target than the base), whatever its name (`content_excluded`), unless
    `include_reinforced` (then the recorded one goes to `reinforced_subfolder`), nor a file holding the token,
    optimizer state, whp's local records, hidden entries or `checkpoint-*` folders (see `local_only_patterns`). `dictionary_file` and
    `eval_report` (a file, or a dict written as JSON) go under `whp/`; a report with `results` (as
    `whp evaluate` writes it) also puts them in the uploaded model card. The repo is created if absent
    (`private` applies only then), and the `revision` branch too. The token is `token`, else `HF_TOKEN` or
    the cached login. Everything is checked before the first request. Returns the `CommitInfo`.
    """
    check_repo_id(repo_id)
    folder = Path(folder)
    check_folder_form(folder, form)
    check_publishable(folder, form)
    token = resolve_token(token)
    operations = upload_operations(folder, include_reinforced, reinforced_subfolder, token=token)
    check_model_files_kept(folder, form, operations)
    operations += extra_operations(dictionary_file, eval_report)
    record = published_record(folder, eval_report, repo_id)
    if record is not None:  # the uploaded record and card: the repo's id, the report's results; local files unchanged
        operations = [op for op in operations if op.path_in_repo not in ("README.md", RECORD_FILE)]
        operations += [
            CommitOperationAdd(path_in_repo=RECORD_FILE, path_or_fileobj=record_json(record).encode()),
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(render_model_card(record, form)).encode()),
        ]
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


def published_record(folder: Path, eval_report: str | os.PathLike | dict | None, repo_id: str) -> dict | None:
    """`folder`'s run record as published to `repo_id`: that repo in its loading snippet, and the evaluation of a
    report's `results` (`whp evaluate`'s report.json: role -> metric -> value) when the report measured this very
    adapter (see `check_report_measured`); `None` when the folder holds no record."""
    report = read_json_object(eval_report) if isinstance(eval_report, (str, os.PathLike)) else eval_report
    record = read_record(folder)
    if record is None:
        return None
    record = {**record, "hub_model_id": repo_id}
    if report is None or "results" not in report:
        return record
    check_report_measured(report, folder, record, eval_report if not isinstance(eval_report, dict) else "eval_report")
    return {**record, "evaluation": evaluation_of(report["results"])}


def check_report_measured(report: dict, folder: Path, record: dict, name) -> None:
    """Refuse a report whose `unlearned` results are not those of the adapter in `folder` (or merged into it):
    results of another run would be published as this model's."""
    measured = (report.get("measured_adapters") or {}).get(EVAL_ROLE)
    mine = record.get("adapter_sha256") or adapter_digest(folder)
    if measured is None:
        raise ValueError(f"{name}: the report records no adapter it measured (measured_adapters); run `whp evaluate "
                         f"--unlearned_adapter` on the adapter of {folder} to put results on its card")
    if measured != mine:
        raise ValueError(f"{name}: the report measured another adapter (sha256 {measured[:12]}…) than the one of "
                         f"{folder} ({mine[:12]}…): its results are not this model's")


def check_repo_id(repo_id: str | None) -> None:
    if not repo_id:
        raise ValueError("repo_id is required, e.g. 'your-username/model-name'")
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ValueError(f"repo_id={repo_id!r} is not a valid Hub repo id: {error}") from error


def check_folder_form(folder: Path, form: str) -> None:
    """The folder exists and holds what `form` promises: an adapter config, or a plain model config."""
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


def check_publishable(folder: Path, form: str) -> None:
    """What a folder is decides whether it may leave: a finished unlearn (adapter) or a finished export (merged)."""
    if form == "adapter":
        require_unlearned_adapter(folder, "whp push")
    else:
        require_stage_output(folder, ("export",), "whp push --form merged")


def require_unlearned_adapter(folder: Path, use: str) -> None:
    """A finished `whp unlearn` output, or (no stage marker) a folder `UnlearnTrainer` saved: it holds its run record."""
    require_stage_output(folder, ("unlearn",), use, unmarked=(folder / RECORD_FILE).is_file())


def resolve_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise ValueError(
            "no Hugging Face token: pass token=..., set the HF_TOKEN environment variable, or run `hf auth login`"
        )
    return token


def upload_operations(folder: Path, include_reinforced: bool, reinforced_subfolder: str,
                      token: str | None = None) -> list[CommitOperationAdd]:
    """One `CommitOperationAdd` per file of `folder` that belongs in the repo (sorted by path): nothing of
    `local_only_patterns`, no `checkpoint-*` folder, nothing `content_excluded` finds; the reinforced adapter only
    with `include_reinforced`."""
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    ignored = ["checkpoint-*", *local_only_patterns(reinforced_subfolder)]
    files = list(filter_repo_objects(files, ignore_patterns=ignored))
    excluded = content_excluded(folder, files, token, reinforced_fingerprints(folder))
    operations = [
        CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(folder / relative))
        for relative in files if relative not in excluded
    ]
    return operations + (reinforced_operations(folder, reinforced_subfolder) if include_reinforced else [])


def content_excluded(folder: Path, files, token: str | None, reinforced: set[tuple[int, str]]) -> dict[str, str]:
    """The files (relative to `folder`) no upload may send whatever their name, with why: bytes equal to a weight
    file of the reinforced adapter (`reinforced`: `(size, sha256)` pairs), or holding `token`. Each is named in a
    warning."""
    sizes = {size for size, _ in reinforced}
    excluded = {}
    for relative in files:
        path = folder / relative
        if path.stat().st_size in sizes and (path.stat().st_size, content_digest(path)) in reinforced:
            excluded[relative] = "it holds the reinforced adapter's weights"
        elif token and holds_bytes(path, token.encode()):
            excluded[relative] = "it holds the Hub token of this upload"
    for relative, why in excluded.items():
        logger.warning("whp: %s/%s is not uploaded: %s", folder, relative, why)
    return excluded


def holds_bytes(path: Path, needle: bytes, block: int = 1 << 24) -> bool:
    """Whether the file holds `needle` (read block by block, overlapping by its length)."""
    tail = b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(block), b""):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle):]
    return False


def check_model_files_kept(folder: Path, form: str, operations: list[CommitOperationAdd]) -> None:
    """Refuse a push whose model weights were all held back (e.g. an adapter that is the reinforced one)."""
    weights = ("adapter_model.*",) if form == "adapter" else ("*.safetensors", "*.bin")
    if not list(filter_repo_objects([op.path_in_repo for op in operations if "/" not in op.path_in_repo],
                                    allow_patterns=list(weights))):
        raise ValueError(f"whp push: no model weights of {folder} may be uploaded (see the warnings above)")


def reinforced_operations(folder: Path, reinforced_subfolder: str) -> list[CommitOperationAdd]:
    """The reinforced adapter of the run in `folder` (its recorded source), uploaded to `reinforced_subfolder`."""
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
    """What no upload may send (fnmatch patterns, as `huggingface_hub` applies them): the reinforced adapter under any
    `reinforced/` folder (it knows MORE about the target than the base), optimizer state, and whp's local records
    (markers, the reinforced adapter's local path, the probe prompts behind the next-token metrics, the fingerprints
    of what alpha auto's stopping rule read)."""
    folders = dict.fromkeys([reinforced_subfolder, REINFORCED_SUBFOLDER])  # at any depth
    return [*(f"{name}/*" for name in folders), *(f"*/{name}/*" for name in folders), *OPTIMIZER_STATE_PATTERNS,
            REINFORCED_RECORD, RULE_SAMPLE_FILE, PROBE_NAMES_FILE, *MARKERS, ".*"]


def extra_operations(dictionary_file, eval_report) -> list[CommitOperationAdd]:
    """The dictionary and the evaluation report (a file, or a dict uploaded as `eval_report.json`), under `whp/`."""
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
