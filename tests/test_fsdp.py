"""Two-process FSDP2 on CPU (gloo) trains the adapter of one plain process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from conftest import LORA, torchrun
from test_trainer import make_example

WORKER = Path(__file__).parent / "fsdp_worker.py"


def save_artefacts(make_model, tokenizer, folder: Path) -> None:
    """The base, a non-zero reinforced adapter and 8 examples, as the workers read them."""
    make_model().save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    torch.manual_seed(1)
    get_peft_model(make_model(), LoraConfig(init_lora_weights=False, **LORA)).save_pretrained(folder / "reinforced")
    examples = [make_example(seed, 10 + seed % 4, len(tokenizer)) for seed in range(8)]
    (folder / "examples.json").write_text(json.dumps(examples))


@pytest.mark.slow
def test_hand_sharded_step_gives_the_unsharded_loss_gradients_and_metrics(make_model, tokenizer, tmp_path):
    save_artefacts(make_model, tokenizer, tmp_path)
    # the worker asserts, on each process, loss, full gradients and metrics against the unsharded step, and that the
    # shared readings of a sharded model give the unsharded familiarity (every process in the same forwards)
    subprocess.run([*torchrun(), WORKER, tmp_path, tmp_path / "hand", "--hand"], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    losses = json.loads((tmp_path / "hand" / "losses.json").read_text())
    assert losses.keys() == {"argmax-True", "soft-True", "argmax-False"}
    assert losses["argmax-True"] == pytest.approx(losses["argmax-False"], rel=1e-5)


@pytest.mark.slow
def test_fsdp2_trains_the_same_adapter_as_one_process(make_model, tokenizer, tmp_path):
    save_artefacts(make_model, tokenizer, tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "hf-datasets"))

    subprocess.run([sys.executable, WORKER, tmp_path, tmp_path / "single", "8", "--no-fsdp"], check=True, env=env, timeout=600)
    subprocess.run([*torchrun(), WORKER, tmp_path, tmp_path / "fsdp", "4"], check=True, env=env, timeout=600)
    # cache_targets: computed by the main process before accelerate shards the model, read by both
    subprocess.run([*torchrun(), WORKER, tmp_path, tmp_path / "cached", "4", "--cache"], check=True, env=env, timeout=600)
    assert len(list((tmp_path / "hf-datasets" / "whp_targets").glob("whp-targets-*.arrow"))) == 1

    # the workers also check that every parameter was sharded and that base and reinforced weights are unchanged
    losses = torch.tensor(json.loads((tmp_path / "fsdp" / "losses.json").read_text()))
    assert len(losses) == 2 and losses.isfinite().all() and losses[1] < losses[0]  # step 2 sees step 1's examples
    single = load_file(tmp_path / "single" / "adapter_model.safetensors")
    fsdp = load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    assert single.keys() == fsdp.keys()
    assert all(fsdp[key].abs().sum() > 0 for key in fsdp if "lora_B" in key)  # trained away from LoRA's zero init
    cached = load_file(tmp_path / "cached" / "adapter_model.safetensors")
    for key in single:
        torch.testing.assert_close(fsdp[key], single[key], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(cached[key], single[key], rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "fsdp" / "reinforced").exists()  # only the unlearning adapter is saved
