"""The GPU acceptance script's dry run (benchmarks/gpu/run.sh --cpu): every check's code path on the CPU with tiny
models, so the script a GPU session runs in one call cannot rot."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_checks_dry_run_passes_every_check_that_runs_on_a_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           # accelerate and torchrun from this interpreter's environment, activated or not
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    run = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--cpu"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    status = {check["name"]: check["status"] for check in report["checks"]}
    # ZeRO-3 through Trainer needs GPU processes (accelerate), Liger's kernels are Triton: both are GPU-only
    assert status == {"fsdp2": "ok", "zero3": "skipped", "bf16": "ok", "nf4": "ok", "scale-bf16": "ok",
                      "scale-nf4": "ok" if importlib.util.find_spec("bitsandbytes") else "skipped", "liger": "skipped"}
    fsdp2 = next(check for check in report["checks"] if check["name"] == "fsdp2")["values"]
    assert len(fsdp2["losses"]) == 4 and fsdp2["max_rel_diff"] <= 1e-4  # killed after step 2, resumed
    scale = next(check for check in report["checks"] if check["name"] == "scale-bf16")["values"]
    assert scale["whp_s"] > 0 and scale["lora_s"] > 0 and scale["paper_hours_whp"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| fsdp2 | ok |" in table and "Device: cpu (dry run)" in table
