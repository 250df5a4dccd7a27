"""The PNG plots of an evaluation: forgetting against retained ability per role, and, from the training callback's
history, the next-token probabilities and the familiarity over the unlearning steps."""

from __future__ import annotations

from pathlib import Path

from .callback import FAMILIARITY_KEY, RETAIN_PERPLEXITY_KEY, parse_next_token_key
from .comparison import ordered_roles


def write_plots(results: dict, history: list[dict] | None, output_dir: Path,
                probe_names: dict[str, list[str]] | None = None) -> list[Path]:
    """The PNGs: familiarity vs retain perplexity per role, and, from a callback's `history`, the next-token
    probabilities and the familiarity over training steps. Returns the files written."""
    figures = {"familiarity_vs_retain.png": familiarity_vs_retain_figure(results)}
    if history:
        figures["next_token_curves.png"] = next_token_figure(history, probe_names)
        figures["familiarity_over_steps.png"] = familiarity_over_steps_figure(history)
    written = []
    for name, figure in figures.items():
        if figure is not None:
            figure.savefig(output_dir / name, dpi=120, bbox_inches="tight")  # a bare Figure renders with Agg
            written.append(output_dir / name)
    return written


def familiarity_vs_retain_figure(results: dict):
    from matplotlib.figure import Figure

    needed = {"familiarity_token", "retain_perplexity"}
    points = {role: metrics for role, metrics in results.items() if needed <= set(metrics)}
    if not points:
        return None
    figure = Figure(figsize=(5, 4))
    axes = figure.subplots()
    for role in ordered_roles(points):
        x, y = points[role]["retain_perplexity"], points[role]["familiarity_token"]
        axes.scatter([x], [y], s=60, label=role)
        axes.annotate(role, (x, y), textcoords="offset points", xytext=(6, 4))
    axes.set(xlabel="retain perplexity (lower = ability kept)", ylabel="token familiarity (lower = forgotten)",
             title="Forgetting vs retained ability")
    axes.legend()
    return figure


def next_token_figure(history: list[dict], probe_names: dict[str, list[str]] | None = None):
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys(key for entry in history for key in entry["metrics"] if parse_next_token_key(key)))
    if not keys:
        return None
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for key in keys:
        steps, values = _series(history, key)
        prompt, token = (probe_names or {}).get(key) or parse_next_token_key(key)
        axes.plot(steps, values, marker="o", label=f"{prompt!r} → {token!r}")
    axes.set(xlabel="training step", ylabel="next-token probability", title="Next-token probabilities while unlearning")
    axes.legend(fontsize="small")
    return figure


def familiarity_over_steps_figure(history: list[dict]):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(*_series(history, FAMILIARITY_KEY), marker="o", color="tab:red")
    axes.set(xlabel="training step", ylabel="token familiarity (lower = forgotten)",
             title="Familiarity while unlearning")
    steps, perplexities = _series(history, RETAIN_PERPLEXITY_KEY)
    if steps:
        right = axes.twinx()
        right.plot(steps, perplexities, marker="s", color="tab:blue")
        right.set_ylabel("retain perplexity")
    return figure


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    entries = [entry for entry in history if key in entry["metrics"]]
    return [entry["step"] for entry in entries], [entry["metrics"][key] for entry in entries]
