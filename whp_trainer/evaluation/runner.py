"""Measuring the roles of one model side by side (base, reinforced, unlearned, the oracle and the generic-logit
teacher): `evaluate_model` switches adapters on ONE `PeftModel`, never copying it."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..collator import text_blocks
from ..models import BASELINE, base_quantization, guard_cpu_4bit, using_adapter
from .callback import next_token_metric
from .comparison import ATTACKED_METRICS, ORACLE, TEACHER, attack_key, ordered_roles
from .config import EvaluateConfig
from .familiarity import completion_familiarity, next_token_probabilities, sample_completions, token_familiarity
from .judges import CATEGORIES, AnchorJudge, LLMJudge, openai_judge
from .knowledge import first_mention_probes, knowledge_memorization, knowledge_scores
from .membership import membership_auc, privleak
from .memorization import verbatim_memorization
from .retain import general_text, perplexity
from .rule_sample import UNSEEN_MINIMUM, read_again, unread
from .robustness import as_exported, hint_probes, many_shot_knowledge, many_shot_probes, quantized, relearned
from .teacher import GenericTeacher

logger = logging.getLogger(__name__)

REINFORCED_ADAPTER = "reinforced"  # the adapter the teacher boosts against (as whp evaluate names it)
RELEARN_ADAPTER = "whp_relearn"  # the fresh adapter through which a role without one (base, oracle) relearns


@dataclass
class EvaluationData:
    """What every role is measured on (built once by `evaluate_model`)."""

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
    knowledge: dict[str, list[dict]]  # "forget", "neighbour": knowledge rows (answer log-likelihood, 2 choices)
    relearn_texts: dict[str, list[str]]  # attack -> text every role relearns on
    in_context: dict[str, tuple[list[dict], list[dict]]]  # attack -> (probes, forget knowledge rows) it rewrites
    read_by_rule: dict[str, int] = field(default_factory=dict)  # metric -> items a stopping rule read


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
    forget_knowledge: list[dict] | None = None,
    neighbour_knowledge: list[dict] | None = None,
    relearn_texts: list[str] | None = None,
    paraphrased_probes: list[dict] | None = None,
    full_precision_base=None,
    full_precision_oracle=None,
    rule_sample: dict[str, set[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Measure each role of one `PeftModel`, the oracle and the generic-logit teacher; return
    `role -> metric -> value`.

    Args:
        model: a `PeftModel` holding the adapters (e.g. named `"reinforced"` and `"unlearned"`).
        tokenizer: its tokenizer.
        config: what to measure (see `EvaluateConfig`).
        probes: `{"prompt", "target"}` familiarity probes (the first `config.max_probes` are used).
        forget_texts: documents of the forget target, cut into blocks of `config.max_length` tokens of running text
            as training cuts them (memorization, forget perplexity, relearning, membership); entities are probed at
            their first mention in each paragraph.
        retain_texts: documents of ordinary text, cut alike (retain perplexity).
        dictionary: the `AnchorDictionary`: the anchor judge's terms, the hints and the entities of
            `entity_first_mention`; without it these are skipped.
        roles: role -> adapter name, `None` for the base with adapters disabled. Default: `config.roles`, each
            under the adapter of its name (`"base"`: adapters disabled); a role whose adapter the model lacks is
            skipped with a logged note.
        oracle: a model of the same tokenizer that never read the target: the `"oracle"` column.
        holdout_texts: documents of the forget target's kind that no model read, cut alike: membership AUC (and,
            with the oracle, PrivLeak).
        knowledge_qa: `{"question", "answer"}` pairs about the forget target: KnowMem on forget.
        knowledge_shots: `{"question", "answer"}` few-shot examples put before each KnowMem question.
        retain_qa: `{"question", "answer"}` pairs about retain knowledge: KnowMem on retain.
        forget_knowledge: knowledge rows about the forget target (see
            [`load_knowledge`][whp_trainer.evaluation.load_knowledge]): answer log-likelihood and 2-choice accuracy.
        neighbour_knowledge: knowledge rows of related knowledge that must stay; with `forget_knowledge`, the
            selectivity of every role (forget drop minus neighbour drop, against the base).
        relearn_texts: text about the target that is not the forget text: the `relearn_neighbour` attack.
        paraphrased_probes: the probes reworded: the `paraphrased` attack.
        full_precision_base: when `model`'s base is quantized, the same base unquantized: every role's adapter is
            measured on it too (the `full_precision` attack), and `full_precision_oracle` (the oracle unquantized;
            default: the oracle as given) beside them; the quantization attacks quantize each adapter merged into
            it. Without it, on a quantized base, the quantization attacks are skipped.
        rule_sample: what a stopping rule read (`alpha: auto`'s), as `item_digest`s, by the names of
            `READ_BY_RULE`: probes, first mentions, membership's forget and holdout blocks (cut at
            `config.max_length`) and neighbour knowledge rows. Each is read on the other items when at least
            `UNSEEN_MINIMUM` are left, and every role's `READ_BY_RULE` metrics say how many of the items read the
            rule had read.

    Robustness (`metric@attack` results, see `comparison.ATTACKS`): every role but the teachers, the oracle
    included, relearns on forget text (and `relearn_texts`), is merged and reloaded quantized
    (`config.quantizations`), and is probed with many-shot forget passages and the paraphrased probes.

    A teacher column `"teacher α=A"` is measured for each `config.teacher_alphas` when the model holds the
    `"reinforced"` adapter. The active adapter, the trainable parameters and the train/eval mode are restored
    afterwards; every role relearns through a fresh adapter on top of its own, removed afterwards.
    """
    for subject in (model, oracle, full_precision_base, full_precision_oracle):  # eval forwards, then relearning
        if subject is not None:
            guard_cpu_4bit(subject)
    quantize = quantization_attacks_apply(model, config, full_precision_base)
    roles = default_roles(model, config) if roles is None else roles
    data = evaluation_data(config, tokenizer, probes, forget_texts, retain_texts, dictionary, holdout_texts,
                           knowledge_qa, knowledge_shots, retain_qa, forget_knowledge, neighbour_knowledge,
                           relearn_texts, paraphrased_probes, rule_sample)
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
        logger.debug("whp evaluate: measuring %s", role)  # the bar shows it

        def doing(what: str, role=role) -> None:  # the metric now measured, on the bar
            progress.set_postfix_str(f"{role}: {what}")

        is_teacher = isinstance(subject, GenericTeacher)
        with contextlib.nullcontext() if is_teacher else using_adapter(subject, adapter):
            metrics, completions = measure(subject, tokenizer, config, data, lm_eval=not is_teacher, doing=doing)
        if completions:  # judged outside the role: a local judge runs as the base
            doing("judging completions")
            metrics.update(judged(completions, data.prompts, judge))
        if not is_teacher:
            full_precision = None if full_precision_base is None else (
                full_precision_base if role != ORACLE else wrapped if full_precision_oracle is None
                else full_precision_oracle)
            metrics.update(attacked(subject, tokenizer, config, data, adapter, doing, full_precision, quantize))
        results[role] = {metric: float(value) for metric, value in metrics.items()}
    if wrapped is not None and wrapped is not oracle:
        wrapped.unload()  # the oracle's own modules back in place
    add_privleak(results)
    add_selectivity(results)
    return {role: results[role] for role in ordered_roles(results)}


def add_attack_data(data: EvaluationData, config: EvaluateConfig, tokenizer, forget_knowledge, neighbour_knowledge,
                    relearn_texts, paraphrased_probes) -> None:
    """The knowledge rows, the relearning texts and the rewritten prompts of the in-context attacks."""
    data.knowledge = {name: rows for name, rows in (("forget", forget_knowledge), ("neighbour", neighbour_knowledge))
                      if rows}
    if config.relearn_steps:
        data.relearn_texts["relearn_forget"] = data.texts["forget"]
        if relearn_texts:
            data.relearn_texts["relearn_neighbour"] = [text for text in relearn_texts if text.strip()]
    if config.many_shot_passages:
        room = min(config.many_shot_max_tokens, getattr(tokenizer, "model_max_length", None) or config.max_length)
        shots = dict(shots=config.many_shot_passages, max_tokens=room, seed=config.seed)
        data.in_context["many_shot"] = (
            many_shot_probes(data.probes, data.texts["forget"], tokenizer, **shots),
            many_shot_knowledge(data.knowledge.get("forget", []), data.texts["forget"], tokenizer, **shots))
    if paraphrased_probes:
        data.in_context["paraphrased"] = (list(paraphrased_probes[: config.max_probes]), [])


def forget_metrics(model, tokenizer, config: EvaluateConfig, data: EvaluationData, doing=lambda what: None) -> dict:
    """The forget metrics measured again after each attack: token familiarity, entities at first mention, VerbMem and
    the forget knowledge."""
    batch = config.batch_size
    doing("token familiarity")
    metrics = {"familiarity_token": token_familiarity(model, tokenizer, data.probes, batch_size=batch)}
    if data.first_mentions:
        doing("entities at first mention")
        metrics["entity_first_mention"] = token_familiarity(model, tokenizer, data.first_mentions, batch_size=batch)
    if data.passages:
        doing("verbatim memorization")
        memorized = verbatim_memorization(model, tokenizer, data.passages, prompt_tokens=config.prompt_tokens,
                                          continuation_tokens=config.continuation_tokens, batch_size=batch)
        metrics.update(memorization_rouge_l=memorized["rouge_l"], memorization_exact=memorized["exact_token_accuracy"],
                       verbmem_forget=memorized["verbmem"])
    for name, rows in data.knowledge.items():
        doing(f"{name} knowledge")
        scores = knowledge_scores(model, tokenizer, rows, batch_size=batch, max_length=config.max_length)
        metrics.update({f"knowledge_{name}_{score}": value for score, value in scores.items()})
    return metrics


def quantization_attacks_apply(model, config: EvaluateConfig, full_precision_base) -> bool:
    """Whether the quantization attacks measure what they mean to: not on a quantized base without its
    full-precision base (merged into the quantized base, an adapter is rounded away: re-quantizing gives that base
    back, whatever the adapter did), which is said once."""
    quantization = base_quantization(model.get_base_model() if hasattr(model, "get_base_model") else model)
    if quantization is None or full_precision_base is not None:
        return True
    if config.quantizations:
        logger.warning("whp evaluate: the base is quantized %s and its full-precision base was not given: the "
                       "quantization attacks are skipped (they quantize each adapter merged into the full-precision "
                       "base, as whp export writes it)", quantization)
    return False


def attacked(model, tokenizer, config: EvaluateConfig, data: EvaluationData, adapter, doing,
             full_precision=None, quantize: bool = True) -> dict:
    """The forget metrics of one role (the active adapter `adapter` of `model`) after each attack, as
    `metric@attack` (see `comparison.attack_key`): relearning, the in-context attacks, quantization, and (given
    the `full_precision` base) the role's adapter on it. Given that base, quantization reloads the adapter merged
    into it, the model `whp export` writes, not into the quantized base it trained on."""
    metrics = {}

    def keep(attack: str, measured: dict) -> None:
        metrics.update({attack_key(metric, attack): value for metric, value in measured.items()
                        if metric in ATTACKED_METRICS})

    for attack, texts in data.relearn_texts.items():
        doing(f"relearning ({attack})")
        keep(attack, relearned_metrics(model, tokenizer, config, data, adapter, texts))
    with using_adapter(model, adapter):
        for attack, (probes, rows) in data.in_context.items():
            doing(attack)
            keep(attack, {"familiarity_token": token_familiarity(model, tokenizer, probes, batch_size=config.batch_size)})
            if rows:
                scores = knowledge_scores(model, tokenizer, rows, batch_size=config.batch_size,
                                          max_length=config.max_length)
                keep(attack, {f"knowledge_forget_{score}": value for score, value in scores.items()})
    with as_exported(model, adapter, full_precision) as (exported, name):
        for quantization in config.quantizations if quantize else []:
            doing(f"quantized {quantization}")
            with quantized(exported, name, quantization) as model_quantized:
                keep(quantization, forget_metrics(model_quantized, tokenizer, config, data))
        if full_precision is not None:
            doing("on the full-precision base")
            # the oracle as given is measured without its relearning adapter
            with using_adapter(model, BASELINE) if exported is model else contextlib.nullcontext():
                keep("full_precision", forget_metrics(exported, tokenizer, config, data))
    return metrics


def add_selectivity(results: dict[str, dict[str, float]]) -> None:
    """Every role's selectivity against the base: its drop in forget answer log-likelihood minus its drop in
    neighbour answer log-likelihood (nats; higher = forgets the target more than its neighbours)."""
    base = results.get("base", {})
    keys = ("knowledge_forget_loglik", "knowledge_neighbour_loglik")
    if not all(key in base for key in keys):
        return
    for metrics in results.values():
        if all(key in metrics for key in keys):
            forget, neighbour = (base[key] - metrics[key] for key in keys)
            metrics["knowledge_selectivity"] = forget - neighbour


def evaluation_data(config, tokenizer, probes, forget_texts, retain_texts, dictionary=None, holdout_texts=None,
                    knowledge_qa=None, knowledge_shots=None, retain_qa=None, forget_knowledge=None,
                    neighbour_knowledge=None, relearn_texts=None, paraphrased_probes=None,
                    rule_sample=None) -> EvaluationData:
    """The samples every role is measured on, drawn once with `config.seed` (the arguments of `evaluate_model`):
    blocks of the documents, and the entities' first mentions in their paragraphs."""
    rule_sample = rule_sample or {}
    probes = unread(probes, rule_sample.get("probes"))[: config.max_probes]
    rng = random.Random(config.seed)
    forget_blocks = text_blocks(forget_texts, tokenizer, config.max_length)
    texts = {"forget": sample(forget_blocks, config.retain_texts, rng),
             "retain": sample(text_blocks(retain_texts, tokenizer, config.max_length), config.retain_texts, rng)}
    if config.general_text:  # a draw of its own: the samples below stay those of earlier versions
        texts["general"] = sample(text_blocks(general_text(dictionary), tokenizer, config.max_length),
                                  config.retain_texts, random.Random(f"general-{config.seed}"))
    passages = sample(forget_blocks, config.memorization_passages, rng) if config.memorization_passages else []
    hinted = hint_probes(probes, dictionary, seed=config.seed) if config.hints and dictionary is not None else None
    mentions = first_mention_probes(forget_texts, dictionary) if dictionary is not None else []
    mentions = unread(mentions, rule_sample.get("first_mentions"))
    membership = None
    if holdout_texts:
        holdout = unread(text_blocks(holdout_texts, tokenizer, config.max_length), rule_sample.get("holdout"))
        membership = (sample(unread(forget_blocks, rule_sample.get("forget")), config.membership_texts, rng),
                      sample(holdout, config.membership_texts, rng))
    if neighbour_knowledge:
        neighbour_knowledge = unread(neighbour_knowledge, rule_sample.get("neighbour_knowledge"))
    if forget_knowledge:
        forget_knowledge = unread(forget_knowledge, rule_sample.get("forget_knowledge"))
    data = EvaluationData(
        probes=probes, texts=texts, passages=passages, hinted=hinted,
        prompts=[probe["prompt"] for probe in probes[: config.completions]],
        first_mentions=rng.sample(mentions, min(len(mentions), config.max_probes)),
        membership=membership, knowledge_qa=knowledge_qa, knowledge_shots=list(knowledge_shots or []),
        retain_qa=retain_qa, knowledge={}, relearn_texts={}, in_context={},
    )
    add_attack_data(data, config, tokenizer, forget_knowledge, neighbour_knowledge, relearn_texts, paraphrased_probes)
    read = {"probes": probes, "first_mentions": data.first_mentions, "neighbour_knowledge": neighbour_knowledge,
            "forget_knowledge": forget_knowledge,
            **(dict(zip(("forget", "holdout"), membership)) if membership else {})}
    data.read_by_rule = read_by_rule(rule_sample, read)
    return data


READ_BY_RULE = {  # what a stopping rule reads -> the metric counting how much of it a report read again, its name
    "probes": ("familiarity_token_read_by_rule", "familiarity probes"),
    "first_mentions": ("entity_first_mention_read_by_rule", "first mentions"),
    "forget": ("membership_forget_read_by_rule", "forget blocks of membership"),
    "holdout": ("membership_holdout_read_by_rule", "holdout blocks"),
    "neighbour_knowledge": ("knowledge_neighbour_read_by_rule", "neighbour knowledge rows"),
    "forget_knowledge": ("knowledge_forget_read_by_rule", "forget knowledge rows"),
}


def read_by_rule(rule_sample: dict[str, set[str]], read: dict[str, list | None]) -> dict[str, int]:
    """Metric -> how many of the items the evaluation reads (``read``: name -> items) a stopping rule had read, for
    each sample the rule read; each warned of when not 0."""
    counts = {}
    for name, items in read.items():
        if items and name in rule_sample:
            metric, noun = READ_BY_RULE[name]
            counts[metric] = read_again(items, rule_sample[name])
            if counts[metric]:
                logger.warning("whp evaluate: %d of the %d %s it reads were read by alpha auto's stopping rule too "
                               "(fewer than %d others): the unlearned model may read nearer its targets on them than "
                               "on new ones; give more", counts[metric], len(items), noun, UNSEEN_MINIMUM)
    return counts


def teacher_subjects(model, config: EvaluateConfig) -> list[tuple]:
    """`("teacher α=A", GenericTeacher, None)` for each `config.teacher_alphas` (none without the adapter)."""
    if not config.teacher_alphas:
        return []
    if REINFORCED_ADAPTER not in getattr(model, "peft_config", {}):
        logger.warning("whp evaluate: no %r adapter on the model; the teacher is not measured", REINFORCED_ADAPTER)
        return []
    return [(f"{TEACHER} α={alpha:g}", GenericTeacher(model, REINFORCED_ADAPTER, alpha), None)
            for alpha in config.teacher_alphas]


def relearnable(oracle, model):
    """The oracle as a `PeftModel` (a zero-initialised adapter of the evaluated adapters' shape, switched off when
    measured), so that it can relearn like the other roles."""
    from peft import PeftModel, get_peft_model

    return oracle if isinstance(oracle, PeftModel) else get_peft_model(oracle, fresh_adapter_config(model))


def fresh_adapter_config(model):
    """A copy of the model's first adapter config (`"unlearned"` when present), re-initialised and trainable."""
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
    """A zero-initialised adapter (its random half drawn with `seed`) added for the block (named
    `RELEARN_ADAPTER`) and deleted after it; the active adapter and the trainable parameters are restored."""
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
    """`config.roles` as role -> adapter name, skipping (with a note) roles whose adapter the model lacks."""
    roles = {}
    for role in config.roles:
        if role != "base" and role not in model.peft_config:
            logger.warning("whp evaluate: no %r adapter on the model; the %s role is skipped", role, role)
            continue
        roles[role] = BASELINE if role == "base" else role
    return roles


def sample(texts: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` of the non-empty `texts` chosen at random (all of them when `count` is 0 or larger)."""
    texts = [text for text in texts if text.strip()]
    return texts if count == 0 or count >= len(texts) else rng.sample(texts, count)


def measure(model, tokenizer, config: EvaluateConfig, data: EvaluationData, lm_eval: bool = True,
            doing=lambda what: None):
    """The no-grad metrics of the role now active, and its completions of `data.prompts`; `doing(what)` is told
    each metric as it starts."""
    batch, length = config.batch_size, config.max_length
    metrics = forget_metrics(model, tokenizer, config, data, doing)
    if data.hinted is not None:
        doing("familiarity with hints")
        metrics["familiarity_token_hints"] = token_familiarity(model, tokenizer, data.hinted, batch_size=batch)
    for name, part in data.texts.items():
        doing(f"{name} perplexity")
        metrics[f"{name}_perplexity"] = perplexity(model, tokenizer, part, max_length=length, batch_size=batch)
    if data.membership:
        doing("membership")
        metrics.update(membership_auc(model, tokenizer, *data.membership, k=config.membership_k, max_length=length,
                                      batch_size=batch))
    metrics.update(data.read_by_rule)
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
    """The completion judge of `config.judge`; `None` (with a note) when completions cannot be judged."""
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
    return LLMJudge(LocalChat(model, tokenizer, batch_size=config.batch_size,
                              context=lambda: using_adapter(model, BASELINE)))


def relearned_metrics(model, tokenizer, config: EvaluateConfig, data: EvaluationData, adapter, texts) -> dict:
    """The forget metrics after `config.relearn_steps` fine-tuning steps on `texts` through a fresh adapter of the
    same shape, on top of the role's own adapter (frozen; none for the base and the oracle): every role relearns
    with the same new parameters, as someone fine-tuning the published (merged) model would."""
    with fresh_adapter(model, config.seed) as fresh:
        model.base_model.set_adapter([fresh] if adapter is BASELINE else [adapter, fresh])
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(f".{fresh}." in name)
        return relearned(model, tokenizer, texts, lambda: forget_metrics(model, tokenizer, config, data),
                         steps=config.relearn_steps, learning_rate=config.relearn_learning_rate,
                         batch_size=config.batch_size, max_length=config.max_length)
