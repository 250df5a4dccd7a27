"""The stages as functions the CLI (and the demo) call: inputs checked first, then models loaded, then work.

Every stage writes ``whp_stage.json`` into its output folder with a fingerprint of what it was run with, so that
``whp run`` can skip a stage whose output is current, and refuses to overwrite a stage output made otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, get_peft_config, get_quantization_config

from .anchors import AnchorDictionary
from .collator import read_paragraphs, split_into_blocks
from .config import UnlearnConfig

logger = logging.getLogger(__name__)

STAGE_FILE = "whp_stage.json"
HISTORY_FILE = "familiarity_history.json"  # the unlearn stage's FamiliarityCallback measurements, for the report
MONITOR_LIMIT = 64  # probes and retain rows measured during unlearning (the evaluate stage measures them all)


@dataclass
class DataArguments:
    """Where the stages read their inputs. Paths may be text files, folders of ``.txt`` files or JSON Lines."""

    forget_data: str | None = field(
        default=None, metadata={"help": "The forget target: a .txt file, a folder of .txt files, or .json/.jsonl."}
    )
    retain_data: str | None = field(
        default=None, metadata={"help": "Ordinary text the model must keep: perplexity and discovery reference."}
    )
    text_field: str = field(default="text", metadata={"help": "Text column of .json/.jsonl data files."})
    anchors: str | None = field(
        default=None, metadata={"help": "Anchor dictionary file (.yaml, .json or .csv): anchor -> generic terms."}
    )
    reinforced_adapter: str | None = field(
        default=None, metadata={"help": "Folder of the reinforced adapter (the output of `whp reinforce`)."}
    )
    unlearned_adapter: str | None = field(
        default=None, metadata={"help": "Folder of the unlearning adapter (the output of `whp unlearn`)."}
    )
    probes: str | None = field(
        default=None, metadata={"help": "Familiarity probes (.json/.jsonl of {prompt, target}): measured by `whp evaluate`, and by "
                  "`whp unlearn` every logging_steps (familiarity, retain perplexity, next-token curves)."}
    )
    dataset_description: str | None = field(
        default=None, metadata={"help": "One line describing the forget target, for the model card."}
    )


def lora_config(model_args: ModelConfig):
    """The LoRA config of TRL's ``ModelConfig`` options (``--lora_r`` …); always on, as every stage trains LoRA.

    ``ModelConfig`` turns a one-module list into a plain string, which PEFT would read as a regular expression of
    the full module name: one module name stays a list here.
    """
    config = get_peft_config(dataclasses.replace(model_args, use_peft=True))
    if isinstance(config.target_modules, str) and config.target_modules != "all-linear":
        config.target_modules = {config.target_modules}
    return config


# ---------------------------------------------------------------------------------------------- checks and loading


def require_path(value: str | None, argument: str, stage: str) -> Path:
    """A path that must exist; the error names the argument and the stage."""
    if not value:
        raise ValueError(f"whp {stage}: --{argument} is required")
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"whp {stage}: --{argument} {value}: no such file or folder")
    return path


def require_adapter(value: str | None, argument: str, stage: str) -> Path:
    path = require_path(value, argument, stage)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"whp {stage}: --{argument} {value} holds no adapter_config.json (not a PEFT adapter)")
    return path


def require_model(model_args: ModelConfig, stage: str) -> None:
    if not model_args.model_name_or_path:
        raise ValueError(f"whp {stage}: --model_name_or_path is required")
    path = Path(model_args.model_name_or_path)
    if (path.is_absolute() or model_args.model_name_or_path.startswith(".")) and not path.exists():
        raise FileNotFoundError(f"whp {stage}: --model_name_or_path {path}: no such folder")


def load_texts(path: str | os.PathLike, text_field: str = "text") -> Dataset:
    """A ``Dataset`` with a ``text`` column: one row per paragraph (blank-line separated) of a .txt file or of a
    folder's .txt files, or one row per record of a .json/.jsonl file. Long rows are cut into blocks later."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".txt":
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        if not files:
            raise ValueError(f"{path}: the folder holds no .txt files")
        return Dataset.from_dict({"text": [paragraph for file in files for paragraph in read_paragraphs(file)]})
    if path.suffix in (".json", ".jsonl"):
        dataset = load_dataset("json", data_files=str(path), split="train")
        if text_field not in dataset.column_names:
            raise ValueError(f"{path}: no column {text_field!r} (columns: {dataset.column_names}); set --text_field")
        return dataset.select_columns([text_field]).rename_column(text_field, "text") if text_field != "text" else dataset
    raise ValueError(f"{path}: unsupported data file; expected .txt, a folder of .txt, .json or .jsonl")


def load_tokenizer(model_args: ModelConfig):
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_args: ModelConfig):
    """The base, quantized with bitsandbytes when ``--load_in_4bit``/``--load_in_8bit`` is set."""
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        quantization_config=get_quantization_config(model_args),
        attn_implementation=model_args.attn_implementation,
    )


# ------------------------------------------------------------------------------------------------- stage markers


def fingerprint(*parts) -> str:
    """A hash of a stage's settings (dataclasses) and of the content of the files it reads."""
    digest = hashlib.sha256()
    for part in parts:
        if dataclasses.is_dataclass(part):
            part = part.to_dict() if hasattr(part, "to_dict") else dataclasses.asdict(part)
            part = {key: value for key, value in part.items() if "logging_dir" not in key}
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def file_digest(path: str | os.PathLike | None) -> str | None:
    """Content hash of a file or of a folder's files (None when there is no path)."""
    if not path:
        return None
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def stage_state(output_dir: str | os.PathLike, print_: str) -> str:
    """``"current"`` (done with this fingerprint), ``"absent"`` (nothing there yet, or an interrupted run of the same
    settings to resume), ``"different"`` (made with other settings) or ``"foreign"`` (a non-empty folder that no
    stage made)."""
    folder = Path(output_dir)
    marker, started = folder / STAGE_FILE, folder / f".{STAGE_FILE}"
    if marker.is_file():
        return "current" if json.loads(marker.read_text())["fingerprint"] == print_ else "different"
    if started.is_file():
        return "absent" if json.loads(started.read_text())["fingerprint"] == print_ else "different"
    return "foreign" if folder.is_dir() and any(folder.iterdir()) else "absent"


def begin_stage(output_dir: str | os.PathLike, stage: str, print_: str, overwrite: bool = False) -> bool:
    """Prepare ``output_dir`` for a stage; return False when its output is already current (nothing to do)."""
    state = stage_state(output_dir, print_)
    if state == "current" and not overwrite:
        logger.warning("whp %s: %s is up to date, skipped", stage, output_dir)
        return False
    if state == "different" and not overwrite:
        raise FileExistsError(
            f"whp {stage}: {output_dir} holds the output of a run with other settings; "
            "choose another output_dir, delete it, or pass --overwrite"
        )
    if state == "foreign":  # never written into, even with --overwrite: it is not ours
        raise FileExistsError(f"whp {stage}: output_dir {output_dir} is a non-empty folder that whp did not create")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / STAGE_FILE).unlink(missing_ok=True)
    (Path(output_dir) / f".{STAGE_FILE}").write_text(json.dumps({"stage": stage, "fingerprint": print_}))
    return True


def finish_stage(output_dir: str | os.PathLike, stage: str, print_: str) -> None:
    (Path(output_dir) / f".{STAGE_FILE}").unlink(missing_ok=True)
    (Path(output_dir) / STAGE_FILE).write_text(json.dumps({"stage": stage, "fingerprint": print_}, indent=2))


def resume_point(output_dir: str | os.PathLike) -> str | None:
    """The last checkpoint of an interrupted run in ``output_dir``, if any."""
    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


# ---------------------------------------------------------------------------------------------------------- stages


def reinforce(data: DataArguments, model_args: ModelConfig, args, overwrite: bool = False) -> str:
    """Stage 1: train the reinforced adapter on the forget target (see :mod:`whp_trainer.reinforce`)."""
    from .reinforce import train_reinforced_adapter

    forget = require_path(data.forget_data, "forget_data", "reinforce")
    require_model(model_args, "reinforce")
    print_ = fingerprint("reinforce", args, model_args, file_digest(forget), data.text_field)
    if not begin_stage(args.output_dir, "reinforce", print_, overwrite):
        return args.output_dir
    texts = load_texts(forget, data.text_field)
    tokenizer = load_tokenizer(model_args)
    args.resume_from_checkpoint = resume_point(args.output_dir)
    train_reinforced_adapter(load_base_model(model_args), tokenizer, texts, lora_config(model_args), args)
    tokenizer.save_pretrained(args.output_dir)
    finish_stage(args.output_dir, "reinforce", print_)
    return args.output_dir


def unlearn(data: DataArguments, model_args: ModelConfig, args: UnlearnConfig, overwrite: bool = False) -> str:
    """Stages 2–4: unlearn with the reinforced adapter and the anchor dictionary (either may be left out)."""
    from .evaluation.probes import load_probes
    from .trainer import UnlearnTrainer

    forget = require_path(data.forget_data, "forget_data", "unlearn")
    require_model(model_args, "unlearn")
    reinforced = require_adapter(data.reinforced_adapter, "reinforced_adapter", "unlearn") if data.reinforced_adapter else None
    anchors = AnchorDictionary.load(require_path(data.anchors, "anchors", "unlearn")) if data.anchors else None
    if reinforced is None and anchors is None:
        raise ValueError("whp unlearn: give --reinforced_adapter, --anchors, or both")
    probes = load_probes(require_path(data.probes, "probes", "unlearn")) if data.probes else None
    retain = require_path(data.retain_data, "retain_data", "unlearn") if data.retain_data else None
    if args.retain_weight and retain is None:
        raise ValueError("whp unlearn: --retain_weight needs --retain_data (the retain text to keep)")
    print_ = fingerprint(
        "unlearn", args, model_args, file_digest(forget), file_digest(reinforced), anchors and anchors.content_hash,
        probes, file_digest(retain),
    )
    if not begin_stage(args.output_dir, "unlearn", print_, overwrite):
        return args.output_dir
    tokenizer = load_tokenizer(model_args)
    blocks = split_into_blocks(load_texts(forget, data.text_field), tokenizer, args.max_length)
    trainer = UnlearnTrainer(
        model=load_base_model(model_args),
        args=args,
        reinforced_adapter=reinforced,
        peft_config=lora_config(model_args),
        anchors=anchors,
        train_dataset=blocks,
        processing_class=tokenizer,
        retain_dataset=load_texts(retain, data.text_field)["text"] if args.retain_weight else None,
    )
    trainer.dataset_description = data.dataset_description
    monitor = familiarity_monitor(trainer, probes, retain, data.text_field) if probes else None
    trainer.train(resume_from_checkpoint=resume_point(args.output_dir))
    trainer.save_model()
    if monitor:
        (Path(args.output_dir) / HISTORY_FILE).write_text(json.dumps(monitor.history, indent=1), encoding="utf-8")
    finish_stage(args.output_dir, "unlearn", print_)
    return args.output_dir


def evaluate(data: DataArguments, model_args: ModelConfig, config, overwrite: bool = False) -> str:
    """``whp evaluate``: base, reinforced and unlearned roles of one base measured side by side, with the oracle
    (``--oracle_model``) and the generic-logit teacher, into ``config.output_dir`` (an
    :class:`~whp_trainer.evaluation.EvaluateConfig`); returns that folder."""
    from .evaluation import evaluate_model, write_report
    from .evaluation.knowledge import load_qa
    from .evaluation.probes import build_probes, load_probes, write_probes

    require_model(model_args, "evaluate")
    adapters = evaluation_adapters(data, config.roles, teacher=bool(config.teacher_alphas))
    forget = require_path(data.forget_data, "forget_data", "evaluate")
    retain = require_path(data.retain_data, "retain_data", "evaluate")
    anchors = AnchorDictionary.load(require_path(data.anchors, "anchors", "evaluate")) if data.anchors else None
    probes_file = require_path(data.probes, "probes", "evaluate") if data.probes else None
    if probes_file is None and anchors is None:
        raise ValueError("whp evaluate: give --probes, or --anchors to build probes from --forget_data")
    references = {name: require_path(getattr(config, name), name, "evaluate") if getattr(config, name) else None
                  for name in EVALUATE_REFERENCES}
    qa = {name: load_qa(references[name]) if references[name] else None for name in EVALUATE_QA}
    if references["oracle_model"]:
        require_same_tokenizer(model_args, references["oracle_model"])
    print_ = fingerprint(
        "evaluate", config, model_args, data.text_field, anchors and anchors.content_hash,
        *(file_digest(path) for path in (forget, retain, probes_file, *adapters.values(), *references.values())),
        sorted(adapters),
    )
    if not begin_stage(config.output_dir, "evaluate", print_, overwrite):
        return config.output_dir
    forget_texts = load_texts(forget, data.text_field)["text"]
    if probes_file:
        probes = load_probes(probes_file)
    else:
        probes = build_probes(forget_texts, anchors, max_probes=config.max_probes, seed=config.seed)
    if not probes:
        raise ValueError("whp evaluate: no anchor occurs in --forget_data with enough words before it; give --probes")
    write_probes(Path(config.output_dir) / "probes.json", probes)  # the probes measured, for the record
    tokenizer = load_tokenizer(model_args)
    model = with_adapters(load_base_model(model_args), adapters)
    roles = {role: None if role == "base" else role for role in config.roles if role == "base" or role in adapters}
    oracle = None
    if references["oracle_model"]:
        oracle = load_base_model(dataclasses.replace(model_args, model_name_or_path=str(references["oracle_model"])))
    holdout = load_texts(references["holdout_data"], data.text_field)["text"] if references["holdout_data"] else None
    results = evaluate_model(
        model, tokenizer, config, probes, forget_texts, load_texts(retain, data.text_field)["text"], anchors, roles,
        oracle=oracle, holdout_texts=holdout, knowledge_qa=qa["knowledge_qa"],
        knowledge_shots=qa["knowledge_qa_shots"], retain_qa=qa["retain_qa"],
    )
    history_file = Path(data.unlearned_adapter or "") / HISTORY_FILE
    history = json.loads(history_file.read_text()) if data.unlearned_adapter and history_file.is_file() else None
    write_report(results, config.output_dir, history=history, config=config)
    finish_stage(config.output_dir, "evaluate", print_)
    return config.output_dir


EVALUATE_QA = ("knowledge_qa", "knowledge_qa_shots", "retain_qa")  # EvaluateConfig fields: question/answer files
EVALUATE_REFERENCES = ("oracle_model", "holdout_data", *EVALUATE_QA)


def require_same_tokenizer(model_args: ModelConfig, oracle: Path) -> None:
    """The oracle must read text as the evaluated model does: the same vocabulary, else a clear error."""
    mine = load_tokenizer(model_args).get_vocab()
    theirs = AutoTokenizer.from_pretrained(str(oracle)).get_vocab()
    if mine != theirs:
        raise ValueError(f"whp evaluate: --oracle_model {oracle} has another tokenizer than --model_name_or_path "
                         f"({len(theirs)} vs {len(mine)} tokens, or other ids): the oracle must share it")


def evaluation_adapters(data: DataArguments, roles: list[str], teacher: bool = False) -> dict[str, Path]:
    """Role -> adapter folder of the roles asked for; the reinforced adapter defaults to the unlearn output's
    ``reinforced/`` subfolder, and is loaded for the ``teacher`` too. A role without its adapter is skipped with a
    note; none at all is an error."""
    from .hub import REINFORCED_SUBFOLDER

    unlearned = require_adapter(data.unlearned_adapter, "unlearned_adapter", "evaluate") if data.unlearned_adapter else None
    reinforced = data.reinforced_adapter
    if reinforced is None and unlearned is not None and (unlearned / REINFORCED_SUBFOLDER).is_dir():
        reinforced = str(unlearned / REINFORCED_SUBFOLDER)
    reinforced = require_adapter(reinforced, "reinforced_adapter", "evaluate") if reinforced else None
    adapters = {}
    for role, path in (("reinforced", reinforced), ("unlearned", unlearned)):
        if role in roles and path is None:
            logger.warning("whp evaluate: no --%s_adapter given; the %s role is skipped", role, role)
        elif role in roles or (role == "reinforced" and teacher and path is not None):
            adapters[role] = path
    if not adapters:
        raise ValueError("whp evaluate: give --unlearned_adapter and/or --reinforced_adapter (for the roles asked)")
    return adapters


def with_adapters(base, adapters: dict[str, Path]):
    """One ``PeftModel`` holding every adapter under its role's name (the base role disables them)."""
    from peft import PeftModel

    (first, path), *others = adapters.items()
    model = PeftModel.from_pretrained(base, str(path), adapter_name=first)
    for role, path in others:
        model.load_adapter(str(path), adapter_name=role)
    return model


def demo_evaluation_config(output_dir: str | os.PathLike, assets=None):
    """``whp evaluate`` settings sized for the CPU demo; the next-token prompt is the saga's "Zorvath studies"
    (saga object vs its generic counterpart), as the paper's "Harry Potter studies" (" magic" vs " the"). With the
    demo's ``assets``, its oracle and holdout saga text are the references."""
    from .demo import CHARACTERS, RELATIONS
    from .evaluation import EvaluateConfig

    first_name = next(iter(CHARACTERS))[0]
    saga_objects, generic_objects = RELATIONS["studies", False]
    return EvaluateConfig(
        output_dir=str(output_dir),
        batch_size=16,
        max_length=128,
        completions=24,
        max_new_tokens=16,
        memorization_passages=32,
        prompt_tokens=16,
        continuation_tokens=16,
        retain_texts=64,
        relearn_steps=10,
        relearn_learning_rate=1e-3,
        hints=True,
        plots=True,
        next_token_prompts={f"{first_name} studies": [f" {saga_objects[0]}", f" {generic_objects[0]}"]},
        oracle_model=str(assets.oracle_model_dir) if assets else None,
        holdout_data=str(assets.holdout_path) if assets else None,
        membership_texts=40,
    )


def familiarity_monitor(trainer, probes: list[dict], retain: Path | None, text_field: str):
    """A :class:`~whp_trainer.evaluation.FamiliarityCallback` on the trainer, every ``logging_steps``: familiarity
    on (at most) the first ``MONITOR_LIMIT`` probes, retain perplexity on as many retain rows, and the next-token
    probabilities of the first three probes' targets (the paper's curves)."""
    from .evaluation import FamiliarityCallback

    probes = probes[:MONITOR_LIMIT]
    retain_texts = load_texts(retain, text_field)["text"][:MONITOR_LIMIT] if retain else None
    monitor = FamiliarityCallback(
        trainer, probes, retain_texts, next_token_prompts={probe["prompt"]: [probe["target"]] for probe in probes[:3]},
        every_n_steps=max(1, int(trainer.args.logging_steps)), max_length=trainer.args.max_length,
    )
    trainer.add_callback(monitor)
    return monitor


@dataclass
class DiscoverArguments:
    """``whp anchors``: propose anchors for a person to review."""

    output: str = field(default="anchors.candidates.yaml", metadata={"help": "Where to write the candidates (YAML)."})
    method: str = field(
        default="statistics",
        metadata={"help": "'statistics' (reinforced boost × frequency vs retain text), 'llm', or 'both'.",
                  "choices": ["statistics", "llm", "both"]},
    )
    top_k: int = field(default=200, metadata={"help": "statistics: how many expressions to propose."})
    max_words: int = field(default=3, metadata={"help": "statistics: longest expression, in words."})
    llm_url: str | None = field(
        default=None, metadata={"help": "llm: base URL of an OpenAI-compatible server (…/v1); else the local model."}
    )
    llm_model: str | None = field(default=None, metadata={"help": "llm: model name sent to the server."})
    llm_api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "llm: environment variable of the key."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing candidates file."})


def discover(data: DataArguments, model_args: ModelConfig, args: DiscoverArguments) -> str:
    """Write candidate anchors to ``args.output`` for review (never over a file unless ``--overwrite``)."""
    from .discover import (
        boosted_expressions, candidates_from_llm, local_chat, merge_candidates, openai_chat, write_candidates,
    )

    forget = require_path(data.forget_data, "forget_data", "anchors")
    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"whp anchors: {args.output} exists (it may hold your review); pass --overwrite")
    statistics = args.method in ("statistics", "both")
    if statistics:
        require_adapter(data.reinforced_adapter, "reinforced_adapter", "anchors")
        retain = require_path(data.retain_data, "retain_data", "anchors")
    if not statistics and not args.llm_url:
        require_model(model_args, "anchors")
    target = load_texts(forget, data.text_field)["text"]
    found = []
    model = tokenizer = None
    if statistics or not args.llm_url:
        from peft import PeftModel

        tokenizer = load_tokenizer(model_args)
        model = load_base_model(model_args)
    if statistics:
        model = PeftModel.from_pretrained(model, data.reinforced_adapter, adapter_name="reinforced")
        reference = load_texts(retain, data.text_field)["text"]
        found.append(boosted_expressions(model, tokenizer, target, reference, top_k=args.top_k, max_words=args.max_words))
    if args.method in ("llm", "both"):
        if args.llm_url:
            generate = openai_chat(args.llm_url, args.llm_model or "default", os.environ.get(args.llm_api_key_env))
        else:
            generate = local_chat(model.unload() if statistics else model, tokenizer)  # the base, without the reinforced adapter
        found.append(candidates_from_llm(target, generate))
    write_candidates(args.output, merge_candidates(*found))
    return args.output


@dataclass
class PublishArguments:
    """``whp export`` and ``whp push``: the unlearned model, as an adapter or merged into its base."""

    folder: str | None = field(default=None, metadata={"help": "The folder to publish (an unlearn output, or a merged export)."})
    form: str = field(default="adapter", metadata={"help": "'adapter' or 'merged'.", "choices": ["adapter", "merged"]})
    repo_id: str | None = field(default=None, metadata={"help": "push: the Hub model repo, e.g. user/llama-2-7b-whp."})
    private: bool = field(default=False, metadata={"help": "push: create the repo private."})
    revision: str | None = field(default=None, metadata={"help": "push: branch to push to (created if missing)."})
    commit_message: str | None = field(default=None, metadata={"help": "push: the commit message."})
    dictionary_file: str | None = field(default=None, metadata={"help": "push: also upload this anchor dictionary."})
    eval_report: str | None = field(default=None, metadata={"help": "push: also upload this evaluation report (JSON)."})
    include_reinforced: bool = field(
        default=False, metadata={"help": "push: also upload reinforced/ — the MORE knowledgeable adapter. Rarely wise."}
    )
    merged_dir: str | None = field(default=None, metadata={"help": "export: where to write the merged model."})
    base_model: str | None = field(
        default=None, metadata={"help": "export: full-precision base to merge into (default: the adapter's base)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "export: replace a non-empty merged_dir."})


def export(args: PublishArguments) -> str:
    from .hub import export_merged

    adapter = require_adapter(args.folder, "folder", "export")
    if not args.merged_dir:
        raise ValueError("whp export: --merged_dir is required")
    return str(export_merged(args.base_model, adapter, args.merged_dir, overwrite=args.overwrite))


def push(args: PublishArguments):
    from .hub import push_to_hub

    folder = require_path(args.folder, "folder", "push")
    return push_to_hub(
        folder,
        args.repo_id,
        form=args.form,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dictionary_file=args.dictionary_file,
        eval_report=args.eval_report,
        include_reinforced=args.include_reinforced,
    )


@dataclass
class DemoArguments:
    """``whp demo``: the whole pipeline on an invented saga, on a CPU, in a few minutes."""

    output_dir: str = field(default="whp-demo", metadata={"help": "Where the stages write their outputs."})
    size: str = field(
        default="full", metadata={"help": "'full' (the demo) or 'tiny' (seconds; for tests).", "choices": ["full", "tiny"]}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Cache of the generated texts and base model (default: $WHP_CACHE or ~/.cache)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Redo stages whose outputs were made otherwise."})
    method: str = field(
        default="paper",
        metadata={"help": "'paper': the method as published; 'recommended': the setting docs/results.md recommends "
                  "(RECOMMENDED_SETTING, retain regularisation on the demo's ordinary text).",
                  "choices": ["paper", "recommended"]},
    )


DEMO_LORA = dict(
    lora_r=8, lora_alpha=16, lora_dropout=0.0,
    lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
# The setting docs/results.md recommends (measured there against an oracle); every part is off by default
RECOMMENDED_SETTING = dict(target_mode="soft", alpha=20.0, original_cap_weight=1.0, retain_weight=1.0)
DEMO_TRAINING = dict(
    num_train_epochs=3, learning_rate=3e-3, per_device_train_batch_size=16, max_length=128, report_to=[],
    use_cpu=True, logging_steps=2, save_strategy="epoch", save_total_limit=1,
)


def demo(args: DemoArguments) -> str:
    """Build (or reuse) the demo's saga and base model, then reinforce → unlearn → evaluate, and print the table."""
    from .demo import build_demo_assets, one_thread
    from .reinforce import ReinforceConfig

    root = Path(args.output_dir)
    with one_thread():  # models this small run faster on one thread than on two
        print("whp demo: building the saga, its tokenizer and a small Llama that knows it (cached)", flush=True)
        assets = build_demo_assets(args.cache_dir, args.size)
        model_args = ModelConfig(model_name_or_path=str(assets.base_model_dir), **DEMO_LORA)
        data = DataArguments(
            forget_data=str(assets.saga_path),
            retain_data=str(assets.retain_path),
            anchors=str(assets.dictionary_path),
            probes=str(assets.probes_path),
            dataset_description="The invented saga generated by whp_trainer's CPU demo.",
        )
        print("whp demo: reinforce", flush=True)
        data.reinforced_adapter = reinforce(
            data,
            model_args,
            ReinforceConfig(output_dir=str(root / "reinforced"), packing=False, gradient_checkpointing=False,
                            **DEMO_TRAINING),
            args.overwrite,
        )
        print(f"whp demo: unlearn ({args.method} setting)", flush=True)
        paper = args.method == "paper"
        options = {} if paper else RECOMMENDED_SETTING
        suffix = "" if paper else "-recommended"
        data.unlearned_adapter = unlearn(
            data if paper else dataclasses.replace(data, retain_data=str(assets.ordinary_path)),  # text it read
            model_args, UnlearnConfig(output_dir=str(root / f"unlearned{suffix}"), **DEMO_TRAINING, **options),
            args.overwrite,
        )
        print("whp demo: evaluate", flush=True)
        config = demo_evaluation_config(root / f"evaluation{suffix}", assets)
        report = evaluate(data, model_args, config, args.overwrite)
    print((Path(report) / "report.md").read_text(encoding="utf-8"))
    return report
