"""What a plain ``whp`` run prints: whp's lines, a progress bar, and one readable line per logging step; no library
progress bars, loading messages or raw metric dicts, unless ``WHP_VERBOSE=1``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CORPUS

from whp_trainer.toy import tiny_llama

LIBRARY_OUTPUT = ("Filter", "Adding EOS", "Tokenizing", "Packing", "Loading weights", "Writing model shards",
                  "{'loss'", "{'train_runtime'", "Warning")


@pytest.fixture(scope="module")
def inputs(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    tiny_llama(tokenizer, seed=0).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    (root / "forget.txt").write_text("\n\n".join(CORPUS[:4] * 6), encoding="utf-8")
    (root / "anchors.yaml").write_text(yaml.safe_dump({"Harry": "Jon", "Hogwarts": "Mystic Academy"}), encoding="utf-8")
    return root


TRAINING = {"max_steps": 2, "logging_steps": 1, "max_length": 32, "per_device_train_batch_size": 4, "use_cpu": True,
            "report_to": "none", "save_strategy": "no"}


def whp(*argv: str, verbose: bool = False) -> str:
    """stdout and stderr of the installed console script."""
    script = shutil.which("whp", path=str(Path(sys.executable).parent))
    assert script, "the whp console script is not installed (pip install -e .)"
    env = {"HF_HUB_OFFLINE": "1", "PATH": str(Path(sys.executable).parent), "OMP_NUM_THREADS": "1",
           **{key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ},
           **({"WHP_VERBOSE": "1"} if verbose else {})}
    done = subprocess.run([script, *argv], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_plain_run_prints_whps_lines_and_one_readable_line_per_logging_step(inputs, tmp_path):
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"model_name_or_path": str(inputs / "base"), "lora_r": 4, "lora_target_modules": ["q_proj", "v_proj"]},
        "data": {"forget_data": str(inputs / "forget.txt"), "anchors": str(inputs / "anchors.yaml")},
        "reinforce": TRAINING,
        "unlearn": TRAINING,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    output = whp("run", str(tmp_path / "run.yaml"))

    assert not [text for text in LIBRARY_OUTPUT if text in output], output
    for stage in ("reinforce", "unlearn"):
        assert f"whp {stage}: forget text in " in output and "padding" in output
    steps = [line.split(" · ")[0] for line in output.splitlines() if line.startswith("step ")]
    assert steps == ["step 1/2", "step 2/2"] * 2, output
    assert all(" · loss " in line for line in output.splitlines() if line.startswith("step "))
    assert output.count("trained 2 steps in ") == 2 and "target_changed_fraction" in output


def test_whp_verbose_restores_the_libraries_output(inputs, tmp_path):
    options = [f"--{key}={value}" for key, value in TRAINING.items()]
    output = whp("reinforce", "--model_name_or_path", str(inputs / "base"), "--forget_data", str(inputs / "forget.txt"),
                 "--output_dir", str(tmp_path / "r"), *options, verbose=True)
    assert "{'loss'" in output and "Loading weights" in output
