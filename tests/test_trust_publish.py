"""Trust, third pass: what a folder is decides what may leave it. Push, export and evaluate take only a finished
unlearn (or its export); ``whp reinforce`` never uploads; uploads exclude the reinforced weights and the push token
by content; no secret, whatever argument carries it, and no forget text reach an uploaded file."""

import json
import pickle
import shutil

import pytest
from test_cli import PROBES, TRAINING, files, run_main  # noqa: F401  (files is a fixture)
from test_trainer import dataset, make_trainer  # noqa: F401  (dataset is a fixture)
from test_trust import SENTINEL, files_containing, flags, hub, unlearn_argv  # noqa: F401  (hub is a fixture)

from whp_trainer import UnlearnConfig, cli
from whp_trainer.runs import STAGE_FILE, STARTED_FILE


@pytest.fixture(scope="module")
def outputs(files, tmp_path_factory):
    """A finished `whp reinforce` output and a finished `whp unlearn` output that used it."""
    root = tmp_path_factory.mktemp("outputs")
    cli.main(["reinforce", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
              "--output_dir", str(root / "reinforced"), "--lora_r", "4", *flags(TRAINING)])
    cli.main(unlearn_argv(files, root / "unlearned", "--reinforced_adapter", str(root / "reinforced")))
    return root


def push(capsys, folder, *extra) -> str:
    return run_main(capsys, "push", "--folder", str(folder), "--repo_id", "someone/whp-tiny", "--token", SENTINEL,
                    *extra)


def test_push_export_and_evaluate_refuse_a_reinforce_output_or_a_plain_model(outputs, files, tmp_path, hub, capsys):
    reinforced = outputs / "reinforced"
    error = push(capsys, reinforced)
    assert "is the output of `whp reinforce`: the REINFORCED adapter" in error
    error = run_main(capsys, "export", "--folder", str(reinforced), "--merged_dir", str(tmp_path / "merged"))
    assert "whp export" in error and "is the output of `whp reinforce`" in error
    assert not (tmp_path / "merged").exists()
    error = push(capsys, files / "base", "--form", "merged")
    assert "is no output of whp" in error and "finished output of `whp export`" in error
    error = run_main(capsys, "evaluate", "--model_name_or_path", str(files / "base"), "--unlearned_adapter",
                     str(reinforced), "--forget_data", str(files / "forget.txt"), "--retain_data",
                     str(files / "retain.txt"), "--probes", str(files / "probes.json"), "--output_dir",
                     str(tmp_path / "evaluation"))
    assert "--unlearned_adapter" in error and "is the output of `whp reinforce`" in error
    assert hub.uploaded == {}


def test_whp_reinforce_never_uploads(files, tmp_path, hub, capsys):
    error = run_main(capsys, "reinforce", "--model_name_or_path", str(files / "base"), "--forget_data",
                     str(files / "forget.txt"), "--output_dir", str(tmp_path / "r"), *flags(TRAINING),
                     "--push_to_hub", "true", "--hub_model_id", "someone/reinforced", "--hub_token", SENTINEL)
    assert "the reinforced adapter is never uploaded" in error
    assert hub.uploaded == {} and not (tmp_path / "r").exists()


def unfinished(folder):
    (folder / STAGE_FILE).rename(folder / STARTED_FILE)  # as a run killed (or failed) after its weights


def test_push_and_export_refuse_a_stage_that_never_finished(outputs, tmp_path, hub, capsys):
    failed = shutil.copytree(outputs / "unlearned", tmp_path / "failed")
    unfinished(failed)
    error = push(capsys, failed)
    assert "holds a `whp unlearn` run that never finished" in error
    error = run_main(capsys, "export", "--folder", str(failed), "--merged_dir", str(tmp_path / "merged"))
    assert "never finished" in error

    cli.main(["export", "--folder", str(outputs / "unlearned"), "--merged_dir", str(tmp_path / "merged")])
    unfinished(tmp_path / "merged")
    error = push(capsys, tmp_path / "merged", "--form", "merged")
    assert "holds a `whp export` run that never finished" in error
    assert hub.uploaded == {}


def test_uploads_exclude_the_reinforced_weights_and_the_token_by_content(outputs, tmp_path, hub, capsys):
    folder = shutil.copytree(outputs / "unlearned", tmp_path / "unlearned")
    weights = outputs / "reinforced" / "adapter_model.safetensors"
    shutil.copy(weights, folder / "renamed.bin")
    (folder / "linked.safetensors").symlink_to(weights)
    (folder / "sub" / "reinforced").mkdir(parents=True)
    (folder / "sub" / "reinforced" / "adapter_config.json").write_text("{}")
    (folder / "hub_token.txt").write_text(f"token: {SENTINEL}\n")

    cli.main(["push", "--folder", str(folder), "--repo_id", "someone/whp-tiny", "--token", SENTINEL])
    assert "adapter_model.safetensors" in hub.uploaded
    assert not {"renamed.bin", "linked.safetensors", "hub_token.txt"} & set(hub.uploaded)
    assert not any("reinforced/" in path for path in hub.uploaded)
    assert all(path.read_bytes() != weights.read_bytes() for path in hub.uploaded.values() if hasattr(path, "read_bytes"))


def test_a_trainer_push_excludes_by_content_too(make_model, reinforced_path, dataset, tmp_path, hub):
    out = tmp_path / "out"
    out.mkdir()
    (out / "hub_token.txt").write_text(SENTINEL)
    shutil.copy(reinforced_path / "adapter_model.safetensors", out / "copy.bin")
    trainer = make_trainer(make_model, reinforced_path, dataset, out, max_steps=1, push_to_hub=True,
                           hub_model_id="someone/whp-tiny", hub_token=SENTINEL)
    trainer.train()
    trainer.push_to_hub()
    trainer._finish_current_push()
    assert "adapter_model.safetensors" in hub.uploaded
    assert not {"hub_token.txt", "copy.bin"} & set(hub.uploaded) and hub.with_token() == []


def test_a_token_in_any_argument_reaches_no_written_file(files, tmp_path, hub):
    out = tmp_path / "unlearned"
    kwargs = json.dumps({"token": SENTINEL, "dtype": "float32"})
    cli.main(unlearn_argv(files, out, "--model_init_kwargs", kwargs))
    assert files_containing(tmp_path, SENTINEL) == []  # training_args.bin, in the folder and its checkpoints
    args = UnlearnConfig(output_dir=str(out), report_to=[], model_init_kwargs=json.loads(kwargs),
                         run_name=f"run-{SENTINEL}")
    assert SENTINEL not in args.to_json_string()  # what TensorBoard logs (and W&B, Trackio: to_dict)
    assert SENTINEL not in str(pickle.loads(pickle.dumps(args)).__dict__)
    assert args.model_init_kwargs["token"] == SENTINEL  # the live settings keep it: the model still loads with it


def test_no_forget_text_in_the_metric_names_or_the_uploaded_logs(files, tmp_path, hub):
    out = tmp_path / "unlearned"
    cli.main(unlearn_argv(files, out, "--probes", str(files / "probes.json")))
    state = json.loads((out / "trainer_state.json").read_text())
    keys = {key for entry in state["log_history"] for key in entry}
    assert any(key.startswith("eval_p_next[") for key in keys)
    prompts = [probe["prompt"] for probe in PROBES]
    targets = [probe["target"].strip() for probe in PROBES]  # words of the tokenizer too: looked for in names only
    cli.main(["push", "--folder", str(out), "--repo_id", "someone/whp-tiny", "--token", SENTINEL])
    assert "trainer_state.json" in hub.uploaded
    assert "whp_probe_names.json" not in hub.uploaded  # the prompts behind the names: local only
    assert json.loads((out / "whp_probe_names.json").read_text())["eval_p_next[0][0]"] == [PROBES[0]["prompt"],
                                                                                          PROBES[0]["target"]]
    for path, source in hub.uploaded.items():
        text = source.read_bytes() if hasattr(source, "read_bytes") else bytes(source)
        assert not any(prompt.encode() in text for prompt in prompts), path
    assert not any(text in key for key in keys for text in prompts + targets)
