"""DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes (DeepSpeed's CPU accelerator, gloo): one UnlearnTrainer step
through the engine gives the loss, gradients and metrics of the unsharded step. Skipped without the deepspeed extra."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import torchrun
from test_fsdp import save_artefacts

pytest.importorskip("deepspeed")
WORKER = Path(__file__).parent / "deepspeed_worker.py"


@pytest.mark.slow
def test_zero2_and_zero3_steps_give_the_unsharded_loss_gradients_and_metrics(make_model, tokenizer, tmp_path):
    save_artefacts(make_model, tokenizer, tmp_path)
    # the worker asserts, on each process, loss, full gradients and metrics against the unsharded step, and that
    # cache_targets is refused under ZeRO-3
    subprocess.run([*torchrun(), WORKER, tmp_path, tmp_path / "out"], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu"), timeout=600)
    losses = json.loads((tmp_path / "out" / "losses.json").read_text())
    assert losses.keys() == {"zero2-argmax", "zero3-argmax", "zero3-soft"}
    assert losses["zero2-argmax"] == pytest.approx(losses["zero3-argmax"], rel=1e-5)
