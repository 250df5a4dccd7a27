"""``alpha: auto`` in the unlearn stage: docs/results.md's recommended procedure without an oracle and without a
person reading reports.

1. **Targets**: membership AUC of forget passages against ``holdout_data`` (0.5, or the oracle's), familiarity on
   the probes and entity probability at first mentions against the base reading them anchor-translated (or the
   oracle's values).
2. **Teacher sweep** ([`teacher_sweep`][whp_trainer.evaluation.autotune.teacher_sweep]) at ``auto_alphas``; the α
   whose teacher reaches the targets at the least retain-perplexity cost. If none does, the reinforcement is
   retrained stronger (``auto_reinforce_factor`` × epochs and learning rate, at most ``auto_reinforce_rounds``
   times) and swept again; after the last round, the α that came closest.
3. **Student**: a [`TargetStoppingCallback`][whp_trainer.evaluation.stopping.TargetStoppingCallback] stops training at
   the targets or at a budget (retain perplexity, neighbour knowledge) and ends on the best measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
from pathlib import Path

logger = logging.getLogger(__name__)

SAMPLE = 64  # probes, first mentions, retain rows, membership texts and neighbour rows the sweep and the rule read


@dataclasses.dataclass
class AutoInputs:
    """What the sweep and the stopping rule measure, drawn once with the run's seed."""

    probes: list[dict]
    first_mentions: list[dict]
    retain: list[str]
    membership: tuple[list[str], list[str]] | None
    forget: list[str] = dataclasses.field(default_factory=list)  # forget blocks: how well a reinforcement fits them
    # without budget text: the retain blocks the retain loss reads, all but those the budget is read on
    retain_training: list[str] | None = None
    # without budget text: blocks of the package's general text, on which the perplexity budget also holds
    general: list[str] = dataclasses.field(default_factory=list)
    # without budget text: the holdout blocks membership reads, on which the perplexity budget also holds
    holdout_budget: list[str] = dataclasses.field(default_factory=list)
    neighbour_rows: list[dict] | None = None  # the neighbour knowledge rows of the second budget
    neighbour_source: str | None = None  # where they come from, for the run record
    forget_rows: list[dict] | None = None  # the forget knowledge rows (each with a false answer) of a target


def check_auto_inputs(args, reinforced, retain, probes, anchors) -> None:
    """Refuse, before any model loads, an ``alpha: auto`` run that has nothing to choose α by."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from .evaluation.stopping import SHARDED_REFUSAL
    from .pipeline import require_data, require_path

    if reinforced is None:
        raise ValueError("whp unlearn: alpha auto measures the teacher: give --reinforced_adapter")
    if retain is None:
        raise ValueError("whp unlearn: alpha auto needs --retain_data (retain perplexity is its cost and budget)")
    if getattr(args, "fsdp", None) or is_deepspeed_zero3_enabled():
        raise ValueError(f"whp unlearn: alpha auto {SHARDED_REFUSAL}")
    for name in ("holdout_data", "budget_data"):
        if getattr(args, name):
            require_data(getattr(args, name), name, "unlearn")
    if args.oracle_model:
        require_path(args.oracle_model, "oracle_model", "unlearn")
    if args.neighbour_knowledge:
        from .evaluation.knowledge import load_knowledge

        load_knowledge(args.neighbour_knowledge)  # its errors name the file and line, before any model loads
    if args.forget_knowledge and not forget_rows(args.forget_knowledge):
        raise ValueError(f"whp unlearn: alpha auto: --forget_knowledge {args.forget_knowledge} has no row with a "
                         "false_answer: its target compares each true answer with a plausible false one")
    if not args.holdout_data and probes is None and anchors is None and not args.forget_knowledge:
        raise ValueError("whp unlearn: alpha auto needs a target: --holdout_data (membership), --probes or "
                         "--anchors (familiarity), or --forget_knowledge")
    for warning in unwatched(args):
        logger.warning("whp unlearn: alpha auto: %s", warning)


def forget_rows(path: str) -> list[dict]:
    """The rows of a forget knowledge file that its target reads: those with a false answer."""
    from .evaluation.knowledge import load_knowledge

    return [row for row in load_knowledge(path) if "false_answer" in row]


def unwatched(args) -> list[str]:
    """What an ``alpha: auto`` run will not measure for want of an input, each with the option that adds it."""
    warnings = []
    if not args.holdout_data:
        warnings.append("no --holdout_data: membership of the forget text is no target, and the student can stop "
                        "while the text's wording is still memorized")
    if not args.neighbour_knowledge:
        warnings.append("no --neighbour_knowledge: the neighbour budget reads the package's general facts "
                        "(geography, science, literature, other fiction), not knowledge near the target (related "
                        "works): give rows of that kind")
    if not args.budget_data:
        read = ("retain text set aside, text of the kind the retain loss keeps, and on the package's general text "
                "(modern English of 14 kinds)")
        give = "ordinary text of the kinds to keep that neither the model's fine-tuning nor the retain data holds"
        if args.holdout_data:
            warnings.append(f"no --budget_data: the perplexity budget is read on {read}, and on --holdout_data, "
                            "text of the forget text's kind; text of other kinds (another period, style or language) "
                            f"can cost more than these read: give {give}")
        else:
            warnings.append(f"no --budget_data: the perplexity budget is read on {read}, and text like the forget "
                            "text in other ways (its period, style or language) can cost more than either reads: give "
                            f"--holdout_data of its kind, or {give}")
    return warnings


def auto_inputs(data, args, tokenizer, forget_texts: list[str], probes: list[dict] | None, anchors) -> AutoInputs:
    """The samples, cut into blocks of ``args.max_length`` tokens as training and the evaluation cut them (a
    document of a whole book is one text: membership of one book against one holdout book is no AUC)."""
    from .collator import text_blocks
    from .data import load_texts
    from .evaluation.knowledge import first_mention_probes
    from .evaluation.probes import build_probes
    from .evaluation.retain import general_text

    rng = random.Random(args.seed)
    if probes is None and anchors is not None:
        probes = build_probes(forget_texts, anchors, max_probes=SAMPLE, seed=args.seed)
    mentions = first_mention_probes(forget_texts, anchors) if anchors is not None else []
    membership = None
    forget = text_blocks(forget_texts, tokenizer, args.max_length)
    if args.holdout_data:
        holdout = load_texts(args.holdout_data, data.text_field)["text"]
        membership = (sample(forget, rng), sample(text_blocks(holdout, tokenizer, args.max_length), rng))
        warn_if_unresolved(membership, args)
    retain_training, general, holdout_budget = None, [], []
    if args.budget_data:
        budget = text_blocks(load_texts(args.budget_data, data.retain_text_field or data.text_field)["text"],
                             tokenizer, args.max_length)
    else:
        budget, retain_training = budget_from_retain(text_blocks(data.retain_texts()["text"], tokenizer,
                                                                 args.max_length), args)
        general = sample(text_blocks(general_text(anchors), tokenizer, args.max_length),
                         random.Random(f"general-{args.seed}"))
        # text of the forget text's kind that a model which never read the target reads as the base does
        holdout_budget = membership[1] if membership else []
    rows, source = neighbour_knowledge(args, anchors)
    rows = sample(rows, random.Random(f"neighbours-{args.seed}"))
    known = sample(forget_rows(args.forget_knowledge), random.Random(f"forget-knowledge-{args.seed}")) \
        if args.forget_knowledge else None
    if len(budget) < SAMPLE:
        logger.warning("whp unlearn: alpha auto: the budget's text is %d blocks of %d tokens, fewer than the %d the "
                       "stopping rule reads: its perplexity budget is read on little text and may not hold on other "
                       "text of the kind (give more with --budget_data)", len(budget), args.max_length, SAMPLE)
    return AutoInputs(probes=list(probes or [])[:SAMPLE], first_mentions=sample(mentions, rng),
                      retain=sample(budget, rng), membership=membership,
                      # without holdout text, a draw of its own: the samples above stay those of earlier runs
                      forget=membership[0] if membership else sample(forget, random.Random(args.seed)),
                      retain_training=retain_training, neighbour_rows=rows, neighbour_source=source,
                      forget_rows=known, general=general, holdout_budget=holdout_budget)


def neighbour_knowledge(args, anchors) -> tuple[list[dict], str]:
    """The neighbour budget's rows and where they come from: ``--neighbour_knowledge``, else the package's general
    facts less those that name an anchored term (`evaluation.knowledge.general_knowledge`)."""
    from .evaluation.knowledge import general_knowledge, load_knowledge

    if args.neighbour_knowledge:
        return load_knowledge(args.neighbour_knowledge), f"--neighbour_knowledge {args.neighbour_knowledge}"
    rows = general_knowledge(anchors)
    return rows, f"the package's general facts ({len(rows)} rows; no --neighbour_knowledge)"


def record_what_the_rule_read(folder, inputs: AutoInputs, args) -> None:
    """What the stopping rule read (fingerprints of its samples, beside the adapter, kept local), so that the
    evaluation reads others: the rule kept the weights that read best on these."""
    from .evaluation.rule_sample import item_digest
    from .runs import record_rule_sample

    samples = {"probes": inputs.probes, "first_mentions": inputs.first_mentions,
               **dict(zip(("forget", "holdout"), inputs.membership or ())),
               "neighbour_knowledge": inputs.neighbour_rows, "forget_knowledge": inputs.forget_rows}
    record_rule_sample(folder, args.max_length, {name: [item_digest(item) for item in items]
                                                 for name, items in samples.items() if items})


def budget_from_retain(blocks: list[str], args) -> tuple[list[str], list[str] | None]:
    """Without ``budget_data``: the blocks of the retain text the perplexity budget is read on — a quarter of them,
    at most `SAMPLE`, drawn with the run's seed — and the others, which the retain loss then reads alone (a budget
    read on the blocks the retain loss trains on is read on the regulariser's own training data). All of them for
    both (None) when the retain text has fewer than 4 blocks."""
    if len(blocks) < 4:
        logger.warning("whp unlearn: alpha auto: no --budget_data and %d retain blocks: the perplexity budget is read "
                       "on the text the retain loss trains on (give --budget_data)", len(blocks))
        return blocks, None
    chosen = set(random.Random(f"budget-{args.seed}").sample(range(len(blocks)), min(SAMPLE, len(blocks) // 4)))
    logger.info("whp unlearn: alpha auto: no --budget_data: the perplexity budget is read on %d of the retain text's "
                "%d blocks, which the retain loss does not read", len(chosen), len(blocks))
    return ([block for index, block in enumerate(blocks) if index in chosen],
            [block for index, block in enumerate(blocks) if index not in chosen])


def warn_if_unresolved(membership: tuple[list, list], args) -> None:
    """Warn when the membership sample is smaller than the rule reads and, at its size, the AUC's standard error is
    more than ``membership_tolerance``: the membership target is then read within noise (a short forget text, or
    little holdout text)."""
    from .evaluation.autotune import membership_error

    forget, holdout = map(len, membership)
    error = membership_error(membership)
    if min(forget, holdout) < SAMPLE and error > args.membership_tolerance:
        logger.warning("whp unlearn: alpha auto: membership is read on %d forget against %d holdout blocks of %d "
                       "tokens: at these numbers its AUC has a standard error of %.2f, more than membership_tolerance "
                       "%g, so whether the target is reached is read within noise (give more --holdout_data; %d "
                       "blocks of each read it to about 0.05)", forget, holdout, args.max_length, error,
                       args.membership_tolerance, SAMPLE)


def membership_reads_alike(base: dict, targets) -> str | None:
    """Why membership may measure no forgetting on this run: the base (``base``: its sweep entry) already reads the
    forget and holdout blocks alike by both attacks — each AUC within the tolerance and twice the sample's standard
    error of its target — as when the model read the holdout text too, or never memorized the forget text's wording.
    None when it does not, or without a membership target."""
    from .evaluation.autotune import MEMBERSHIP, MEMBERSHIP_PLUS, membership_reading

    if targets.membership is None or MEMBERSHIP not in base:
        return None
    width = targets.membership_tolerance + 2 * (targets.membership_error or 0.0)
    if any(abs(base[key] - targets.membership_target(key)) > width for key in (MEMBERSHIP, MEMBERSHIP_PLUS)
           if key in base):
        return None
    return (f"the base already reads the forget and holdout blocks alike (membership AUC "
            f"{membership_reading(base, targets)}, each within {width:.2f} of its target): the model may have read "
            "the holdout text too, or never memorized the forget text's wording, and a student that moves either AUC "
            "past the target counts as short of it (recognisable by the absence), so membership can hold it back "
            "from forgetting anything; if the model read --holdout_data, leave it out (familiarity and knowledge "
            "then decide)")


def warn_if_membership_reads_alike(base: dict, targets) -> None:
    """Warn of `membership_reads_alike`, once the base is measured."""
    reason = membership_reads_alike(base, targets)
    if reason:
        logger.warning("whp unlearn: alpha auto: %s", reason)


def check_unlearned(decision: dict, args) -> None:
    """Refuse to mark the run finished when the weights its student kept went less than ``familiarity_share`` of
    the way from the base to every target the base had a way to go to (`Targets.progress`): as within that share of
    a target is reaching it, within it of the base is where the base is — the run did not unlearn. The adapter and
    its record stay in the output folder, unmarked, so that nothing evaluates, exports or pushes it."""
    from .evaluation.markdown import stopping_summary

    moved = decision.get("moved")
    if not moved or decision.get("reached") or max(moved.values()) >= args.familiarity_share:
        return
    went = ", ".join(f"{key} {share:.0%}" if share >= 0 else f"{key} away from it" for key, share in moved.items())
    raise ValueError(
        f"whp unlearn: alpha auto: the run did not unlearn: the weights it kept went less than "
        f"{args.familiarity_share:.0%} (familiarity_share) of the way from the base to every target ({went}). "
        f"{stopping_summary(decision)} The adapter and its record (whp_run.json) are in {args.output_dir}, not marked "
        "finished, so nothing evaluates, exports or pushes it. A budget spent from the first steps calls for "
        "--budget_data of the kinds of text to keep (or a larger --retain_budget or --neighbour_budget); a membership "
        "target the base already met calls for leaving out --holdout_data if the model read it.")


def sample(items: list, rng: random.Random) -> list:
    """At most `SAMPLE` of the non-empty ``items``, drawn with ``rng``."""
    items = [item for item in items if not isinstance(item, str) or item.strip()]
    return items if len(items) <= SAMPLE else rng.sample(items, SAMPLE)


def retain_training(data, args, inputs: AutoInputs | None = None) -> list[str] | None:
    """The retain loss's text: the retain data, less the blocks ``alpha: auto`` reads its budget on when no
    ``budget_data`` was given (``inputs.retain_training``); None without a retain loss."""
    if not args.retain_weight:
        return None
    if inputs is not None and inputs.retain_training is not None:
        return inputs.retain_training
    return data.retain_texts()["text"]


def spared_tokens(data, args, tokenizer, inputs: AutoInputs | None = None):
    """The token ids ``spare_common_tokens`` spares, from the retain loss's blocks cut as the trainer cuts them
    (None when it is off)."""
    from .targets import commonest_tokens
    from .trainer import retain_token_blocks

    if not args.spare_common_tokens:
        return None
    return commonest_tokens(retain_token_blocks(retain_training(data, args, inputs), tokenizer, args),
                            args.spare_common_tokens)


def choose_auto_alpha(data, model_args, args, tokenizer, inputs: AutoInputs, anchors, reinforced: Path,
                      overwrite: bool = False) -> dict:
    """Targets, sweep, strengthening: the record of the choice (see
    [`choose_alpha`][whp_trainer.evaluation.autotune.choose_alpha]) with the ``reinforced_adapter`` to use."""
    from .evaluation.autotune import choose_alpha, reached_over_budget, teacher_sweep, translated_probes
    from .evaluation.retain import block_nlls, perplexity_of
    from .loading import load_base_model, with_adapters
    from .models import reader_for

    paths, sweeps, fits, diverged = [reinforced], [], [], None
    spared = spared_tokens(data, args, tokenizer, inputs)
    for round_ in range(args.auto_reinforce_rounds + 1):
        if round_:
            print(f"whp unlearn: alpha auto: no teacher reaches the targets; reinforcing stronger (round {round_})",
                  flush=True)
            paths.append(strengthened_reinforcement(data, model_args, reinforced, round_, args, overwrite))
        model = with_adapters(load_base_model(model_args, args.trust_remote_code), {"reinforced": paths[-1]})
        if not round_:
            targets = auto_targets(model, model_args, args, tokenizer, inputs, anchors)
        fits.append(perplexity_of(block_nlls(model, tokenizer, inputs.forget, args.max_length,
                                             reader=reader_for(model))) if inputs.forget else None)
        diverged = diverged_reinforcement(fits)
        if diverged:
            print(f"whp unlearn: alpha auto: {diverged}", flush=True)
            break
        sweeps.append(teacher_sweep(model, tokenizer, args.auto_alphas, inputs.probes, inputs.retain,
                                    inputs.membership, anchors and translated_probes(inputs.probes, anchors),
                                    max_length=args.max_length, spared=spared))
        del model
        if not round_:
            warn_if_membership_reads_alike(sweeps[0][0.0], targets)
        choice = choose_alpha(sweeps, targets, args.teacher_budget)
        over_budget = None if choice["reached"] else reached_over_budget(sweeps[-1], targets)
        if over_budget:
            choice["reason"] += f"; {over_budget}"
        if choice["reached"] or over_budget:
            break
    if diverged:
        choice["reason"] += f"; {diverged}"
    print(f"whp unlearn: alpha auto: α = {choice['alpha']:g}: {choice['reason']}", flush=True)
    return {**choice, "reinforced_adapter": str(paths[choice["round"]]), "reinforcement_fit": fits}


def diverged_reinforcement(fits: list[float | None]) -> str | None:
    """Why the last reinforcement of ``fits`` (forget-text perplexity with each round's reinforced adapter, the given
    one first) is not used: a strengthened round must fit the forget text better than the round before (what
    strengthening is for); when it does not, its training diverged (a learning rate raised too far) and its teacher
    would subtract noise. ``None`` when it does, for the given reinforcement, or when nothing was measured."""
    if len(fits) < 2 or fits[-1] is None or fits[-2] is None or fits[-1] < fits[-2]:
        return None
    return (f"round {len(fits) - 1}'s reinforcement fits the forget text worse than round {len(fits) - 2}'s "
            f"(perplexity {fits[-1]:.4g} against {fits[-2]:.4g}): its training diverged, so it is not used and the "
            "reinforcement is not strengthened further")


def auto_targets(model, model_args, args, tokenizer, inputs: AutoInputs, anchors):
    """The oracle's membership AUCs, familiarity and entity probability when ``args.oracle_model`` is given; else
    AUC 0.5 and the base on the anchor-translated probes and first mentions (no familiarity target without a
    dictionary to translate with), each within ``familiarity_tolerance`` or ``familiarity_share`` of the base's
    distance to it, whichever is less; with forget knowledge rows, their margin's (`knowledge_target`). ``model``: the
    base (a ``PeftModel``, measured with its adapters disabled)."""
    from .evaluation.autotune import (
        MEMBERSHIP, MEMBERSHIP_PLUS, NO_MEMBERSHIP, Targets, membership_error, reference_and_tolerance,
    )
    from .evaluation.familiarity import token_familiarity
    from .evaluation.membership import membership_auc
    from .loading import load_base_model
    from .models import reader_for

    tolerances = dict(membership_tolerance=args.membership_tolerance, familiarity_tolerance=args.familiarity_tolerance)
    if args.oracle_model:
        from .pipeline import require_same_tokenizer

        require_same_tokenizer(model_args, Path(args.oracle_model))
        oracle = load_base_model(dataclasses.replace(model_args, model_name_or_path=args.oracle_model))
        reader = reader_for(oracle)
        aucs = membership_auc(oracle, tokenizer, *inputs.membership, max_length=args.max_length, reader=reader) \
            if inputs.membership else {}
        return Targets(
            membership=aucs.get(MEMBERSHIP), membership_plus=aucs.get(MEMBERSHIP_PLUS),
            membership_error=membership_error(inputs.membership),
            familiarity=token_familiarity(oracle, tokenizer, inputs.probes, reader=reader) if inputs.probes else None,
            entity=token_familiarity(oracle, tokenizer, inputs.first_mentions, reader=reader)
            if inputs.first_mentions else None,
            **knowledge_target(model, oracle, tokenizer, inputs.forget_rows, args), **tolerances,
        )
    targets = Targets(membership=NO_MEMBERSHIP if inputs.membership else None, familiarity=None,
                      membership_error=membership_error(inputs.membership),
                      **knowledge_target(model, None, tokenizer, inputs.forget_rows, args), **tolerances)
    if anchors is None:
        return targets
    relative = dict(tolerance=args.familiarity_tolerance, share=args.familiarity_share)
    if inputs.probes:
        targets.familiarity, targets.familiarity_tolerance = reference_and_tolerance(
            model, tokenizer, inputs.probes, anchors, **relative)
    if inputs.first_mentions:
        targets.entity, targets.entity_tolerance = reference_and_tolerance(
            model, tokenizer, inputs.first_mentions, anchors, **relative)
    return targets


def knowledge_target(model, oracle, tokenizer, rows: list[dict] | None, args) -> dict[str, float]:
    """The target of the forget knowledge's margin (`answer_margins`) of ``rows``: the ``oracle``'s, or 0 without
    one (a model that never read the target has no reason to prefer its true answers to plausible false ones), within
    ``familiarity_share`` of the base's distance to it (``model`` with its adapters disabled). Nothing without rows."""
    if not rows:
        return {}
    from statistics import fmean

    from .evaluation.knowledge import answer_margins
    from .models import BASELINE, reader_for, using_adapter

    def margin(of):
        return fmean(answer_margins(of, tokenizer, rows, max_length=args.max_length, reader=reader_for(of)))

    with using_adapter(model, BASELINE):
        base = margin(model)
    target = 0.0 if oracle is None else margin(oracle)
    return {"knowledge": target, "knowledge_tolerance": args.familiarity_share * max(base - target, 0.0)}


def strengthened_reinforcement(data, model_args, source: Path, round_: int, args, overwrite: bool) -> Path:
    """The reinforced adapter retrained with ``auto_reinforce_factor ** round_`` times the epochs (or steps) and the
    learning rate of ``source`` (read from its ``training_args.bin``), into ``<source>-round<N>``."""
    import torch

    from .pipeline import reinforce
    from .reinforce import DivergenceStop

    settings = source / "training_args.bin"
    if not settings.is_file():
        raise FileNotFoundError(f"whp unlearn: alpha auto cannot strengthen the reinforcement {source}: it holds no "
                                "training_args.bin (its settings); set --auto_reinforce_rounds 0")
    stronger = copy.copy(torch.load(settings, weights_only=False))  # written by the Trainer that trained it
    factor = args.auto_reinforce_factor ** round_
    stronger.num_train_epochs *= factor
    stronger.max_steps = -1 if stronger.max_steps <= 0 else round(stronger.max_steps * factor)
    stronger.learning_rate *= factor
    stronger.output_dir = f"{source}-round{round_}"
    return Path(reinforce(data, model_args, stronger, overwrite, callbacks=[DivergenceStop()]))


def stop_at_targets(trainer, choice: dict, inputs: AutoInputs, args, tokenizer=None):
    """The stopping rule on ``trainer``, towards the targets of ``choice``; with ``inputs.neighbour_rows``, the
    mean answer log-likelihood of those rows is a budget too; with ``inputs.forget_rows``, their margin a target."""
    from .evaluation.autotune import Targets
    from .evaluation.knowledge import row_log_likelihoods
    from .evaluation.stopping import TargetStoppingCallback
    from .models import reader_for

    neighbour_knowledge = None
    if inputs.neighbour_rows:
        neighbour_knowledge = lambda model: row_log_likelihoods(  # noqa: E731
            model, tokenizer, inputs.neighbour_rows, max_length=args.max_length, reader=reader_for(model))

    callback = TargetStoppingCallback(
        trainer, Targets(**choice["targets"]), inputs.probes, inputs.retain, inputs.membership,
        inputs.first_mentions, neighbour_knowledge=neighbour_knowledge, forget_knowledge=inputs.forget_rows,
        general_texts=inputs.general, holdout_texts=inputs.holdout_budget,
        every_n_steps=args.auto_eval_steps,
        max_measurements=args.auto_max_measurements,
        retain_budget=args.retain_budget, neighbour_budget=args.neighbour_budget,
        budget_confidence=args.budget_confidence,
        budget_patience=args.budget_patience, backtrack=args.budget_backtrack, drop_cap=args.budget_drop_cap,
        end_search=args.budget_end_search, max_length=args.max_length,
    )
    trainer.add_callback(callback)
    return callback
