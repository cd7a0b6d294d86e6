"""kill -9 in the middle of training (mid-epoch, and half way through writing a checkpoint), then `train --resume`:
the run ends bit-identical to one never interrupted, and no temporary file of the killed process is left."""
from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

import protloc.training.run as run_module
from protloc.cli import main
from protloc.training.train import train

RECIPE = dict(backbone="test_resnet", epochs=2, dropout=0.3)  # 3 epochs: frozen, then 2 of fine-tuning


@pytest.fixture(scope="module")
def straight(demo_data, tiny_recipe, tmp_path_factory) -> Path:
    """The run trained in one go (on the CPU, where a resumed run can be bit-identical)."""
    return train(tiny_recipe.config(demo_data, tmp_path_factory.mktemp("straight") / "run", **RECIPE))


def train_and_die(mode: str, at: int, argv: list[str], log: Path) -> None:
    """`protloc train argv` with a way to die. "step N": SIGKILL after the N-th training batch of the run.
    "save N": SIGKILL while the N-th last.ckpt is being written, after half of its bytes.

    The body of a forked process: torch and Lightning come imported (seconds a fresh interpreter would spend
    on each kill), and it computes with as many threads as the test process (tests/training/conftest.py sets
    one), which CPU results depend on. It runs in the folder of `log`, and its output goes there, not into the
    parent's capture."""
    os.chdir(log.parent)
    stream = open(log, "w", buffering=1)
    os.dup2(stream.fileno(), 1)
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    count = itertools.count(1)

    if mode == "step":
        class KillAtStep(L.Callback):
            def on_train_batch_end(self, *args):
                if next(count) == at:
                    os.kill(os.getpid(), signal.SIGKILL)

        make_trainer = run_module.make_trainer
        run_module.make_trainer = lambda config, hardware, *, callbacks, **options: make_trainer(
            config, hardware, callbacks=[*callbacks, KillAtStep()], **options)
    else:
        save = torch.save

        def save_and_maybe_die(obj, file, *args, **kwargs):
            if ".last.ckpt." in os.path.basename(str(file)) and next(count) == at:
                save(obj, file, *args, **kwargs)
                with open(file, "r+b") as written:
                    written.truncate(os.path.getsize(file) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return save(obj, file, *args, **kwargs)

        torch.save = save_and_maybe_die
    sys.exit(main(argv))


def killed_training(mode: str, at: int, argv: list[str], log: Path) -> int:
    """The exit code of `train_and_die` in a forked process: -SIGKILL when it died as told."""
    process = multiprocessing.get_context("fork").Process(target=train_and_die, args=(mode, at, argv, log))
    process.start()
    process.join(300)
    if process.exitcode is None:
        process.kill()
        process.join()
    return process.exitcode


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scores(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns="images_per_second")


@pytest.mark.parametrize("mode, at", [("step", 14), ("save", 3)], ids=["mid-epoch", "mid-checkpoint-save"])
def test_kill_9_then_resume_ends_identical_to_an_uninterrupted_run(straight, demo_data, tiny_recipe, tmp_path, mode,
                                                                  at):
    run = tmp_path / "run"
    args = ["train", str(demo_data), "--out", str(run), *tiny_recipe.args(**RECIPE)]
    log = tmp_path / "killed.log"
    assert killed_training(mode, at, args, log) == -signal.SIGKILL, log.read_text()[-3000:]
    assert not (run / "model.safetensors").exists()
    if mode == "save":  # died writing the last epoch's checkpoint: its half-written temporary is there
        assert len(list(run.rglob("*.part"))) == 1 and len(scores(run)) == 3
    else:  # died during the last epoch, its two predecessors checkpointed
        assert len(scores(run)) == 2

    assert main(["train", "--resume", str(run), "--device", "cpu", "--workers", "0"]) == 0

    assert sha256(run / "model.safetensors") == sha256(straight / "model.safetensors")
    last = Path("checkpoints") / "finetune" / "last.ckpt"
    expected, actual = (torch.load(folder / last, map_location="cpu", weights_only=True)["state_dict"]
                        for folder in (straight, run))
    assert [key for key in expected if not torch.equal(expected[key], actual[key])] == []
    pd.testing.assert_frame_equal(scores(run), scores(straight), check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(run / "lr.csv"), pd.read_csv(straight / "lr.csv"), check_exact=True)
    assert list(run.rglob("*.part")) == []  # the killed process's temporary went with the next write
    modes = {path.relative_to(run).as_posix(): path.stat().st_mode & 0o777 for path in run.rglob("*") if path.is_file()}
    assert len(set(modes.values())) == 1, modes  # model.safetensors like every other output
