"""A run stopped and resumed (at the phase boundary, then mid fine-tuning) ends bit-identical to one trained in
one go, whatever path names its folder and wherever the folder moved in between."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.runs import load_config
from protloc.training.train import train


def final_state(run_dir) -> dict[str, torch.Tensor]:
    """The weights after the last epoch (model.safetensors holds the best epoch's, which may be earlier)."""
    checkpoint = torch.load(run_dir / "checkpoints" / "finetune" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"]


def test_stopped_resumed_and_moved_run_ends_identical(demo_data, tiny_recipe, tmp_path, monkeypatch):
    recipe = dict(epochs=2, dropout=0.3)
    # On the CPU (the tiny recipe's device): GPU convolution kernels are not bit-for-bit deterministic, resumed or not.
    straight = train(tiny_recipe.config(demo_data, tmp_path / "straight", **recipe))

    # Stopped twice, through the CLI as a user types it; it also loads its images in a worker process, which
    # must not change what it learns.
    monkeypatch.chdir(tmp_path)
    args = tiny_recipe.args(**recipe, workers=1)
    assert main(["train", str(demo_data), "--out", "runs/x", *args, "--stop-after", "1"]) == 0
    assert not (tmp_path / "runs" / "x" / "config.json").exists()
    assert len(pd.read_csv(tmp_path / "runs" / "x" / "metrics.csv")) == 1
    # The folder named by its absolute path now: the same run.
    assert main(["train", "--resume", str(tmp_path / "runs" / "x"), "--stop-after", "2", "--workers", "1"]) == 0
    assert len(pd.read_csv(tmp_path / "runs" / "x" / "metrics.csv")) == 2
    # Then moved: it resumes where it is, and leaves nothing behind where it was.
    shutil.move(tmp_path / "runs" / "x", tmp_path / "runs" / "y")
    assert main(["train", "--resume", "runs/y", "--workers", "1"]) == 0
    assert not (tmp_path / "runs" / "x").exists()
    resumed = tmp_path / "runs" / "y"

    expected, actual = final_state(straight), final_state(resumed)
    assert expected.keys() == actual.keys()
    assert [key for key in expected if not torch.equal(expected[key], actual[key])] == []
    best_expected, best_actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(best_expected[key], best_actual[key]) for key in best_expected)

    def scores(run_dir):
        return pd.read_csv(run_dir / "metrics.csv").drop(columns="images_per_second")

    pd.testing.assert_frame_equal(scores(straight), scores(resumed), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(straight / "lr.csv"), pd.read_csv(resumed / "lr.csv"), check_exact=True)


def test_resume_refuses_changed_options_and_missing_runs(demo_data, tiny_recipe, tmp_path):
    recipe = tiny_recipe.config(demo_data, tmp_path / "run", stop_after=1)
    train(recipe)
    with pytest.raises(ProtlocError) as error:
        train(dataclasses.replace(recipe, lr=0.5, seed=7, resume=True, stop_after=None))
    message = "\n".join(error.value.lines)
    assert f"--lr: {recipe.lr} in the stopped run, 0.5 now" in message and "--seed: 42 in the stopped run, 7 now" in message
    assert "--out" not in message  # where the folder is may change
    with pytest.raises(ProtlocError, match="holds no stopped run"):
        train(dataclasses.replace(recipe, out=str(tmp_path / "elsewhere"), resume=True))
    assert main(["train", "--resume", str(tmp_path / "elsewhere")]) == 2
    assert main(["train", str(demo_data)]) == 2  # neither --out nor --resume


def test_resume_reads_an_earlier_versions_recipe_and_compares_paths_resolved(demo_data, tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe.config(demo_data, tmp_path / "run", stop_after=1)
    train(recipe)
    # As an earlier version wrote it: "split", "layout" and "accelerator", the data path as typed.
    recipe_file = tmp_path / "run" / "checkpoints" / "recipe.json"
    saved = json.loads(recipe_file.read_text())
    old = {{"validation_split": "split", "format": "layout", "device": "accelerator"}.get(key, key): value
           for key, value in saved["config"].items() if key != "verbose"}
    recipe_file.write_text(json.dumps({**saved, "config": {**old, "accelerator": "cpu", "data": str(demo_data)}}))
    # The same command plus --resume, its data and folder named by relative paths from elsewhere.
    monkeypatch.chdir(demo_data.parent)
    resumed = dataclasses.replace(recipe, data=demo_data.name, out=os.path.relpath(tmp_path / "run"), resume=True,
                                  stop_after=None)
    train(resumed)
    assert load_config(tmp_path / "run").training.validation_split == "mask"
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 2
