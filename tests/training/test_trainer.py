"""The hardware under training: the shared --device/--precision vocabulary in Lightning's terms, and a quiet log."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from protloc.errors import ProtlocError
from protloc.training.trainer import Hardware, resolve_hardware, worker_count
from protloc.training.train import train


def test_devices_map_to_lightnings_accelerator_and_devices():
    one_gpu = Hardware(device="cuda:1", precision="bf16", processes=1, num_nodes=1, workers=4)
    assert (one_gpu.accelerator, one_gpu.lightning_devices, one_gpu.world_size) == ("gpu", [1], 1)
    ddp = Hardware(device="cpu", precision="fp32", processes=2, num_nodes=3, workers=0)
    assert (ddp.accelerator, ddp.lightning_devices, ddp.world_size) == ("cpu", 2, 6)
    assert ddp.describe() == "device cpu, precision fp32 (32-true), 2 processes x 3 nodes, 0 loader workers each"


def test_loader_workers_default_to_none_on_the_cpu_with_the_image_cache(tiny_recipe):
    """Cached images cost the CPU little to load, and loader processes would take cores from the model's threads."""
    with_cache = tiny_recipe.config("d", "o", workers=None, cache=True)
    without_cache = tiny_recipe.config("d", "o", workers=None, cache=False)
    several = min(4, os.cpu_count() or 1)
    assert worker_count(with_cache, "cpu") == 0
    assert worker_count(without_cache, "cpu") == several  # decoding every epoch is work for other processes
    assert worker_count(with_cache, "cuda") == several  # and so is feeding a GPU
    assert worker_count(tiny_recipe.config("d", "o", workers=3, cache=True), "cpu") == 3  # --workers wins
    assert resolve_hardware(with_cache).workers == 0  # the tiny recipe trains on the CPU


def test_engine_requests_that_cannot_be_had_are_refused(tiny_recipe):
    with pytest.raises(ProtlocError, match="cuda:N names one GPU"):
        resolve_hardware(tiny_recipe.config("d", "o", device="cuda:0", devices=2))
    if not torch.cuda.is_available():
        with pytest.raises(ProtlocError, match="--device cuda: no CUDA GPU is visible"):
            resolve_hardware(tiny_recipe.config("d", "o", device="cuda"))
    with pytest.raises(ProtlocError, match="--device gpu: expected auto, cpu, cuda or cuda:N"):
        resolve_hardware(tiny_recipe.config("d", "o", device="gpu"))


class Messages(logging.Handler):
    """Lightning's log messages, wherever its own handler would print them."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lightning_messages():
    handler = Messages()
    logger = logging.getLogger("lightning")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_training_log_is_one_engine_line_and_a_line_per_epoch(demo_data, tiny_recipe, tmp_path, capsys, lightning_messages):
    train(tiny_recipe.config(demo_data, tmp_path / "run", show_progress=True))
    out, err = capsys.readouterr()
    log = (out + err).replace("\r", "\n")
    assert [line for line in log.splitlines() if ": training on " in line] == [
        f"{tmp_path / 'run'}: training on device cpu, precision fp32 (32-true), 1 process, 0 loader workers each"]
    # Progress on stderr alone; off a terminal (as here) each epoch is one line, written once, with no redraws.
    assert "\r" not in err and "epoch 1/2" not in out
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2 frozen", "epoch 2/2 finetune"]
    assert all("100%" in line and "val_f1_macro=" in line for line in epochs), epochs
    # No validation bars, no second "Epoch 0" per phase, no model summary tables, no banners or tips.
    for noise in ("Validation", "Epoch 0", "Training:", "Params", "GPU available", "litlogger", "Trainer.fit"):
        assert noise not in log, noise
    assert lightning_messages == []


def test_verbose_shows_lightnings_own_messages(demo_data, tiny_recipe, tmp_path, capsys, lightning_messages):
    train(tiny_recipe.config(demo_data, tmp_path / "run", epochs=0, verbose=True))
    assert any(line.startswith("GPU available:") for line in lightning_messages)
    assert any("litlogger" in line for line in lightning_messages)
    assert "Trainable params" in capsys.readouterr().out  # the model summary
    assert logging.getLogger("lightning.pytorch").level == logging.INFO  # as Lightning left it, after quiet runs too
