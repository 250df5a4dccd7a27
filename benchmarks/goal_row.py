"""The goal row of docs/results.md, checked on evaluation reports: one line per unlearned model.

Against the oracle of the same report: VerbMem and first-mention entity probability at most 0.02 above the
oracle's, membership AUC (Min-K% and Min-K%++) within ±0.05 of the oracle's, familiarity after relearning at most
0.05 above the oracle's after the same probe (an AUC is printed with its standard error when the report has it);
against the base: held-out perplexity at most +3 %, neighbour knowledge (mean answer log-likelihood) at most 0.1 nat
below. With ``alpha: auto``, what the run chose. With ``--attacks``, the robustness rows instead: each forget metric of
each unlearned model after each attack beside the oracle's after the same attack, and the metrics the attack brings
back beyond the oracle (above it by more than the metric's tolerance beyond the difference without the attack).

    python benchmarks/goal_row.py whp-demo-42/evaluation-auto/report.json whp-demo-1/evaluation-auto/report.json
    python benchmarks/goal_row.py --attacks whp-demo-42/evaluation-auto/report.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from whp_trainer.evaluation.comparison import ATTACKS, ORACLE, attack_key, measured, unlearned_roles
from whp_trainer.evaluation.markdown import brought_back, format_number

COLUMNS = ("VerbMem", "entity", "AUC Min-K", "AUC Min-K++", "relearned", "held-out ppl", "neighbour")
ATTACK_COLUMNS = {"familiarity": "familiarity_token", "entity": "entity_first_mention", "VerbMem": "verbmem_forget",
                  "facts (answer log-lik.)": "knowledge_forget_loglik",
                  "facts (two-choice)": "knowledge_forget_two_choice"}


def goals(model: dict, oracle: dict, base: dict) -> dict[str, tuple[str, bool | None]]:
    """Column -> (the value as printed, whether its goal is met; ``None``: not measured)."""

    def check(key, reference, met, show=lambda value: f"{value:.3f}"):
        if key not in model or key not in reference or any(map(math.isnan, (model[key], reference[key]))):
            return "—", None
        return f"{shown(model, key, show)} ({shown(reference, key, show)})", met(model[key], reference[key])

    return {
        "VerbMem": check("verbmem_forget", oracle, lambda value, ref: value <= ref + 0.02),
        "entity": check("entity_first_mention", oracle, lambda value, ref: value <= ref + 0.02, lambda v: f"{v:.4f}"),
        "AUC Min-K": check("membership_auc_mink", oracle, lambda value, ref: abs(value - ref) <= 0.05),
        "AUC Min-K++": check("membership_auc_minkpp", oracle, lambda value, ref: abs(value - ref) <= 0.05),
        "relearned": check("familiarity_token_relearned", oracle, lambda value, ref: value <= ref + 0.05,
                           lambda v: f"{v:.4f}"),
        "held-out ppl": check("retain_perplexity", base, lambda value, ref: value <= ref * 1.03,
                              lambda v: f"{v:.4g}"),
        "neighbour": check("knowledge_neighbour_loglik", base, lambda value, ref: value >= ref - 0.1,
                           lambda v: f"{v:.3f}"),
    }


def shown(metrics: dict, key: str, show) -> str:
    """A value as printed, with its standard error when the report has one (``<key>_se``: membership AUCs)."""
    error = metrics.get(f"{key}_se")
    return show(metrics[key]) + ("" if error is None else f" ±{error:.2f}")


def auto_summary(report: dict) -> str:
    """α, the reinforcement round and where the student stopped, when the report holds an ``alpha: auto`` record."""
    auto = report.get("auto")
    if not auto:
        return ""
    stopping = auto.get("stopping", {})
    return (f"α {auto['alpha']:g}, reinforcement round {auto['round']}, teacher reached: {auto['reached']}; stopped at "
            f"step {stopping.get('stopped_at')} ({stopping.get('reason')}), ended on step {stopping.get('best_step')}")


def rows(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    results = report["results"]
    lines = []
    for role in unlearned_roles(results):
        checked = goals(results[role], results["oracle"], results["base"])
        missed = [column for column, (_, met) in checked.items() if met is False]
        verdict = "every goal met" if not missed else "missed: " + ", ".join(missed)
        cells = [f"{shown} {'✓' if met else '✗' if met is False else ''}".strip() for shown, met in checked.values()]
        lines.append(f"| {path.parent} · {role} | " + " | ".join(cells) + f" | {verdict} | {auto_summary(report)} |")
    return lines


def attack_rows(path: Path) -> list[str]:
    """One line per unlearned model and attack, the first without one: each forget metric after the attack, the
    oracle's after the same attack in brackets, and the metrics the attack brings back beyond the oracle."""
    results = json.loads(path.read_text())["results"]
    lines = []
    for role in unlearned_roles(results):
        for attack in (None, *ATTACKS):
            keys = [metric if attack is None else attack_key(metric, attack) for metric in ATTACK_COLUMNS.values()]
            if not any(measured(results[role].get(key)) for key in keys):
                continue
            cells = [f"{format_number(results[role].get(key))} ({format_number(results[ORACLE].get(key))})"
                     for key in keys]
            back = [column for column, metric in ATTACK_COLUMNS.items()
                    if attack is not None and brought_back(results, metric, attack, role)]
            lines.append(f"| {path.parent} · {role} | {attack or 'none'} | " + " | ".join(cells)
                         + f" | {', '.join(back) or '—'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files of whp evaluate or a benchmark")
    parser.add_argument("--attacks", action="store_true",
                        help="print the robustness rows (each forget metric after each attack) instead")
    args = parser.parse_args(argv)
    if args.attacks:
        print("| run · model | attack | " + " | ".join(f"{column} (oracle)" for column in ATTACK_COLUMNS)
              + " | brought back beyond the oracle |")
        print("| --- " * (len(ATTACK_COLUMNS) + 3) + "|")
    else:
        print("| run · model | " + " | ".join(f"{column} (reference)" for column in COLUMNS) + " | goal row | auto |")
        print("| --- " * (len(COLUMNS) + 3) + "|")
    for path in args.reports:
        print("\n".join(attack_rows(path) if args.attacks else rows(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
