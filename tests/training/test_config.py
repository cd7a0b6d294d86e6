"""TrainConfig, its checks, and the `protloc train` options that fill it."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from protloc.cli import build_parser
from protloc.commands.train import config_from_args, register
from protloc.errors import ProtlocError
from protloc.training.config import TrainConfig, check_config, config_from_recipe, recipe_of


def train_parser() -> argparse.ArgumentParser:
    subparsers = argparse.ArgumentParser().add_subparsers()
    register(subparsers)
    return subparsers.choices["train"]


def test_every_problem_is_reported_at_once():
    config = TrainConfig(data="d", out="o", validation_split="diagonal", loss="hinge", epochs_frozen=0, epochs=0,
                         batch_size=0, dropout=1.0, folds=0, channels=2)
    with pytest.raises(ProtlocError) as error:
        check_config(config)
    assert error.value.lines == [
        "--validation-split diagonal: expected one of mask, random, stratified",
        "--loss hinge: expected one of bce, focal",
        "--epochs-frozen and --epochs are both 0: nothing to train",
        "--batch-size 0: expected 1 or more",
        "--dropout 1.0: expected a probability in [0, 1)",
        "--folds 0: expected 2 or more folds (1 = a single split)",
        "--channels 2: expected 1, 3 or 4",
    ]
    check_config(TrainConfig(data="d", out="o"))  # the defaults pass


def test_options_fill_the_config_field_by_field_with_its_defaults():
    args = build_parser().parse_args(["train", "DATA", "--out", "RUN"])
    assert config_from_args(args) == TrainConfig(data="DATA", out="RUN")
    args = build_parser().parse_args(["train", "DATA", "--out", "RUN", "--validation-split", "stratified", "--device",
                                      "cuda:1", "--precision", "bf16", "--format", "generic", "--no-pretrained",
                                      "--workers", "3", "--verbose", "--resume", "--stop-after", "2"])
    assert config_from_args(args) == TrainConfig(
        data="DATA", out="RUN", validation_split="stratified", device="cuda:1", precision="bf16", format="generic",
        pretrained=False, workers=3, verbose=True, resume=True, stop_after=2)


def test_every_option_says_its_default():
    parser = train_parser()
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    options = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert {action.dest for action in options} == fields - {"data", "show_progress"}
    # Each option says its default, or that it has none because it is required.
    assert [action.dest for action in options if "default" not in action.help and "required" not in action.help] == []


def test_recipes_of_earlier_versions_read_with_todays_names():
    recipe = recipe_of(TrainConfig(data="data", out="run", validation_split="random"))
    assert recipe["data"] == str(Path("data").resolve())
    old = {("split" if key == "validation_split" else key): value for key, value in recipe.items()}
    config = config_from_recipe({**old, "accelerator": "gpu", "layout": "z2g"}, resume=True)
    assert config.validation_split == "random" and config.format == "z2g" and config.resume
