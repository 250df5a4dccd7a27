"""The roles side by side: their order in tables, and each forget metric of each role against the oracle's
(above, at or below it, and what that means)."""

from __future__ import annotations

import math
import re

ORACLE = "oracle"  # the column of --oracle_model: a model that never read the target
TEACHER = "teacher"  # columns "teacher α=5": the generic-logit teacher evaluated as a model
TEACHER_COLUMN = re.compile(rf"{TEACHER} α=(\d+(?:\.\d*)?)")  # its α, in "teacher α=5" (or "teacher α=5 (…)")
COLUMN_ORDER = ("base", ORACLE, "reinforced", TEACHER, "unlearned")
ORACLE_METRICS = {  # forget metrics compared with the oracle: metric -> (tolerance of "at the oracle", relative?,
    # more = more knowledge?)
    **dict.fromkeys(("familiarity_token", "familiarity_completion", "familiarity_token_hints", "knowmem_forget",
                     "entity_first_mention", "verbmem_forget", "memorization_rouge_l", "memorization_exact"),
                    (0.02, False, True)),
    **dict.fromkeys(("familiarity_token_relearned", "membership_auc_mink", "membership_auc_minkpp",
                     "knowledge_forget_two_choice"), (0.05, False, True)),
    "knowledge_forget_loglik": (0.1, False, True),
    "forget_perplexity": (0.03, True, False),
}
RETAIN_TOLERANCE = 0.03  # retain perplexity within 3 % of the base's counts as ability kept
PERPLEXITIES = ("retain_perplexity", "general_perplexity")  # ordinary text, compared with the base's
NEIGHBOUR = "knowledge_neighbour_loglik"  # knowledge that must stay: compared with the base's, not the oracle's
NEIGHBOUR_TOLERANCE = 0.1  # neighbour answer log-likelihood within 0.1 nat of the base's counts as knowledge kept
ATTACK = "@"  # "familiarity_token@nf4": a forget metric measured after an attack of ATTACKS
ATTACKS = {  # the robustness section's attacks, in its order: name -> what is done to every role alike
    "int8": "the merged model reloaded in 8-bit (bitsandbytes LLM.int8; an adapter trained on a quantized base is "
            "merged into the full-precision one)",
    "nf4": "the merged model reloaded in 4-bit NF4 (bitsandbytes; an adapter trained on a quantized base is merged "
           "into the full-precision one)",
    "full_precision": "the adapter, trained on a quantized base, put on the full-precision base",
    "relearn_forget": "a few fine-tuning steps on forget text (a fresh adapter on top of the role's)",
    "relearn_neighbour": "as many steps on --relearn_data: text about the target that is not the forget text",
    "many_shot": "forget passages in the prompt before each probe and question",
    "paraphrased": "the --paraphrased_probes: the probes reworded",
    "hints": "other anchors of the target named before each probe",
}
ATTACKED_METRICS = ("familiarity_token", "entity_first_mention", "verbmem_forget", "knowledge_forget_loglik",
                    "knowledge_forget_two_choice")  # the forget metrics measured again after each attack, in order
LEGACY_KEYS = {("familiarity_token", "relearn_forget"): "familiarity_token_relearned",
               ("familiarity_token", "hints"): "familiarity_token_hints"}  # names these had before the section


def attack_key(metric: str, attack: str) -> str:
    """The results' key of ``metric`` measured after ``attack``: ``"metric@attack"`` (or its older name)."""
    return LEGACY_KEYS.get((metric, attack), f"{metric}{ATTACK}{attack}")


def split_attack(metric: str) -> tuple[str, str | None]:
    """``"familiarity_token@nf4"`` -> ``("familiarity_token", "nf4")`` (older names too); a metric without attack ->
    ``(metric, None)``."""
    legacy = {key: pair for pair, key in LEGACY_KEYS.items()}
    if metric in legacy:
        return legacy[metric]
    name, _, attack = metric.partition(ATTACK)
    return name, attack or None


def oracle_tolerance(metric: str) -> tuple[float, bool, bool] | None:
    """`ORACLE_METRICS`' entry of a forget metric, measured after an attack or not; `None` for other metrics."""
    return ORACLE_METRICS.get(metric) or ORACLE_METRICS.get(split_attack(metric)[0])


def teacher_alphas(results: dict) -> dict[float, str]:
    """α -> role of every teacher column named exactly "teacher α=<α>"."""
    found = (TEACHER_COLUMN.fullmatch(role) for role in results)
    return {float(match.group(1)): match.group(0) for match in found if match}


def teacher_reaching_the_oracle(results: dict, metric: str = "membership_auc_mink") -> dict | None:
    """The smallest α measured whose teacher's membership AUC is at most the oracle's plus the tolerance of "at the
    oracle": around it, a student trained towards the teacher can reach the oracle's membership signal.
    `{"alpha": None, ...}` when no teacher measured reaches it; `None` without an oracle's or a teacher's value."""
    oracle = results.get(ORACLE, {}).get(metric)
    teachers = {alpha: results[role][metric] for alpha, role in sorted(teacher_alphas(results).items())
                if measured(results[role].get(metric))}
    if not (measured(oracle) and teachers):
        return None
    reached = [alpha for alpha, value in teachers.items() if value <= oracle + ORACLE_METRICS[metric][0]]
    return {"metric": metric, "alpha": reached[0] if reached else None, "oracle": oracle,
            "teachers": [{"alpha": alpha, "value": value} for alpha, value in teachers.items()]}


def ordered_roles(results: dict) -> list[str]:
    """The known roles in their order (base, oracle, reinforced, teachers by α, unlearned), then any other in the
    order given."""

    def rank(role: str):
        teacher = TEACHER_COLUMN.match(role)
        kind = TEACHER if teacher else role
        alpha = float(teacher.group(1)) if teacher else 0.0
        return (COLUMN_ORDER.index(kind) if kind in COLUMN_ORDER else len(COLUMN_ORDER), alpha)

    return sorted(results, key=rank)


def unlearned_roles(results: dict) -> list[str]:
    """The unlearned models among the roles, in table order: every role but the base, the oracle, the reinforced
    model and the teachers (``"unlearned"`` in an evaluation; a benchmark names each by its setting)."""
    references = {"base", ORACLE, "reinforced"}
    return [role for role in ordered_roles(results) if role not in references and not TEACHER_COLUMN.match(role)]


def verdict(value: float, oracle: float, tolerance: float, relative: bool = False) -> str:
    """`"at"` within the tolerance of the oracle, else `"above"` or `"below"` it (by value)."""
    margin = tolerance * abs(oracle) if relative else tolerance
    if abs(value - oracle) <= margin:
        return "at"
    return "above" if value > oracle else "below"


def oracle_comparison(results: dict[str, dict[str, float]]) -> dict[str, dict[str, dict]]:
    """For every role but the oracle, each forget metric the oracle has: the value, the oracle's, the difference,
    the verdict (`"above"`/`"at"`/`"below"` the oracle, by value; the tolerances of `ORACLE_METRICS`)
    and whether that verdict means knowledge left (`"knowledge left"`) or damage (`"over-forgotten"`); forget metrics
    after an attack (``metric@attack``) are compared with the oracle after the same attack. The retain perplexity
    and the neighbour knowledge are compared with the base's instead (`"retained"` within 3 %, within 0.1 nat)."""
    oracle = results[ORACLE]
    comparison = {}
    for role in ordered_roles(results):
        if role == ORACLE:
            continue
        rows = {}
        for metric, reference in oracle.items():
            value, tolerances = results[role].get(metric), oracle_tolerance(metric)
            if tolerances is None or not (measured(value) and measured(reference)):
                continue
            tolerance, relative, knowledge_up = tolerances
            side = verdict(value, reference, tolerance, relative)
            meaning = "as the oracle" if side == "at" else (
                "knowledge left" if (side == "above") == knowledge_up else "over-forgotten")
            rows[metric] = {"value": value, "oracle": reference, "difference": value - reference, "verdict": side,
                            "meaning": meaning}
        for metric in PERPLEXITIES:
            base, value = results.get("base", {}).get(metric), results[role].get(metric)
            if measured(base) and base > 0 and measured(value):
                change = value / base - 1
                rows[metric] = {"value": value, "base": base, "change": change,
                                "meaning": "retained" if change <= RETAIN_TOLERANCE else "damaged"}
        base, value = results.get("base", {}).get(NEIGHBOUR), results[role].get(NEIGHBOUR)
        if measured(base) and measured(value):
            change = value - base
            rows[NEIGHBOUR] = {"value": value, "base": base, "change": change,
                               "meaning": "retained" if change >= -NEIGHBOUR_TOLERANCE else "damaged"}
        comparison[role] = rows
    return comparison



def measured(value: float | None) -> bool:
    """Whether a metric was measured: a finite number (not measured is `None` in a record, NaN in results)."""
    return value is not None and math.isfinite(value)


