"""runs.py, the run-folder format: the typed training record (old run folders load, and it is written back with the
same keys), the config and its checks, fold folders and K-fold ensembles, the weights file's header."""
from __future__ import annotations

import json

import pytest

from protloc.errors import ProtlocError
from protloc.runs import (CONFIG_FILE, ENSEMBLE_FILE, HEAD_WEIGHT, WEIGHTS_FILE, EnsembleConfig, RunConfig,
                          TrainingOutcome, config_problems, fold_dir, fold_number, load_config, read_weight_shapes,
                          save_config, write_ensemble)

SCORES = {"f1_macro": 0.5, "f1_micro": 0.6, "f1_samples": 0.55, "fscore_course": 0.52, "f1_per_class": [0.5, 0.5]}
# "training" as protloc train wrote it before the record was typed.
EARLIER = {
    "data": "data/demo", "out": "runs/demo", "backbone": "efficientnet_lite0", "split": "mask", "layout": None,
    "seed": 42, "accelerator": "auto", "precision": "auto", "resume": False,
    "image_size": 128, "n_train": 1350, "n_val": 150, "best_epoch": 5, "best_phase": "finetune",
    "precision_used": "32-true", "world_size": 1, "images_per_second": {"frozen": 80.0, "finetune": 30.0},
    "val_at_0.5": SCORES, "val_at_0.5_predicted": SCORES, "val_tuned": {**SCORES, "f1_macro": 0.7},
}


def test_an_earlier_record_reads_into_typed_fields():
    outcome = TrainingOutcome.from_dict(EARLIER)
    assert (outcome.image_size, outcome.n_train, outcome.n_val) == (128, 1350, 150)
    assert (outcome.best_epoch, outcome.best_phase, outcome.world_size) == (5, "finetune", 1)
    assert outcome.val_at_05 == SCORES and outcome.val_tuned["f1_macro"] == 0.7
    assert outcome.images_per_second == {"frozen": 80.0, "finetune": 30.0}
    assert outcome.validation_split == "mask" and outcome.recipe["format"] is None  # today's names
    assert "image_size" not in outcome.recipe and outcome.thresholds_tuned_on is None


def test_the_record_is_written_with_the_keys_it_was_read_from():
    written = TrainingOutcome.from_dict(EARLIER).to_dict()
    renamed = {"split": "validation_split", "layout": "format"}
    assert written == {renamed.get(key, key): value for key, value in EARLIER.items()}
    assert TrainingOutcome.from_dict(written) == TrainingOutcome.from_dict(EARLIER)


def test_run_config_round_trips_the_record_through_config_json(tmp_path):
    config = RunConfig(backbone="test_resnet", label_set="hpa10", label_names=["a", "b"], image_size=32, in_chans=3,
                       mean=[0.5] * 3, std=[0.5] * 3, thresholds=[0.5, 0.5], training=dict(EARLIER))
    assert isinstance(config.training, TrainingOutcome)
    config.training.thresholds_tuned_on = {"data": "held-out", "images": 10}
    save_config(tmp_path, config)
    saved = json.loads((tmp_path / "config.json").read_text())["training"]
    assert saved["val_at_0.5"] == SCORES and saved["thresholds_tuned_on"] == {"data": "held-out", "images": 10}
    assert load_config(tmp_path) == config


def test_a_run_without_a_record_has_an_empty_one(tmp_path):
    config = RunConfig(backbone="test_resnet", label_set="hpa10", label_names=["a"], image_size=32, in_chans=3,
                       mean=[0.5] * 3, std=[0.5] * 3, thresholds=[0.5])
    assert config.training == TrainingOutcome() and config.to_dict()["training"] == {}
    assert config.training.best_epoch is None and config.training.validation_split is None


# ---------------------------------------------------------------- the run folder's names and config


def make_config(**changes) -> RunConfig:
    values = dict(backbone="test_resnet", label_set="hpa10", label_names=["a", "b"], image_size=32, in_chans=3,
                  mean=[0.5] * 3, std=[0.25] * 3, thresholds=[0.4, 0.6])
    return RunConfig(**{**values, **changes})


def test_fold_folders_are_named_and_recognised():
    assert fold_dir("out", 3).name == "fold-3" and fold_number(fold_dir("out", 3)) == 3
    assert fold_number("fold-x") is None and fold_number("run") is None and fold_number("fold-") is None


def test_a_config_round_trips_through_its_json_object():
    config = make_config(bit_depth=12, layout="hpa2018", dropout=0.2)
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_config_missing_keys_or_with_wrong_fields_names_each_problem():
    data = make_config().to_dict()
    with pytest.raises(ProtlocError, match="missing keys image_size, label_names"):
        RunConfig.from_dict({key: value for key, value in data.items() if key not in ("image_size", "label_names")})
    with pytest.raises(ProtlocError) as raised:
        RunConfig.from_dict({**data, "in_chans": 2, "thresholds": [0.5, 1.5], "bit_depth": 11}, "RUN/config.json")
    lines = raised.value.lines
    assert any(line.startswith("RUN/config.json: in_chans 2: expected 1, 3 or 4") for line in lines)
    assert any("thresholds" in line for line in lines) and any("bit_depth 11" in line for line in lines)
    assert config_problems(make_config()) == []


def test_load_config_reads_back_what_save_config_wrote_and_says_what_a_folder_lacks(tmp_path):
    with pytest.raises(ProtlocError, match="no such run folder"):
        load_config(tmp_path / "absent")
    with pytest.raises(ProtlocError, match="config.json: not found"):
        load_config(tmp_path)
    save_config(tmp_path, make_config())
    assert load_config(tmp_path) == make_config()
    (tmp_path / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(ProtlocError, match="expected a JSON object"):
        load_config(tmp_path)


def test_weights_whose_head_disagrees_with_the_config_are_refused_from_the_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_config(tmp_path, make_config())
    save_file({HEAD_WEIGHT: torch.zeros(3, 8)}, str(tmp_path / WEIGHTS_FILE))
    assert read_weight_shapes(tmp_path / WEIGHTS_FILE) == {HEAD_WEIGHT: (3, 8)}
    with pytest.raises(ProtlocError, match="a head of 3 classes, but config.json has 2 label_names"):
        load_config(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\xff" * 16)
    with pytest.raises(ProtlocError, match="not a readable safetensors file"):
        read_weight_shapes(tmp_path / WEIGHTS_FILE)


def test_an_ensemble_folder_reads_its_folds_and_refuses_folds_outside_it(tmp_path):
    for fold in range(2):
        save_config(fold_dir(tmp_path, fold), make_config(mean=[0.1 * (fold + 1)] * 3))
    write_ensemble(tmp_path, ["fold-0", "fold-1"], "hpa10", ["a", "b"], [0.3, 0.7], TrainingOutcome())
    ensemble = load_config(tmp_path)
    assert isinstance(ensemble, EnsembleConfig) and ensemble.folds == ["fold-0", "fold-1"]
    assert ensemble.thresholds == [0.3, 0.7] and ensemble.mean == [0.0] * 3 and ensemble.std == [1.0] * 3
    assert [config.mean for config in ensemble.fold_configs] == [[0.1] * 3, [0.2] * 3]
    record = json.loads((tmp_path / ENSEMBLE_FILE).read_text())
    write_ensemble(tmp_path, ["../elsewhere"], "hpa10", ["a", "b"], [0.3, 0.7], TrainingOutcome())
    with pytest.raises(ProtlocError, match="fold folder names"):
        load_config(tmp_path)
    assert record["folds"] == ["fold-0", "fold-1"] and record["kind"] == "ensemble"
