"""The typed training record in config.json: old run folders load, and it is written back with the same keys."""
from __future__ import annotations

import json

from protloc.runs import RunConfig, load_config, save_config
from protloc.training.outcome import TrainingOutcome

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
