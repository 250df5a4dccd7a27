"""``alpha: auto``: the targets a user can compute without an oracle, the teacher measured at a grid of α against
them, and the choice of α.

Two signals, as docs/results.md's recommended procedure reads them:

- **memorized wording**: membership AUC of forget passages against holdout text of the same kind, by Min-K% and by
  Min-K%++ (the one further from its target counts); target 0.5 (no membership signal), or the oracle's AUCs when
  an oracle is given;
- **knowledge**: token familiarity on the probes; its reference is the package's estimate of a model that never
  read the target, the base reading the anchor-translated probes (or the oracle's familiarity).

The teacher of every α comes from the same two passes (baseline and reinforced) per batch: ``v_generic`` is
recomputed for each α from their logits, so a sweep of nine α costs what measuring one teacher costs. On the probes
the teacher is the anchored one the student is trained towards (the baseline reads the translated prompt); on
membership and retain text, the bootstrapped one of ``whp evaluate --teacher_alphas``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..batching import pad_token_id, padded_batch
from ..models import BASELINE, reader_for, using_adapter
from ..targets import generic_logits
from .familiarity import evaluation_mode, next_token_logits, probe_ids, token_familiarity
from .membership import MUSE_K, auc_standard_error, membership_ids, membership_results, min_k, scores_from_logits
from .probes import terms_pattern
from .retain import perplexity_blocks, row_nlls
from .teacher import GenericTeacher

NO_MEMBERSHIP = 0.5  # the AUC of a model that read neither forget nor holdout text
MEMBERSHIP = "membership_auc_mink"  # the membership shortfall's key: the larger of the two attacks' shortfalls
MEMBERSHIP_PLUS = "membership_auc_minkpp"
FAMILIARITY = "familiarity_token"
RETAIN = "retain_perplexity"
ENTITY = "entity_first_mention"
KNOWLEDGE = "knowledge_forget_margin"  # mean per-token log-likelihood of the true answers less the false ones'


@dataclass
class Targets:
    """What "forgotten" means for a run: the membership AUC to reach by Min-K% (``None``: no holdout text) and by
    Min-K%++ (``membership_plus``; ``None``: the same), the familiarity reference and the entity-probability
    reference (``None``: no reference), with their tolerances (``entity_tolerance`` ``None``:
    ``familiarity_tolerance``); ``membership_error``: the standard error of a membership AUC on the rule's sample
    (`membership_error`; ``None``: not known); ``knowledge``: the forget knowledge's margin to reach (``None``: no
    forget knowledge), within ``knowledge_tolerance`` nats."""

    membership: float | None
    familiarity: float | None
    entity: float | None = None
    membership_tolerance: float = 0.05
    familiarity_tolerance: float = 0.02
    entity_tolerance: float | None = None
    membership_plus: float | None = None
    membership_error: float | None = None
    knowledge: float | None = None
    knowledge_tolerance: float = 0.0

    def membership_target(self, key: str) -> float:
        """The AUC to reach by Min-K% (``MEMBERSHIP``) or by Min-K%++ (``MEMBERSHIP_PLUS``)."""
        if key == MEMBERSHIP_PLUS and self.membership_plus is not None:
            return self.membership_plus
        return self.membership

    def resolution(self) -> str:
        """How finely the membership target is read, as the reason, the report and the card say it ("" unknown)."""
        return "" if self.membership_error is None else f" (standard error of the sample {self.membership_error:.2f})"

    def tolerance(self, key: str) -> float:
        """The tolerance of the familiarity (``FAMILIARITY``), entity-probability (``ENTITY``) or knowledge
        (``KNOWLEDGE``) target."""
        if key == KNOWLEDGE:
            return self.knowledge_tolerance
        if key == ENTITY and self.entity_tolerance is not None:
            return self.entity_tolerance
        return self.familiarity_tolerance

    def shortfalls(self, metrics: dict, base: dict, overshoot_counts: bool = False,
                   signed: bool = False) -> dict[str, float]:
        """Per target signal: how much of the way from the base to the target is left (0 = reached, within the
        tolerance; 1 = where the base is). Membership (under ``MEMBERSHIP``) is the larger of what Min-K% and
        Min-K%++ have left: wording one attack still recognises is not forgotten. A membership AUC past the target
        counts as reached, unless ``overshoot_counts`` (a student past the oracle's AUC is itself recognisable:
        distance in both directions). ``signed``: not stopped at 0, negative past the target (by that part of the
        way)."""
        clip = (lambda gap: gap) if signed else (lambda gap: max(0.0, gap))
        left = {}
        if self.membership is not None and MEMBERSHIP in metrics:
            shares = []
            for key in (MEMBERSHIP, MEMBERSHIP_PLUS):
                if key in metrics:
                    target = self.membership_target(key)
                    gap = metrics[key] - target
                    gap = (abs(gap) if overshoot_counts else gap) - self.membership_tolerance
                    shares.append(clip(gap) / max(abs(base[key] - target), self.membership_tolerance))
            left[MEMBERSHIP] = max(shares)
        for key, reference in ((FAMILIARITY, self.familiarity), (ENTITY, self.entity), (KNOWLEDGE, self.knowledge)):
            if reference is not None and key in metrics:
                gap = metrics[key] - reference - self.tolerance(key)
                # 1e-12: a relative tolerance is 0 where the base is at its reference
                left[key] = clip(gap) / max(base[key] - reference, self.tolerance(key), 1e-12)
        return left

    def progress(self, metrics: dict, base: dict) -> dict[str, float]:
        """Per target the base had a way to go to (it was outside the tolerance): the share of that way the weights
        measured as ``metrics`` went (1: reached; 0 or below: none of it, or away from the target, as a membership
        AUC past the target counts)."""
        start = self.shortfalls(base, base, overshoot_counts=True)
        now = self.shortfalls(metrics, base, overshoot_counts=True)
        return {key: 1 - now[key] / start[key] for key in start if start[key] > 0 and key in now}


def membership_error(membership: tuple[Sequence[str], Sequence[str]] | None) -> float | None:
    """The standard error of a membership AUC near 0.5 read on ``membership`` (forget, holdout): the resolution of
    the membership target (``None`` without a sample)."""
    return auc_standard_error(NO_MEMBERSHIP, *map(len, membership)) if membership else None


def translated_probes(probes: Sequence[dict], dictionary) -> list[dict]:
    """The probes with every anchor of their prompts replaced by its first translation (targets unchanged): what a
    model that never read the target would be asked."""
    pattern = terms_pattern(dictionary)
    if pattern is None:
        return [dict(probe) for probe in probes]
    first = {anchor: translations[0] for anchor, translations in dictionary.items()}
    return [{**probe, "prompt": pattern.sub(lambda match: first[match.group()], probe["prompt"])} for probe in probes]


def familiarity_reference(model, tokenizer, probes: Sequence[dict], dictionary, batch_size: int = 16) -> float:
    """The base's (adapters disabled) token familiarity on the anchor-translated probes."""
    with using_adapter(model, BASELINE):
        return token_familiarity(model, tokenizer, translated_probes(probes, dictionary), batch_size,
                                 reader_for(model))


def reference_and_tolerance(model, tokenizer, probes: Sequence[dict], dictionary, tolerance: float,
                            share: float) -> tuple[float, float]:
    """The no-oracle reference of ``probes`` (`familiarity_reference`) and its tolerance: ``tolerance``, or
    ``share`` of the base's own distance to the reference when that is less. A pretrained model with a large
    vocabulary puts little probability on any exact name: against an absolute tolerance alone it would count as
    forgotten before training."""
    reference = familiarity_reference(model, tokenizer, probes, dictionary)
    with using_adapter(model, BASELINE):
        base = token_familiarity(model, tokenizer, probes, reader=reader_for(model))
    return reference, min(tolerance, share * max(base - reference, 0.0))


def teacher_sweep(
    model,
    tokenizer,
    alphas: Sequence[float],
    probes: Sequence[dict],
    retain_texts: Sequence[str],
    membership_texts: tuple[Sequence[str], Sequence[str]] | None = None,
    translated: Sequence[dict] | None = None,
    adapter: str = "reinforced",
    k: float = MUSE_K,
    max_length: int = 512,
    batch_size: int = 8,
    spared: torch.Tensor | None = None,
) -> dict[float, dict[str, float]]:
    """The generic-logit teacher at each of ``alphas`` (``0`` is the base; ``spared``: the token ids the boost never
    lowers, as the trainer's ``spare_common_tokens`` has them), measured on perplexity of
    ``retain_texts``, with ``membership_texts`` (forget, holdout) on the Min-K% and Min-K%++ membership AUC, and on
    token familiarity of ``probes``: ``{alpha: {metric: value}}``, from two forward passes per batch whatever the
    number of α.

    On the probes the teacher is the one the student is trained towards there: its baseline reads ``translated``
    (the probes anchor-translated, see `translated_probes`; default: the probes as they are,
    the bootstrapped teacher of ``whp evaluate --teacher_alphas``). On the other texts it is the bootstrapped
    teacher, as ``whp evaluate`` measures it. In a multi-process run each process reads a share of the items
    (`reader_for`).
    """
    alphas = sorted({0.0, *map(float, alphas)})
    teacher = GenericTeacher(model, adapter, alpha=0.0, spared=spared)
    pad_id, reader = pad_token_id(tokenizer), reader_for(model)
    results = {alpha: {} for alpha in alphas}
    with evaluation_mode(model):
        pairs = [(*probe_ids(tokenizer, probe, index), probe_ids(tokenizer, translation, index)[0])
                 for index, (probe, translation) in enumerate(zip(probes, translated or probes, strict=True))]
        probabilities = reader(pairs, lambda part: probe_probabilities(teacher, part, alphas, pad_id, batch_size))
        blocks = perplexity_blocks(retain_texts, tokenizer, max_length, "teacher_sweep (retain text)")
        nlls = reader(blocks, lambda part: block_nlls_by_alpha(teacher, part, alphas, pad_id, batch_size))
        for column, alpha in enumerate(alphas):
            results[alpha][FAMILIARITY] = sum(row[column] for row in probabilities) / len(probabilities)
            nll, count = (sum(values) for values in zip(*(row[column] for row in nlls)))
            results[alpha][RETAIN] = math.exp(nll / count)
        if membership_texts:
            scores = [reader(membership_ids(tokenizer, texts, max_length),
                             lambda part: membership_by_alpha(teacher, part, alphas, pad_id, k, batch_size))
                      for texts in membership_texts]
            for column, alpha in enumerate(alphas):
                results[alpha].update(membership_results(*([row[column] for row in rows] for rows in scores)))
    return results


def rows_of_alphas(teacher, rows, alphas, pad_id, batch_size):
    """For each of ``rows`` (read in right-padded batches): its part of the batch (``(1, T)`` tensors) and ``(alpha,
    generic logits (1, T, V))`` of each α, computed from the batch's two teacher passes one row and one α at a time
    (so one row's vocabulary-sized logits of one α are held beside the passes, not a batch's)."""
    for start in range(0, len(rows), batch_size):
        batch = padded_batch(rows[start : start + batch_size], pad_id, device=teacher.device)
        baseline, reinforced = teacher.role_logits(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        for row in range(len(baseline)):
            part = {key: value[row : row + 1] for key, value in batch.items()}
            yield part, ((alpha, generic_logits(baseline[row : row + 1], reinforced[row : row + 1], alpha,
                                                relu=teacher.relu, spared=teacher.spared)) for alpha in alphas)


def probe_probabilities(teacher, pairs, alphas, pad_id, batch_size) -> list[list[float]]:
    """Per probe given as ``(context, target, translated context)`` ids: the probability of its target under the
    teacher of each α, the one the student is trained towards there (the baseline reads the translated prompt, the
    anchored target; the reinforced adapter the original one)."""
    found = []
    for start in range(0, len(pairs), batch_size):
        contexts, targets, translated = zip(*pairs[start : start + batch_size])
        with using_adapter(teacher.model, BASELINE):
            baseline = next_token_logits(teacher.model, translated, pad_id)
        with using_adapter(teacher.model, teacher.adapter):
            reinforced = next_token_logits(teacher.model, contexts, pad_id)
        chosen = torch.tensor(targets, device=baseline.device)
        columns = [generic_logits(baseline, reinforced, alpha, relu=teacher.relu, spared=teacher.spared).softmax(-1)[
            torch.arange(len(chosen)), chosen].tolist() for alpha in alphas]
        found += [list(row) for row in zip(*columns)]
    return found


def block_nlls_by_alpha(teacher, blocks, alphas, pad_id, batch_size) -> list[list[tuple[float, int]]]:
    """Per block (`perplexity_blocks`): its summed negative log-likelihood and token count under the teacher of
    each α."""
    return [[row_nlls(values, part["labels"])[0] for _, values in logits]
            for part, logits in rows_of_alphas(teacher, blocks, alphas, pad_id, batch_size)]


def membership_by_alpha(teacher, rows, alphas, pad_id, k, batch_size) -> list[list[tuple[float, float]]]:
    """Per text given as `membership_ids`: its Min-K% and Min-K%++ scores under the teacher of each α."""
    found = []
    for ids, (part, logits) in zip(rows, rows_of_alphas(teacher, rows, alphas, pad_id, batch_size), strict=True):
        scores = (scores_from_logits(values, part["input_ids"], [ids]) for _, values in logits)
        found.append([(min_k(plain[0], k), min_k(plus[0], k)) for plain, plus in scores])
    return found


def teacher_shortfalls(sweep: dict[float, dict], targets: Targets) -> dict[float, dict[str, float]]:
    """Per teacher of ``sweep`` (α 0, the base, left out): how much of the way to each target it has left, from that
    sweep's base (`Targets.shortfalls`)."""
    return {alpha: targets.shortfalls(metrics, sweep[0.0]) for alpha, metrics in sweep.items() if alpha}


def choose_alpha(sweeps: Sequence[dict[float, dict]], targets: Targets, teacher_budget: float | None = None) -> dict:
    """The α to unlearn with, from one sweep per reinforcement (the first is the given one): in the first sweep where
    a teacher reaches every target within ``teacher_budget`` (its retain perplexity at most that share above the
    base's; ``None``: any cost), the α that does so at the least retain perplexity; when none does, the α (of any
    sweep) that comes closest (least shortfall summed over the targets, then least retain perplexity) among those
    within ``teacher_budget``, or among all when none is. A teacher that reaches the targets only by making ordinary
    text many times less likely is no target a student can follow within its own budget: a stronger reinforcement
    gives cheaper teachers, and the budget stays a constraint when none reaches the targets (as the student's).

    Returns ``{"alpha", "round", "reached", "reason", "targets", "sweeps"}`` (``round``: which sweep, 0 = the given
    reinforcement), the record of the choice.
    """
    if not sweeps:
        raise ValueError("choose_alpha needs at least one sweep")
    candidates = [(round_, alpha, sweep[alpha], sum(left.values()), left) for round_, sweep in enumerate(sweeps)
                  for alpha, left in teacher_shortfalls(sweep, targets).items()]

    def affordable(candidate) -> bool:
        base = sweeps[candidate[0]][0.0][RETAIN]
        return teacher_budget is None or candidate[2][RETAIN] <= base * (1 + teacher_budget)

    reaching = [c for c in candidates if c[3] == 0.0 and affordable(c)]
    if reaching:
        first_round = min(c[0] for c in reaching)
        round_, alpha, metrics, _, left = min((c for c in reaching if c[0] == first_round), key=lambda c: c[2][RETAIN])
        reason = f"the teacher at α={alpha:g} reaches every target ({describe(metrics, targets)}) at the least " \
                 f"retain perplexity ({metrics[RETAIN]:.4g} against the base's {sweeps[round_][0.0][RETAIN]:.4g})"
    else:
        pool = [c for c in candidates if affordable(c)]
        round_, alpha, metrics, _, left = min(pool or candidates, key=lambda c: (round(c[3], 6), c[2][RETAIN]))
        within = "" if teacher_budget is None else f" at most {teacher_budget:.0%} above the base's retain perplexity"
        closest = "the closest" if teacher_budget is None else \
            "the closest within it" if pool else "none is within it; the closest"
        reason = f"no teacher reaches every target{within}; {closest} is α={alpha:g} ({describe(metrics, targets)}" \
                 f"; retain perplexity {metrics[RETAIN]:.4g} against the base's {sweeps[round_][0.0][RETAIN]:.4g}" \
                 f"; left of the way: {', '.join(f'{key} {value:.0%}' for key, value in left.items()) or 'none'})"
    if round_:
        reason += f", after {round_} strengthening(s) of the reinforcement"
    return {"alpha": alpha, "round": round_, "reached": bool(reaching), "reason": reason, "targets": asdict(targets),
            "sweeps": [{f"{a:g}": metrics for a, metrics in sweep.items()} for sweep in sweeps]}


def reached_over_budget(sweep: dict[float, dict], targets: Targets) -> str | None:
    """Why a stronger reinforcement is not trained after ``sweep``: its teacher at the grid's smallest α already
    reaches every target, only over the teacher budget. A stronger reinforcement lowers the α the targets need (on
    the demo, membership reached at α 3 within the budget where the given one needed α 20, over it) and costs more at
    each α (on the known-book pilot 2-5× the given one's retain perplexity); below the grid's smallest α it has no
    lower α to give, so no teacher within the budget this one lacks. ``None`` when a target needs more than the
    smallest α."""
    shortfalls = teacher_shortfalls(sweep, targets)
    floor = min(shortfalls, default=None)
    if floor is None or sum(shortfalls[floor].values()):
        return None
    return (f"the teacher reaches every target at the grid's smallest α={floor:g}, only over the teacher budget: a "
            "stronger reinforcement costs more at every α, so none is trained")


def membership_reading(metrics: dict, targets: Targets) -> str:
    """Each attack's membership AUC in ``metrics`` with its target, in words."""
    return " · ".join(f"{name} {metrics[key]:.3f} (target {targets.membership_target(key):.3f})"
                      for name, key in (("Min-K%", MEMBERSHIP), ("Min-K%++", MEMBERSHIP_PLUS)) if key in metrics)


def describe(metrics: dict, targets: Targets) -> str:
    parts = []
    if targets.membership is not None and MEMBERSHIP in metrics:
        parts.append(f"membership AUC {membership_reading(metrics, targets)} ± {targets.membership_tolerance:g}"
                     f"{targets.resolution()}")
    if targets.familiarity is not None:
        parts.append(f"familiarity {metrics[FAMILIARITY]:.4f}, reference {targets.familiarity:.4f} "
                     f"+ {targets.familiarity_tolerance:.2g}")
    if targets.knowledge is not None and KNOWLEDGE in metrics:
        parts.append(f"forget knowledge margin {metrics[KNOWLEDGE]:.3f} nat, target {targets.knowledge:.3f} "
                     f"+ {targets.knowledge_tolerance:.2g}")
    return "; ".join(parts) or "no target measurable"
