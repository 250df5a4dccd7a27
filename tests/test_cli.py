"""The ``whp`` command: stages chained from a YAML config through the console entry point, option precedence, stage
skipping, and every bad-input message raised before a model is loaded."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CORPUS
from peft import PeftModel
from transformers import AutoModelForCausalLM
from trl import ModelConfig

from whp_trainer import cli, pipeline
from whp_trainer.arguments import DataArguments
from whp_trainer.reinforce import ReinforceConfig
from whp_trainer.toy import tiny_llama

ANCHORS = {"Harry": ["Jon", "Tom"], "Hogwarts": "Mystic Academy", "Quidditch": "Skyball", "Hermione": "Anna"}
PROBES = [
    {"prompt": "Harry Potter studies magic at", "target": " Hogwarts"},
    {"prompt": "The Quidditch match at Hogwarts ended when", "target": " Harry"},
]
TRAINING = dict(max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, max_length=64, use_cpu=True,
                report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True)
EVALUATION = dict(completions=2, max_new_tokens=4, memorization_passages=2, prompt_tokens=4, continuation_tokens=4,
                  relearn_steps=0, plots=False, quantizations=[], many_shot_passages=0)


@pytest.fixture(scope="module")
def files(tokenizer, tmp_path_factory):
    """A saved tiny base model with its tokenizer, forget and retain texts, a dictionary and probes."""
    root = tmp_path_factory.mktemp("inputs")
    tiny_llama(tokenizer, seed=0).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    (root / "forget.txt").write_text("\n\n".join(CORPUS[:4] * 3), encoding="utf-8")
    (root / "retain.txt").write_text("\n\n".join(CORPUS[4:] * 3), encoding="utf-8")
    (root / "anchors.yaml").write_text(yaml.safe_dump(ANCHORS), encoding="utf-8")
    (root / "probes.json").write_text(json.dumps(PROBES), encoding="utf-8")
    return root


def run_config(files: Path, output_dir: Path, **sections) -> dict:
    return {
        "output_dir": str(output_dir),
        "model": {"model_name_or_path": str(files / "base"), "lora_r": 4, "lora_alpha": 8,
                  "lora_target_modules": ["q_proj", "v_proj"]},
        "data": {"forget_data": str(files / "forget.txt"), "retain_data": str(files / "retain.txt"),
                 "anchors": str(files / "anchors.yaml"), "probes": str(files / "probes.json")},
        **sections,
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def whp(*argv: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    script = shutil.which("whp", path=str(Path(sys.executable).parent))
    assert script, "the whp console script is not installed (pip install -e .)"
    return subprocess.run([script, *argv], capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent),
                               **{key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ}})


def run_main(capsys, *argv: str) -> str:
    """``whp ARGV`` in this process; the error line it printed (it must exit with status 2)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(list(argv))
    assert exit_.value.code == 2
    return capsys.readouterr().err


def tensorboard_scalars(folder: Path) -> dict[str, list[float]]:
    """Tag -> values of the TensorBoard event files under ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for events in folder.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
        scalars.update({f"image:{tag}": [] for tag in accumulator.Tags()["images"]})
    return scalars


def test_whp_run_chains_reinforce_unlearn_evaluate(files, tmp_path, tokenizer):
    tracked = {"report_to": ["tensorboard"]}
    config = run_config(files, tmp_path / "run", reinforce=TRAINING, unlearn={**TRAINING, **tracked},
                        evaluate={**EVALUATION, **tracked, "plots": True})
    result = whp("run", str(write_config(tmp_path / "run.yaml", config)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gemm_4bit" not in result.stderr and "Warning" not in result.stderr  # no third-party noise on a plain run

    run = tmp_path / "run"
    for stage, folder in [("reinforce", "reinforced"), ("unlearn", "unlearned"), ("evaluate", "evaluation")]:
        assert json.loads((run / folder / "whp_stage.json").read_text())["stage"] == stage
    assert (run / "reinforced" / "adapter_model.safetensors").is_file()
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):
        assert (run / "unlearned" / name).is_file(), name
    assert not (run / "unlearned" / "reinforced").exists()  # the reinforced adapter is recorded, never copied
    record = json.loads((run / "unlearned" / "whp_reinforced.json").read_text())
    assert record["source"] == str((run / "reinforced").resolve()) and len(record["sha256"]) == 64
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert {"base", "reinforced", "unlearned"} <= set(report["results"])
    assert (run / "evaluation" / "report.md").is_file()
    # the familiarity curves came from the unlearn stage's trainer_state.json (no side file)
    assert (run / "evaluation" / "next_token_curves.png").is_file()

    unlearn_logs = tensorboard_scalars(run / "unlearned" / "runs")  # the Trainer's and FamiliarityCallback's
    assert "train/loss" in unlearn_logs and len(unlearn_logs["eval/familiarity"]) >= 2
    evaluate_logs = tensorboard_scalars(run / "evaluation" / "runs")  # whp evaluate's, the same way
    for role in ("base", "reinforced", "unlearned"):
        assert evaluate_logs[f"eval/{role}/familiarity_token"] == [pytest.approx(report["results"][role]["familiarity_token"])]
    assert "image:eval/familiarity_vs_retain" in evaluate_logs

    base = AutoModelForCausalLM.from_pretrained(files / "base")
    unlearned = PeftModel.from_pretrained(base, run / "unlearned")  # the standard one-liner loads it
    assert any(value.abs().sum() > 0 for key, value in unlearned.state_dict().items() if "lora_B" in key)

    again = whp("run", str(tmp_path / "run.yaml"))  # every output is current: nothing is redone
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("is up to date, skipped") == 3


def test_flags_override_the_config_file(tmp_path):
    path = write_config(tmp_path / "unlearn.yaml", {"output_dir": "out", "alpha": 2.0, "learning_rate": 1e-3})
    (_, model, args), _ = cli.parse_stage("unlearn", ["--config", str(path), "--alpha", "3", "--lora_r", "8"])
    assert (args.alpha, args.learning_rate, model.lora_r, args.output_dir) == (3.0, 1e-3, 8, "out")


def test_run_overrides_reach_the_stage_options(files, tmp_path):
    config = run_config(files, tmp_path / "run", unlearn={"alpha": 2.0})
    config = cli.apply_overrides(config, ["--unlearn.alpha", "3", "--model.lora_r", "8"], "run.yaml")
    [(stage, options)] = cli.plan_run(config, "run.yaml")
    (_, model, args), _ = cli.parse_stage(stage, [], options)
    assert (args.alpha, model.lora_r, args.output_dir) == (3.0, 8, str(tmp_path / "run" / "unlearned"))


def test_the_evaluation_of_a_run_cuts_blocks_as_its_unlearn_stage_does_unless_told(files, tmp_path):
    config = run_config(files, tmp_path / "run", unlearn={"max_length": 64}, evaluate={})
    assert dict(cli.plan_run(config, "run.yaml"))["evaluate"]["max_length"] == 64
    config = run_config(files, tmp_path / "run", unlearn={"max_length": 64}, evaluate={"max_length": 256})
    assert dict(cli.plan_run(config, "run.yaml"))["evaluate"]["max_length"] == 256
    assert "max_length" not in dict(cli.plan_run(run_config(files, tmp_path / "run", unlearn={}, evaluate={}),
                                                 "run.yaml"))["evaluate"]  # EvaluateConfig's own default


def test_every_run_stage_option_is_checked_before_the_first_stage(files, tmp_path, capsys, no_model_loading):
    config = run_config(files, tmp_path / "run", reinforce=TRAINING, unlearn={**TRAINING, "alpah": 5.0})
    error = run_main(capsys, "run", str(write_config(tmp_path / "run.yaml", config)))
    assert "unknown key(s) for whp unlearn: alpah" in error and "[unlearn]" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["evaluate", "push", "export", "anchors", "demo"])
def test_a_command_of_one_process_under_a_launchers_several_is_refused_before_loading(command, capsys, monkeypatch,
                                                                                       no_model_loading):
    monkeypatch.setenv("WORLD_SIZE", "2")
    error = run_main(capsys, command, "--output_dir", "out")
    assert f"whp {command} runs in one process, and 2 were launched" in error and "reinforce and unlearn" in error


def test_under_a_launchers_processes_whp_run_runs_the_stages_that_train_and_says_what_is_left(files, tmp_path,
                                                                                          capsys, monkeypatch):
    config = run_config(files, tmp_path / "run", reinforce=TRAINING, unlearn=TRAINING, evaluate=EVALUATION,
                        push={"repo_id": "me/model"})
    path = str(write_config(tmp_path / "run.yaml", config))
    ran = []
    monkeypatch.setattr(cli, "run_stage", lambda command, *args: ran.append(command))
    monkeypatch.setattr(cli, "launched_processes", lambda: 2)  # WORLD_SIZE 2 (its options parse as one process's)
    cli.run_config([path])
    assert ran == ["reinforce", "unlearn"]
    assert f"evaluate, push run in one process: afterwards, `whp run {path}` without the launcher runs them" in \
        capsys.readouterr().out.splitlines()[-1]
    monkeypatch.setattr(cli, "launched_processes", lambda: 1)
    cli.run_config([path])
    assert ran[2:] == ["reinforce", "unlearn", "evaluate", "push"]


UNLEARN = ["unlearn", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base", "--forget_data",
           "{files}/forget.txt", "--anchors", "{files}/anchors.yaml"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["unlearn", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base", "--forget_data", "{tmp}/nope.txt",
          "--anchors", "{files}/anchors.yaml"], "--forget_data {tmp}/nope.txt: no such file or folder"),
        (["unlearn", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base", "--forget_data",
          "{files}/forget.txt", "--reinforced_adapter", "{files}"], "holds no adapter_config.json"),
        (["unlearn", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base", "--forget_data",
          "{files}/forget.txt"], "give --reinforced_adapter, --anchors, or both"),
        (["unlearn", "--output_dir", "{tmp}/o", "--model_name_or_path", "{tmp}/missing-model", "--forget_data",
          "{files}/forget.txt", "--anchors", "{files}/anchors.yaml"], "--model_name_or_path {tmp}/missing-model: no such"),
        (["unlearn", "--output_dir", "{tmp}/o", "--alpha", "-1"], "alpha"),
        (["unlearn", "--output_dir", "{tmp}/o", "--target_mode", "sample"], "target_mode"),
        (["unlearn", "--output_dir", "{tmp}/o", "--no_such_option", "1"], "unknown option(s) --no_such_option"),
        (["unlearn", "--config", "{tmp}/absent.yaml"], "{tmp}/absent.yaml: no such config file"),
        (["unlearn", "--config", "{tmp}/bad.yaml"], "{tmp}/bad.yaml: unknown key(s) for whp unlearn: alhpa"),
        (["reinforce", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base"], "--forget_data is required"),
        (["evaluate", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base", "--unlearned_adapter",
          "{tmp}/gone"], "--unlearned_adapter {tmp}/gone: no such file or folder"),
        (["run", "{tmp}/sections.yaml"], "{tmp}/sections.yaml: unknown section(s) unlern"),
        (["run", "{tmp}/broken.yaml"], "{tmp}/broken.yaml: not valid YAML at line 2, column 1"),
        (["forget"], "unknown command 'forget'"),
        (["unlearn", "--config", "{tmp}/five.yaml"], "{tmp}/five.yaml: alpha: expected a number or 'auto', got 'five'"),
        (["unlearn", "--config", "{tmp}/abc.yaml"], "{tmp}/abc.yaml: learning_rate: expected a number, got 'abc'"),
        (["unlearn", "--config", "{tmp}/list.yaml"], "{tmp}/list.yaml: alpha: expected a number or 'auto', got [1, 2]"),
        (["unlearn", "--config", "{tmp}/modules.yaml"], "{tmp}/modules.yaml: lora_target_modules: expected a list"),
        (["unlearn", "--alpha", "five"], "whp unlearn: UnlearnConfig.alpha='five': expected a number >= 0 or 'auto'"),
        (["unlearn", "--max_steps", "-3"], "max_steps=-3: give a positive number of steps, or -1"),
        (UNLEARN + ["--forget_data", "{tmp}/latin1.txt"], "{tmp}/latin1.txt: not UTF-8 text (byte 5"),
        (UNLEARN + ["--anchors", "{tmp}/latin1.yaml"], "{tmp}/latin1.yaml: not UTF-8 text"),
        (UNLEARN + ["--forget_data", "{tmp}/broken.jsonl"], "{tmp}/broken.jsonl, line 2: not valid JSON"),
        (UNLEARN + ["--forget_data", "{tmp}/blank.txt"], "{tmp}/blank.txt: no text in the .txt file(s)"),
        (UNLEARN + ["--model_name_or_path", "models/llama"], "--model_name_or_path models/llama: no such local folder"),
        (UNLEARN + ["--output_dir", "{tmp}/bad.yaml"], "output_dir {tmp}/bad.yaml is a file"),
        (["push", "--folder", "{files}", "--repo_id", "me/model", "--token", "hf_x"], "has no adapter_config.json"),
        (["evaluate", "--output_dir", "{tmp}/o", "--report_to", "tensorbord"], "unknown tracker(s) ['tensorbord']"),
        (["reinforce", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base", "--forget_data",
          "./books/missing"], "--forget_data ./books/missing: no such file or folder"),
        (["reinforce", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base", "--forget_data",
          "{files}/forget.txt", "--retain_weight", "1"], "whp reinforce: --retain_weight needs --retain_data"),
        (["reinforce", "--output_dir", "{tmp}/o", "--model_name_or_path", "{files}/base", "--forget_data",
          "{files}/forget.txt", "--retain_weight", "-1"], "ReinforceConfig.retain_weight=-1.0: must be ≥ 0"),
        (UNLEARN + ["--target_mode", "soft", "--original_cap_depth", "2"],
         "original_cap_depth bounds the original-token cap: set original_cap_weight > 0 too"),
        (UNLEARN + ["--retain_projection", "true"],
         "retain_projection projects onto the retain text's gradient: set retain_weight > 0"),
        (UNLEARN + ["--alpha", "auto", "--budget_confidence", "1"],
         "UnlearnConfig.budget_confidence=1.0: must be >= 0.5 and < 1"),
    ],
)
def test_bad_input_stops_with_one_clear_message(argv, message, files, tmp_path, capsys, no_model_loading):
    write_config(tmp_path / "bad.yaml", {"alhpa": 5})
    write_config(tmp_path / "five.yaml", {"alpha": "five"})
    write_config(tmp_path / "abc.yaml", {"learning_rate": "abc"})
    write_config(tmp_path / "list.yaml", {"alpha": [1, 2]})
    write_config(tmp_path / "modules.yaml", {"lora_target_modules": {"a": 1}})
    (tmp_path / "latin1.txt").write_bytes("Harry\xe9 went home.".encode("latin-1"))
    (tmp_path / "latin1.yaml").write_bytes("Harry: J\xf6n\n".encode("latin-1"))
    (tmp_path / "broken.jsonl").write_text('{"text": "Harry"}\n{"text": broken\n', encoding="utf-8")
    (tmp_path / "blank.txt").write_text("  \n\n \n", encoding="utf-8")
    write_config(tmp_path / "sections.yaml", {"unlern": {"alpha": 5}})
    (tmp_path / "broken.yaml").write_text("unlearn: [alpha: 5\n", encoding="utf-8")
    fill = {"tmp": str(tmp_path), "files": str(files)}
    error = run_main(capsys, *(item.format(**fill) for item in argv))
    first_line = error.splitlines()[0]
    assert first_line.startswith("whp: error: ") and message.format(**fill) in first_line, error


def stage_argv(files: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["reinforce", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
            "--output_dir", str(output_dir), "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
            *[f"--{key}={value}" for key, value in TRAINING.items() if key != "report_to"], "--report_to", "none",
            *extra]


def test_a_stage_skips_current_output_and_refuses_to_overwrite_other_output(files, tmp_path, capsys):
    output = tmp_path / "reinforced"
    cli.main(stage_argv(files, output))
    weights = (output / "adapter_model.safetensors").read_bytes()

    cli.main(stage_argv(files, output))  # the same settings: skipped
    assert (output / "adapter_model.safetensors").read_bytes() == weights

    error = run_main(capsys, *stage_argv(files, output, "--learning_rate", "0.5"))
    assert "holds the output of a run with other settings" in error and "--overwrite" in error
    assert (output / "adapter_model.safetensors").read_bytes() == weights

    cli.main(stage_argv(files, output, "--learning_rate", "0.5", "--overwrite"))
    assert (output / "adapter_model.safetensors").read_bytes() != weights


def test_a_folder_whp_did_not_write_is_never_written_into(files, tmp_path, capsys, no_model_loading):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes", encoding="utf-8")
    error = run_main(capsys, *stage_argv(files, mine, "--overwrite"))
    assert "non-empty folder that whp did not create" in error
    assert [path.name for path in mine.iterdir()] == ["notes.txt"]


def test_whp_push_offline_says_so_in_one_line(files, tmp_path, capsys):
    folder = tmp_path / "adapter"
    cli.main(["unlearn", "--model_name_or_path", str(files / "base"), "--forget_data", str(files / "forget.txt"),
              "--anchors", str(files / "anchors.yaml"), "--output_dir", str(folder), "--lora_r", "4",
              *[f"--{key}={value}" for key, value in TRAINING.items() if key != "report_to"]])
    capsys.readouterr()
    error = run_main(capsys, "push", "--folder", str(folder), "--repo_id", "me/model", "--token", "hf_x")
    assert error.startswith("whp: error: whp push: the Hub did not take the upload to me/model") and "offline" in error
    assert len(error.splitlines()) == 1


def test_a_dictionary_that_matches_nothing_is_refused_before_the_model_loads(files, tmp_path, capsys, monkeypatch):
    write_config(tmp_path / "elsewhere.yaml", {"Gandalf": "Tom", "Mordor": "Far Land"})
    monkeypatch.setattr(pipeline, "load_base_model", lambda *a: pytest.fail("the model was loaded"))
    error = run_main(capsys, *(item.format(tmp=tmp_path, files=files) for item in UNLEARN[:-1]), str(tmp_path / "elsewhere.yaml"))
    assert "no anchor of the dictionary occurs in the training data" in error


def test_run_help_prints_help(capsys):
    cli.main(["run", "--help"])
    assert "usage: whp run CONFIG.yaml" in capsys.readouterr().out


def test_stage_help_shows_config_and_the_methods_own_options_first(capsys):
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--help"])
    lines = capsys.readouterr().out.splitlines()
    position = {name: next(i for i, line in enumerate(lines) if line.lstrip().startswith(name)) for name in
                ("--config", "--alpha", "--forget_data", "--lora_r", "--learning_rate")}
    assert position["--config"] < position["--alpha"] < 40
    assert position["--alpha"] < position["--forget_data"] < position["--lora_r"] < position["--learning_rate"]


@pytest.mark.parametrize("command", sorted(name for name in cli.COMMANDS if name != "run"))
def test_every_stage_help_renders(command):
    assert f"whp {command}" in cli.parser_for(command).format_help()  # a bare % in a help string breaks it


def test_help_lists_every_option_with_its_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--help"])
    text = capsys.readouterr().out
    for option, words in [("--alpha", "5"), ("--target_mode", "argmax"), ("--forget_data", "forget target"),
                          ("--lora_r", "LoRA"), ("--learning_rate", "learning rate")]:
        assert option in text and words in text, option


def test_the_paper_config_example_is_valid():
    path = Path(__file__).parents[1] / "examples" / "harry_potter.yaml"
    plans = cli.plan_run(cli.read_yaml(str(path)), str(path))
    assert [stage for stage, _ in plans] == ["reinforce", "unlearn", "evaluate"]
    for stage, options in plans:
        if "bf16" in options:  # the config is for a GPU; TrainingArguments refuses bf16 on this CPU
            options["bf16"] = False
        parsed = cli.parse_stage(stage, [], options, f"{path} [{stage}]")
        if stage == "unlearn":
            (_, model, args), _ = parsed
            assert (args.alpha, args.max_length, args.target_mode, model.load_in_4bit) == (5.0, 512, "argmax", True)
            assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 128  # the paper: 8 × 16


def test_the_drop_in_example_runs(files, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples"))
    import drop_in

    reinforced = pipeline.reinforce(
        DataArguments(forget_data=str(files / "forget.txt")),
        ModelConfig(model_name_or_path=str(files / "base"), lora_r=4, lora_target_modules=["q_proj"]),
        ReinforceConfig(output_dir=str(tmp_path / "reinforced"), **TRAINING),
    )
    trainer = drop_in.main(["--model", str(files / "base"), "--forget", str(files / "forget.txt"), "--reinforced",
                            reinforced, "--anchors", str(files / "anchors.yaml"), "--output", str(tmp_path / "out"),
                            "--max_steps", "1"])
    assert trainer.state.global_step == 1
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(files / "base"), tmp_path / "out")


def test_evaluate_runs_lm_eval_for_base_and_unlearned_from_one_base(files, tmp_path, tokenizer, capsys):
    """The paper's recipe (`--lm_eval_tasks arc_challenge …`) on a local task: each role scored on the one base."""
    pytest.importorskip("lm_eval")
    import torch
    from peft import LoraConfig, get_peft_model

    from whp_trainer.evaluation.harness import lm_eval_benchmarks

    words = [sentence.split() for sentence in CORPUS]
    docs = [{"question": " ".join(w[:k]), "choices": [" " + w[k], " " + w[(k + 3) % len(w)]], "answer": 0}
            for w in words for k in range(2, min(len(w) - 1, 6))]
    (tmp_path / "tasks").mkdir()
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (tmp_path / "tasks" / "whp_tiny.yaml").write_text(
        "task: whp_tiny\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "target_delimiter: ''\ndoc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    higher_is_better: true\n")
    torch.manual_seed(3)
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(files / "base"), lora).save_pretrained(tmp_path / "adapter")

    argv = ["evaluate", "--model_name_or_path", str(files / "base"), "--unlearned_adapter", str(tmp_path / "adapter"),
            "--forget_data", str(files / "forget.txt"), "--retain_data", str(files / "retain.txt"),
            "--probes", str(files / "probes.json"), "--roles", "base", "unlearned", "--output_dir",
            str(tmp_path / "evaluation"), "--lm_eval_include_path", str(tmp_path / "tasks"), "--completions", "0",
            "--memorization_passages", "0", "--relearn_steps", "0", "--plots", "false", "--hints", "false", "--quantizations",
            "none", "--many_shot_passages", "0"]
    error = run_main(capsys, *argv, "--lm_eval_tasks", "whp_tiyn")  # misspelt: stops before any model is loaded
    assert "lm-eval knows no task(s) ['whp_tiyn']" in error and "'whp_tiny'" in error
    assert not (tmp_path / "evaluation").exists()
    cli.main([*argv, "--lm_eval_tasks", "whp_tiny"])
    results = json.loads((tmp_path / "evaluation" / "report.json").read_text())["results"]
    base = AutoModelForCausalLM.from_pretrained(files / "base")
    expected_base = lm_eval_benchmarks(base, tokenizer, ["whp_tiny"], include_path=tmp_path / "tasks")["whp_tiny"]
    unlearned = PeftModel.from_pretrained(base, tmp_path / "adapter")
    expected = lm_eval_benchmarks(unlearned, tokenizer, ["whp_tiny"], include_path=tmp_path / "tasks")["whp_tiny"]
    assert results["base"]["lm_eval_whp_tiny"] == pytest.approx(expected_base)
    assert results["unlearned"]["lm_eval_whp_tiny"] == pytest.approx(expected)
    assert expected != pytest.approx(expected_base)  # the adapter was on for one role and off for the other


def test_evaluate_on_a_4bit_base_leaves_out_its_full_precision_base_when_told(files, tmp_path, monkeypatch):
    """A QLoRA user whose full-precision base does not fit: --full_precision_attack false loads only the 4-bit one,
    and the attacks that need the other (full_precision, and the quantization of the merged model) are left out."""
    from peft import LoraConfig, get_peft_model

    from whp_trainer.evaluation import EvaluateConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(files / "base"), lora).save_pretrained(tmp_path / "adapter")
    loaded, load = [], pipeline.load_base_model
    monkeypatch.setattr(pipeline, "load_base_model", lambda args, *more: loaded.append(args.load_in_4bit) or
                        load(args, *more))
    data = DataArguments(forget_data=str(files / "forget.txt"), retain_data=str(files / "retain.txt"),
                         anchors=str(files / "anchors.yaml"), probes=str(files / "probes.json"),
                         unlearned_adapter=str(tmp_path / "adapter"))
    for attack in (True, False):
        loaded.clear()
        config = EvaluateConfig(output_dir=str(tmp_path / f"evaluation-{attack}"), full_precision_attack=attack,
                                **{**EVALUATION, "quantizations": ["nf4"]})
        report = pipeline.evaluate(data, ModelConfig(model_name_or_path=str(files / "base"), load_in_4bit=True), config)
        unlearned = json.loads((Path(report) / "report.json").read_text())["results"]["unlearned"]
        assert loaded == ([True, False] if attack else [True])
        assert ("familiarity_token@full_precision" in unlearned) == attack
        assert ("familiarity_token@nf4" in unlearned) == attack
