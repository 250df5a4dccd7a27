"""What a run prints: whp's own lines, one progress bar per long step, and the training metrics as one readable line
per logging step (as TRL's console output is). The libraries' warnings, progress bars and raw metric dicts are shown
with ``WHP_VERBOSE=1``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

from tqdm.auto import tqdm
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

from .verbosity import quiet_library_loggers, verbose

RUN_STATISTICS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "epoch")


def setup_output() -> None:
    """The ``whp`` command's output: log records as plain lines above any progress bar, whp's from INFO on, and,
    unless ``WHP_VERBOSE`` is set, nothing of the libraries but errors; under several processes, from the first."""
    logging.basicConfig(level=logging.WARNING, handlers=[BarSafeHandler()])
    logging.getLogger("whp_trainer").setLevel(logging.INFO)
    if not verbose():
        quiet_third_parties()
    if not first_process():
        quiet_this_process()


def first_process() -> bool:
    """Whether this is the first (or only) process of a run: a launcher (torchrun, accelerate launch) numbers its
    processes in ``RANK``."""
    return os.environ.get("RANK", "0") == "0"


def quiet_this_process() -> None:
    """whp's lines and warnings off in a process other than the first, which prints the same: its errors stay."""
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (for the life of the process)
    logging.getLogger("whp_trainer").setLevel(logging.ERROR)


class BarSafeHandler(logging.Handler):
    """Writes records above the progress bar in use (``tqdm.write``): whp's information as it is, warnings and
    errors with their level and logger."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            line = record.getMessage()
        elif record.name.startswith("whp_trainer"):
            line = f"whp: {record.levelname.lower()}: {record.getMessage()}"
        else:
            line = f"{record.levelname} {record.name}: {record.getMessage()}"
        tqdm.write(line, file=sys.stderr)


def quiet_third_parties() -> None:
    """The libraries' warnings (optional kernels, deprecations) and progress bars (datasets' map and filter, loading
    and writing weights) off; the Trainer keeps its training bar."""
    import datasets
    import transformers

    quiet_library_loggers()
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!whp_trainer)")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    # TrainingArguments turns the training bar off when its logger is above WARNING: keep it at WARNING, and drop its
    # warnings with a filter instead
    arguments_logger = logging.getLogger("transformers.training_args")
    arguments_logger.setLevel(logging.WARNING)
    if not arguments_logger.filters:
        arguments_logger.addFilter(lambda record: record.levelno >= logging.ERROR)


def readable_progress(trainer) -> None:
    """The trainer prints each log as one readable line (`metrics_line`), with its progress bar unless
    ``disable_tqdm``; left as the Trainer made it with ``WHP_VERBOSE``."""
    if verbose():
        return
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ReadableProgress)
    elif trainer.pop_callback(PrinterCallback) is not None:
        trainer.add_callback(ReadablePrinter)


class ReadableProgress(ProgressCallback):
    """The Trainer's progress bar, with every log written above it as one line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            tqdm.write(metrics_line(state, logs))


class ReadablePrinter(TrainerCallback):
    """Every log printed as one line (no progress bar: ``disable_tqdm``)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(metrics_line(state, logs), flush=True)


def metrics_line(state, logs: dict) -> str:
    """``step 10/48 · epoch 0.33 · loss 1.364 · grad_norm 0.7887 …``; the end of training as
    ``trained 48 steps in 25.9 s · train_loss 0.9637``."""
    shown = {key: value for key, value in logs.items() if key not in RUN_STATISTICS}
    values = " · ".join(f"{short_name(key)} {number(value)}" for key, value in shown.items())
    if "train_runtime" in logs:
        done = f"trained {state.global_step} steps in {logs['train_runtime']:.1f} s"
        return f"{done} · {values}" if values else done
    epoch = f" · epoch {logs['epoch']:.2f}" if isinstance(logs.get("epoch"), (int, float)) else ""
    return f"step {state.global_step}/{state.max_steps}{epoch} · {values}"


def short_name(key: str) -> str:
    """A metric's name without ``eval_``, a long prompt in ``p_next[prompt][token]`` cut to its last words."""
    key = key.removeprefix("eval_")
    return re.sub(r"\[([^\]]{25,})\]\[", lambda match: f"[…{match.group(1)[-20:]}][", key)


def number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
