"""`protloc explain`'s figures of a dataset: where in each image the model found each class it predicts, or missed
(the maps: inference/explanations.py and cams.py; the figure: map_figures.py).

One figure per image: the input as the model saw it (RGB), its protein (green) channel alone, one panel
per target class with the map drawn as outlines over the stains, titled with the class's probability
and whether it is predicted, true or missed; then a bar chart of every class probability against the
run's thresholds.

The map is HiResCAM on the layer the backbone's spec names (``cam_layer_name``): a stride-8 feature map
for the registered backbones, 16x16 cells at 128 px, fine enough to tell cells apart. The last
feature map (4x4 at 128 px) gave blobs over several cells; tools/cam_localisation.py
measured how much of each map falls inside the true pattern. An image's maps share one scale (the strongest
map's peak at 1), not one each, and each is then weighed by its class's probability: a class with little evidence
draws faintly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from protloc.data.readers import DatasetTable
from protloc.files import save_figure
from protloc.inference.explanations import Explanation, cam_grid, explain_input
from protloc.inference.predictor import Predictor
from protloc.map_figures import MAP_MASS_SHARES

# What people read wherever the maps are named (CLI, reports, page, API docs): the method as it is.
CAM_ABOUT = ("HiResCAM (a variant of Grad-CAM that multiplies each feature's gradient with its activation where "
             "it sits, rather than averaging the gradient over the image)")


def explain_image(predictor: Predictor, identifier: str, source, targets: str | list[int],
                  true: list[int] | None = None, probabilities: np.ndarray | None = None) -> tuple[Explanation, Figure]:
    """The explanation of one image and its figure (not yet saved); `true`: its true classes, when known. The
    input, probabilities and labels come from the predictor, as `protloc predict` gets them (or `probabilities`,
    already computed so); the maps from its torch model (averaged over the folds of a K-fold ensemble)."""
    explanation = explain_input(predictor, identifier, source, targets, true, probabilities)
    return explanation, explanation.figure()


def true_classes(table: DatasetTable, config) -> list[list[int]] | None:
    """Each row's true class numbers, when `table` has labels in the run's classes; else None."""
    if not table.labelled or list(table.label_set.names) != list(config.label_names):
        return None
    return [sorted(int(c) for c in labels) for labels in table.frame["labels"]]


def explain_table(predictor: Predictor, table: DatasetTable, out_dir: str | Path,
                  targets: str | list[int] = "predicted", show_progress: bool = True, *, batch_size: int = 32,
                  workers: int = 0) -> list[Explanation]:
    """One PNG per image of `table` in `out_dir`; returns what each shows. Labelled tables show missed classes.
    The probabilities come first, `batch_size` images at a time from the predictor's engine (ONNX Runtime too),
    as `protloc predict` computes them; then each image's maps from the torch model. Unreadable images raise a
    DataError naming each, before any map is drawn."""
    from protloc.errors import DataError
    from protloc.progress import progress_bar

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = predictor.predict_table(table, batch_size=batch_size, workers=workers, show_progress=show_progress)
    if result.unreadable:
        raise DataError(*result.unreadable)
    explanations, used = [], set()
    truth = true_classes(table, predictor.config) or [None] * len(table)
    rows = zip(table.frame["id"], table.frame["source"], truth, result.outputs)
    for identifier, source, true, probabilities in progress_bar(rows, total=len(table), desc="class maps",
                                                                unit="image", disable=not show_progress):
        explanation, figure = explain_image(predictor, str(identifier), source, targets, true, probabilities)
        while explanation.file_name in used:  # two ids that sanitise to one name
            explanation.file_name = explanation.file_name.replace(".png", "_.png")
        used.add(explanation.file_name)
        save_figure(out_dir / explanation.file_name, figure)
        explanations.append(explanation)
    return explanations


def describe_maps(model, config, *, panels: bool = True) -> str:
    """How the maps were made and how to read them, for the page above the figures; `panels`: say which classes
    get one (the figures of `protloc explain`)."""
    from protloc.models.ensemble import FoldEnsemble

    folds = ""
    if isinstance(model, FoldEnsemble):  # the folds share a backbone: the first one says how each was mapped
        folds, model = f" (the mean of {len(model.folds)} folds' maps)", model.folds[0]
    rows, columns = cam_grid(model, config.image_size)
    text = (f"Class-activation maps{folds}: where in the image the model found each class, made with {CAM_ABOUT} "
            f"on layer {model.backbone.cam_layer_name} of {config.backbone}: {rows}x{columns} cells at "
            f"{config.image_size} px, smoothed up to the image. An image's maps share one scale, the strongest map's "
            f"peak at 1, and each is weighed by its class's probability: a class the model hardly believes in draws "
            f"faintly, one with no evidence not at all. Outlines: grey around the hottest pixels holding "
            f"{MAP_MASS_SHARES[0]:.0%} of the map (lightly tinted inside), white around those holding "
            f"{MAP_MASS_SHARES[1]:.0%}; every other pixel is the input's own, so the stains stay visible.")
    if panels:
        text += " Panels are drawn for the predicted classes and for true classes the model missed (red title)."
    return text
