"""The record of an evaluation, `report.json`, and the files rendered from it: `report.md` and the plots.

`report.json` holds the `results` (role -> metric -> value, the `eval_results` of
[`build_model_card`][whp_trainer.hub.build_model_card]), their `oracle_comparison` when an oracle was measured, the
`settings`, the package `versions`, the training callback's `history`, and `measured_adapters`: role -> sha256 of
the adapter files measured (`whp_trainer.runs.adapter_digest`), so that a card takes only the results of its own
adapter. Its `results` and `oracle_comparison` are
the `evaluation` of the run record that the model card is rendered from (see `whp_trainer.record`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..record import framework_versions
from .comparison import ORACLE, oracle_comparison, teacher_reaching_the_oracle
from .config import EvaluateConfig
from .markdown import markdown_report
from .plots import write_plots

REPORT_FILE = "report.json"


def write_report(
    results: dict[str, dict[str, float]],
    output_dir: str | os.PathLike,
    history: list[dict] | None = None,
    config: EvaluateConfig | None = None,
    auto: dict | None = None,
    probe_names: dict[str, list[str]] | None = None,
    measured_adapters: dict[str, str] | None = None,
) -> Path:
    """Write `report.json`, `report.md` (rendered from it) and (`config.plots`, default on) the PNG plots; return
    `output_dir`.

    Args:
        results: role -> metric -> value, as `evaluate_model` returns (the card's `eval_results`).
        output_dir: the folder to write into (created if needed).
        history: `FamiliarityCallback.history`, for the plots over training steps.
        config: the settings, recorded in `report.json`.
        auto: with an unlearning run of ``alpha: auto``, what it chose and why (its run record's ``auto``).
        probe_names: metric -> [prompt, token] of the history's next-token metrics (`read_probe_names`), for the
            plot's legend only: the report names them by index, as they were logged.
        measured_adapters: role -> hash of the adapter measured in that role (the report's identity).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "results": results,
        "settings": None if config is None else dataclasses.asdict(config),
        "versions": framework_versions(),
        "history": history,
        "auto": auto,
        "measured_adapters": measured_adapters or {},
        **evaluation_record(results),
    }
    (output_dir / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    (output_dir / "report.md").write_text(markdown_report(report), encoding="utf-8")
    if config is None or config.plots:
        write_plots(results, history, output_dir, probe_names)
    return output_dir


def evaluation_record(results: dict[str, dict[str, float | None]]) -> dict:
    """The facts of an evaluation that its renderings show: `results`, and with an oracle the `oracle_comparison`
    (verdict of every forget metric of every role)."""
    record = {"results": results}
    if ORACLE in results:
        record["oracle_comparison"] = oracle_comparison(results)
    teacher = teacher_reaching_the_oracle(results)
    if teacher is not None:
        record["teacher_reaching_the_oracle"] = teacher
    return record
