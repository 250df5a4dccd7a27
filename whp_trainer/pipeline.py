"""The stages of ``whp`` as functions (what the CLI and the demo call): inputs checked first, then models loaded
(through [`whp_trainer.loading`][whp_trainer.loading]), then the work.

Every stage writes ``whp_stage.json`` into its output folder with a fingerprint of what it was run with, so that
``whp run`` can skip a stage whose output is current, and refuses to overwrite a stage output made otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from trl import ModelConfig

from .anchors import AnchorDictionary
from .arguments import DataArguments, DiscoverArguments, PublishArguments
from .auto import (
    auto_inputs,
    check_auto_inputs,
    check_unlearned,
    choose_auto_alpha,
    record_what_the_rule_read,
    retain_training,
    stop_at_targets,
)
from .cache import model_weights_digest
from .collator import block_summary, check_anchor_coverage, check_loss_positions, collator_for, split_into_blocks, text_blocks
from .config import UnlearnConfig
from .data import check_source, is_hub_id, load_texts
from .dictionary import read_json_object
from .loading import gguf_file_of, load_base_model, load_tokenizer, lora_config, naming, with_adapters
from .models import adapter_weights, check_adapter_trained
from .record import read_record
from .runs import (
    adapter_digest, begin_stage, file_digest, finish_stage, fingerprint, last_complete_checkpoint, recorded_reinforced_adapter,
    recorded_rule_sample, require_stage_output,
)

logger = logging.getLogger(__name__)

MONITOR_LIMIT = 64  # probes and retain rows measured during unlearning (the evaluate stage measures them all)
# settings fields newer than some stage folders, at their old behaviour's value (runs.fingerprint's ``added``)
REINFORCE_ADDED = {"retain_weight": 0.0}
UNLEARN_ADDED = {"original_cap_depth": None, "retain_projection": False, "forget_knowledge": None,
                 "spare_common_tokens": 0.0}
EVALUATE_ADDED = {"full_precision_attack": True}


# ---------------------------------------------------------------------------------------------------- input checks


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


def require_model(model_args: ModelConfig, stage: str, trust_remote_code: bool = False):
    """The model's config, read before any weights: a clear error for a folder that does not exist (a relative path
    is not sent to the Hub as an id when it looks like a path) or a Hub id that cannot be found or reached."""
    from transformers import AutoConfig

    name, gguf_file = model_args.model_name_or_path, gguf_file_of(model_args)
    if not name:
        raise ValueError(f"whp {stage}: --model_name_or_path is required")
    path = Path(name).expanduser()
    if not path.exists() and not is_hub_id(name):
        raise FileNotFoundError(f"whp {stage}: --model_name_or_path {name}: no such folder")
    if gguf_file and path.is_dir() and not (path / gguf_file).is_file():
        found = sorted(file.name for file in path.glob("*.gguf"))
        raise FileNotFoundError(f"whp {stage}: --gguf_file {gguf_file}: not in {name} (GGUF files there: {found})")
    if not gguf_file and path.is_dir() and not (path / "config.json").is_file() and any(path.glob("*.gguf")):
        raise FileNotFoundError(f"whp {stage}: --model_name_or_path {name} holds GGUF files but no config.json: "
                                "name the file with --gguf_file")
    try:
        return AutoConfig.from_pretrained(
            str(path) if path.exists() else name, revision=model_args.model_revision,
            trust_remote_code=trust_remote_code, gguf_file=gguf_file,
        )
    except OSError as error:
        where = "folder holds no model config" if path.exists() else "no such local folder, and no such model on the Hub (or it cannot be reached)"
        raise FileNotFoundError(f"whp {stage}: --model_name_or_path {name}: {where}: {str(error).splitlines()[0]}") from None


def check_tokenizer_fits(config, tokenizer, stage: str) -> None:
    """Refuse a tokenizer with more tokens than the model has embeddings, before the model loads."""
    vocab_size = getattr(config.get_text_config(), "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"whp {stage}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}: "
            "they do not belong together"
        )


def check_max_length(config, max_length: int | None, stage: str) -> None:
    """Refuse blocks longer than the model has positions (it would fail at the first step), from its config."""
    positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    if max_length is not None and positions is not None and max_length > positions:
        raise ValueError(f"whp {stage}: --max_length {max_length} is beyond the model's {positions} positions "
                         f"(max_position_embeddings); give --max_length {positions} or less")


def require_data(value: str | None, argument: str, stage: str) -> str:
    """A data source (a path or a Hub dataset id) that must be given; a missing path is named with its argument."""
    if not value:
        raise ValueError(f"whp {stage}: --{argument} is required")
    try:
        check_source(value)
    except FileNotFoundError:
        raise FileNotFoundError(f"whp {stage}: --{argument} {value}: no such file or folder") from None
    return value


def data_digest(source: str | None, config: str | None, split: str) -> list | None:
    """What identifies a data source in a stage's fingerprint: a local path's content, else the Hub id (with the
    config and split either way). A Hub dataset is not re-hashed: after it changes, pass --overwrite."""
    if not source:
        return None
    return [file_digest(source) if Path(source).exists() else source, config, split]


def block_options(data: DataArguments) -> list:
    """What decides the blocks of the texts, for a stage's fingerprint."""
    return [data.blocks, data.document_field]


def training_blocks(texts, tokenizer, max_length: int, stage: str, data: DataArguments):
    """The forget documents cut into blocks of ``max_length`` tokens of running text (both stages read these), with
    a line in the log on how many, their tokens and their padding; an error naming --forget_data when it holds
    none."""
    blocks = split_into_blocks(texts, tokenizer, max_length)
    if not len(blocks):
        raise ValueError(f"whp {stage}: --forget_data {data.forget_data}: too short, no block of 2 tokens or more "
                         "to train on")
    logger.info("whp %s: forget text in %s", stage, block_summary(blocks, max_length))
    return blocks


# ---------------------------------------------------------------------------------------------------------- stages


def reinforce(data: DataArguments, model_args: ModelConfig, args, overwrite: bool = False, callbacks=None) -> str:
    """Stage 1: train the reinforced adapter on the forget target (see
    [`whp_trainer.reinforce`][whp_trainer.reinforce]); ``callbacks`` go to its trainer."""
    from .reinforce import train_reinforced_adapter

    require_data(data.forget_data, "forget_data", "reinforce")
    if not args.max_length:
        raise ValueError("whp reinforce: --max_length is required (the length of the blocks trained on)")
    model_config = require_model(model_args, "reinforce", args.trust_remote_code)
    check_max_length(model_config, args.max_length, "reinforce")
    forget = data_digest(data.forget_data, data.forget_data_config, data.forget_data_split)
    retain_weight = args.retain_weight
    if retain_weight and not data.retain_data:
        raise ValueError("whp reinforce: --retain_weight needs --retain_data (the ordinary text the reinforced model "
                         "keeps as the base reads it)")
    retain = data_digest(require_data(data.retain_data, "retain_data", "reinforce"), data.retain_data_config,
                         data.retain_data_split) if retain_weight else None
    print_ = fingerprint("reinforce", args, model_args, model_weights_digest(model_args.model_name_or_path), forget,
                         data.text_field, *block_options(data), *([retain] if retain else []),
                         added=REINFORCE_ADDED)
    if not begin_stage(args.output_dir, "reinforce", print_, overwrite):
        return args.output_dir
    texts = data.forget_texts()
    tokenizer = load_tokenizer(model_args, args.trust_remote_code)
    check_tokenizer_fits(model_config, tokenizer, "reinforce")
    blocks = training_blocks(texts, tokenizer, args.max_length, "reinforce", data)
    args.resume_from_checkpoint = last_complete_checkpoint(args.output_dir)
    model = load_base_model(model_args, args.trust_remote_code)
    train_reinforced_adapter(model, tokenizer, blocks, lora_config(model_args), args, callbacks=callbacks,
                             retain_dataset=data.retain_texts()["text"] if retain_weight else None)
    tokenizer.save_pretrained(args.output_dir)
    finish_stage(args.output_dir, "reinforce", print_)
    return args.output_dir


def unlearn(data: DataArguments, model_args: ModelConfig, args: UnlearnConfig, overwrite: bool = False) -> str:
    """Stages 2–4: unlearn with the reinforced adapter and the anchor dictionary (either may be left out)."""
    from .evaluation.knowledge import GENERAL_KNOWLEDGE
    from .evaluation.markdown import stopping_summary
    from .evaluation.probes import load_probes
    from .trainer import UnlearnTrainer

    require_data(data.forget_data, "forget_data", "unlearn")
    model_config = require_model(model_args, "unlearn", args.trust_remote_code)
    check_max_length(model_config, args.max_length, "unlearn")
    reinforced = require_adapter(data.reinforced_adapter, "reinforced_adapter", "unlearn") if data.reinforced_adapter else None
    anchors = AnchorDictionary.load(require_path(data.anchors, "anchors", "unlearn")) if data.anchors else None
    if reinforced is None and anchors is None:
        raise ValueError("whp unlearn: give --reinforced_adapter, --anchors, or both")
    probes = load_probes(require_path(data.probes, "probes", "unlearn")) if data.probes else None
    retain = require_data(data.retain_data, "retain_data", "unlearn") if data.retain_data else None
    if args.retain_weight and retain is None:
        raise ValueError("whp unlearn: --retain_weight needs --retain_data (the retain text to keep)")
    if args.auto:
        check_auto_inputs(args, reinforced, retain, probes, anchors)
    print_ = fingerprint(
        "unlearn", args, model_args, model_weights_digest(model_args.model_name_or_path), data_digest(data.forget_data, data.forget_data_config, data.forget_data_split),
        file_digest(reinforced), anchors and anchors.content_hash, probes,
        data_digest(retain, data.retain_data_config, data.retain_data_split), *block_options(data),
        *((data_digest(args.holdout_data, None, "train"), data_digest(args.budget_data, None, "train"),
           file_digest(args.oracle_model), data_digest(args.neighbour_knowledge, None, "train")
           or file_digest(GENERAL_KNOWLEDGE)) if args.auto else ()),
        *((data_digest(args.forget_knowledge, None, "train"),) if args.auto and args.forget_knowledge else ()),
        added=UNLEARN_ADDED,
    )
    if not begin_stage(args.output_dir, "unlearn", print_, overwrite):
        return args.output_dir
    texts = data.forget_texts()
    tokenizer = load_tokenizer(model_args, args.trust_remote_code)
    check_tokenizer_fits(model_config, tokenizer, "unlearn")
    blocks = training_blocks(texts, tokenizer, args.max_length, "unlearn", data)
    collator = collator_for(tokenizer, anchors, args)  # compiles the dictionary: its errors come before the model
    check_anchor_coverage(collator, blocks)
    check_loss_positions(collator, blocks)
    choice, inputs = None, None
    if args.auto:  # reinforce (stronger if needed) -> sweep -> the α; the student then stops at the targets
        inputs = auto_inputs(data, args, tokenizer, texts["text"], probes, anchors)
        choice = choose_auto_alpha(data, model_args, args, tokenizer, inputs, anchors, reinforced, overwrite)
        args.alpha, reinforced = choice["alpha"], Path(choice["reinforced_adapter"])
    trainer = UnlearnTrainer(
        model=load_base_model(model_args, args.trust_remote_code),
        args=args,
        reinforced_adapter=reinforced,
        peft_config=lora_config(model_args),
        anchors=anchors,
        data_collator=collator,
        train_dataset=blocks,
        processing_class=tokenizer,
        retain_dataset=retain_training(data, args, inputs),
    )
    trainer.dataset_description = data.dataset_description
    trainer.dataset_ids = data.hub_datasets()
    if probes:  # its measurements go to the trackers and to trainer_state.json's log_history, for the report
        retain_blocks = text_blocks(data.retain_texts()["text"], tokenizer, args.max_length) if retain else None
        familiarity_monitor(trainer, probes, retain_blocks)
    stopping = stop_at_targets(trainer, choice, inputs, args, tokenizer) if choice else None
    initial = adapter_weights(trainer.model, args.unlearn_adapter_name)
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir))
    if stopping:
        trainer.auto_choice = {**choice, "neighbour_knowledge": inputs.neighbour_source,
                               "stopping": {**stopping.decision, "history": stopping.history}}
        print(f"whp unlearn: alpha auto: {stopping_summary(stopping.decision)}", flush=True)
    trainer.save_model()
    if stopping and trainer.args.should_save:
        record_what_the_rule_read(args.output_dir, inputs, args)
    trainer.accelerator.wait_for_everyone()  # every process reads the adapter the main one wrote
    check_adapter_trained(initial, args.output_dir, "whp unlearn")
    trainer.save_state()  # trainer_state.json: the log history, with the familiarity curves
    if stopping:
        check_unlearned(stopping.decision, args)
    finish_stage(args.output_dir, "unlearn", print_)
    return args.output_dir


def evaluate(data: DataArguments, model_args: ModelConfig, config, overwrite: bool = False) -> str:
    """``whp evaluate``: base, reinforced and unlearned roles of one base measured side by side, with the oracle
    (``--oracle_model``) and the generic-logit teacher, into ``config.output_dir`` (an
    [`EvaluateConfig`][whp_trainer.evaluation.EvaluateConfig]); returns that folder."""
    from .evaluation import evaluate_model, write_report
    from .evaluation.callback import read_probe_names
    from .evaluation.knowledge import GENERAL_KNOWLEDGE, general_knowledge, load_knowledge, load_qa
    from .evaluation.probes import build_probes, load_probes, write_probes
    from .evaluation.trackers import log_to_trackers

    model_config = require_model(model_args, "evaluate", config.trust_remote_code)
    adapters = evaluation_adapters(data, config.roles, teacher=bool(config.teacher_alphas))
    auto = (read_record(data.unlearned_adapter) or {}).get("auto") if data.unlearned_adapter else None
    config = with_the_runs_teacher(config, auto, "reinforced" in adapters and data.reinforced_adapter is None)
    read_by_the_rule = rule_sample(data.unlearned_adapter, config)
    forget = data_digest(require_data(data.forget_data, "forget_data", "evaluate"), data.forget_data_config,
                         data.forget_data_split)
    retain = data_digest(require_data(data.retain_data, "retain_data", "evaluate"), data.retain_data_config,
                         data.retain_data_split)
    anchors = AnchorDictionary.load(require_path(data.anchors, "anchors", "evaluate")) if data.anchors else None
    probes_file = require_path(data.probes, "probes", "evaluate") if data.probes else None
    if probes_file is None and anchors is None:
        raise ValueError("whp evaluate: give --probes, or --anchors to build probes from --forget_data")
    references = {name: require_path(getattr(config, name), name, "evaluate") if getattr(config, name) else None
                  for name in EVALUATE_REFERENCES}
    qa = {name: load_qa(references[name]) if references[name] else None for name in EVALUATE_QA}
    knowledge = {name: load_knowledge(references[name]) if references[name] else None for name in EVALUATE_KNOWLEDGE}
    knowledge["neighbour_knowledge"] = knowledge["neighbour_knowledge"] or general_knowledge(anchors)
    paraphrased = load_probes(references["paraphrased_probes"]) if references["paraphrased_probes"] else None
    relearn = load_texts(references["relearn_data"], data.text_field)["text"] if references["relearn_data"] else None
    if references["oracle_model"]:
        require_full_model(references["oracle_model"], model_config, "oracle_model", "evaluate")
        require_model(naming(model_args, references["oracle_model"]), "evaluate", config.trust_remote_code)
        require_same_tokenizer(model_args, references["oracle_model"])
    print_ = fingerprint(
        "evaluate", config, model_args, model_weights_digest(model_args.model_name_or_path), data.text_field,
        data.retain_text_field, anchors and anchors.content_hash, forget, retain, *block_options(data),
        *(file_digest(path) for path in (probes_file, *adapters.values(), *references.values())),
        sorted(adapters), *(() if references["neighbour_knowledge"] else (file_digest(GENERAL_KNOWLEDGE),)),
        added=EVALUATE_ADDED,
    )
    if config.lm_eval_tasks:  # a misspelt task must not wait for the other measurements
        from .evaluation.harness import check_tasks

        check_tasks(config.lm_eval_tasks, config.lm_eval_include_path)
    if not begin_stage(config.output_dir, "evaluate", print_, overwrite):
        return config.output_dir
    forget_texts = data.forget_texts()["text"]
    if probes_file:
        probes = load_probes(probes_file)
    else:
        probes = build_probes(forget_texts, anchors, max_probes=config.max_probes, seed=config.seed)
    if not probes:
        raise ValueError("whp evaluate: no anchor occurs in --forget_data with enough words before it; give --probes")
    write_probes(Path(config.output_dir) / "probes.json", probes)  # the probes measured, for the record
    tokenizer = load_tokenizer(model_args, config.trust_remote_code)
    model = with_adapters(load_base_model(model_args, config.trust_remote_code), adapters)
    roles = {role: None if role == "base" else role for role in config.roles if role == "base" or role in adapters}
    oracle = None
    if references["oracle_model"]:
        oracle = load_base_model(naming(model_args, references["oracle_model"]))
    full_precision = {}
    if (model_args.load_in_4bit or model_args.load_in_8bit) and config.full_precision_attack:  # adapters on it too
        unquantized = dataclasses.replace(model_args, load_in_4bit=False, load_in_8bit=False)
        full_precision["full_precision_base"] = load_base_model(unquantized, config.trust_remote_code)
        if oracle is not None:
            full_precision["full_precision_oracle"] = load_base_model(dataclasses.replace(
                unquantized, model_name_or_path=str(references["oracle_model"])))
    holdout = None
    if references["holdout_data"]:  # documents of the forget data's kind, read as the forget data is
        holdout = data.texts(str(references["holdout_data"]), data.text_field)["text"]
    results = evaluate_model(
        model, tokenizer, config, probes, forget_texts, data.retain_texts()["text"], anchors, roles,
        oracle=oracle, holdout_texts=holdout, knowledge_qa=qa["knowledge_qa"],
        knowledge_shots=qa["knowledge_qa_shots"], retain_qa=qa["retain_qa"], **knowledge, relearn_texts=relearn,
        paraphrased_probes=paraphrased, **full_precision, rule_sample=read_by_the_rule,
    )
    write_report(results, config.output_dir, history=unlearning_history(data.unlearned_adapter), config=config,
                 auto=auto,
                 probe_names=read_probe_names(data.unlearned_adapter),
                 measured_adapters={role: adapter_digest(path) for role, path in adapters.items()})
    log_to_trackers(results, config.report_to, config.output_dir, config.run_name, model,
                    plots=sorted(Path(config.output_dir).glob("*.png")))
    finish_stage(config.output_dir, "evaluate", print_)
    return config.output_dir


def rule_sample(unlearned: str | None, config) -> dict[str, set[str]] | None:
    """What the stopping rule of the unlearning run in ``unlearned`` read (digests of its samples, see
    `evaluation.runner.READ_BY_RULE`), for the evaluation to read others; None when it recorded nothing. Membership
    blocks of another length than the evaluation's cannot be told apart: left out, with a warning."""
    rule = recorded_rule_sample(unlearned)
    if rule is None:
        return None
    blocks = {"forget", "holdout"} & set(rule)
    if blocks and rule["max_length"] != config.max_length:
        logger.warning("whp evaluate: alpha auto's stopping rule read membership blocks of %d tokens and the "
                       "evaluation cuts blocks of %d (--max_length): it cannot read membership apart from them, and "
                       "the unlearned model's membership AUC may read nearer the target than on new text",
                       rule["max_length"], config.max_length)
    return {name: set(digests) for name, digests in rule.items()
            if name != "max_length" and (name not in blocks or rule["max_length"] == config.max_length)}


EVALUATE_QA = ("knowledge_qa", "knowledge_qa_shots", "retain_qa")  # EvaluateConfig fields: question/answer files
EVALUATE_KNOWLEDGE = ("forget_knowledge", "neighbour_knowledge")  # EvaluateConfig fields: knowledge rows
EVALUATE_REFERENCES = ("oracle_model", "holdout_data", *EVALUATE_QA, *EVALUATE_KNOWLEDGE, "relearn_data",
                       "paraphrased_probes")


def require_full_model(path: Path, model_config, argument: str, stage: str) -> None:
    """A folder that holds a whole model (its config.json, no adapter), or a ``.gguf`` file, with the vocabulary of
    ``model_config``: read from its config, before any weights load. An adapter folder would load as its base plus
    the adapter."""
    from transformers import AutoConfig

    path = Path(path)
    gguf_file = path.name if path.suffix == ".gguf" and path.is_file() else None  # a whole model in one file
    if gguf_file is None and (path / "adapter_config.json").is_file():
        raise ValueError(f"whp {stage}: --{argument} {path} is a PEFT adapter (adapter_config.json), not a full model; "
                         "give the folder of a whole model trained without the forget text")
    if gguf_file is None and not (path / "config.json").is_file():
        raise ValueError(f"whp {stage}: --{argument} {path} holds no config.json: not a model folder")
    config = AutoConfig.from_pretrained(str(path.parent if gguf_file else path), gguf_file=gguf_file)
    theirs = getattr(config.get_text_config(), "vocab_size", None)
    mine = getattr(model_config.get_text_config(), "vocab_size", None)
    if theirs != mine:
        raise ValueError(f"whp {stage}: --{argument} {path} has a vocabulary of {theirs} tokens, "
                         f"--model_name_or_path {mine}: the oracle must share the model's vocabulary")


def require_same_tokenizer(model_args: ModelConfig, oracle: Path) -> None:
    """The oracle must read text as the evaluated model does: the same vocabulary, else a clear error."""
    mine = load_tokenizer(model_args).get_vocab()
    theirs = load_tokenizer(naming(model_args, oracle)).get_vocab()
    if mine != theirs:
        raise ValueError(f"whp evaluate: --oracle_model {oracle} has another tokenizer than --model_name_or_path "
                         f"({len(theirs)} vs {len(mine)} tokens, or other ids): the oracle must share it")


def unlearning_history(unlearned_adapter: str | None) -> list[dict] | None:
    """The familiarity measured while unlearning, from the unlearn output's ``trainer_state.json`` (if any)."""
    from .evaluation.callback import history_from_log_history

    state_file = Path(unlearned_adapter or "") / TRAINER_STATE_NAME
    if not unlearned_adapter or not state_file.is_file():
        return None
    return history_from_log_history(read_json_object(state_file).get("log_history", [])) or None


def evaluation_adapters(data: DataArguments, roles: list[str], teacher: bool = False) -> dict[str, Path]:
    """Role -> adapter folder of the roles asked for; the reinforced adapter defaults to the one the unlearning run
    recorded (checked against its hash), and is loaded for the ``teacher`` too. A role without its adapter is
    skipped with a note; none at all is an error."""
    unlearned = require_adapter(data.unlearned_adapter, "unlearned_adapter", "evaluate") if data.unlearned_adapter else None
    if unlearned is not None:  # a reinforce output or an unfinished run is not "unlearned"; an adapter made elsewhere is
        require_stage_output(unlearned, ("unlearn",), "whp evaluate --unlearned_adapter", unmarked=True)
    reinforced = data.reinforced_adapter
    if reinforced is None and unlearned is not None:
        reinforced = recorded_reinforced_adapter(unlearned)
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


def with_the_runs_teacher(config, auto: dict | None, recorded: bool):
    """``config`` with the α an ``alpha: auto`` run chose (its record's ``auto``) among its teacher columns, when the
    reinforced adapter measured is the one that run recorded (``recorded``: none was given, so `evaluation_adapters`
    took and checked the record's): the teacher its student followed, beside the fixed ones asked for (none when none
    is)."""
    chosen = (auto or {}).get("alpha") if recorded else None
    if chosen is None or not config.teacher_alphas or chosen in config.teacher_alphas:
        return config
    return dataclasses.replace(config, teacher_alphas=sorted([*config.teacher_alphas, chosen]))


def familiarity_monitor(trainer, probes: list[dict], retain_texts: list[str] | None):
    """A [`FamiliarityCallback`][whp_trainer.evaluation.FamiliarityCallback] on the trainer, every ``logging_steps``:
    familiarity on (at most) the first ``MONITOR_LIMIT`` probes, retain perplexity on as many retain rows, and the
    next-token probabilities of the first three probes' targets (the paper's curves)."""
    from .evaluation import FamiliarityCallback

    probes = probes[:MONITOR_LIMIT]
    retain_texts = list(retain_texts[:MONITOR_LIMIT]) if retain_texts is not None else None
    monitor = FamiliarityCallback(
        trainer, probes, retain_texts, next_token_prompts={probe["prompt"]: [probe["target"]] for probe in probes[:3]},
        every_n_steps=max(1, int(trainer.args.logging_steps)), max_length=trainer.args.max_length,
    )
    trainer.add_callback(monitor)
    return monitor


def discover(data: DataArguments, model_args: ModelConfig, args: DiscoverArguments, overwrite: bool = False) -> str:
    """Write candidate anchors to ``args.output`` for review (never over a file unless ``overwrite``)."""
    from .chat import EndpointChat, EndpointError, LocalChat, check_reachable
    from .discover import boosted_expressions, candidates_from_llm, merge_candidates, write_candidates

    require_data(data.forget_data, "forget_data", "anchors")
    check_candidates_output(Path(args.output), data, overwrite)
    statistics = args.method in ("statistics", "both")
    if statistics:
        require_adapter(data.reinforced_adapter, "reinforced_adapter", "anchors")
        require_data(data.retain_data, "retain_data", "anchors")
    if not statistics and not args.llm_url:
        require_model(model_args, "anchors", args.trust_remote_code)
    if args.method in ("llm", "both") and args.llm_url:
        try:
            check_reachable(args.llm_url)
        except EndpointError as error:
            raise ConnectionError(f"whp anchors: --llm_url {error}") from None
    target = data.forget_texts()["text"]
    found = []
    model = tokenizer = None
    if statistics or not args.llm_url:
        from peft import PeftModel

        tokenizer = load_tokenizer(model_args, args.trust_remote_code)
        model = load_base_model(model_args, args.trust_remote_code)
    if statistics:
        model = PeftModel.from_pretrained(model, data.reinforced_adapter, adapter_name="reinforced")
        reference = data.retain_texts()["text"]
        found.append(boosted_expressions(model, tokenizer, target, reference, top_k=args.top_k, max_words=args.max_words))
    if args.method in ("llm", "both"):
        if args.llm_url:
            generate = EndpointChat(args.llm_url, args.llm_model or "default", os.environ.get(args.llm_api_key_env))
        else:  # the base, without the reinforced adapter
            generate = LocalChat(model.unload() if statistics else model, tokenizer)
        found.append(candidates_from_llm(target, generate))
    write_candidates(args.output, merge_candidates(*found))
    return args.output


def check_candidates_output(output: Path, data: DataArguments, overwrite: bool) -> None:
    """Discovery writes a new file, or (``overwrite``) replaces candidates it wrote that nobody edited since: never an
    input of the run, never a dictionary or a review."""
    from .discover import is_unedited_candidates

    for argument in ("forget_data", "retain_data", "anchors", "probes", "reinforced_adapter", "unlearned_adapter"):
        value = getattr(data, argument)
        if value and Path(value).exists() and (Path(value).resolve() == output.resolve()
                                               or Path(value).resolve() in output.resolve().parents):
            raise FileExistsError(f"whp anchors: --output {output} is (or is inside) the run's --{argument}; "
                                  "choose a new file")
    if output.exists() and not overwrite:
        raise FileExistsError(f"whp anchors: {output} exists (it may hold your review); pass --overwrite")
    if output.exists() and not is_unedited_candidates(output):
        raise FileExistsError(
            f"whp anchors: {output} was not written by whp anchors, or was edited since (a dictionary, or your "
            "review): --overwrite replaces only candidates nobody edited. Choose a new --output"
        )


def export(args: PublishArguments, overwrite: bool = False) -> str:
    """Merge the adapter in ``args.folder`` into its base, into ``args.merged_dir`` (replacing an earlier export
    there with ``overwrite``)."""
    from .hub import export_merged

    adapter = require_adapter(args.folder, "folder", "export")
    if not args.merged_dir:
        raise ValueError("whp export: --merged_dir is required")
    return str(export_merged(args.base_model, adapter, args.merged_dir, overwrite=overwrite,
                             trust_remote_code=args.trust_remote_code, gguf_file=args.gguf_file))


def hub_transport_error() -> type[Exception]:
    """The HTTP client's base error that ``huggingface_hub`` lets through (connection refused, time-out)."""
    import huggingface_hub.utils._http as http

    client = getattr(http, "httpx2", None) or getattr(http, "httpx", None)
    return getattr(client, "HTTPError", ConnectionError)


def push(args: PublishArguments):
    from huggingface_hub.errors import HfHubHTTPError

    from .hub import push_to_hub

    folder = require_path(args.folder, "folder", "push")
    try:
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
            token=args.token,
        )
    except (HfHubHTTPError, ConnectionError, hub_transport_error()) as error:  # offline, unreachable, refused
        raise ConnectionError(f"whp push: the Hub did not take the upload to {args.repo_id}: {error}") from None
