"""``whp evaluate``'s results sent to the trackers a ``Trainer`` reports to (``report_to``: TensorBoard, W&B,
Trackio, …), through the same ``transformers`` integration callbacks, so they sit beside the training curves."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import get_reporting_integration_callbacks

LOG_PREFIX = "eval_"  # the integrations show "eval_<role>/<metric>" as "eval/<role>/<metric>"


def tracker_logs(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``role -> metric -> value`` as one flat ``{"eval_<role>/<metric>": value}`` (values not measured left out)."""
    return {
        f"{LOG_PREFIX}{role}/{metric}": value
        for role, metrics in results.items()
        for metric, value in metrics.items()
        if value is not None and math.isfinite(value)
    }


def log_to_trackers(
    results: dict[str, dict[str, float]],
    report_to: str | list[str],
    output_dir: str | os.PathLike,
    run_name: str | None = None,
    model=None,
    plots: Sequence[str | os.PathLike] = (),
) -> list[str]:
    """Log ``results`` (and the PNG ``plots``: TensorBoard, W&B, Trackio) as one run of each tracker of ``report_to``.

    Each tracker is opened, logged to and closed by its ``transformers`` integration callback, as the ``Trainer``
    does (TensorBoard writes under ``output_dir/runs/``; ``TENSORBOARD_LOGGING_DIR``, ``WANDB_PROJECT`` … apply).
    Returns the names of the callbacks used.

    Args:
        results: ``role -> metric -> value``, as [`evaluate_model`][whp_trainer.evaluation.evaluate_model] returns.
        report_to: as ``TrainingArguments.report_to``: ``"tensorboard"``, ``"wandb"``, ``"trackio"``, a list,
            ``"all"`` or ``"none"``.
        output_dir: the evaluation's folder.
        run_name: the trackers' run name.
        model: the evaluated model, whose config the trackers record.
        plots: PNG files to log as images.
    """
    args = TrainingArguments(output_dir=str(output_dir), report_to=report_to, run_name=run_name)
    callbacks = [callback() for callback in get_reporting_integration_callbacks(args.report_to)]
    state, control = TrainerState(), TrainerControl()
    for callback in callbacks:
        callback.on_train_begin(args, state, control, model=model)
        callback.on_log(args, state, control, model=model, logs=tracker_logs(results))
        log_images(callback, [Path(plot) for plot in plots])
        callback.on_train_end(args, state, control, model=model)
    return [type(callback).__name__ for callback in callbacks]


def log_images(callback, plots: list[Path]) -> None:
    """The plots as images, for the integrations that take them (TensorBoard, W&B, Trackio)."""
    if not plots:
        return
    if getattr(callback, "tb_writer", None) is not None:
        from matplotlib.image import imread

        for plot in plots:
            callback.tb_writer.add_image(f"eval/{plot.stem}", imread(plot)[..., :3], dataformats="HWC")
        callback.tb_writer.flush()
        return
    tracker = getattr(callback, "_wandb", None) or getattr(callback, "_trackio", None)  # the same log/Image API
    if getattr(callback, "_initialized", False) and hasattr(tracker, "Image"):
        tracker.log({f"eval/{plot.stem}": tracker.Image(str(plot)) for plot in plots})
