"""``whp evaluate``'s results for the trackers: names, values not measured, images (TensorBoard end to end is in
test_cli's chained run)."""

from types import SimpleNamespace

import pytest

from whp_trainer.evaluation import EvaluateConfig
from whp_trainer.evaluation.trackers import log_images, log_to_trackers, tracker_logs


def test_results_are_logged_per_role_and_unmeasured_values_left_out():
    results = {"base": {"familiarity_token": 0.2, "familiarity_completion": float("nan")},
               "unlearned": {"familiarity_token": 0.01, "retain_perplexity": None}}
    assert tracker_logs(results) == {"eval_base/familiarity_token": 0.2, "eval_unlearned/familiarity_token": 0.01}


def test_no_tracker_no_run(tmp_path):
    assert log_to_trackers({"base": {"x": 1.0}}, "none", tmp_path) == []
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"report_to=\['tensorbord'\]: unknown tracker"):
        EvaluateConfig(report_to=["tensorbord"])


def test_plots_go_to_trackers_with_the_wandb_image_api(tmp_path):
    """W&B and Trackio share ``log({key: Image(path)})``; neither is installed here, so a recording module stands in."""
    logged = []
    tracker = SimpleNamespace(Image=lambda path: ("image", path), log=logged.append)
    log_images(SimpleNamespace(_trackio=tracker, _initialized=True), [tmp_path / "familiarity_vs_retain.png"])
    assert logged == [{"eval/familiarity_vs_retain": ("image", str(tmp_path / "familiarity_vs_retain.png"))}]
    log_images(SimpleNamespace(_wandb=tracker, _initialized=False), [tmp_path / "x.png"])  # a run that never started
    assert len(logged) == 1
