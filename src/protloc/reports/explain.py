"""Class-activation maps: where in the image the model found each class it predicts, or missed.

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

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from protloc.data.images import stated_pixel_size
from protloc.data.readers import DatasetTable
from protloc.errors import ProtlocError
from protloc.files import save_figure
from protloc.inference.predictor import Predictor
from protloc.labels import did_you_mean, list_classes
from protloc.reports.explore import rgb_view
# Computed there, drawn here; importable from here as before.
from protloc.reports.cams import (CAM_METHOD, cam_layer, compute_cams, compute_model_cams,  # noqa: F401
                                  scale_together)

PANEL_COLUMNS = 4
TARGET_MODES = ("predicted", "all")
# What people read wherever the maps are named (CLI, reports, page, API docs): the method as it is.
CAM_ABOUT = ("HiResCAM (a variant of Grad-CAM that multiplies each feature's gradient with its activation where "
             "it sits, rather than averaging the gradient over the image)")
# Outlines around the hottest pixels holding these shares of the map's mass, as the ground-truth masks
# of the synthetic patterns are defined: a peaky map gets small outlines, a diffuse one large ones, and
# a few extreme pixels cannot hide the rest as a fraction-of-maximum level would. The outer one bounds
# the lightly tinted hot area; every other pixel is the input's own, so the stains stay readable.
MAP_MASS_SHARES = (0.5, 0.2)
HOT_TINT = 0.25
OUTLINE_COLOURS = ((0.7, 0.7, 0.7), (1.0, 1.0, 1.0))  # grey and white: apart from the stains' hues
HEATMAP = "inferno"  # the map alone: dark where it is 0, pale yellow at its maximum; readable in grey too


@dataclass
class Explanation:
    """Where the model found each target class in one image: `cams[i]` is the map of class number `targets[i]`,
    at the model's input size, on one 0..1 scale for the image (its strongest map's peak at 1) times the class's
    probability (reports/cams.py, `weigh_by_probability`); `maps` holds them
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


def protein_channel(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> the protein stain alone: green in an RGB(Y) composite, the only channel of a grey image."""
    return image[:, :, 1] if image.shape[-1] >= 3 else image[:, :, 0]


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


def explain_image(predictor: Predictor, identifier: str, source, targets: str | list[int],
                  true: list[int] | None = None, probabilities: np.ndarray | None = None) -> tuple[Explanation, Figure]:
    """The explanation of one image and its figure (not yet saved); `true`: its true classes, when known. The
    input, probabilities and labels come from the predictor, as `protloc predict` gets them (or `probabilities`,
    already computed so); the maps from its torch model (averaged over the folds of a K-fold ensemble)."""
    explanation = explain_input(predictor, identifier, source, targets, true, probabilities)
    return explanation, explanation.figure()


def explain_input(predictor: Predictor, identifier: str, source, targets: str | list[int],
                  true: list[int] | None = None, probabilities: np.ndarray | None = None) -> Explanation:
    """explain_image without the figure."""
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


def explain_images(predictor: Predictor, images, classes="predicted") -> list[Explanation]:
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


def outline(region: np.ndarray, width: int) -> np.ndarray:
    """The pixels of boolean `region` within `width` pixels of its edge."""
    from scipy.ndimage import binary_erosion

    return region & ~binary_erosion(region, iterations=width, border_value=1)


def hottest_area(cam: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask of the hottest pixels of `cam` that together hold `share` of its mass."""
    values = np.sort(cam.ravel())[::-1]
    total = values.sum()
    if total <= 0:
        return np.zeros(cam.shape, dtype=bool)
    cut = values[min(np.searchsorted(np.cumsum(values), share * total), len(values) - 1)]
    return cam >= cut


def overlay_map(image: np.ndarray, cam: np.ndarray, shares: tuple[float, ...] = MAP_MASS_SHARES) -> np.ndarray:
    """RGB `image` (H, W, 3) in 0..1 with `cam`'s hottest areas outlined, the largest lightly tinted.

    Pixels outside the largest area are the input's own, so the stains stay readable. `cam` is on its image's
    common scale, weighed by its class's probability (`weigh_by_probability`): tint and outlines are as strong as
    its peak, so a map with little evidence
    draws faintly, and one with none draws nothing.
    """
    shown = image.copy()
    strength = float(np.clip(cam.max(), 0, 1)) if cam.size else 0.0
    hot = hottest_area(cam, shares[0])
    shown[hot] = (1 - HOT_TINT * strength) * shown[hot] + HOT_TINT * strength
    width = max(1, round(max(cam.shape) / 128))  # lines about as thick on screen whatever the image size
    for share, colour in zip(shares, OUTLINE_COLOURS):
        line = outline(hottest_area(cam, share), width)
        shown[line] = (1 - strength) * shown[line] + strength * np.asarray(colour)
    return shown


def heatmap_colours(cam: np.ndarray) -> np.ndarray:
    """A map (H, W) in 0..1 as RGB (H, W, 3) in 0..1 on the HEATMAP colour scale."""
    return colormaps[HEATMAP](np.clip(cam, 0, 1))[..., :3].astype(np.float32)


def plot_probabilities(ax, explanation: Explanation, thresholds: list[float], names: list[str]):
    probabilities, predicted, true = explanation.probabilities, explanation.predicted, explanation.true
    positions = np.arange(len(names))
    colours = ["#dd4444" if i in predicted else "#9fb4d6" for i in positions]
    bars = ax.bar(positions, probabilities, color=colours, width=0.7)
    ax.hlines(thresholds, positions - 0.4, positions + 0.4, colors="black", linewidth=1.5)
    ax.set_xticks(positions, names, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    title = "Class probabilities (red: predicted; black ticks: thresholds"
    if true is not None:
        for index in true:
            bars[index].set_edgecolor("black")
            bars[index].set_linewidth(1.5)
            ax.get_xticklabels()[index].set_fontweight("bold")
        title += "; bold, outlined: true classes"
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability")
    ax.set_title(title + ")", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)


def image_panel(figure, cell, picture: np.ndarray, title: str, **imshow):
    axes = figure.add_subplot(cell)
    axes.imshow(picture, **imshow)
    axes.set_title(title, fontsize=9)
    axes.axis("off")
    return axes


def add_scale_bar(axes, um_per_pixel: float, width: int) -> None:
    """A bar of a round length in µm, about a quarter of the image wide, in its lower right corner."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    quarter = um_per_pixel * width / 4
    length = max([step * 10**power for power in range(-2, 5) for step in (1, 2, 5) if step * 10**power <= quarter]
                 or [quarter])
    axes.add_artist(AnchoredSizeBar(axes.transData, length / um_per_pixel, f"{length:g} µm", "lower right",
                                    color="white", frameon=False, size_vertical=max(1, width // 100), fontproperties={"size": 8}))


def plot_explanation(explanation: Explanation, image: np.ndarray, config, um_per_pixel: float | None = None):
    """The figure of one explanation; `image` is the model's input in 0..1, (H, W, channels); `um_per_pixel`, where
    the file states its pixel size, draws a scale bar on the input."""
    names = config.label_names
    rgb = rgb_view(image)
    panels = 2 + len(explanation.targets)
    columns = min(PANEL_COLUMNS, panels)
    image_rows = int(np.ceil(panels / columns))
    width = max(3.0 * columns, 0.35 * len(names) + 1.5, 6.0)
    figure = Figure(figsize=(width, 3.2 * image_rows + 3.0), layout="constrained")
    grid = figure.add_gridspec(image_rows + 1, columns, height_ratios=[3.2] * image_rows + [2.6])
    axes = image_panel(figure, grid[0, 0], rgb,
                       textwrap.fill(explanation.id, 30) + f"\ninput ({image.shape[0]} px, as the model sees it)")
    if um_per_pixel:
        add_scale_bar(axes, um_per_pixel, image.shape[1])
    image_panel(figure, grid[0, 1], protein_channel(image), "protein stain (green) alone", cmap="gray", vmin=0, vmax=1)
    for panel, (index, cam) in enumerate(zip(explanation.targets, explanation.cams), start=2):
        title = f"{names[index]}\np = {explanation.probabilities[index]:.2f}, {explanation.status(index)}"
        axes = image_panel(figure, grid[panel // columns, panel % columns], overlay_map(rgb, cam), title)
        if index in explanation.missed:
            axes.title.set_color("#b00000")
    plot_probabilities(figure.add_subplot(grid[image_rows, :]), explanation, config.thresholds, names)
    figure.suptitle(f"Outlines: the hottest pixels holding {MAP_MASS_SHARES[0]:.0%} (grey) and "
                    f"{MAP_MASS_SHARES[1]:.0%} (white) of each class's map", fontsize=8, color="#555555")
    return figure


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
