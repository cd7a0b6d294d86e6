"""Two-process DDP training on CPU (gloo), run as a user runs it: `python -m protloc train ... --devices 2`.

Lightning's DDP launcher starts the second rank by re-running the command line, so the test runs the CLI in a
subprocess rather than inside pytest (whose command line would be re-run instead).
"""
from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd

from protloc.models.run_weights import load_run

BATCH = 8


def test_two_process_ddp_on_cpu_writes_a_run(demo_data, tiny_recipe, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "protloc", "train", str(demo_data), "--out", str(out),
               *tiny_recipe.args(batch_size=BATCH), "--devices", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "best epoch" in result.stdout and result.stdout.count("run: ") == 1  # rank 0 alone reports
    assert result.stdout.count(": training on device cpu") == 1 and "2 processes" in result.stdout  # one engine line

    config, _model = load_run(out)
    training = config.training
    assert training.world_size == 2
    assert training.n_train + training.n_val == 96
    # Each rank trains on its own half of the training images: an epoch takes half the steps one device would.
    steps = pd.read_csv(out / "lr.csv").groupby("phase")["step"].count()
    per_rank = math.ceil(training.n_train / 2) // BATCH
    assert steps.to_dict() == {"frozen": per_rank, "finetune": per_rank}
    assert per_rank < training.n_train // BATCH
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2] and metrics["val_f1_macro"].notna().all()
