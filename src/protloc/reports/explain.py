"""Grad-CAM explanations: where in the image the model looked for each class it predicts.

One figure per image: the input as the model saw it (RGB), one Grad-CAM overlay per target class
titled with its probability, and a bar chart of every class probability with the run's thresholds.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from protloc.data.readers import DatasetTable  # noqa: E402
from protloc.errors import ProtlocError  # noqa: E402
from protloc.files import save_figure  # noqa: E402
from protloc.inference.predictor import Predictor  # noqa: E402
from protloc.reports import html  # noqa: E402
from protloc.reports.explore import rgb_view  # noqa: E402

PANEL_COLUMNS = 4
TARGET_MODES = ("predicted", "all")


@dataclass
class Explanation:
    id: str
    figure: str  # file name of the PNG, in the output folder
    probabilities: np.ndarray
    predicted: list[int]
    targets: list[int]
    cams: np.ndarray  # (targets, H, W), each scaled to 0..1


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
            raise ProtlocError(f"--target-classes: {token!r} is not a class of this run "
                               f"(predicted, all, or names/numbers 0..{len(label_names) - 1} from its config)")
    if not indices:
        raise ProtlocError("--target-classes: expected predicted, all, or class names separated by commas")
    return list(dict.fromkeys(indices))


def safe_file_name(identifier: str) -> str:
    """An image id (which may be a path) as a file name."""
    return re.sub(r"[^\w.-]+", "_", identifier).strip("._") or "image"


def displayed_image(tensor: torch.Tensor, config) -> np.ndarray:
    """The model input un-normalised back to 0..1, (H, W, 3) float32: what the model saw, as RGB."""
    mean = torch.tensor(config.mean).view(-1, 1, 1)
    std = torch.tensor(config.std).view(-1, 1, 1)
    image = (tensor[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return rgb_view(image).astype(np.float32)


def compute_cams(model, tensor: torch.Tensor, class_indices: list[int]) -> np.ndarray:
    """Grad-CAM maps (len(class_indices), H, W), one backward pass for all classes (the input is repeated)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = getattr(model.backbone, "cam_layer", None)
    if layer is None:
        raise ProtlocError(f"backbone {model.backbone.spec.name}: no layer with a spatial map was found for Grad-CAM")
    targets = [ClassifierOutputTarget(index) for index in class_indices]
    # Channels-last model and input: on CPU the backward pass through depthwise convolutions is
    # an order of magnitude faster than in the default layout (measured: 4 s -> 0.2 s per 64 px image).
    model = model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    batch = tensor.repeat(len(class_indices), 1, 1, 1).to(device).contiguous(memory_format=torch.channels_last)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=batch, targets=targets)


def compute_model_cams(model, tensor: torch.Tensor, class_indices: list[int]) -> np.ndarray:
    """Grad-CAM maps of a run's model; for a K-fold ensemble, the mean of its folds' maps (each fold seeing the
    image normalised as it was trained), scaled back to 0..1 per map."""
    from protloc.inference.ensemble import FoldEnsemble

    if not isinstance(model, FoldEnsemble):
        return compute_cams(model, tensor, class_indices)
    cams = np.mean([compute_cams(fold, inputs, class_indices) for fold, inputs in model.fold_inputs(tensor)], axis=0)
    peak = cams.max(axis=(1, 2), keepdims=True)
    return np.divide(cams, peak, out=np.zeros_like(cams), where=peak > 0)


def explain_image(predictor: Predictor, identifier: str, source, targets: str | list[int]) -> tuple[Explanation, object]:
    """The explanation of one image and its figure (not yet saved): the input, probabilities and labels come
    from the predictor, as `protloc predict` gets them; the Grad-CAM maps from its torch model."""
    config = predictor.config
    tensor = predictor.prepare(source)[None]
    probabilities = predictor.probabilities(tensor)[0]
    predicted = np.flatnonzero(predictor.decide(probabilities[None])[0]).tolist()
    if targets == "predicted":
        chosen = predicted
    elif targets == "all":
        chosen = list(range(config.num_classes))
    else:
        chosen = list(targets)
    cams = compute_model_cams(predictor.model, tensor, chosen)
    explanation = Explanation(identifier, f"{safe_file_name(identifier)}.png", probabilities, predicted, chosen, cams)
    return explanation, plot_explanation(explanation, displayed_image(tensor, config), config)


def plot_probabilities(ax, probabilities: np.ndarray, thresholds: list[float], names: list[str], predicted: list[int]):
    positions = np.arange(len(names))
    colours = ["#dd4444" if i in predicted else "#9fb4d6" for i in positions]
    ax.bar(positions, probabilities, color=colours, width=0.7)
    ax.hlines(thresholds, positions - 0.4, positions + 0.4, colors="black", linewidth=1.5)
    ax.set_xticks(positions, names, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability")
    ax.set_title("Class probabilities (red: predicted; black ticks: thresholds)", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)


def plot_explanation(explanation: Explanation, image: np.ndarray, config):
    from pytorch_grad_cam.utils.image import show_cam_on_image

    names = config.label_names
    panels = 1 + len(explanation.targets)
    columns = min(PANEL_COLUMNS, panels)
    image_rows = int(np.ceil(panels / columns))
    width = max(3.0 * columns, 0.35 * len(names) + 1.5, 6.0)
    figure = plt.figure(figsize=(width, 3.2 * image_rows + 3.0))
    grid = figure.add_gridspec(image_rows + 1, columns, height_ratios=[3.2] * image_rows + [2.6])
    axes = figure.add_subplot(grid[0, 0])
    axes.imshow(image)
    axes.set_title(textwrap.fill(explanation.id, 30) + f"\ninput ({image.shape[0]} px, as the model sees it)", fontsize=9)
    axes.axis("off")
    for panel, (index, cam) in enumerate(zip(explanation.targets, explanation.cams), start=1):
        axes = figure.add_subplot(grid[panel // columns, panel % columns])
        axes.imshow(show_cam_on_image(image, cam, use_rgb=True))
        mark = "" if index in explanation.predicted else " (not predicted)"
        axes.set_title(textwrap.fill(f"{names[index]}{mark}", 30) + f"\np = {explanation.probabilities[index]:.2f}",
                       fontsize=9)
        axes.axis("off")
    plot_probabilities(figure.add_subplot(grid[image_rows, :]), explanation.probabilities, config.thresholds, names,
                       explanation.predicted)
    figure.tight_layout()
    return figure


def explain_table(predictor: Predictor, table: DatasetTable, out_dir: str | Path,
                  targets: str | list[int] = "predicted", show_progress: bool = True) -> list[Explanation]:
    """One PNG per image of `table` in `out_dir`; returns what each shows."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    explanations, used = [], set()
    rows = zip(table.frame["id"], table.frame["source"])
    for identifier, source in tqdm(rows, total=len(table), desc="Grad-CAM", unit="image", disable=not show_progress):
        explanation, figure = explain_image(predictor, str(identifier), source, targets)
        while explanation.figure in used:  # two ids that sanitise to one name
            explanation.figure = explanation.figure.replace(".png", "_.png")
        used.add(explanation.figure)
        save_figure(out_dir / explanation.figure, figure)
        explanations.append(explanation)
    return explanations


def explanation_blocks(explanations: list[Explanation], config, prefix: str = "",
                       true_labels: list[str] | None = None) -> list[str]:
    """A table of what was predicted (and what is true, when known), then the figures."""
    names = config.label_names
    summary = pd.DataFrame({"image": [e.id for e in explanations]})
    if true_labels is not None:
        summary["true labels"] = true_labels
    summary = summary.assign(**{
        "predicted": [", ".join(names[i] for i in e.predicted) or "(none)" for e in explanations],
        "top probability": [f"{names[int(np.argmax(e.probabilities))]} {e.probabilities.max():.2f}"
                            for e in explanations],
    })
    blocks = [html.table(summary)]
    for e in explanations:
        blocks.append(html.image(prefix + e.figure, f"{e.id}: Grad-CAM for "
                                 + ", ".join(names[i] for i in e.targets)))
    return blocks


def write_explanation_page(explanations: list[Explanation], config, out_dir: str | Path) -> None:
    blocks = [html.paragraph("Grad-CAM heatmaps: red where the features that raise a class's score sit. "
                             "Images are shown as the model saw them (resized, RGB).")]
    html.write_page(Path(out_dir) / "index.html", "Explanations", blocks + explanation_blocks(explanations, config))
