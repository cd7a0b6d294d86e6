"""`TrainingOutcome`: the record of how a run was trained and how it scored, as config.json keeps it under
"training" (runs.RunConfig.training).

One flat JSON object: the recipe's options, then the outcome ("image_size", "n_train", "best_epoch",
"val_tuned"...). The keys are those earlier versions wrote, so older run folders load. Nothing reads it back to
rebuild the model; it is there for people, reports and `protloc compare`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Recipe keys written by earlier versions, and their names now: older records read with today's names.
RENAMED_KEYS = {"split": "validation_split", "layout": "format"}


def rename_recipe_keys(values: dict) -> dict:
    """A recorded recipe with today's key names (earlier versions said "split" and "layout"); nothing else
    changes, so a record is written back as it was read. Resuming fills in more (training.config.upgrade_recipe)."""
    return {RENAMED_KEYS.get(key, key): value for key, value in values.items()}


@dataclass
class TrainingOutcome:
    recipe: dict = field(default_factory=dict)  # the TrainConfig's values (see training.config.recipe_of)
    image_size: int | None = None  # the size trained at (the recipe may say None: the backbone's)
    n_train: int | None = None
    n_val: int | None = None
    best_epoch: int | None = None  # 1-based, counted over both phases
    best_phase: str | None = None
    precision_used: str | None = None
    frozen_stages_used: int | None = None  # the backbone's first stages fine-tuning left frozen (the recipe may say None)
    world_size: int | None = None  # processes that trained
    images_per_second: dict[str, float] | None = None  # per phase, training loop only
    # Validation scores of the best epoch's weights, images labelled as predict labels them (each at least one
    # label), at 0.5 and at the tuned thresholds. In-sample: the same images picked the epoch and tuned the
    # thresholds. (Runs of earlier versions: val_at_05 at a plain 0.5 cut, val_at_05_predicted as predict.)
    val_at_05: dict | None = None
    val_at_05_predicted: dict | None = None
    val_tuned: dict | None = None
    # K-fold only: out-of-fold labels, each fold's images at thresholds tuned on the other folds' out-of-fold
    # predictions. The honest estimate of tuned thresholds: no image tuned the cut it is scored at.
    val_tuned_cross_fitted: dict | None = None
    thresholds_tuned_on: dict | None = None  # written by `protloc tune`

    @property
    def validation_split(self) -> str | None:
        return self.recipe.get("validation_split")

    def to_dict(self) -> dict:
        """The flat JSON object of config.json's "training"; unset outcome fields are left out."""
        values = dict(self.recipe)
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name != "recipe" and value is not None:
                values[JSON_KEYS.get(item.name, item.name)] = value
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingOutcome":
        """From config.json's "training" (any version): outcome keys to their fields, the rest is the recipe."""
        fields = {JSON_KEYS.get(item.name, item.name): item.name for item in dataclasses.fields(cls) if item.name != "recipe"}
        outcome = {fields[key]: value for key, value in values.items() if key in fields}
        recipe = rename_recipe_keys({key: value for key, value in values.items() if key not in fields})
        return cls(recipe=recipe, **outcome)


# Field names that are not valid Python names in JSON.
JSON_KEYS = {"val_at_05": "val_at_0.5", "val_at_05_predicted": "val_at_0.5_predicted"}
