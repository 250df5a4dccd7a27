"""``whp evaluate``: the base, reinforced and unlearned roles of one model measured side by side, and the report.

:func:`evaluate_model` measures every role on ONE ``PeftModel`` (adapters switched, never copied);
:func:`write_report` writes ``report.json`` (its ``results`` are the ``eval_results`` of
:func:`whp_trainer.hub.build_model_card`), ``report.md`` and the plots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

from ..hub import framework_versions, package_version
from ..models import BASELINE, teacher_pass
from .callback import FAMILIARITY_KEY, RETAIN_PERPLEXITY_KEY, next_token_metric, parse_next_token_key
from .familiarity import completion_familiarity, next_token_probabilities, sample_completions, token_familiarity
from .judges import CATEGORIES, AnchorJudge, LLMJudge, openai_judge
from .memorization import verbatim_memorization
from .retain import perplexity
from .robustness import hint_probes, relearning_probe

logger = logging.getLogger(__name__)

ROLES = ("base", "reinforced", "unlearned")
JUDGES = ("anchors", "llm")
COMPARED = ("unlearned", "base")  # the report's change column: the first role minus the second
METRIC_HELP = {
    "familiarity_token": "mean probability of each probe's target first token after its prompt (lower = more "
    "forgotten; the paper's token-probability familiarity)",
    "familiarity_completion": "share of sampled probe completions the judge finds familiar with the target (lower = "
    "more forgotten; the paper's completion-based familiarity)",
    "familiarity_token_hints": "token familiarity when the prompt carries hints (other anchors of the target): "
    "in-context re-extraction (lower = more robust)",
    "familiarity_token_relearned": "token familiarity after a few fine-tuning steps of the role's adapter on forget "
    "text: relearning (lower = more robust; the weights are restored afterwards; not measured for the base)",
    "memorization_rouge_l": "ROUGE-L of greedy continuations of forget passages against the true text (lower = less "
    "verbatim memorization)",
    "memorization_exact": "share of continuation tokens reproduced exactly (lower = less verbatim memorization)",
    "retain_perplexity": "perplexity of ordinary retain text (should stay near the base's: retained ability)",
    "forget_perplexity": "perplexity of the forget text (higher = the text is less expected)",
}
METRIC_ORDER = (  # the report's rows: familiarity first, then memorization, retained ability, next tokens
    "familiarity_token", "familiarity_completion", "familiarity_completion_", "familiarity_token_hints",
    "familiarity_token_relearned", "memorization_rouge_l", "memorization_exact", "forget_perplexity",
    "retain_perplexity", "lm_eval_", "p_next[",
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
        for name in ("completions", "memorization_passages", "retain_texts", "relearn_steps"):
            _check(self, name, getattr(self, name) >= 0, "must be 0 (skip) or more")
        _check(self, "lm_eval_limit", self.lm_eval_limit is None or self.lm_eval_limit >= 1, "must be at least 1")
        _check(self, "relearn_learning_rate", self.relearn_learning_rate > 0, "must be positive")
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


def evaluate_model(
    model,
    tokenizer,
    config: EvaluateConfig,
    probes: list[dict[str, str]],
    forget_texts: list[str],
    retain_texts: list[str],
    dictionary=None,
    roles: dict[str, str | None] | None = None,
) -> dict[str, dict[str, float]]:
    """Measure each role of one ``PeftModel`` and return ``role -> metric -> value``.

    Args:
        model: a ``PeftModel`` holding the adapters (e.g. named ``"reinforced"`` and ``"unlearned"``).
        tokenizer: its tokenizer.
        config: what to measure (see :class:`EvaluateConfig`).
        probes: ``{"prompt", "target"}`` familiarity probes (the first ``config.max_probes`` are used).
        forget_texts: paragraphs of the forget target (memorization, forget perplexity, relearning).
        retain_texts: paragraphs of ordinary text (retain perplexity).
        dictionary: the ``AnchorDictionary``: the anchor judge's terms and the hints; without it both are skipped.
        roles: role -> adapter name, ``None`` for the base with adapters disabled. Default: ``config.roles``, each
            under the adapter of its name (``"base"``: adapters disabled); a role whose adapter the model lacks is
            skipped with a logged note.

    The active adapter, the trainable parameters and the train/eval mode are restored afterwards.
    """
    roles = default_roles(model, config) if roles is None else roles
    probes = probes[: config.max_probes]
    rng = random.Random(config.seed)
    texts = {"forget": sample(forget_texts, config.retain_texts, rng),
             "retain": sample(retain_texts, config.retain_texts, rng)}
    passages = sample(forget_texts, config.memorization_passages, rng) if config.memorization_passages else []
    hinted = hint_probes(probes, dictionary, seed=config.seed) if config.hints and dictionary is not None else None
    judge = make_judge(config, model, tokenizer, dictionary)
    prompts = [probe["prompt"] for probe in probes[: config.completions]] if judge is not None else []
    results = {}
    progress = tqdm(roles.items(), desc="whp evaluate", unit="role")
    for role, adapter in progress:
        logger.info("whp evaluate: measuring %s", role)

        def doing(what: str, role=role) -> None:  # the metric now measured, on the bar
            progress.set_postfix_str(f"{role}: {what}")

        with teacher_pass(model, adapter):
            metrics, completions = measure(model, tokenizer, config, probes, texts, passages, hinted, prompts, doing)
        if completions:  # judged outside the role: a local judge runs as the base
            doing("judging completions")
            metrics.update(judged(completions, prompts, judge))
        if config.relearn_steps and adapter is not BASELINE:  # the base has no adapter to fine-tune
            doing("relearning")
            metrics["familiarity_token_relearned"] = relearned_familiarity(model, tokenizer, config, adapter, probes,
                                                                          texts["forget"])
        results[role] = {metric: float(value) for metric, value in metrics.items()}
    return results


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


def measure(model, tokenizer, config: EvaluateConfig, probes, texts, passages, hinted, prompts,
            doing=lambda what: None):
    """The no-grad metrics of the role now active, and its completions of ``prompts``; ``doing(what)`` is told each
    metric as it starts."""
    batch, length = config.batch_size, config.max_length
    doing("token familiarity")
    metrics = {"familiarity_token": token_familiarity(model, tokenizer, probes, batch_size=batch)}
    if hinted is not None:
        doing("familiarity with hints")
        metrics["familiarity_token_hints"] = token_familiarity(model, tokenizer, hinted, batch_size=batch)
    if passages:
        doing("verbatim memorization")
        memorized = verbatim_memorization(model, tokenizer, passages, prompt_tokens=config.prompt_tokens,
                                          continuation_tokens=config.continuation_tokens, batch_size=batch)
        metrics.update(memorization_rouge_l=memorized["rouge_l"], memorization_exact=memorized["exact_token_accuracy"])
    for name, part in texts.items():
        doing(f"{name} perplexity")
        metrics[f"{name}_perplexity"] = perplexity(model, tokenizer, part, max_length=length, batch_size=batch)
    if config.lm_eval_tasks:
        from .harness import lm_eval_benchmarks

        doing("lm-eval " + " ".join(config.lm_eval_tasks))
        scores = lm_eval_benchmarks(model, tokenizer, tasks=config.lm_eval_tasks, batch_size=batch,
                                    limit=config.lm_eval_limit, num_fewshot=config.lm_eval_num_fewshot,
                                    include_path=config.lm_eval_include_path)
        metrics.update({f"lm_eval_{task}": float(score) for task, score in scores.items()})
    for prompt, tokens in (config.next_token_prompts or {}).items():
        probabilities = next_token_probabilities(model, tokenizer, prompt, tokens)
        metrics.update({next_token_metric(prompt, token): p for token, p in probabilities.items()})
    if prompts:
        doing("sampling completions")
    completions = sample_completions(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                                     seed=config.seed, batch_size=batch) if prompts else []
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
    """Token familiarity after ``config.relearn_steps`` fine-tuning steps on forget text as ``adapter``."""
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
    (output_dir / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (output_dir / "report.md").write_text(markdown_report(results), encoding="utf-8")
    if config is None or config.plots:
        write_plots(results, history, output_dir)
    return output_dir


def ordered_roles(results: dict) -> list[str]:
    """The known roles in their order (base, reinforced, unlearned), then any other."""
    return sorted(results, key=lambda role: (ROLES.index(role) if role in ROLES else len(ROLES), role))


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
    """Metrics as rows, roles as columns, the change of the unlearned model against the base, and what each means."""
    roles = ordered_roles(results)
    metrics = sorted(dict.fromkeys(metric for role in roles for metric in results[role]), key=metric_rank)
    change = all(role in results for role in COMPARED)
    header = ["metric", *roles] + ([f"{COMPARED[0]} − {COMPARED[1]}"] if change else [])
    lines = [
        "# Unlearning evaluation",
        "",
        "Lower familiarity = more forgotten. Retained ability (perplexity of retain text, lm-eval scores) should stay "
        "near the base's.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for metric in metrics:
        cells = [f"`{metric}`".replace("|", "\\|"), *(_number(results[role].get(metric)) for role in roles)]
        if change:
            cells.append(_difference(results[COMPARED[0]].get(metric), results[COMPARED[1]].get(metric)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Metrics", ""]
    lines += [f"- `{metric}`: {metric_help(metric)}" for metric in metrics]
    return "\n".join(lines) + "\n"


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
