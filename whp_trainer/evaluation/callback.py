"""``FamiliarityCallback``: how much the student still knows the forget target, measured while it trains.

Logged through ``trainer.log`` (so TensorBoard, W&B and ``trainer.state.log_history`` all get them), with keys that
the reporting integrations show under ``eval/``:

- ``eval_familiarity``: mean probability of each probe target's first token (lower = more forgotten);
- ``eval_retain_perplexity``: perplexity of the retain texts (should stay near the base's);
- ``eval_p_next[I][J]``: probability of the ``J``-th token given for the ``I``-th prompt right after it (the paper's
  Figure of next-token probabilities over steps). The prompts are forget text: they name no metric (metrics reach
  trainer_state.json, the trackers and the Hub); ``whp_probe_names.json`` in ``output_dir``, which no upload sends,
  maps each name to its prompt and token.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from ..models import reader_for
from .familiarity import evaluation_mode, next_token_probabilities, token_familiarity
from .retain import block_nlls, perplexity_of

LOG_PREFIX = "eval_"  # shown as "eval/" by TensorBoard and W&B
FAMILIARITY_KEY = LOG_PREFIX + "familiarity"
RETAIN_PERPLEXITY_KEY = LOG_PREFIX + "retain_perplexity"
PROBE_NAMES_FILE = "whp_probe_names.json"  # metric name -> [prompt, token]: local only, never uploaded


def next_token_metric(prompt: str, token: str) -> str:
    """The metric name of the probability of ``token`` after ``prompt``: ``p_next[PROMPT][TOKEN]``."""
    return f"p_next[{prompt}][{token}]"


def parse_next_token_key(key: str) -> tuple[str, str] | None:
    """``(prompt, token)`` of a `next_token_metric` name, logged (``eval_`` prefix) or not; else ``None``."""
    key = key.removeprefix(LOG_PREFIX)
    if not (key.startswith("p_next[") and key.endswith("]")):
        return None
    prompt, _, token = key[len("p_next[") : -1].rpartition("][")
    return prompt, token


def read_probe_names(folder) -> dict[str, list[str]]:
    """The ``{metric: [prompt, token]}`` a `FamiliarityCallback` wrote into ``folder``; empty when there is none."""
    path = Path(folder or "") / PROBE_NAMES_FILE
    if not folder or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def history_from_log_history(log_history: list[dict]) -> list[dict]:
    """The measurements of a [`FamiliarityCallback`][whp_trainer.evaluation.callback.FamiliarityCallback] found in a
    ``trainer.state.log_history`` (as saved in ``trainer_state.json``), in the form of `FamiliarityCallback.history`."""
    history = []
    for entry in log_history:
        if FAMILIARITY_KEY in entry:
            metrics = {key: value for key, value in entry.items()
                       if key in (FAMILIARITY_KEY, RETAIN_PERPLEXITY_KEY) or parse_next_token_key(key)}
            history.append({"step": entry["step"], "metrics": metrics})
    return history


class FamiliarityCallback(TrainerCallback):
    """Measure the student's familiarity with the forget target at step 0, every ``every_n_steps`` steps and at the
    end of training, and log it with the trainer's other metrics.

    Usage:
        >>> trainer = UnlearnTrainer(...)
        >>> trainer.add_callback(FamiliarityCallback(trainer, probes, retain_texts=texts,
        ...                                          next_token_prompts={"Harry Potter studies": [" magic", " the"]}))

    The student is the model as it trains (its active adapter): each measurement runs in eval mode without grad and
    leaves the active adapter, the trainable parameters and the train/eval mode as they were. In a multi-process run
    each process reads a share of the probes and retain blocks (`whp_trainer.models.reader_for`), every process gets
    the same figures and calls ``trainer.log``, as the ``Trainer`` does with its own logs; the reporting
    integrations report from the main process only.

    Args:
        trainer: the trainer whose model is measured and whose ``log`` is used; its ``processing_class`` must be the
            tokenizer.
        probes: ``{"prompt", "target"}`` records (see `whp_trainer.evaluation.probes`).
        retain_texts: ordinary texts whose perplexity is logged; ``None``: not measured.
        next_token_prompts: prompt -> tokens whose next-token probability is logged (tokens with their leading space).
        every_n_steps: measure every this many optimizer steps.
        batch_size: batch size of the measurements.
        max_length: longest retain text, in tokens.

    Attributes:
        history: ``[{"step": int, "metrics": {key: value}}]``, one entry per measurement (for
            [`whp_trainer.evaluation.write_report`][whp_trainer.evaluation.write_report]'s plots). The same measurements
            are in ``trainer.state.log_history``; `history_from_log_history` reads them back from it.
    """

    def __init__(
        self,
        trainer,
        probes: list[dict[str, str]],
        retain_texts: list[str] | None = None,
        next_token_prompts: dict[str, list[str]] | None = None,
        every_n_steps: int = 10,
        batch_size: int = 16,
        max_length: int = 512,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: must be at least 1")
        if not probes:
            raise ValueError("probes is empty: the familiarity needs at least one {prompt, target} probe")
        self.trainer = trainer
        self.probes = list(probes)
        self.retain_texts = list(retain_texts) if retain_texts else None
        self.next_token_prompts = dict(next_token_prompts or {})
        self.metric_names = {  # logged name -> [prompt, token]
            LOG_PREFIX + next_token_metric(str(i), str(j)): [prompt, token]
            for i, (prompt, tokens) in enumerate(self.next_token_prompts.items()) for j, token in enumerate(tokens)
        }
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.max_length = max_length
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.metric_names and state.is_world_process_zero:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / PROBE_NAMES_FILE).write_text(
                json.dumps(self.metric_names, indent=1, ensure_ascii=False), encoding="utf-8")
        self._record(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            self._record(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._record(state.global_step)

    def measure(self) -> dict[str, float]:
        """The metrics of the model as it is now, keyed as they are logged."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        tokenizer = self.trainer.processing_class
        reader = reader_for(model)
        with evaluation_mode(model):
            metrics = {FAMILIARITY_KEY: token_familiarity(model, tokenizer, self.probes, self.batch_size, reader)}
            if self.retain_texts:
                metrics[RETAIN_PERPLEXITY_KEY] = perplexity_of(block_nlls(
                    model, tokenizer, self.retain_texts, self.max_length, self.batch_size, reader))
            for i, (prompt, tokens) in enumerate(self.next_token_prompts.items()):
                probabilities = next_token_probabilities(model, tokenizer, prompt, list(tokens))
                metrics.update({LOG_PREFIX + next_token_metric(str(i), str(j)): probabilities[token]
                                for j, token in enumerate(tokens)})
        return metrics

    def _record(self, step: int) -> None:
        """Measure and log once per step (the end of training may fall on a step already measured)."""
        if self.history and self.history[-1]["step"] == step:
            return
        metrics = self.measure()
        self.history.append({"step": step, "metrics": metrics})
        should_log = self.trainer.control.should_log
        self.trainer.log(dict(metrics))
        self.trainer.control.should_log = should_log  # log() clears it: the Trainer's loss log of this step follows
