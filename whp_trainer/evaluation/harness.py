"""Retained ability on standard benchmarks, through lm-evaluation-harness (the ``eval`` extra)."""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Sequence

from .familiarity import evaluation_mode

PAPER_TASKS = ("arc_challenge", "arc_easy", "boolq", "hellaswag", "piqa", "winogrande")  # Eldan & Russinovich, Table 1
METRIC = "acc"


def lm_eval_benchmarks(
    model,
    tokenizer,
    tasks: Sequence[str] = PAPER_TASKS,
    batch_size: int = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    include_path: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Accuracy of the model (as it is: a ``PeftModel`` with its active adapter) on lm-evaluation-harness tasks.

    Runs ``lm_eval.simple_evaluate`` on ``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer)``.
    Each task reports plain ``acc`` (not ``acc_norm``): the metric whose values the paper's table matches for
    Llama2-7b-chat (e.g. HellaSwag 0.577, ARC-C 0.440). The global RNGs are not reseeded.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        tasks: lm-eval task names; the default is the paper's benchmarks (`PAPER_TASKS`).
        batch_size: requests per forward pass.
        limit: at most this many examples per task (a fraction of each task if below 1); ``None``: all.
        num_fewshot: few-shot examples per prompt; ``None``: each task's default (zero-shot for these tasks).
        include_path: a folder of extra task configs (YAML), e.g. tasks on local data sets.

    Raises:
        ImportError: lm-evaluation-harness is not installed (``pip install whp_trainer[eval]``).
    """
    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM

    with evaluation_mode(model):
        output = lm_eval.simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager(None if include_path is None else str(include_path)),
            log_samples=False,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    return task_accuracies(output["results"], tasks)


def import_lm_eval():
    try:
        import lm_eval
    except ImportError as error:
        raise ImportError("lm_eval_benchmarks needs lm-evaluation-harness: pip install whp_trainer[eval]") from error
    return lm_eval


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None):
    """lm-eval's index of its tasks (and of those in ``include_path``): slow to build, so built once."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def check_tasks(tasks: Sequence[str], include_path: str | os.PathLike | None = None) -> None:
    """Raise ``ValueError`` naming the tasks lm-eval does not know (with the closest names), e.g. before a model is
    loaded; ``ImportError`` when lm-eval is not installed."""
    known = task_manager(None if include_path is None else str(include_path)).all_tasks
    unknown = [task for task in tasks if task not in known]
    if unknown:
        close = {task: difflib.get_close_matches(task, known, n=3) for task in unknown}
        raise ValueError(f"lm-eval knows no task(s) {unknown}; close names: {close}")


def task_accuracies(results: dict[str, dict], tasks: Sequence[str]) -> dict[str, float]:
    """``task -> acc`` from the ``results`` of ``lm_eval.simple_evaluate`` (metric keys ``"acc,<filter>"``)."""
    scores = {}
    for task in tasks:
        metrics = results.get(task, {})
        key = next((key for key in metrics if key.split(",")[0] == METRIC), None)
        if key is None:
            raise ValueError(f"lm-eval reported no {METRIC!r} for task {task!r}; got {sorted(metrics)}")
        scores[task] = float(metrics[key])
    return scores
