"""Markdown of an evaluation's record: ONE table renderer and ONE number format for the results (metrics as rows,
roles as columns) and for the verdicts against the oracle, used by `report.md` and the model card alike."""

from __future__ import annotations

from .callback import parse_next_token_key
from .comparison import (
    ATTACKED_METRICS,
    ATTACKS,
    NEIGHBOUR,
    NEIGHBOUR_TOLERANCE,
    ORACLE,
    ORACLE_METRICS,
    PERPLEXITIES,
    RETAIN_TOLERANCE,
    attack_key,
    measured,
    oracle_tolerance,
    ordered_roles,
    split_attack,
    unlearned_roles,
    verdict,
)
from .stopping import GENERAL, HOLDOUT, PERPLEXITY_BUDGETS, STEPS_RAN_OUT, TARGETS_REACHED

COMPARED = ("unlearned", "base")  # the change column: the first role minus the second; the first is the model itself
SAMPLE_SUFFIXES = ("_se", "_read_by_rule")  # metrics of the evaluation's sample (an AUC's error, counts), not the model
VERDICTS = ("above", "at", "below")
# the texts besides the budget's own that a run's perplexity budget can also hold on, as the kept-cost line names them
OTHER_BUDGET_TEXTS = {GENERAL: "the package's general text", HOLDOUT: "the holdout text"}
ORACLE_GOAL = (" The goal of every forget metric is the oracle's value (a model that never read the target): above "
               "it, knowledge is left; below it, the model is damaged.")
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
    "knowledge_forget_loglik": "mean log-likelihood per token (nats) of the true answers of --forget_knowledge, given "
    "their question or prompt (higher = better known; goal: the oracle's)",
    "knowledge_forget_loglik_first": "the same log-likelihood of the true answers' first token alone: where the "
    "anchor dictionary's translations act (goal: the oracle's)",
    "knowledge_forget_loglik_later": "the same of the true answers' later tokens alone (answers of more than one "
    "token): a name forgotten at its first token can still be completed from it, since the paper trains no "
    "position inside a multi-token anchor (goal: the oracle's)",
    "knowledge_neighbour_loglik_first": "the neighbour answers' first token alone",
    "knowledge_neighbour_loglik_later": "the neighbour answers' later tokens alone",
    "knowledge_forget_two_choice": "share of --forget_knowledge questions whose true answer is more likely than their "
    "false one (0.5 = chance; goal: the oracle's)",
    "knowledge_neighbour_loglik": "the same log-likelihood on --neighbour_knowledge, related knowledge that must stay "
    f"(goal: within {NEIGHBOUR_TOLERANCE:g} nat of the base's)",
    "knowledge_neighbour_two_choice": "2-choice accuracy on --neighbour_knowledge (should stay near the base's)",
    "knowledge_selectivity": "forget drop minus neighbour drop of the answer log-likelihood against the base (nats; "
    "higher = the target forgotten more than its neighbours; compare with the oracle's)",
    "entity_first_mention": "mean probability of an entity of the dictionary where a forget passage first names it "
    "(later mentions could be copied from the context; goal: the oracle's)",
    "membership_auc_mink": "AUC of telling forget texts from --holdout_data texts by Min-K% (k = --membership_k) "
    "log-probability: 0.5 = no membership signal (goal: the oracle's)",
    "membership_auc_minkpp": "the same AUC by the Min-K%++ score (goal: the oracle's)",
    "membership_auc_mink_se": "standard error of the Min-K% AUC at these numbers of forget and holdout texts (Hanley "
    "& McNeil): two AUCs closer than about twice it are not told apart",
    "membership_auc_minkpp_se": "standard error of the Min-K%++ AUC",
    "membership_holdout_read_by_rule": "of the holdout texts the membership AUC reads, those alpha auto's stopping "
    "rule had read (it kept the weights whose AUC there was nearest its target, so an AUC read on them flatters the "
    "unlearned model): 0 = read on text new to the rule; more holdout text (32 blocks beyond the rule's) makes it 0",
    "membership_forget_read_by_rule": "the same of the forget texts the membership AUC reads (32 forget blocks "
    "beyond the rule's 64 make it 0)",
    "familiarity_token_read_by_rule": "of the probes read, those alpha auto's stopping rule had read (its "
    "familiarity target): 0 = read on probes new to the rule; more probes (32 beyond the rule's 64) make it 0",
    "entity_first_mention_read_by_rule": "of the first mentions read, those alpha auto's stopping rule had read "
    "(its entity target): 0 = read on mentions new to the rule",
    "knowledge_forget_read_by_rule": "of the --forget_knowledge rows read, those alpha auto's stopping rule had read "
    "(its knowledge target): 0 = read on rows new to the rule; more rows (32 beyond the rule's 64) make it 0",
    "knowledge_neighbour_read_by_rule": "of the --neighbour_knowledge rows read, those alpha auto's stopping rule "
    "had read as its budget (the kept weights are within it there): 0 = read on rows new to the rule; more rows (32 "
    "beyond the rule's 64) make it 0",
    "privleak_mink": "MUSE's PrivLeak from the Min-K% AUC, in % relative to the oracle: 0 = like the oracle, negative "
    "= the forget text is still recognised, positive = over-unlearned",
    "privleak_minkpp": "PrivLeak from the Min-K%++ AUC (%)",
    "retain_perplexity": "perplexity of ordinary retain text (should stay near the base's: retained ability)",
    "general_perplexity": "perplexity of the package's general text, 14 kinds of modern English unlike both the "
    "target and most retain text (should stay near the base's: retained ability; an alpha auto run without "
    "--budget_data held its budget on this text, so it reads as that budget, not as text new to the run)",
    "forget_perplexity": "perplexity of the forget text (higher = the text is less expected)",
}
METRIC_ORDER = (  # the report's rows: familiarity first, then memorization, retained ability, next tokens
    "familiarity_token", "familiarity_completion", "familiarity_completion_", "familiarity_token_hints",
    "familiarity_token_relearned", "familiarity_token_read_by_rule", "knowmem_forget", "knowledge_forget_loglik",
    "knowledge_forget_loglik_first", "knowledge_forget_loglik_later", "knowledge_forget_two_choice",
    "knowledge_forget_read_by_rule",
    "knowledge_neighbour_loglik", "knowledge_neighbour_loglik_first", "knowledge_neighbour_loglik_later",
    "knowledge_neighbour_two_choice", "knowledge_neighbour_read_by_rule", "knowledge_selectivity",
    "entity_first_mention", "entity_first_mention_read_by_rule", "verbmem_forget", "memorization_rouge_l",
    "memorization_exact", "membership_auc_mink", "membership_auc_minkpp", "membership_auc_mink_se",
    "membership_auc_minkpp_se", "membership_forget_read_by_rule", "membership_holdout_read_by_rule",
    "privleak_mink", "privleak_minkpp",
    "forget_perplexity", "retain_perplexity", "general_perplexity", "knowmem_retain", "lm_eval_", "p_next[",
)
PREFIX_HELP = {
    "familiarity_completion_": "share of completions the judge put in this category",
    "lm_eval_": "lm-evaluation-harness score (should stay near the base's: retained ability)",
}


def format_number(value: float | None) -> str:
    """A measured value in 4 significant digits; `—` for one not measured (`None` or NaN)."""
    return f"{value:.4g}" if measured(value) else "—"


def format_difference(new: float | None, old: float | None) -> str:
    return f"{new - old:+.4g}" if measured(new) and measured(old) else "—"


def metric_rank(metric: str) -> int:
    """The position of `metric` in `METRIC_ORDER` (its own entry, else its prefix's); unknown ones last."""
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


def unattacked(metric: str) -> bool:
    """Whether `metric` belongs in the main tables: not measured after an attack (those are in the robustness
    section), or one of the attacked metrics reported there since before it existed (relearned, with hints)."""
    return split_attack(metric)[1] is None or metric in METRIC_HELP


def markdown_report(report: dict) -> str:
    """`report.md`: the evaluation record's results, verdicts against the oracle and metric meanings, titled."""
    auto = f"\n## How α was chosen (`alpha: auto`)\n\n{auto_markdown(report['auto'])}" if report.get("auto") else ""
    return "# Unlearning evaluation\n\n" + evaluation_markdown(report) + auto


def evaluation_markdown(evaluation: dict, level: int = 2) -> str:
    """Metrics as rows, roles as columns, the change of the unlearned model against the base and the oracle; with an
    oracle, which forget metrics of the unlearned model are above, at or below it and the verdict of every role; and
    what each metric means. `evaluation` holds `results` (role -> metric -> value) and, with an oracle,
    `oracle_comparison`; `level` is the heading level of its sections."""
    results, comparison = evaluation["results"], evaluation.get("oracle_comparison")
    metrics = sorted(dict.fromkeys(metric for role in results.values() for metric in role if unattacked(metric)),
                     key=metric_rank)
    lines = [
        "Lower familiarity = more forgotten. Retained ability (perplexity of retain text, lm-eval scores) should stay "
        "near the base's." + (ORACLE_GOAL if comparison else ""),
        "",
        *results_table(results, metrics),
    ]
    if comparison:
        heading = "#" * level
        lines += ["", f"{heading} Against the oracle", "", *verdict_summary(comparison),
                  *teacher_summary(evaluation.get("teacher_reaching_the_oracle")), *oracle_table(comparison)]
    robustness = robustness_table(results)
    if robustness:
        lines += ["", f"{'#' * level} Robustness", "", *robustness]
    lines += ["", f"{'#' * level} Metrics", ""]
    lines += [f"- `{metric}`: {metric_help(metric)}" for metric in metrics]
    return "\n".join(lines) + "\n"


def results_table(results: dict[str, dict[str, float | None]], metrics: list[str]) -> list[str]:
    """The results as a Markdown table: metrics as rows, roles as columns, then the changes of `COMPARED`."""
    roles = ordered_roles(results)
    new = COMPARED[0]
    changes = [other for other in (COMPARED[1], ORACLE) if new in results and other in results]
    rows = [
        [f"`{metric}`", *(format_number(results[role].get(metric)) for role in roles),
         *(format_difference(results[new].get(metric), results[other].get(metric)) for other in changes)]
        for metric in metrics
    ]
    return markdown_table(["metric", *roles, *(f"{new} − {other}" for other in changes)], rows)


def verdict_summary(comparison: dict[str, dict[str, dict]]) -> list[str]:
    """One line per verdict of the unlearned model against the oracle: which forget metrics are above, at or below
    it, and what that means (none without an unlearned role)."""
    rows = comparison.get(COMPARED[0], {})
    lines = []
    for side in VERDICTS:
        metrics = [(metric, row) for metric, row in rows.items() if row.get("verdict") == side and unattacked(metric)]
        if metrics:
            named = ", ".join(f"`{metric}` ({row['meaning']})" for metric, row in metrics)
            lines.append(f"- **{side}** the oracle: {named}")
    for metric in PERPLEXITIES:
        if metric in rows:
            lines.append(f"- {metric.replace('_', ' ')} {rows[metric]['change']:+.1%} against the base's: "
                         f"{rows[metric]['meaning']}")
    neighbour = rows.get(NEIGHBOUR)
    if neighbour:
        lines.append(f"- neighbour knowledge {neighbour['change']:+.3g} nat against the base's: {neighbour['meaning']}")
    return [f"The {COMPARED[0]} model against the oracle:", "", *lines, ""] if lines else []


def teacher_summary(teacher: dict | None) -> list[str]:
    """Which α, of the teachers measured, reaches the oracle's membership signal (nothing when none was measured)."""
    if not teacher:
        return []
    values = {row["alpha"]: row["value"] for row in teacher["teachers"]}
    measured_at = ", ".join(format_number(alpha) for alpha in values)
    if teacher["alpha"] is None:
        best = min(values.values())
        return [f"The teacher reaches the oracle's `{teacher['metric']}` at none of the α measured ({measured_at}; "
                f"lowest {format_number(best)} against the oracle's {format_number(teacher['oracle'])}). Measure a "
                "larger α, or reinforce longer (see the recommended procedure in the documentation's results).", ""]
    value = values[teacher["alpha"]]
    return [f"The teacher reaches the oracle's `{teacher['metric']}` at α = {format_number(teacher['alpha'])} "
            f"({format_number(value)} against {format_number(teacher['oracle'])}; α measured: {measured_at}): around "
            "it a student can reach the oracle's membership signal (a student trained long can pass its teacher: "
            "compare the student with the oracle).", ""]


def oracle_table(comparison: dict[str, dict[str, dict]]) -> list[str]:
    """Per forget metric and role, above / at / below the oracle and what that means, as a Markdown table."""
    roles = ordered_roles(comparison)
    metrics = sorted(dict.fromkeys(m for role in roles for m in comparison[role] if unattacked(m)), key=metric_rank)
    tolerances = ", ".join(f"{tolerance:g}{' relative' if relative else ''} for `{metric}`"
                           for metric, (tolerance, relative, _) in ORACLE_METRICS.items() if metric in metrics)
    intro = (f"Each forget metric of each role beside the oracle's: **above**, **at** or **below** it (at = within "
             f"{tolerances}), and what that means. Retain and general perplexity are compared with the base's "
             f"(retained = at most +{RETAIN_TOLERANCE:.0%}), neighbour knowledge too (retained = at most "
             f"{NEIGHBOUR_TOLERANCE:g} nat lower).")
    rows = [[f"`{metric}`", *(verdict_cell(comparison[role].get(metric), metric) for role in roles)]
            for metric in metrics]
    return [intro, "", *markdown_table(["metric", *roles], rows)]


def verdict_cell(row: dict | None, metric: str = "") -> str:
    if row is None:
        return "—"
    if "verdict" in row:
        return f"{row['verdict']} ({row['difference']:+.3g}): {row['meaning']}"
    change = f"{row['change']:+.3g} nat" if metric == NEIGHBOUR else f"{row['change']:+.1%}"
    return f"{change} vs base: {row['meaning']}"


def robustness_table(results: dict[str, dict[str, float | None]]) -> list[str]:
    """Each forget metric after each attack (`comparison.ATTACKS`), every role under the same attack, with each
    unlearned model (`unlearned_roles`) against the oracle after the same attack; and which attacks bring knowledge
    back beyond the oracle's. Nothing when no attack was measured."""
    roles, compared = ordered_roles(results), unlearned_roles(results) if ORACLE in results else []
    rows, beyond = [], []
    for attack in ATTACKS:
        for metric in ATTACKED_METRICS:
            key = attack_key(metric, attack)
            if not any(measured(results[role].get(key)) for role in roles):
                continue
            sides = []
            for role in compared:
                side = robust_verdict(results, key, role)
                sides.append(f"{side[0]} ({side[1]:+.3g})" if side else "—")
                if side and side[0] == "above":
                    before = robust_verdict(results, metric, role)
                    named = f"{role}: " if len(compared) > 1 else ""
                    beyond.append(f"{named}`{metric}` after `{attack}` ({side[1]:+.3g}"
                                  + ("" if brought_back(results, metric, attack, role) else
                                     f"; {before[1]:+.3g} without it") + ")")
            rows.append([f"`{attack}`", f"`{metric}`", *(format_number(results[role].get(key)) for role in roles),
                         *sides])
    if not rows:
        return []
    attacks = sorted({row[0].strip("`") for row in rows}, key=list(ATTACKS).index)
    models, whose = ("unlearned model", "unlearned model's") if len(compared) == 1 else \
        ("unlearned models", "unlearned models'")
    against = (f", and the {models} against the oracle after the same attack (above = the attack brings back "
               "knowledge a model that never read the target does not have)") if compared else ""
    everyone = ", the oracle included" if ORACLE in roles else ""
    lines = [f"Every role under the same attack{everyone}: each forget metric after each attack{against}.",
             "", *(f"- `{attack}`: {ATTACKS[attack]}" for attack in attacks), ""]
    if compared:
        lines += [("**Beyond the oracle** (the difference to it; where the attack adds no more than the tolerance, "
                   "the difference without it): " + ", ".join(beyond) + "." if beyond else
                   f"No attack brings the {whose} forget metrics above the oracle's after the same attack."), ""]
    return lines + markdown_table(["attack", "metric", *roles, *(f"{role} vs {ORACLE}" for role in compared)], rows)


def robust_verdict(results: dict, key: str, role: str) -> tuple[str, float] | None:
    """`role`'s verdict against the oracle on `key` (`"above"`, `"at"`, `"below"`) and the difference; `None` when
    either was not measured."""
    value, oracle = (results.get(name, {}).get(key) for name in (role, ORACLE))
    if not (measured(value) and measured(oracle)):
        return None
    tolerance, relative, _ = oracle_tolerance(key)
    return verdict(value, oracle, tolerance, relative), value - oracle


def brought_back(results: dict, metric: str, attack: str, role: str) -> bool:
    """Whether ``attack`` brings ``role``'s ``metric`` back above the oracle's after the same attack: above it, by
    more than the metric's tolerance beyond ``role``'s difference to the oracle without the attack, with ``role``'s
    own value risen by more than the tolerance (an oracle that an attack makes less sure brings nothing back); when
    ``role`` was not measured without the attack, above the oracle's after it."""
    after = robust_verdict(results, attack_key(metric, attack), role)
    if after is None or after[0] != "above":
        return False
    before = robust_verdict(results, metric, role)
    if before is None:
        return True
    tolerance, relative, more = oracle_tolerance(metric)
    risen = verdict(results[role][attack_key(metric, attack)], results[role][metric], tolerance, relative)
    return after[1] - before[1] > tolerance and risen == ("above" if more else "below")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table (a `|` inside a cell escaped)."""
    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + " --- |" * len(header), *(line(row) for row in rows)]


AUTO_COLUMNS = ("membership_auc_mink", "membership_auc_minkpp", "familiarity_token", "retain_perplexity")


def auto_markdown(auto: dict) -> str:
    """How ``alpha: auto`` chose: the reason, the teacher of every α of every sweep, and where the student stopped."""
    from .autotune import ENTITY, Targets

    lines = [f"α = {auto['alpha']:g}: {auto['reason']}.", ""]
    targets = auto["targets"]
    recorded = Targets(**targets)  # an older record has no entity tolerance, Min-K%++ target or error: defaults
    entity_tolerance = recorded.tolerance(ENTITY)
    plus = "" if recorded.membership_plus is None else f", Min-K%++ {format_number(recorded.membership_plus)}"
    lines += [f"Targets: membership AUC (Min-K%) {format_number(targets['membership'])}{plus} ± "
              f"{targets['membership_tolerance']:g}{recorded.resolution()}; familiarity at most "
              f"{format_number(targets['familiarity'])} + {targets['familiarity_tolerance']:.2g}; "
              f"entity probability at most "
              f"{format_number(targets.get('entity'))} + {entity_tolerance:.2g}{knowledge_target(recorded)} "
              "(— = not a target).", ""]
    if auto.get("neighbour_knowledge"):
        lines += [f"Neighbour knowledge (the second budget): {auto['neighbour_knowledge']}.", ""]
    rows = []
    for round_, sweep in enumerate(auto["sweeps"]):
        for alpha, metrics in sweep.items():
            chosen = " (chosen)" if round_ == auto["round"] and float(alpha) == auto["alpha"] else ""
            rows.append([round_, "base" if float(alpha) == 0 else f"teacher α={alpha}{chosen}",
                         *(format_number(metrics.get(key)) for key in AUTO_COLUMNS)])
    lines += markdown_table(["reinforcement round", "model", *(f"`{key}`" for key in AUTO_COLUMNS)], rows)
    stopping = auto.get("stopping")
    if stopping:
        lines += ["", stopping_summary(stopping)]
    return "\n".join(lines) + "\n"


def knowledge_target(targets) -> str:
    """The forget knowledge's target as `auto_markdown` says it ("" for a run without forget knowledge)."""
    if targets.knowledge is None:
        return ""
    return (f"; forget knowledge's margin (true answers' log-likelihood per token less the false ones') at most "
            f"{targets.knowledge:.3g} + {targets.knowledge_tolerance:.2g} nat")


def times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def kept_cost(stopping: dict) -> str:
    """What the kept weights cost as the stopping rule read it: the budget's text's perplexity change (and the
    package's general text's and the holdout text's, where the rule read them) and the neighbour knowledge's (each
    with its bound, in records that have it), against the base's ("" without them)."""
    base, kept = stopping.get("base") or {}, stopping.get("best") or {}
    if "retain_perplexity" not in kept or "retain_perplexity" not in base:
        return ""
    text = f" There the budget's text reads {kept['retain_perplexity'] / base['retain_perplexity'] - 1:+.1%} perplexity"
    if "retain_perplexity_bound" in kept:
        text += (f" (its {stopping.get('budget_confidence', 0.95):.0%} bound "
                 f"{kept['retain_perplexity_bound'] / base['retain_perplexity'] - 1:+.1%})")
    for key, bound in PERPLEXITY_BUDGETS:
        if key in OTHER_BUDGET_TEXTS and key in kept and key in base:
            text += (f", {OTHER_BUDGET_TEXTS[key]} {kept[key] / base[key] - 1:+.1%} "
                     f"(its bound {kept[bound] / base[key] - 1:+.1%})")
    if "neighbour_knowledge" in kept and "neighbour_knowledge" in base:
        text += f" and neighbour knowledge {kept['neighbour_knowledge'] - base['neighbour_knowledge']:+.3f} nat"
        if "neighbour_knowledge_bound" in kept:
            text += f" (its bound {kept['neighbour_knowledge_bound'] - base['neighbour_knowledge']:+.3f})"
    return text + " against the base."


def neighbour_resolution_note(stopping: dict) -> str:
    """When the neighbour budget held the student back by its bound alone: how many rows would have read the change
    within it (the ``neighbour_resolution`` of the record), since more rows, not another setting, let it go on."""
    held = stopping.get("neighbour_resolution")
    if not held:
        return ""
    return (f" At step {held['step']} the neighbour knowledge's {held['rows']} rows read {held['change']:+.3f} nat "
            f"against the base, within its budget, but their scatter put the bound at {held['bound']:+.3f}, over it: "
            f"about {held['rows_needed']:,} rows of the kind (`--neighbour_knowledge`) would read such a change within "
            "the budget.")


def kept_weights(step: int | None, scale: float, origin: int | None) -> str:
    """The weights a run kept, in words: a measured step's, or a point of a line searched towards it (from where the
    run began, from its best weights within budget, or from the weights it went back to at that same step)."""
    if scale == 1:
        return f"those of step {step}"
    if origin is None:
        return f"a point {scale:g} of the way from where it began to step {step}'s"
    if origin == step:
        return (f"a point {scale:g} of the way from the weights it went back to at step {step} (its best within "
                f"budget) to step {step}'s before it went back")
    return f"a point {scale:g} of the way from its best weights within budget before (step {origin}) to step {step}'s"


def stopping_summary(stopping: dict) -> str:
    """Where the student of ``alpha: auto`` stopped, which weights it kept, and whether they reach the targets (the
    ``stopping`` record of the run; records from before ``reached`` existed say only the first two)."""
    step = stopping["best_step"]
    weights = kept_weights(step, stopping.get("best_scale", 1.0), stopping.get("best_from_step"))
    if step is None:
        kept = "those it ended with (no measurement after step 0 to keep)"
    elif stopping.get("within_budget", True):
        kept = f"{weights}, the measurement closest to the targets within budget"
    else:
        kept = f"{weights}, the measurement least over its budgets"
    text = f"The student stopped at step {stopping['stopped_at']}: {stopping['reason']}; its weights are {kept}."
    text += kept_cost(stopping) + neighbour_resolution_note(stopping)
    if stopping.get("backtracks"):
        count, dropped = stopping["backtracks"], stopping.get("dropped_cap_at")
        halved = count - (dropped is not None)
        changes = [f"dropped the original-token cap (step {dropped})"] if dropped is not None else []
        changes += [f"halved its learning rate {times(halved)}"] if halved else []
        text += (" Over budget with the retain weight at its ceiling, it went back to its best measurement within "
                 "budget (when none was yet, towards where it began, to the furthest point measured within budget "
                 f"on the way) {times(count)} and " + ", then ".join(changes) + ".")
    if stopping.get("reached") and not stopping["reason"].startswith(TARGETS_REACHED):  # stopped by a budget
        return text + " They reach every target within budget."
    if stopping.get("reached") is not False:
        return text
    left = ", ".join(f"`{key}` {value:.0%}" for key, value in (stopping.get("left") or {}).items() if value)
    if left or stopping["best_step"] is None:
        shortfall = f" (left of the way from the base: {left})" if left else ""
        text += f" **The targets were not reached**{shortfall}: this model remembers more of the target " \
                "than the targets allow."
        if stopping.get("backtracks") and stopping["reason"].startswith(STEPS_RAN_OUT):
            text += " The steps ran out after it went back: more epochs (`num_train_epochs`) give it room."
        return text
    return text + " **The targets were reached only over budget**: this model has lost more of what it should keep " \
                  "than the budgets allow."
