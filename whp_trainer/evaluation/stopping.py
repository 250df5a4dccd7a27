"""The student's stopping rule of ``alpha: auto``: measure the forget signals and the budgets every few steps, stop
when the targets are reached or a budget is spent, and end on the best measurement. The training loss never decides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import NormalDist, fmean, stdev

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled

from ..models import BASELINE, process_count, reader_for, using_adapter
from .autotune import ENTITY, FAMILIARITY, KNOWLEDGE, RETAIN, Targets
from .callback import LOG_PREFIX
from .familiarity import evaluation_mode, token_familiarity
from .knowledge import answer_margins
from .membership import membership_auc
from .retain import block_nlls, perplexity_of

RETAIN_BOUND = "retain_perplexity_bound"  # the upper end of the retain perplexity's confidence interval
GENERAL = "general_perplexity"  # perplexity of the ``general_texts``, text of other kinds the budget also holds on
GENERAL_BOUND = "general_perplexity_bound"  # the upper end of its confidence interval
HOLDOUT = "holdout_perplexity"  # perplexity of the ``holdout_texts``, text of the forget text's kind it holds on
HOLDOUT_BOUND = "holdout_perplexity_bound"
# each perplexity the budget holds, its bound
PERPLEXITY_BUDGETS = ((RETAIN, RETAIN_BOUND), (GENERAL, GENERAL_BOUND), (HOLDOUT, HOLDOUT_BOUND))
NEIGHBOUR = "neighbour_knowledge"  # mean answer log-likelihood (nats) of the neighbour-knowledge rows
NEIGHBOUR_BOUND = "neighbour_knowledge_bound"  # the lower end of its confidence interval
STATE_FILE, WEIGHTS_FILE = "whp_stopping.json", "whp_stopping.safetensors"  # in each checkpoint
SHARDED_REFUSAL = ("keeps and restores the adapter's weights, which FSDP and DeepSpeed ZeRO-3 shard: train its "
                   "student with DDP or ZeRO-2, or give alpha a number")
STEPS_RAN_OUT = "the step budget ran out"  # the decision's reason when no rule stopped the run
TARGETS_REACHED = "every target is reached within budget"  # the decision's reason when the targets stopped it
KEPT = ("best", "least_over", "start", "closest_over")  # the weights the rule can go back to or towards
LINE_SEARCH = 3  # measurements of a bisection on the line from the start, when a backtrack has no best to go to


class TargetStoppingCallback(TrainerCallback):
    """Every ``every_n_steps`` steps (and at step 0; with ``max_measurements``, every ``max_steps /
    max_measurements`` steps when that is more, so a long run is measured about that many times, and also at
    ``every_n_steps``, twice that, ... before its first such measurement), measure the
    student on the signals of ``targets`` (token familiarity on ``probes``, entity probability on
    ``first_mentions``, membership AUC of ``membership_texts``, the mean `answer_margins` of the ``forget_knowledge``
    rows) and on the budgets (perplexity of ``retain_texts``
    at most ``retain_budget`` above the base's, read as the upper end of its one-sided ``budget_confidence``
    interval: ``retain_texts`` are a sample of the text the budget is for; with ``general_texts`` and
    ``holdout_texts``, the same budget held on their perplexity too, each apart, so that a change on one kind is not
    averaged away by another; with
    ``neighbour_knowledge``, a callable
    ``model -> each row's answer log-likelihood in nats``, their mean at most ``neighbour_budget`` nats below the
    base's, read as the lower end of its interval: the rows are a sample of the knowledge to keep). Training
    stops when every target is reached within budget, or when a budget is spent: over it at ``budget_patience``
    measurements in a row (early steps often overshoot a budget that the retain loss then brings back). Each
    measurement over budget doubles the trainer's retain weight (``trainer.retain_weight``, when it has a retain
    loss), up to ``max_retain_factor`` times the configured one: the budget is a constraint and the retain weight
    its multiplier, raised while the constraint is violated (dual ascent); the measurements in a row count from when
    it has reached that ceiling.
    With ``backtrack``, a measurement over budget with the retain weight at its ceiling (or with no retain loss)
    also puts the trainable weights back to the best measurement within budget so far, halves the learning rate
    and clears the optimizer's moments: the steps were too large for the budget (a backtracking line search), so
    the run goes on from a point within budget with smaller ones. With ``drop_cap``, the first such backtrack of a
    trainer with an original-token cap (``trainer.cap_weight``) drops the cap instead of halving the rate: the
    cap pushes down the forget text's unlikely tokens, and with them those of text like it, at several times the
    cost per unit forgotten of the distillation to the generic targets, which goes on at its rate. When no
    measurement was within budget yet, the point is searched on the line from the weights the run began with to
    the current ones: ``line_search`` measurements of a bisection (½ of the way, then ¾ or ¼, ...), the furthest
    within budget kept (the start when none is), so what the steps forgot within budget is not thrown away with
    what overran it. At its end the student's trainable weights are put back to the measurement closest to the
    targets within budget (`rank`: least summed shortfall, then the most forgotten past the targets; the earliest
    on a tie) or, when none after step 0 was within budget, to the one least over its budgets (each overrun in
    units of its budget) — with ``backtrack``, after the same search on the line from the start to it — and the
    decision says so. With ``end_search`` (and ``backtrack``), a run short of its targets first searches the same
    way the line from its best weights to those of the measurement over budget closest to the targets (of equals,
    the least over), then, still short, the line from the weights it began with to them, and ends on the point
    within budget closest to the targets when it is closer than the best (`search_towards_closest_over`).

    Attributes:
        history: ``[{"step", "metrics", "shortfall", "within_budget", "retain_weight", "learning_rate_factor"}]``,
            one entry per measurement (a backtrack adds ``"backtracked_to"``, the step whose weights it went back
            to or towards, and ``"dropped_cap"`` when it dropped the original-token cap rather than halving the
            learning rate; a measurement of the line search has ``"scale"``, its fraction of the way from the
            weights the run began with to the step's own).
        decision: ``{"stopped_at", "best_step", "best_scale", "reason", "base", "best", "reached", "left", "moved",
            "within_budget", "measured_every", "backtracks", "dropped_cap_at"}`` once training ended
            (``best_scale``: 1, or the line search's fraction of the kept measurement; ``reached``: the kept
            measurement is at every target within budget; ``left``: its shortfall per target; ``moved``: the share of
            the way to each target it went from the base (`Targets.progress`); ``measured_every``:
            the steps between measurements; ``dropped_cap_at``: the step whose backtrack dropped the cap, or None).
    """

    def __init__(
        self,
        trainer,
        targets: Targets,
        probes: Sequence[dict],
        retain_texts: Sequence[str],
        membership_texts: tuple[Sequence[str], Sequence[str]] | None = None,
        first_mentions: Sequence[dict] | None = None,
        neighbour_knowledge: Callable | None = None,
        forget_knowledge: Sequence[dict] | None = None,
        general_texts: Sequence[str] | None = None,
        holdout_texts: Sequence[str] | None = None,
        every_n_steps: int = 8,
        max_measurements: int | None = None,
        retain_budget: float = 0.03,
        neighbour_budget: float = 0.1,
        budget_confidence: float = 0.95,
        budget_patience: int = 3,
        max_retain_factor: float = 4.0,
        backtrack: bool = True,
        drop_cap: bool = True,
        end_search: bool = True,
        line_search: int = LINE_SEARCH,
        batch_size: int = 16,
        max_length: int = 512,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: must be at least 1")
        if max_measurements is not None and max_measurements < 0:
            raise ValueError(f"max_measurements={max_measurements}: must be at least 0 (0 or None: no limit)")
        if budget_patience < 1:
            raise ValueError(f"budget_patience={budget_patience}: must be at least 1")
        if not 0.5 <= budget_confidence < 1:
            raise ValueError(f"budget_confidence={budget_confidence}: must be at least 0.5 and below 1")
        if not retain_texts:
            raise ValueError("TargetStoppingCallback needs retain texts: their perplexity is the budget")
        if getattr(trainer, "is_fsdp_enabled", False) or is_deepspeed_zero3_enabled():
            raise ValueError(f"TargetStoppingCallback (alpha auto) {SHARDED_REFUSAL}")
        self.trainer, self.targets = trainer, targets
        self.probes = list(probes)
        # the texts each perplexity of the budget is read on (`PERPLEXITY_BUDGETS`), by that perplexity's key
        self.budget_texts = {RETAIN: list(retain_texts), GENERAL: list(general_texts or []),
                             HOLDOUT: list(holdout_texts or [])}
        self.membership_texts, self.first_mentions = membership_texts, list(first_mentions or [])
        self.neighbour_knowledge = neighbour_knowledge
        self.forget_knowledge = list(forget_knowledge or [])
        self.every_n_steps, self.max_measurements = every_n_steps, max_measurements
        self.interval = every_n_steps  # set from the run's length when training begins
        self.retain_budget, self.neighbour_budget = retain_budget, neighbour_budget
        self.budget_patience = budget_patience
        self.budget_confidence = budget_confidence
        # the retain weight's ceiling, from the weight as configured (training has not begun)
        self.retain_ceiling = getattr(trainer, "retain_weight", 0.0) * max_retain_factor
        self.backtrack, self.drop_cap, self.line_search = backtrack, drop_cap, line_search
        self.end_search = backtrack and end_search
        self.batch_size, self.max_length = batch_size, max_length
        self.history: list[dict] = []
        self.decision: dict | None = None
        self.base: dict[str, float] | None = None
        self.base_readings: tuple[dict, list | None] | None = None  # the base's `readings`
        self.best: tuple[float, int, dict] | None = None  # (shortfall, index in history, weights)
        self.least_over: tuple[float, float, int, dict] | None = None  # (overrun, shortfall, index, weights)
        # over budget, the least short of the targets, then the least over: (shortfall, overrun, index, weights)
        self.closest_over: tuple[float, float, int, dict] | None = None
        self.start: tuple[int, dict] | None = None  # (step, weights) this run began with (at step 0: the base's)
        self.neighbour_rows = 0  # how many neighbour rows the budget is read on (kept in a checkpoint)

    def measure(self, model) -> dict[str, float]:
        """The signals and budgets of ``model`` as it is now (its active adapter); in a multi-process run each
        process reads a share of the items (`reader_for`)."""
        tokenizer, batch, reader = self.trainer.processing_class, self.batch_size, reader_for(model)
        readings = self.readings(model)
        if self.base_readings is None:  # the base's own measurement, or the first after resuming from a checkpoint
            self.base_readings = readings if self.base is None else self.base_model_readings(model)
        (blocks, rows), (base_blocks, base_rows) = readings, self.base_readings
        metrics = {}
        for name, bound in PERPLEXITY_BUDGETS:
            if blocks[name]:
                metrics[name] = perplexity_of(blocks[name])
                metrics[bound] = perplexity_bound(blocks[name], base_blocks[name], self.budget_confidence)
        if self.probes:
            metrics[FAMILIARITY] = token_familiarity(model, tokenizer, self.probes, batch, reader)
        if self.first_mentions:
            metrics[ENTITY] = token_familiarity(model, tokenizer, self.first_mentions, batch, reader)
        if self.membership_texts:
            metrics.update(membership_auc(model, tokenizer, *self.membership_texts, max_length=self.max_length,
                                          batch_size=batch, reader=reader))
        if self.forget_knowledge:
            metrics[KNOWLEDGE] = fmean(answer_margins(model, tokenizer, self.forget_knowledge,
                                                      max_length=self.max_length, reader=reader))
        if rows is not None:
            self.neighbour_rows = len(rows)
            metrics[NEIGHBOUR] = fmean(rows)
            metrics[NEIGHBOUR_BOUND] = knowledge_bound(rows, base_rows, self.budget_confidence)
        return metrics

    def readings(self, model) -> tuple[dict[str, list[tuple[float, int]]], list[float] | None]:
        """What the budgets are read from: the `block_nlls` of each perplexity's texts (`budget_texts`; none without
        them) and each neighbour row's answer log-likelihood (None without a neighbour measure)."""
        def nlls(texts):
            return block_nlls(model, self.trainer.processing_class, texts, self.max_length, self.batch_size,
                              reader_for(model)) if texts else []

        rows = None if self.neighbour_knowledge is None else [float(row) for row in self.neighbour_knowledge(model)]
        return {name: nlls(texts) for name, texts in self.budget_texts.items()}, rows

    def measurement_interval(self, max_steps: int) -> int:
        """Steps between measurements: ``every_n_steps``, or more on a run of over ``every_n_steps ×
        max_measurements`` steps (from the run's configured length, so a resumed run measures at the same steps)."""
        if not self.max_measurements or max_steps <= 0:
            return self.every_n_steps
        return max(self.every_n_steps, math.ceil(max_steps / self.max_measurements))

    def base_model_readings(self, model) -> tuple[dict, list[float] | None]:
        """The base's `readings`: the same model each time, so not kept in a checkpoint."""
        with using_adapter(model, BASELINE):
            return self.readings(model)

    def perplexity_changes(self, metrics: dict) -> list[tuple[str, str, float]]:
        """Each perplexity the budget is held to (retain text, and general and holdout text where read): its key, its
        bound's key and the relative change of its bound against the base's perplexity (a measurement of an older
        whp_trainer has no bound: its reading)."""
        return [(name, bound, metrics.get(bound, metrics[name]) / self.base[name] - 1)
                for name, bound in PERPLEXITY_BUDGETS if name in metrics and name in self.base]

    def neighbour_reading(self, metrics: dict) -> float:
        """The neighbour knowledge the budget is held to: its bound (a measurement of an older whp_trainer has none)."""
        return metrics.get(NEIGHBOUR_BOUND, metrics[NEIGHBOUR])

    def within_budget(self, metrics: dict) -> bool:
        return not self.spent(metrics)

    def on_train_begin(self, args, state, control, **kwargs):
        self.interval = self.measurement_interval(state.max_steps)
        if self.base is not None:  # resumed: the checkpoint's state was loaded, its step already measured or not
            # a checkpoint of the step the run stopped at: stop again (the Trainer ends after one more step, whose
            # weights the kept ones replace), measuring nothing more
            control.should_training_stop = self.decision is not None
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        with using_adapter(model, BASELINE):
            self.base = first_process_reading(self.measure(model))
        self.start = (state.global_step, trainable_weights(model))
        self._check(state, control)

    def save_to_checkpoint(self, folder: Path) -> None:
        """Write the rule's state into ``folder`` (a checkpoint being written): the measurements, the base's, and
        the weights it can go back to, with what it knew of each."""
        kept = {key: getattr(self, key) for key in KEPT}
        tensors = {f"{key}/{name}": weight.detach().cpu().contiguous()
                   for key, value in kept.items() if value is not None for name, weight in value[-1].items()}
        facts = {key: None if value is None else list(value[:-1]) for key, value in kept.items()}
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, folder / WEIGHTS_FILE)
        state = {"history": self.history, "decision": self.decision, "base": self.base, "kept": facts,
                 "kept_by": "index", "neighbour_rows": self.neighbour_rows}
        (folder / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")

    def load_from_checkpoint(self, folder: Path) -> None:
        """Take up the state `save_to_checkpoint` wrote into ``folder``; a checkpoint without it (a run of an older
        whp_trainer) leaves the rule to measure afresh from the resumed step."""
        if not (folder / STATE_FILE).is_file():
            return
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        tensors = load_file(folder / WEIGHTS_FILE)
        self.history, self.decision, self.base = state["history"], state["decision"], state["base"]
        self.neighbour_rows = state.get("neighbour_rows", 0)
        for key, facts in state["kept"].items():
            weights = {name.split("/", 1)[1]: weight for name, weight in tensors.items() if name.startswith(f"{key}/")}
            if facts is not None and key != "start" and state.get("kept_by") != "index":  # an older whp_trainer's:
                facts[-1] = next(i for i, entry in enumerate(self.history) if entry["step"] == facts[-1])  # by step
            setattr(self, key, None if facts is None else (*facts, weights))

    def on_step_end(self, args, state, control, **kwargs):
        if self.decision is None and self.is_measured(state.global_step):
            self._check(state, control)

    def is_measured(self, step: int) -> bool:
        """Every ``interval`` steps and, before the first of those, at ``every_n_steps``, twice that, four times
        ...: a long run's first steps can spend a budget that a measurement after ``interval`` steps would find too
        late for the retain weight to recover."""
        ramp = self.every_n_steps
        while ramp < min(step, self.interval):
            ramp *= 2
        return step % self.interval == 0 or step == ramp < self.interval

    def on_train_end(self, args, state, control, **kwargs):
        if self.decision is None and (not self.history or self.history[-1]["step"] != state.global_step):
            self._check(state, control)
        self.decision = self.decision or {"stopped_at": state.global_step,
                                          "reason": f"{STEPS_RAN_OUT} before the targets were reached"}
        self.decision["measured_every"] = self.interval
        self.decision["budget_confidence"] = self.budget_confidence
        self.decision["backtracks"] = self.backtracks
        self.decision["dropped_cap_at"] = next((entry["step"] for entry in self.history if entry.get("dropped_cap")),
                                               None)
        if self.best is None and self.least_over is None:  # no measurement after step 0 (a run resumed past them)
            self.decision.update(best_step=None, best_shortfall=None, base=self.base, best=None, reached=False,
                                 left=None, within_budget=None, moved=None)
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        if self.best is None:
            self.decision["reason"] += "; no measurement was within budget"
            _, _, index, weights = self.least_over
            if self.backtrack and self.search_within_budget(model, self.history[index]["step"], weights):
                self.decision["reason"] += (": it ends on the furthest point within budget on the line from where "
                                            "it began to the one least over it")
            else:
                self.decision["reason"] += ": it ends on the one least over it"
        elif self.end_search and self.closest_over is not None and self.closest_over[0] < self.best[0]:
            self.search_towards_closest_over(model)
        shortfall, index, weights = self.best if self.best is not None else self.least_over[1:]
        restore(model, weights)
        kept = self.history[index]
        self.decision.update(best_step=kept["step"], best_scale=kept.get("scale", 1.0), best_shortfall=shortfall,
                             best_from_step=kept.get("from_step"),
                             base=self.base, best=kept["metrics"], reached=shortfall == 0 and kept["within_budget"],
                             left=kept["shortfall"], within_budget=kept["within_budget"],
                             moved=self.targets.progress(kept["metrics"], self.base))
        if self.neighbour_rows:
            resolution = neighbour_resolution(self.history, self.base, self.neighbour_budget, self.neighbour_rows)
            self.decision.update({"neighbour_resolution": resolution} if resolution else {})

    def _record(self, model, step: int, scale: float | None = None, from_step: int | None = None) -> dict:
        """Measure ``model`` as it is now, append the measurement of ``step`` (with the line search's ``scale`` and,
        when its line does not begin where the run began, ``from_step``) to the history and keep its weights when it
        is the best within budget or (not a point of the line search) the least over it or the closest to the
        targets over it; return it."""
        with evaluation_mode(model):
            metrics = first_process_reading(self.measure(model))
        left = self.targets.shortfalls(metrics, self.base, overshoot_counts=True)
        shortfall, within = sum(left.values()), self.within_budget(metrics)
        entry = {"step": step, "metrics": metrics, "shortfall": left, "within_budget": within,
                 "retain_weight": getattr(self.trainer, "retain_weight", 0.0),
                 "learning_rate_factor": self.learning_rate_factor, **({} if scale is None else {"scale": scale}),
                 **({} if from_step is None else {"from_step": from_step})}
        self.history.append(entry)
        index = len(self.history) - 1
        if within and step > 0 and (self.best is None or  # step 0: the base
                                    self.rank(entry) < self.rank(self.history[self.best[1]])):
            self.best = (shortfall, index, trainable_weights(model))
        overrun = self.overrun(metrics)
        if not within and self.best is None and scale is None and (self.least_over is None or  # a trained one
                                                                   (overrun, shortfall) < self.least_over[:2]):
            self.least_over = (overrun, shortfall, index, trainable_weights(model))
        if self.end_search and not within and step > 0 and scale is None and (
                self.closest_over is None or (shortfall, overrun) < self.closest_over[:2]):
            self.closest_over = (shortfall, overrun, index, trainable_weights(model))
        self._log(metrics, shortfall)
        return entry

    def _check(self, state, control) -> None:
        """Measure, keep the best weights, and stop training when the targets are reached or a budget is spent."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        entry = self._record(model, state.global_step)
        metrics, shortfall, within = entry["metrics"], sum(entry["shortfall"].values()), entry["within_budget"]
        # over budget counts once the retain weight cannot rise further (or there is none to raise); of the line
        # search's measurements, only the point training went on from counts (within budget: the streak is broken)
        trained = [measured for measured in self.history if "scale" not in measured or measured["within_budget"]]
        spent = [not measured["within_budget"] and not self.can_raise(measured["retain_weight"])
                 for measured in trained[-self.budget_patience:]]
        if self.decision is None and len(spent) == self.budget_patience and all(spent):
            self.decision = {"stopped_at": state.global_step, "reason": f"a budget is spent at {self.budget_patience} "
                             "measurements in a row (" + ", ".join(self.spent(metrics)) + ")"}
        elif self.decision is None and within and shortfall == 0 and state.global_step > 0:
            self.decision = {"stopped_at": state.global_step, "reason": TARGETS_REACHED}
        if self.decision is not None:
            control.should_training_stop = True
        elif not within and self.can_raise(self.history[-1]["retain_weight"]):
            self.raise_retain_weight()
        elif not within and self.backtrack and state.global_step < state.max_steps:
            self.backtrack_to_best(model, state)

    def rank(self, entry: dict) -> tuple[float, float]:
        """How close a measurement is to the targets, the lesser the closer: its summed shortfall, then its summed
        signed shortfall, which goes on falling past a target. Of measurements equally short of the targets (a
        saturated signal, such as a membership AUC of 1 while the other targets are met), the one that forgot more."""
        signed = self.targets.shortfalls(entry["metrics"], self.base, overshoot_counts=True, signed=True)
        return sum(entry["shortfall"].values()), sum(signed.values())

    @property
    def backtracks(self) -> int:
        return sum("backtracked_to" in entry for entry in self.history)

    @property
    def learning_rate_factor(self) -> float:
        """What the backtracks so far multiplied the learning rate by (each halves it but one dropping the cap)."""
        return 0.5 ** sum("backtracked_to" in entry and not entry.get("dropped_cap") for entry in self.history)

    def can_raise(self, retain_weight: float) -> bool:
        return bool(retain_weight) and retain_weight < self.retain_ceiling

    def raise_retain_weight(self) -> None:
        """Double the trainer's retain weight, at most to ``max_retain_factor`` times the configured one."""
        if self.can_raise(getattr(self.trainer, "retain_weight", 0.0)):
            self.trainer.retain_weight = min(2 * self.trainer.retain_weight, self.retain_ceiling)

    def backtrack_to_best(self, model, state) -> None:
        """Put the trainable weights back to the best measurement within budget so far or, when none was, towards
        those the run began with, to the furthest point of the line search within budget (else all the way); drop
        the original-token cap (``drop_cap``, once) or else halve the learning rate (the scheduler's base rates too,
        so its schedule goes on at half); clear the optimizer's moments, which point the way that overran the
        budget."""
        drop_cap = self.drop_cap and bool(getattr(self.trainer, "cap_weight", 0.0))
        if drop_cap:
            self.history[-1]["dropped_cap"] = True
        if self.best is not None:  # a point within budget with room: one on the budget's edge would leave every
            self.history[-1]["backtracked_to"] = self.history[self.best[1]]["step"]  # later step over it
            restore(model, self.best[2])
        else:
            self.history[-1]["backtracked_to"] = self.start[0]
            self.search_within_budget(model, state.global_step, trainable_weights(model))
        optimizer, scheduler = getattr(self.trainer, "optimizer", None), getattr(self.trainer, "lr_scheduler", None)
        if optimizer is not None and isinstance(getattr(optimizer, "state", None), dict):  # torch's (accelerate's too)
            optimizer.state.clear()
        if drop_cap:
            self.trainer.cap_weight = 0.0
            return
        for group in getattr(optimizer, "param_groups", []):
            group["lr"] /= 2
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [rate / 2 for rate in scheduler.base_lrs]
            scheduler._last_lr = [rate / 2 for rate in scheduler.get_last_lr()]  # what the Trainer logs next step

    def search_within_budget(self, model, step: int, point: dict[str, torch.Tensor], start: dict | None = None,
                             from_step: int | None = None) -> bool:
        """On the line from ``start`` (within budget; the weights the run began with unless given, else those of
        ``from_step``) to ``point`` (weights of ``step``, over budget): bisect for the furthest point within budget
        in ``line_search`` measurements, each recorded as a measurement of ``step``, and leave the model there (at
        the start when none was within it). Whether one was."""
        start = self.start[-1] if start is None else start
        within, over = 0.0, 1.0
        for _ in range(self.line_search):
            scale = (within + over) / 2
            restore(model, interpolated(start, point, scale))
            if self._record(model, step, scale, from_step)["within_budget"]:
                within = scale
            else:
                over = scale
        restore(model, interpolated(start, point, within))
        return within > 0

    def search_towards_closest_over(self, model) -> None:
        """At the end of a run short of its targets: the same bisection on the line from the best measurement within
        budget to the measurement over budget closest to the targets (when it is closer than the best; of those
        equally close, the least over budget, towards which the line has the most room), then, when still short, on
        the line from where the run began to it (a best on the budget's edge leaves its own line no room; the start
        has the whole budget); a point within budget closer to the targets than the best becomes the best."""
        best = self.history[self.best[1]]
        _, _, index, weights = self.closest_over
        step = self.history[index]["step"]
        self.search_within_budget(model, step, weights, start=self.best[2], from_step=best["step"])
        on_start_line = best["step"] == step and "scale" in best and best.get("from_step") is None  # searched already
        if self.best[0] > 0 and not on_start_line:
            self.search_within_budget(model, step, weights)
        kept = self.history[self.best[1]]
        if kept is not best:
            origin = "its best measurement within budget" if kept.get("from_step") is not None else "where it began"
            self.decision["reason"] += (f"; it ends on a point of the line from {origin} to the one over budget "
                                        "closest to the targets")

    def overrun(self, metrics: dict) -> float:
        """How far over its budgets a measurement is, each in units of its budget (0: within)."""
        over = sum(max(0.0, change - self.retain_budget) / self.retain_budget
                   for _, _, change in self.perplexity_changes(metrics))
        if NEIGHBOUR in metrics:
            drop = self.base[NEIGHBOUR] - self.neighbour_reading(metrics)
            over += max(0.0, drop - self.neighbour_budget) / self.neighbour_budget
        return over

    def spent(self, metrics: dict) -> list[str]:
        """Each budget ``metrics`` are over, in words (none: within budget)."""
        spent = []
        for name, bound, change in self.perplexity_changes(metrics):
            if change > self.retain_budget:
                bound = f" (its {self.budget_confidence:.0%} bound {metrics[bound]:.4g})" if bound in metrics else ""
                spent.append(f"{name.replace('_', ' ')} {metrics[name]:.4g}{bound} > base {self.base[name]:.4g} "
                             f"+{self.retain_budget:.0%}")
        if NEIGHBOUR in metrics and self.base[NEIGHBOUR] - self.neighbour_reading(metrics) > self.neighbour_budget:
            bound = (f" (its {self.budget_confidence:.0%} bound {metrics[NEIGHBOUR_BOUND]:.3f})"
                     if NEIGHBOUR_BOUND in metrics else "")
            spent.append(f"neighbour knowledge {metrics[NEIGHBOUR]:.3f}{bound} < base {self.base[NEIGHBOUR]:.3f} "
                         f"− {self.neighbour_budget:g} nat")
        return spent

    def _log(self, metrics: dict, shortfall: float) -> None:
        """Through ``trainer.log`` (trackers and the log history), keys ``eval_auto_*``."""
        should_log = self.trainer.control.should_log
        self.trainer.log({**{f"{LOG_PREFIX}auto_{key}": value for key, value in metrics.items()},
                          f"{LOG_PREFIX}auto_shortfall": shortfall,
                          f"{LOG_PREFIX}auto_retain_weight": getattr(self.trainer, "retain_weight", 0.0)})
        self.trainer.control.should_log = should_log


def first_process_reading(metrics: dict[str, float]) -> dict[str, float]:
    """The first process's ``metrics`` in every process of a multi-process run (`measure` gathers the same readings
    in each, but a subclass's that read differently, at a budget's edge, would send one process back along the line
    and not the others): every decision is then the same in all of them. As given in one process."""
    if process_count() == 1:
        return metrics
    shared = [metrics]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def perplexity_bound(blocks: list[tuple[float, int]], base_blocks: list[tuple[float, int]], confidence: float) -> float:
    """The upper end of a one-sided ``confidence`` interval of the perplexity of text of the kind ``blocks`` were
    drawn from (`block_nlls` of a model and, in the same order, of the base): the base's perplexity times exp of the
    mean per-token change against the base's same blocks plus `t_quantile` standard errors of that mean (a ratio
    estimator over the blocks). A sample of varied text reads the change less surely: the bound is further above the
    sample's own reading."""
    changes = [nll - base for (nll, _), (base, _) in zip(blocks, base_blocks, strict=True)]
    counts = [count for _, count in blocks]
    total, mean = sum(counts), sum(changes) / sum(counts)
    spread = sum((change - mean * count) ** 2 for change, count in zip(changes, counts))
    error = math.sqrt(spread * len(counts) / (len(counts) - 1)) / total if len(counts) > 1 else 0.0
    return perplexity_of(base_blocks) * math.exp(mean + t_quantile(confidence, len(counts) - 1) * error)


def knowledge_bound(rows: list[float], base_rows: list[float], confidence: float) -> float:
    """The lower end of a one-sided ``confidence`` interval of the mean answer log-likelihood of knowledge of the
    kind ``rows`` were drawn from (each row's, of a model and, in the same order, of the base): the rows' mean less
    `t_quantile` standard errors of the mean per-row change against the base (the reading itself with one row)."""
    changes = [row - base for row, base in zip(rows, base_rows, strict=True)]
    error = stdev(changes) / math.sqrt(len(changes)) if len(changes) > 1 else 0.0
    return fmean(rows) - t_quantile(confidence, len(changes) - 1) * error


def neighbour_resolution(history: list[dict], base: dict, budget: float, rows: int) -> dict | None:
    """Where the neighbour budget held the student back by its bound alone: the first trained measurement whose
    rows' mean is within ``budget`` of the ``base``'s and whose bound is not, and about how many rows of the kind
    would read that change within the budget (the bound's distance from the mean shrinks as 1 / √rows). None when
    the bound never decided alone."""
    for entry in history:
        metrics = entry["metrics"]
        if "scale" in entry or NEIGHBOUR_BOUND not in metrics:
            continue
        drop, width = base[NEIGHBOUR] - metrics[NEIGHBOUR], metrics[NEIGHBOUR] - metrics[NEIGHBOUR_BOUND]
        if drop < budget < drop + width:
            return {"step": entry["step"], "rows": rows, "change": -drop, "bound": -(drop + width),
                    "rows_needed": math.ceil(rows * (width / (budget - drop)) ** 2 - 1e-9)}  # 80.000…1 rows: 80
    return None


def t_quantile(confidence: float, degrees: int) -> float:
    """Student's t quantile at ``confidence`` with ``degrees`` of freedom (Abramowitz & Stegun 26.7.5: the normal
    quantile and three terms in 1 / ``degrees``; at 0.95 within 0.001 of the exact value from 5 degrees, 0.04 below it
    at 2), so that a few rows are not read as surely as many; the normal quantile with none."""
    z = NormalDist().inv_cdf(confidence)
    if degrees < 1:
        return z
    return (z + (z**3 + z) / (4 * degrees) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * degrees**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * degrees**3))


def restore(model, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in weights:
                parameter.copy_(weights[name])


def interpolated(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The weights ``scale`` of the way from ``start`` to ``end`` (0: ``start``, 1: ``end``)."""
    return {name: start[name] + scale * (weight - start[name]) for name, weight in end.items()}


def trainable_weights(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}
