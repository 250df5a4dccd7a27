"""Trust, third pass: nothing a user wrote is touched. One run per output folder at a time; ``--overwrite`` deletes
only what the stage wrote, never writes over an edited file, and follows no link or marker entry out of the folder;
discovery never replaces a dictionary, and no run trains on candidates nobody reviewed."""

import json
import shutil
import subprocess
import sys

import pytest
from test_chat import familiar_server_reply
from test_cli import TRAINING, files, run_config, run_main, write_config  # noqa: F401  (files is a fixture)
from test_trust import unlearn_argv

from whp_trainer.discover import Candidate, is_unedited_candidates, write_candidates
from whp_trainer.runs import LOCK_FILE, STAGE_FILE, OutputFolderError, begin_stage, finish_stage, lock_owner


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


def test_a_live_run_keeps_others_out_and_a_dead_ones_lock_is_taken_over(files, tmp_path, capsys, caplog, live_process):
    out = tmp_path / "unlearned"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps(lock_owner(live_process.pid)))

    error = run_main(capsys, *unlearn_argv(files, out))
    assert f"in use by a live run (process {live_process.pid}" in error
    assert sorted(path.name for path in out.iterdir()) == [LOCK_FILE]  # nothing written beside the live run

    live_process.kill()
    live_process.wait()
    assert begin_stage(out, "unlearn", "settings")
    assert f"locked by process {live_process.pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads((out / LOCK_FILE).read_text())["pid"] != live_process.pid  # this run holds it now
    finish_stage(out, "unlearn", "settings")
    assert not (out / LOCK_FILE).exists()


def test_a_file_added_between_a_kill_and_the_resume_is_never_listed_nor_deleted(tmp_path):
    out = tmp_path / "out"
    assert begin_stage(out, "unlearn", "a")
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "adapter_model.safetensors").write_text("step 1")
    # ... killed here; the user drops a file into the folder, then resumes
    (out / "notes.txt").write_text("mine")
    assert begin_stage(out, "unlearn", "a")
    (out / "adapter_model.safetensors").write_text("final")
    finish_stage(out, "unlearn", "a")
    assert json.loads((out / STAGE_FILE).read_text())["files"].keys() == {"adapter_model.safetensors"}

    assert begin_stage(out, "unlearn", "b", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "adapter_model.safetensors").exists()


def finished(folder, *names: str):
    assert begin_stage(folder, "unlearn", "a")
    for name in names:
        (folder / name).write_text(f"whp's {name}")
    finish_stage(folder, "unlearn", "a")


def test_overwrite_refuses_to_write_over_a_file_the_user_edited(tmp_path):
    out = tmp_path / "out"
    finished(out, "README.md", "adapter_model.safetensors")
    (out / "README.md").write_text("my edited card, with much more in it")
    with pytest.raises(OutputFolderError, match=r"'README.md'\] .* changed since whp wrote them"):
        begin_stage(out, "unlearn", "b", overwrite=True)
    assert (out / "README.md").read_text() == "my edited card, with much more in it"
    assert (out / "adapter_model.safetensors").exists()  # nothing deleted either


def test_no_write_follows_a_link_out_of_the_folder(tmp_path):
    outside = tmp_path / "elsewhere.md"
    outside.write_text("someone else's file")
    out = tmp_path / "out"
    finished(out, "README.md")
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(outside)
    with pytest.raises(OutputFolderError, match="README.md is a symbolic link to .*elsewhere.md, outside"):
        begin_stage(out, "unlearn", "b", overwrite=True)
    killed = tmp_path / "killed"
    assert begin_stage(killed, "unlearn", "a")
    (killed / "README.md").symlink_to(outside)
    with pytest.raises(OutputFolderError, match="symbolic link"):
        begin_stage(killed, "unlearn", "a")  # the resume would write through it
    assert outside.read_text() == "someone else's file"


@pytest.mark.parametrize("entry", ["../victim.txt", "{victim}"])
def test_no_deletion_outside_the_folder_whatever_the_marker_lists(tmp_path, entry):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    finished(out, "adapter_model.safetensors")
    marker = json.loads((out / STAGE_FILE).read_text())
    stat = victim.stat()
    marker["files"][entry.format(victim=victim)] = [stat.st_size, stat.st_mtime_ns]
    (out / STAGE_FILE).write_text(json.dumps(marker))
    with pytest.raises(OutputFolderError, match="outside .*deletes nothing outside"):
        begin_stage(out, "unlearn", "b", overwrite=True)
    assert victim.read_text() == "keep me"


# ------------------------------------------------------------------------------------------- anchor discovery


def discovery(files, output, *extra) -> list[str]:
    return ["anchors", "--method", "llm", "--llm_url", "http://127.0.0.1:9/v1", "--forget_data",
            str(files / "forget.txt"), "--output", str(output), *extra]


def test_discovery_never_replaces_a_dictionary_a_review_or_an_input(files, tmp_path, capsys):
    dictionary = tmp_path / "anchors.yaml"
    shutil.copy(files / "anchors.yaml", dictionary)
    error = run_main(capsys, *discovery(files, dictionary, "--overwrite"))
    assert "was not written by whp anchors, or was edited since" in error
    assert dictionary.read_text() == (files / "anchors.yaml").read_text()
    error = run_main(capsys, *discovery(files, files / "forget.txt", "--overwrite"))
    assert "the run's --forget_data" in error

    candidates = tmp_path / "anchors.candidates.yaml"
    write_candidates(candidates, [Candidate("Hogwarts", ["Mystic Academy"])])
    assert is_unedited_candidates(candidates)  # whp's own, unedited: --overwrite may replace it
    candidates.write_text(candidates.read_text().replace("Mystic Academy", "Wizard School"))  # reviewed
    assert not is_unedited_candidates(candidates)
    error = run_main(capsys, *discovery(files, candidates, "--overwrite"))
    assert "edited since" in error and "Wizard School" in candidates.read_text()


def test_a_run_never_trains_on_candidates_nobody_reviewed(files, tmp_path, capsys, chat_server):
    chat_server.reply = familiar_server_reply
    run = tmp_path / "run"
    config = run_config(files, run, anchors={"method": "llm", "llm_url": chat_server.url}, unlearn=TRAINING)
    config["data"]["anchors"] = str(tmp_path / "reviewed.yaml")  # to be written by the user
    config["data"].pop("probes")
    path = write_config(tmp_path / "run.yaml", config)
    error = run_main(capsys, "run", str(path))
    assert f"review the candidates in {run / 'anchors.candidates.yaml'}" in error and "reviewed.yaml" in error
    assert (run / "anchors.candidates.yaml").is_file() and not (tmp_path / "reviewed.yaml").exists()
    assert not (run / "unlearned").exists()
    error = run_main(capsys, "run", str(path))  # again, before the review: the candidates are kept, nothing trains
    assert "review the candidates" in error and not (run / "unlearned").exists()
