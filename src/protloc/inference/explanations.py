"""Class-activation maps of a run's model for its input: where in each image the model found each class it
predicts, or missed (`Predictor.explain`, `protloc explain`, the service's /explain).

An Explanation holds an image's maps (inference/cams.py computes them), its probabilities and labels as prediction
gives them, and the input as the model saw it; `Explanation.figure()` draws it as `protloc explain` saves it
(map_figures.py). reports/explain.py writes the figures of a dataset and their page.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from protloc.data.images import stated_pixel_size
from protloc.errors import ProtlocError
from protloc.inference.cams import cam_layer, compute_model_cams
from protloc.labels import did_you_mean, list_classes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TARGET_MODES = ("predicted", "all")


@dataclass
class Explanation:
    """Where the model found each target class in one image: `cams[i]` is the map of class number `targets[i]`,
    at the model's input size, on one 0..1 scale for the image (its strongest map's peak at 1) times the class's
    probability (inference/cams.py, `weigh_by_probability`); `maps` holds them
    by class name and `figure()` draws them as `protloc explain` does."""

    id: str
    file_name: str  # of the figure's PNG, in the output folder of `protloc explain`
    probabilities: np.ndarray
    predicted: list[int]
    targets: list[int]
    cams: np.ndarray  # (targets, H, W): one 0..1 scale for the image, times each class's probability
    true: list[int] | None = None  # the image's true classes, when its dataset has labels
    image: np.ndarray | None = field(default=None, repr=False)  # the model's input in 0..1, (H, W, channels)
    config: object = field(default=None, repr=False)  # the run's RunConfig: class names and thresholds
    um_per_pixel: float | None = None  # of the model's input, where the file states its pixel size: a scale bar

    @property
    def maps(self) -> dict[str, np.ndarray]:
        """{class name: its map (H, W) in 0..1}, in target order."""
        return {self.config.label_names[index]: cam for index, cam in zip(self.targets, self.cams)}

    def figure(self) -> Figure:
        """The figure `protloc explain` saves: the input, its protein stain, a panel per map, the probabilities."""
        from protloc.map_figures import plot_explanation

        return plot_explanation(self, self.image, self.config, self.um_per_pixel)

    @property
    def missed(self) -> list[int]:
        """True classes that were not predicted."""
        return [c for c in self.true or [] if c not in self.predicted]

    def status(self, index: int) -> str:
        """How class `index` stands: predicted or not, and against the truth when it is known."""
        predicted = index in self.predicted
        if self.true is None:
            return "predicted" if predicted else "not predicted"
        if index in self.true:
            return "predicted, true" if predicted else "MISSED: true, not predicted"
        return "predicted, not true" if predicted else "not predicted, not true"


def parse_target_classes(spec: str, label_names: list[str]) -> str | list[int]:
    """'predicted', 'all', or comma-separated class names or numbers -> the mode or class indices."""
    if spec in TARGET_MODES:
        return spec
    lowered = {name.lower(): i for i, name in enumerate(label_names)}
    indices = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token.isdigit() and int(token) < len(label_names):
            indices.append(int(token))
        elif token.lower() in lowered:
            indices.append(lowered[token.lower()])
        else:
            raise ProtlocError(f"--target-classes: {token!r} is not a class of this run"
                               f"{did_you_mean(token, label_names) or '.'} Expected predicted, all, or class names or "
                               f"numbers separated by commas: {list_classes(label_names)}")
    if not indices:
        raise ProtlocError("--target-classes: expected predicted, all, or class names separated by commas")
    return list(dict.fromkeys(indices))


def safe_file_name(identifier: str) -> str:
    """An image id (which may be a path) as a file name."""
    return re.sub(r"[^\w.-]+", "_", identifier).strip("._") or "image"


def model_view(tensor: torch.Tensor, config) -> np.ndarray:
    """The model input un-normalised back to 0..1, (H, W, channels) float32: what the model saw."""
    mean = torch.tensor(config.mean).view(-1, 1, 1)
    std = torch.tensor(config.std).view(-1, 1, 1)
    return (tensor[0].cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)


def cam_grid(model, image_size: int) -> tuple[int, int]:
    """(rows, columns) of the map before it is upsampled to the image: the CAM layer's output at `image_size`."""
    shapes = []
    handle = cam_layer(model).register_forward_hook(lambda _module, _inputs, output: shapes.append(output.shape))
    parameter = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.backbone.in_chans, image_size, image_size,
                              dtype=parameter.dtype, device=parameter.device))
    finally:
        handle.remove()
    return int(shapes[0][-2]), int(shapes[0][-1])


def choose_targets(targets: str | list[int], predicted: list[int], true: list[int] | None,
                   num_classes: int) -> list[int]:
    """The classes to map: 'predicted' adds the true classes that were missed, so a miss is shown too."""
    if targets == "predicted":
        return predicted + [c for c in true or [] if c not in predicted]
    if targets == "all":
        return list(range(num_classes))
    return list(targets)


def explain_input(predictor, identifier: str, source, targets: str | list[int],
                  true: list[int] | None = None, probabilities: np.ndarray | None = None) -> Explanation:
    """The explanation of one image (the maps, not the figure); `true`: its true classes, when known. The input,
    probabilities and labels come from the predictor, as `protloc predict` gets them (or `probabilities`, already
    computed so); the maps from its torch model (averaged over the folds of a K-fold ensemble)."""
    config = predictor.config
    tensor = predictor.prepare(source)[None]
    if probabilities is None:
        probabilities = predictor.probabilities(tensor)[0]
    predicted = np.flatnonzero(predictor.decide(probabilities[None])[0]).tolist()
    chosen = choose_targets(targets, predicted, true, config.num_classes)
    cams = compute_model_cams(predictor.model, tensor, chosen, probabilities)
    stated = stated_pixel_size(source)  # a microscope file's µm per pixel, for a scale bar
    return Explanation(identifier, f"{safe_file_name(identifier)}.png", probabilities, predicted, chosen, cams,
                       None if true is None else list(true), image=model_view(tensor, config), config=config,
                       um_per_pixel=stated[0] * stated[1] / tensor.shape[-1] if stated else None)


def explain_images(predictor, images, classes="predicted") -> list[Explanation]:
    """Predictor.explain: the maps of one image or a list of them (anything `predict` takes). `classes`:
    "predicted", "all", or class names or numbers (a list, or one string separated by commas)."""
    from protloc.inference.inputs import as_image_list, image_ids

    names = predictor.label_names
    if isinstance(classes, str):
        targets = parse_target_classes(classes, names)
    else:
        targets = parse_target_classes(",".join(str(item) for item in classes), names)
    images = as_image_list(images)
    return [explain_input(predictor, identifier, image, targets) for identifier, image in zip(image_ids(images), images)]
