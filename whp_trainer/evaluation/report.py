"""``whp evaluate``: the base, reinforced and unlearned roles of one model measured side by side, and the report.

:func:`evaluate_model` measures every role on ONE ``PeftModel`` (adapters switched, never copied);
:func:`write_report` writes ``report.json`` (its ``results`` are the ``eval_results`` of
:func:`whp_trainer.hub.build_model_card`), ``report.md`` and the plots.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

from ..hub import framework_versions, package_version
from ..models import BASELINE, teacher_pass
from .callback import FAMILIARITY_KEY, RETAIN_PERPLEXITY_KEY, next_token_metric, parse_next_token_key
from .familiarity import completion_familiarity, next_token_probabilities, sample_completions, token_familiarity
from .judges import CATEGORIES, AnchorJudge, LLMJudge, openai_judge
from .knowledge import first_mention_probes, knowledge_memorization
from .membership import MUSE_K, membership_auc, privleak
from .memorization import verbatim_memorization
from .retain import perplexity
from .robustness import hint_probes, relearning_probe
from .teacher import GenericTeacher

logger = logging.getLogger(__name__)

ROLES = ("base", "reinforced", "unlearned")
ORACLE = "oracle"  # the column of --oracle_model: a model that never read the target
TEACHER = "teacher"  # columns "teacher α=5": the generic-logit teacher evaluated as a model
REINFORCED_ADAPTER = "reinforced"  # the adapter the teacher boosts against (as whp evaluate names it)
RELEARN_ADAPTER = "whp_relearn"  # the fresh adapter through which a role without one (base, oracle) relearns
COLUMN_ORDER = ("base", ORACLE, "reinforced", TEACHER, "unlearned")
JUDGES = ("anchors", "llm")
COMPARED = ("unlearned", "base")  # the report's change column: the first role minus the second
# Forget metrics compared with the oracle: metric -> (tolerance of "at the oracle", relative?, more = more knowledge?)
ORACLE_METRICS = {
    "familiarity_token": (0.02, False, True),
    "familiarity_completion": (0.02, False, True),
    "familiarity_token_hints": (0.02, False, True),
    "familiarity_token_relearned": (0.05, False, True),
    "knowmem_forget": (0.02, False, True),
    "entity_first_mention": (0.02, False, True),
    "verbmem_forget": (0.02, False, True),
    "memorization_rouge_l": (0.02, False, True),
    "memorization_exact": (0.02, False, True),
    "membership_auc_mink": (0.05, False, True),
    "membership_auc_minkpp": (0.05, False, True),
    "forget_perplexity": (0.03, True, False),
}
ORACLE_GOAL = (" The goal of every forget metric is the oracle's value (a model that never read the target): above "
               "it, knowledge is left; below it, the model is damaged.")
RETAIN_TOLERANCE = 0.03  # retain perplexity within 3 % of the base's counts as ability kept
METRIC_HELP = {
    "familiarity_token": "mean probability of each probe's target first token after its prompt (lower = more "
    "forgotten; the paper's token-probability familiarity)",
    "familiarity_completion": "share of sampled probe completions the judge finds familiar with the target (lower = "
    "more forgotten; the paper's completion-based familiarity)",
    "familiarity_token_hints": "token familiarity when the prompt carries hints (other anchors of the target): "
    "in-context re-extraction (lower = more robust)",
    "familiarity_token_relearned": "token familiarity after a few fine-tuning steps on forget text, of the role's "
    "adapter, or of a fresh one of the same shape for the base and the oracle: relearning (lower = more robust; "
    "the weights are restored afterwards)",
    "memorization_rouge_l": "ROUGE-L of greedy continuations of forget passages against the true text (lower = less "
    "verbatim memorization)",
    "memorization_exact": "share of continuation tokens reproduced exactly (lower = less verbatim memorization)",
    "verbmem_forget": "MUSE's VerbMem: ROUGE-L F1 (rouge-score, no stemming) of greedy continuations of forget "
    "passages against the true continuation (lower = less verbatim memorization; goal: the oracle's)",
    "knowmem_forget": "MUSE's KnowMem on the forget target: ROUGE-L recall of the true answer in the model's greedy "
    "answer to each --knowledge_qa question (goal: the oracle's)",
    "knowmem_retain": "KnowMem on --retain_qa questions (should stay near the base's: retained knowledge)",
    "entity_first_mention": "mean probability of an entity of the dictionary where a forget passage first names it "
    "(later mentions could be copied from the context; goal: the oracle's)",
    "membership_auc_mink": "AUC of telling forget texts from --holdout_data texts by Min-K% (k = --membership_k) "
    "log-probability: 0.5 = no membership signal (goal: the oracle's)",
    "membership_auc_minkpp": "the same AUC by the Min-K%++ score (goal: the oracle's)",
    "privleak_mink": "MUSE's PrivLeak from the Min-K% AUC, in % relative to the oracle: 0 = like the oracle, negative "
    "= the forget text is still recognised, positive = over-unlearned",
    "privleak_minkpp": "PrivLeak from the Min-K%++ AUC (%)",
    "retain_perplexity": "perplexity of ordinary retain text (should stay near the base's: retained ability)",
    "forget_perplexity": "perplexity of the forget text (higher = the text is less expected)",
}
METRIC_ORDER = (  # the report's rows: familiarity first, then memorization, retained ability, next tokens
    "familiarity_token", "familiarity_completion", "familiarity_completion_", "familiarity_token_hints",
    "familiarity_token_relearned", "knowmem_forget", "entity_first_mention", "verbmem_forget", "memorization_rouge_l",
    "memorization_exact", "membership_auc_mink", "membership_auc_minkpp", "privleak_mink", "privleak_minkpp",
    "forget_perplexity", "retain_perplexity", "knowmem_retain", "lm_eval_", "p_next[",
)
PREFIX_HELP = {
    "familiarity_completion_": "share of completions the judge put in this category",
    "lm_eval_": "lm-evaluation-harness score (should stay near the base's: retained ability)",
}


@dataclass
class EvaluateConfig:
    """``whp evaluate``: what is measured, on how much data, for which roles."""

    output_dir: str = field(default="whp-evaluation", metadata={"help": "Where report.json, report.md and plots go."})
    roles: list[str] = field(
        default_factory=lambda: list(ROLES),
        metadata={"help": "Roles to measure among base, reinforced, unlearned (one without its adapter is skipped)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Batch size of every measurement."})
    max_length: int = field(default=512, metadata={"help": "Longest text, in tokens, for perplexities and relearning."})
    max_probes: int = field(default=300, metadata={"help": "Most familiarity probes used (built or loaded)."})
    completions: int = field(
        default=300, metadata={"help": "Probe prompts completed by sampling and judged (the paper: 300); 0 = skip."}
    )
    max_new_tokens: int = field(default=24, metadata={"help": "Length of each sampled completion, in tokens."})
    judge: str = field(
        default="anchors",
        metadata={"help": "'anchors' (anchor terms in the completion) or 'llm' (a model grades it).",
                  "choices": list(JUDGES)},
    )
    judge_url: str | None = field(
        default=None, metadata={"help": "llm judge: URL of an OpenAI-compatible server (…/v1); else the local base."}
    )
    judge_model: str | None = field(default=None, metadata={"help": "llm judge: model name sent to the server."})
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "llm judge: environment variable holding the API key."}
    )
    memorization_passages: int = field(
        default=100, metadata={"help": "Forget passages for verbatim memorization; 0 = skip."}
    )
    prompt_tokens: int = field(default=32, metadata={"help": "Memorization: tokens of the passage given as prompt."})
    continuation_tokens: int = field(
        default=32, metadata={"help": "Memorization: tokens of the true continuation compared with the model's."}
    )
    retain_texts: int = field(
        default=200, metadata={"help": "Paragraphs of retain text (and as many of forget text) for perplexity; 0: all."}
    )
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "lm-evaluation-harness tasks (e.g. arc_challenge piqa; needs lm-eval); empty = skip."},
    )
    lm_eval_limit: int | None = field(default=None, metadata={"help": "lm-eval: examples per task (default: all)."})
    lm_eval_num_fewshot: int | None = field(
        default=None, metadata={"help": "lm-eval: few-shot examples per prompt (default: each task's, zero-shot for "
                                "the paper's six)."}
    )
    lm_eval_include_path: str | None = field(
        default=None, metadata={"help": "lm-eval: a folder of extra task configs (YAML), e.g. tasks on local data."}
    )
    relearn_steps: int = field(
        default=10, metadata={"help": "Relearning probe: fine-tuning steps on forget text; 0 = skip."}
    )
    relearn_learning_rate: float = field(default=1e-4, metadata={"help": "Relearning probe: learning rate."})
    hints: bool = field(default=True, metadata={"help": "Also measure token familiarity with in-context hints."})
    next_token_prompts: dict | str | None = field(
        default=None,
        metadata={"help": "Prompt -> next tokens whose probability is reported, as a YAML mapping or JSON, e.g. "
                  "'{\"Harry Potter studies\": [\" magic\", \" the\"]}'."},
    )
    oracle_model: str | None = field(
        default=None,
        metadata={"help": "A model of the same tokenizer that never read the forget target (MUSE's 'retrain'): "
                  "measured as the 'oracle' column, the reference every forget metric is compared with."},
    )
    holdout_data: str | None = field(
        default=None,
        metadata={"help": "Texts of the same kind as the forget target that no model read (.txt, folder, "
                  ".json/.jsonl): membership AUC (Min-K, Min-K++) of forget vs holdout; PrivLeak with the oracle."},
    )
    membership_texts: int = field(
        default=200, metadata={"help": "Forget and holdout paragraphs (each) for the membership AUC; 0: all."}
    )
    membership_k: float = field(
        default=MUSE_K, metadata={"help": "Share k of least likely tokens in Min-K and Min-K++ membership scores (MUSE: 0.4)."}
    )
    knowledge_qa: str | None = field(
        default=None, metadata={"help": "Questions about the forget target with their answers (.json/.jsonl of "
                                "{question, answer}): MUSE's KnowMem."}
    )
    knowledge_qa_shots: str | None = field(
        default=None,
        metadata={"help": "Few-shot {question, answer} examples put before each question (MUSE's ICL file)."},
    )
    retain_qa: str | None = field(
        default=None, metadata={"help": "Questions about retained knowledge (.json/.jsonl): KnowMem on retain."}
    )
    knowmem_max_new_tokens: int = field(default=32, metadata={"help": "KnowMem: longest generated answer (MUSE: 32)."})
    teacher_alphas: list[float] = field(
        default_factory=lambda: [5.0],
        metadata={"help": "α values at which the generic-logit teacher v_b − α·ReLU(v_r − v_b) is measured as a "
                  "model (needs the reinforced adapter); empty = skip."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of sampling, passage choice and hints."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow a base model and tokenizer that ship their own code from the Hub."}
    )
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "Trackers to send the results and plots to, as the Trainer's report_to: tensorboard, "
                  "wandb, trackio, … (one or more), all, or none."},
    )
    run_name: str | None = field(default=None, metadata={"help": "The trackers' run name."})
    plots: bool = field(default=True, metadata={"help": "Write PNG plots beside the report."})

    def __post_init__(self):
        if not self.roles or set(self.roles) - set(ROLES) or len(set(self.roles)) != len(self.roles):
            raise ValueError(f"roles={self.roles}: expected distinct roles among {list(ROLES)}")
        if self.judge not in JUDGES:
            raise ValueError(f"judge={self.judge!r}: expected one of {list(JUDGES)}")
        positive = ("batch_size", "max_length", "max_probes", "max_new_tokens", "prompt_tokens", "continuation_tokens")
        for name in positive:
            _check(self, name, getattr(self, name) >= 1, "must be at least 1")
        for name in ("completions", "memorization_passages", "retain_texts", "relearn_steps", "membership_texts"):
            _check(self, name, getattr(self, name) >= 0, "must be 0 (skip) or more")
        _check(self, "lm_eval_limit", self.lm_eval_limit is None or self.lm_eval_limit >= 1, "must be at least 1")
        _check(self, "relearn_learning_rate", self.relearn_learning_rate > 0, "must be positive")
        _check(self, "membership_k", 0 < self.membership_k <= 1, "must be in (0, 1]")
        _check(self, "knowmem_max_new_tokens", self.knowmem_max_new_tokens >= 1, "must be at least 1")
        _check(self, "teacher_alphas", all(alpha >= 0 for alpha in self.teacher_alphas), "must be >= 0")
        self.next_token_prompts = parsed_next_token_prompts(self.next_token_prompts)
        self.report_to = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        unknown = set(self.report_to) - {"all", "none", *INTEGRATION_TO_CALLBACK}
        _check(self, "report_to", not unknown, f"unknown tracker(s) {sorted(unknown)}; expected among "
               f"{sorted(INTEGRATION_TO_CALLBACK)}, all or none")


def _check(config, name: str, valid: bool, requirement: str) -> None:
    if not valid:
        raise ValueError(f"{name}={getattr(config, name)!r}: {requirement}")


def parsed_next_token_prompts(value: dict | str | None) -> dict[str, list[str]] | None:
    """``next_token_prompts`` as prompt -> list of tokens, from a mapping or its JSON (a single token may be a str)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"next_token_prompts: not valid JSON: {error}") from error
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"next_token_prompts={value!r}: expected a mapping prompt -> tokens")
    parsed = {str(prompt): [tokens] if isinstance(tokens, str) else tokens for prompt, tokens in value.items()}
    for prompt, tokens in parsed.items():
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError(f"next_token_prompts[{prompt!r}]={tokens!r}: expected a non-empty list of tokens")
    return parsed


# ------------------------------------------------------------------------------------------------------ measuring


@dataclass
class EvaluationData:
    """What every role is measured on (built once by :func:`evaluate_model`)."""

    probes: list[dict]
    texts: dict[str, list[str]]  # "forget", "retain": perplexity paragraphs
    passages: list[str]  # memorization
    hinted: list[dict] | None
    prompts: list[str]  # completions to judge
    first_mentions: list[dict]
    membership: tuple[list[str], list[str]] | None  # forget, holdout
    knowledge_qa: list[dict] | None
    knowledge_shots: list[dict]
    retain_qa: list[dict] | None


def evaluate_model(
    model,
    tokenizer,
    config: EvaluateConfig,
    probes: list[dict[str, str]],
    forget_texts: list[str],
    retain_texts: list[str],
    dictionary=None,
    roles: dict[str, str | None] | None = None,
    oracle=None,
    holdout_texts: list[str] | None = None,
    knowledge_qa: list[dict] | None = None,
    knowledge_shots: list[dict] | None = None,
    retain_qa: list[dict] | None = None,
) -> dict[str, dict[str, float]]:
    """Measure each role of one ``PeftModel``, the oracle and the generic-logit teacher; return
    ``role -> metric -> value``.

    Args:
        model: a ``PeftModel`` holding the adapters (e.g. named ``"reinforced"`` and ``"unlearned"``).
        tokenizer: its tokenizer.
        config: what to measure (see :class:`EvaluateConfig`).
        probes: ``{"prompt", "target"}`` familiarity probes (the first ``config.max_probes`` are used).
        forget_texts: paragraphs of the forget target (memorization, forget perplexity, relearning, membership).
        retain_texts: paragraphs of ordinary text (retain perplexity).
        dictionary: the ``AnchorDictionary``: the anchor judge's terms, the hints and the entities of
            ``entity_first_mention``; without it these are skipped.
        roles: role -> adapter name, ``None`` for the base with adapters disabled. Default: ``config.roles``, each
            under the adapter of its name (``"base"``: adapters disabled); a role whose adapter the model lacks is
            skipped with a logged note.
        oracle: a model of the same tokenizer that never read the target: the ``"oracle"`` column.
        holdout_texts: texts of the forget target's kind that no model read: membership AUC (and, with the oracle,
            PrivLeak).
        knowledge_qa, knowledge_shots, retain_qa: ``{"question", "answer"}`` pairs: KnowMem on forget (after the
            few-shot examples) and on retain.

    A teacher column ``"teacher α=A"`` is measured for each ``config.teacher_alphas`` when the model holds the
    ``"reinforced"`` adapter. The active adapter, the trainable parameters and the train/eval mode are restored
    afterwards; the oracle relearns through a fresh adapter, removed afterwards.
    """
    roles = default_roles(model, config) if roles is None else roles
    data = evaluation_data(config, probes, forget_texts, retain_texts, dictionary, holdout_texts, knowledge_qa,
                           knowledge_shots, retain_qa)
    judge = make_judge(config, model, tokenizer, dictionary)
    if judge is None:
        data.prompts = []
    subjects = [(role, model, adapter) for role, adapter in roles.items()]
    wrapped = relearnable(oracle, model) if oracle is not None else None
    if wrapped is not None:
        subjects.append((ORACLE, wrapped, BASELINE))
    subjects += teacher_subjects(model, config)
    results = {}
    progress = tqdm(subjects, desc="whp evaluate", unit="role")
    for role, subject, adapter in progress:
        logger.info("whp evaluate: measuring %s", role)

        def doing(what: str, role=role) -> None:  # the metric now measured, on the bar
            progress.set_postfix_str(f"{role}: {what}")

        is_teacher = isinstance(subject, GenericTeacher)
        with contextlib.nullcontext() if is_teacher else teacher_pass(subject, adapter):
            metrics, completions = measure(subject, tokenizer, config, data, lm_eval=not is_teacher, doing=doing)
        if completions:  # judged outside the role: a local judge runs as the base
            doing("judging completions")
            metrics.update(judged(completions, data.prompts, judge))
        if config.relearn_steps and not is_teacher:
            doing("relearning")
            metrics["familiarity_token_relearned"] = relearned_familiarity(subject, tokenizer, config, adapter,
                                                                          data.probes, data.texts["forget"])
        results[role] = {metric: float(value) for metric, value in metrics.items()}
    if wrapped is not None and wrapped is not oracle:
        wrapped.unload()  # the oracle's own modules back in place
    add_privleak(results)
    return {role: results[role] for role in ordered_roles(results)}


def evaluation_data(config, probes, forget_texts, retain_texts, dictionary, holdout_texts, knowledge_qa,
                    knowledge_shots, retain_qa) -> EvaluationData:
    """The samples every role is measured on, drawn once with ``config.seed``."""
    probes = probes[: config.max_probes]
    rng = random.Random(config.seed)
    texts = {"forget": sample(forget_texts, config.retain_texts, rng),
             "retain": sample(retain_texts, config.retain_texts, rng)}
    passages = sample(forget_texts, config.memorization_passages, rng) if config.memorization_passages else []
    hinted = hint_probes(probes, dictionary, seed=config.seed) if config.hints and dictionary is not None else None
    mentions = first_mention_probes(forget_texts, dictionary) if dictionary is not None else []
    membership = None
    if holdout_texts:
        membership = (sample(forget_texts, config.membership_texts, rng),
                      sample(holdout_texts, config.membership_texts, rng))
    return EvaluationData(
        probes=probes, texts=texts, passages=passages, hinted=hinted,
        prompts=[probe["prompt"] for probe in probes[: config.completions]],
        first_mentions=rng.sample(mentions, min(len(mentions), config.max_probes)),
        membership=membership, knowledge_qa=knowledge_qa, knowledge_shots=list(knowledge_shots or []),
        retain_qa=retain_qa,
    )


def teacher_subjects(model, config: EvaluateConfig) -> list[tuple]:
    """``("teacher α=A", GenericTeacher, None)`` for each ``config.teacher_alphas`` (none without the adapter)."""
    if not config.teacher_alphas:
        return []
    if REINFORCED_ADAPTER not in getattr(model, "peft_config", {}):
        logger.warning("whp evaluate: no %r adapter on the model; the teacher is not measured", REINFORCED_ADAPTER)
        return []
    return [(f"{TEACHER} α={alpha:g}", GenericTeacher(model, REINFORCED_ADAPTER, alpha), None)
            for alpha in config.teacher_alphas]


def relearnable(oracle, model):
    """The oracle as a ``PeftModel`` (a zero-initialised adapter of the evaluated adapters' shape, switched off when
    measured), so that it can relearn like the other roles."""
    from peft import PeftModel, get_peft_model

    return oracle if isinstance(oracle, PeftModel) else get_peft_model(oracle, fresh_adapter_config(model))


def fresh_adapter_config(model):
    """A copy of the model's first adapter config (``"unlearned"`` when present), re-initialised and trainable."""
    configs = getattr(model, "peft_config", {})
    if not configs:
        from peft import LoraConfig

        return LoraConfig(target_modules="all-linear", r=8)
    config = copy.deepcopy(configs.get("unlearned") or next(iter(configs.values())))
    config.inference_mode, config.base_model_name_or_path = False, None
    if hasattr(config, "init_lora_weights"):
        config.init_lora_weights = True
    return config


@contextlib.contextmanager
def fresh_adapter(model, seed: int = 0):
    """A zero-initialised adapter (its random half drawn with ``seed``) added for the block (named
    :data:`RELEARN_ADAPTER`) and deleted after it; the active adapter and the trainable parameters are restored."""
    active, trainable = model.active_adapter, [p for p in model.parameters() if p.requires_grad]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.add_adapter(RELEARN_ADAPTER, fresh_adapter_config(model))
    try:
        yield RELEARN_ADAPTER
    finally:
        model.set_adapter(active)
        model.delete_adapter(RELEARN_ADAPTER)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in trainable:
            parameter.requires_grad_(True)


def add_privleak(results: dict[str, dict[str, float]]) -> None:
    """MUSE's PrivLeak of every role against the oracle's membership AUC (when both were measured)."""
    oracle = results.get(ORACLE, {})
    for score in ("mink", "minkpp"):
        key = f"membership_auc_{score}"
        if key not in oracle:
            continue
        for metrics in results.values():
            if key in metrics:
                metrics[f"privleak_{score}"] = privleak(metrics[key], oracle[key])


def default_roles(model, config: EvaluateConfig) -> dict[str, str | None]:
    """``config.roles`` as role -> adapter name, skipping (with a note) roles whose adapter the model lacks."""
    roles = {}
    for role in config.roles:
        if role != "base" and role not in model.peft_config:
            logger.warning("whp evaluate: no %r adapter on the model; the %s role is skipped", role, role)
            continue
        roles[role] = BASELINE if role == "base" else role
    return roles


def sample(texts: list[str], count: int, rng: random.Random) -> list[str]:
    """``count`` of the non-empty ``texts`` chosen at random (all of them when ``count`` is 0 or larger)."""
    texts = [text for text in texts if text.strip()]
    return texts if count == 0 or count >= len(texts) else rng.sample(texts, count)


def measure(model, tokenizer, config: EvaluateConfig, data: EvaluationData, lm_eval: bool = True,
            doing=lambda what: None):
    """The no-grad metrics of the role now active, and its completions of ``data.prompts``; ``doing(what)`` is told
    each metric as it starts."""
    batch, length = config.batch_size, config.max_length
    doing("token familiarity")
    metrics = {"familiarity_token": token_familiarity(model, tokenizer, data.probes, batch_size=batch)}
    if data.hinted is not None:
        doing("familiarity with hints")
        metrics["familiarity_token_hints"] = token_familiarity(model, tokenizer, data.hinted, batch_size=batch)
    if data.first_mentions:
        doing("entities at first mention")
        metrics["entity_first_mention"] = token_familiarity(model, tokenizer, data.first_mentions, batch_size=batch)
    if data.passages:
        doing("verbatim memorization")
        memorized = verbatim_memorization(model, tokenizer, data.passages, prompt_tokens=config.prompt_tokens,
                                          continuation_tokens=config.continuation_tokens, batch_size=batch)
        metrics.update(memorization_rouge_l=memorized["rouge_l"], memorization_exact=memorized["exact_token_accuracy"],
                       verbmem_forget=memorized["verbmem"])
    for name, part in data.texts.items():
        doing(f"{name} perplexity")
        metrics[f"{name}_perplexity"] = perplexity(model, tokenizer, part, max_length=length, batch_size=batch)
    if data.membership:
        doing("membership")
        metrics.update(membership_auc(model, tokenizer, *data.membership, k=config.membership_k, max_length=length,
                                      batch_size=batch))
    knowledge = (("knowmem_forget", data.knowledge_qa, data.knowledge_shots), ("knowmem_retain", data.retain_qa, ()))
    for key, qa, shots in knowledge:
        if qa:
            doing(key)
            metrics[key] = knowledge_memorization(model, tokenizer, qa, shots, config.knowmem_max_new_tokens, batch)
    if config.lm_eval_tasks and lm_eval:
        from .harness import lm_eval_benchmarks

        doing("lm-eval " + " ".join(config.lm_eval_tasks))
        scores = lm_eval_benchmarks(model, tokenizer, tasks=config.lm_eval_tasks, batch_size=batch,
                                    limit=config.lm_eval_limit, num_fewshot=config.lm_eval_num_fewshot,
                                    include_path=config.lm_eval_include_path)
        metrics.update({f"lm_eval_{task}": float(score) for task, score in scores.items()})
    if config.next_token_prompts:
        doing("next-token probabilities")
    for prompt, tokens in (config.next_token_prompts or {}).items():
        probabilities = next_token_probabilities(model, tokenizer, prompt, tokens)
        metrics.update({next_token_metric(prompt, token): p for token, p in probabilities.items()})
    if data.prompts:
        doing("sampling completions")
    completions = sample_completions(model, tokenizer, data.prompts, max_new_tokens=config.max_new_tokens,
                                     seed=config.seed, batch_size=batch) if data.prompts else []
    return metrics, completions


def judged(completions: list[list[str]], prompts: list[str], judge) -> dict[str, float]:
    """The completion familiarity and the share of the judged completions in each category."""
    verdict = completion_familiarity(completions, judge, prompts)
    counts = verdict["counts"]
    total = sum(counts[category] for category in CATEGORIES) or 1
    shares = {f"familiarity_completion_{category}": counts.get(category, 0) / total for category in CATEGORIES}
    return {"familiarity_completion": verdict["score"], **shares}


def make_judge(config: EvaluateConfig, model, tokenizer, dictionary):
    """The completion judge of ``config.judge``; ``None`` (with a note) when completions cannot be judged."""
    if not config.completions:
        return None
    if config.judge == "anchors":
        if dictionary is None:
            logger.warning("whp evaluate: the anchor judge needs the anchor dictionary; completions are not judged")
            return None
        return AnchorJudge(dictionary)
    if config.judge_url:
        return openai_judge(config.judge_url, config.judge_model or "default", os.environ.get(config.judge_api_key_env))
    from ..chat import LocalChat

    # the judge is the base, whatever adapter is active
    return LLMJudge(LocalChat(model, tokenizer, batch_size=config.batch_size, context=lambda: teacher_pass(model, BASELINE)))


def relearned_familiarity(model, tokenizer, config: EvaluateConfig, adapter, probes, forget_texts) -> float:
    """Token familiarity after ``config.relearn_steps`` fine-tuning steps on forget text as ``adapter``; a role
    without an adapter (the base, the oracle) relearns through a fresh one of the same shape."""
    if adapter is BASELINE:
        with fresh_adapter(model, config.seed) as fresh:
            return relearned_familiarity(model, tokenizer, config, fresh, probes, forget_texts)
    with teacher_pass(model, adapter):  # the adapter made trainable; the probe fine-tunes with grad on, then restores
        result = relearning_probe(model, tokenizer, forget_texts, probes, steps=config.relearn_steps,
                                  learning_rate=config.relearn_learning_rate, batch_size=config.batch_size,
                                  max_length=config.max_length)
    return result["after"]


# --------------------------------------------------------------------------------------------------------- report


def write_report(
    results: dict[str, dict[str, float]],
    output_dir: str | os.PathLike,
    history: list[dict] | None = None,
    config: EvaluateConfig | None = None,
) -> Path:
    """Write ``report.json``, ``report.md`` and (``config.plots``, default on) the PNG plots; return ``output_dir``.

    Args:
        results: role -> metric -> value, as :func:`evaluate_model` returns (the card's ``eval_results``).
        output_dir: the folder to write into (created if needed).
        history: :attr:`FamiliarityCallback.history`, for the plots over training steps.
        config: the settings, recorded in ``report.json``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "results": results,
        "settings": None if config is None else dataclasses.asdict(config),
        "versions": {"whp_trainer": package_version("whp_trainer"), **framework_versions()},
        "history": history,
    }
    if ORACLE in results:
        report["oracle_comparison"] = oracle_comparison(results)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (output_dir / "report.md").write_text(markdown_report(results), encoding="utf-8")
    if config is None or config.plots:
        write_plots(results, history, output_dir)
    return output_dir


def ordered_roles(results: dict) -> list[str]:
    """The known roles in their order (base, oracle, reinforced, teachers by α, unlearned), then any other in the
    order given."""

    def rank(role: str):
        kind = TEACHER if role.startswith(f"{TEACHER} α=") else role
        alpha = float(role.split("=", 1)[1]) if kind == TEACHER else 0.0
        return (COLUMN_ORDER.index(kind) if kind in COLUMN_ORDER else len(COLUMN_ORDER), alpha)

    return sorted(results, key=rank)


def metric_rank(metric: str) -> int:
    """The position of ``metric`` in :data:`METRIC_ORDER` (its own entry, else its prefix's); unknown ones last."""
    if metric in METRIC_ORDER:
        return METRIC_ORDER.index(metric)
    prefixes = (i for i, key in enumerate(METRIC_ORDER) if key[-1] in "_[" and metric.startswith(key))
    return next(prefixes, len(METRIC_ORDER))


def metric_help(metric: str) -> str:
    if metric in METRIC_HELP:
        return METRIC_HELP[metric]
    if parse_next_token_key(metric):
        return "probability of this next token after this prompt (the paper's next-token curves)"
    return next((text for prefix, text in PREFIX_HELP.items() if metric.startswith(prefix)), "")


def markdown_report(results: dict[str, dict[str, float]]) -> str:
    """Metrics as rows, roles as columns, the change of the unlearned model against the base and the oracle, the
    verdict of every forget metric against the oracle, and what each metric means."""
    roles = ordered_roles(results)
    metrics = sorted(dict.fromkeys(metric for role in roles for metric in results[role]), key=metric_rank)
    changes = [(COMPARED[0], other) for other in (COMPARED[1], ORACLE) if COMPARED[0] in results and other in results]
    header = ["metric", *roles] + [f"{new} − {old}" for new, old in changes]
    lines = [
        "# Unlearning evaluation",
        "",
        "Lower familiarity = more forgotten. Retained ability (perplexity of retain text, lm-eval scores) should stay "
        "near the base's." + (ORACLE_GOAL if ORACLE in results else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for metric in metrics:
        cells = [f"`{metric}`".replace("|", "\\|"), *(_number(results[role].get(metric)) for role in roles)]
        cells += [_difference(results[new].get(metric), results[old].get(metric)) for new, old in changes]
        lines.append("| " + " | ".join(cells) + " |")
    if ORACLE in results:
        lines += ["", *oracle_section(results, roles)]
    lines += ["", "## Metrics", ""]
    lines += [f"- `{metric}`: {metric_help(metric)}" for metric in metrics]
    return "\n".join(lines) + "\n"


def verdict(value: float, oracle: float, tolerance: float, relative: bool = False) -> str:
    """``"at"`` within the tolerance of the oracle, else ``"above"`` or ``"below"`` it (by value)."""
    margin = tolerance * abs(oracle) if relative else tolerance
    if abs(value - oracle) <= margin:
        return "at"
    return "above" if value > oracle else "below"


def oracle_comparison(results: dict[str, dict[str, float]]) -> dict[str, dict[str, dict]]:
    """For every role but the oracle, each forget metric the oracle has: the value, the oracle's, the difference,
    the verdict (``"above"``/``"at"``/``"below"`` the oracle, by value; the tolerances of :data:`ORACLE_METRICS`)
    and whether that verdict means knowledge left (``"knowledge left"``) or damage (``"over-forgotten"``).
    The retain perplexity is compared with the base's instead (``"retained"`` within 3 %)."""
    oracle = results[ORACLE]
    comparison = {}
    for role in ordered_roles(results):
        if role == ORACLE:
            continue
        rows = {}
        for metric, (tolerance, relative, knowledge_up) in ORACLE_METRICS.items():
            value, reference = results[role].get(metric), oracle.get(metric)
            if value is None or reference is None or value != value or reference != reference:
                continue
            side = verdict(value, reference, tolerance, relative)
            meaning = "as the oracle" if side == "at" else (
                "knowledge left" if (side == "above") == knowledge_up else "over-forgotten")
            rows[metric] = {"value": value, "oracle": reference, "difference": value - reference, "verdict": side,
                            "meaning": meaning}
        base = results.get("base", {}).get("retain_perplexity")
        if base and "retain_perplexity" in results[role]:
            change = results[role]["retain_perplexity"] / base - 1
            rows["retain_perplexity"] = {"value": results[role]["retain_perplexity"], "base": base, "change": change,
                                         "meaning": "retained" if change <= RETAIN_TOLERANCE else "damaged"}
        comparison[role] = rows
    return comparison


def oracle_section(results: dict, roles: list[str]) -> list[str]:
    """The report's "Against the oracle" table: per forget metric and role, above / at / below the oracle."""
    comparison = oracle_comparison(results)
    shown = [role for role in roles if role in comparison]
    metrics = sorted(dict.fromkeys(m for role in shown for m in comparison[role]), key=metric_rank)
    lines = [
        "## Against the oracle",
        "",
        "Each forget metric of each role beside the oracle's: **above**, **at** or **below** it (at = within "
        + ", ".join(f"{tolerance:g}{' relative' if relative else ''} for `{metric}`"
                    for metric, (tolerance, relative, _) in ORACLE_METRICS.items() if metric in metrics)
        + "), and what that means. Retain perplexity is compared with the base's (retained = at most "
        f"+{RETAIN_TOLERANCE:.0%}).",
        "",
        "| metric | " + " | ".join(shown) + " |",
        "|" + " --- |" * (len(shown) + 1),
    ]
    for metric in metrics:
        cells = [f"`{metric}`"]
        for role in shown:
            row = comparison[role].get(metric)
            if row is None:
                cells.append("—")
            elif "verdict" in row:
                cells.append(f"{row['verdict']} ({row['difference']:+.3g}): {row['meaning']}")
            else:
                cells.append(f"{row['change']:+.1%} vs base: {row['meaning']}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _difference(new: float | None, old: float | None) -> str:
    return "—" if new is None or old is None else f"{new - old:+.4g}"


def write_plots(results: dict, history: list[dict] | None, output_dir: Path) -> list[Path]:
    """The PNGs: familiarity vs retain perplexity per role, and, from a callback's ``history``, the next-token
    probabilities and the familiarity over training steps. Returns the files written."""
    figures = {"familiarity_vs_retain.png": familiarity_vs_retain_figure(results)}
    if history:
        figures["next_token_curves.png"] = next_token_figure(history)
        figures["familiarity_over_steps.png"] = familiarity_over_steps_figure(history)
    written = []
    for name, figure in figures.items():
        if figure is not None:
            figure.savefig(output_dir / name, dpi=120, bbox_inches="tight")  # a bare Figure renders with Agg
            written.append(output_dir / name)
    return written


def familiarity_vs_retain_figure(results: dict):
    from matplotlib.figure import Figure

    needed = {"familiarity_token", "retain_perplexity"}
    points = {role: metrics for role, metrics in results.items() if needed <= set(metrics)}
    if not points:
        return None
    figure = Figure(figsize=(5, 4))
    axes = figure.subplots()
    for role in ordered_roles(points):
        x, y = points[role]["retain_perplexity"], points[role]["familiarity_token"]
        axes.scatter([x], [y], s=60, label=role)
        axes.annotate(role, (x, y), textcoords="offset points", xytext=(6, 4))
    axes.set(xlabel="retain perplexity (lower = ability kept)", ylabel="token familiarity (lower = forgotten)",
             title="Forgetting vs retained ability")
    axes.legend()
    return figure


def next_token_figure(history: list[dict]):
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys(key for entry in history for key in entry["metrics"] if parse_next_token_key(key)))
    if not keys:
        return None
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for key in keys:
        steps, values = _series(history, key)
        prompt, token = parse_next_token_key(key)
        axes.plot(steps, values, marker="o", label=f"{prompt!r} → {token!r}")
    axes.set(xlabel="training step", ylabel="next-token probability", title="Next-token probabilities while unlearning")
    axes.legend(fontsize="small")
    return figure


def familiarity_over_steps_figure(history: list[dict]):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(*_series(history, FAMILIARITY_KEY), marker="o", color="tab:red")
    axes.set(xlabel="training step", ylabel="token familiarity (lower = forgotten)",
             title="Familiarity while unlearning")
    steps, perplexities = _series(history, RETAIN_PERPLEXITY_KEY)
    if steps:
        right = axes.twinx()
        right.plot(steps, perplexities, marker="s", color="tab:blue")
        right.set_ylabel("retain perplexity")
    return figure


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    entries = [entry for entry in history if key in entry["metrics"]]
    return [entry["step"] for entry in entries], [entry["metrics"][key] for entry in entries]
