"""Class-activation maps drawn: outlines around a map's hottest pixels over the stains, the map alone on a colour
scale, and the figure of one explanation (inference/explanations.py) as `protloc explain` saves it. Free-standing
figures, as every protloc figure (plots.py).
"""
from __future__ import annotations

import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from protloc.plots import rgb_view

PANEL_COLUMNS = 4
# Outlines around the hottest pixels holding these shares of the map's mass, as the ground-truth masks
# of the synthetic patterns are defined: a peaky map gets small outlines, a diffuse one large ones, and
# a few extreme pixels cannot hide the rest as a fraction-of-maximum level would. The outer one bounds
# the lightly tinted hot area; every other pixel is the input's own, so the stains stay readable.
MAP_MASS_SHARES = (0.5, 0.2)
HOT_TINT = 0.25
OUTLINE_COLOURS = ((0.7, 0.7, 0.7), (1.0, 1.0, 1.0))  # grey and white: apart from the stains' hues
HEATMAP = "inferno"  # the map alone: dark where it is 0, pale yellow at its maximum; readable in grey too


def protein_channel(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> the protein stain alone: green in an RGB(Y) composite, the only channel of a grey image."""
    return image[:, :, 1] if image.shape[-1] >= 3 else image[:, :, 0]


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
    common scale, weighed by its class's probability (inference/cams.py, `weigh_by_probability`): tint and outlines
    are as strong as its peak, so a map with little evidence draws faintly, and one with none draws nothing.
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


def plot_probabilities(ax, explanation, thresholds: list[float], names: list[str]):
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


def plot_explanation(explanation, image: np.ndarray, config, um_per_pixel: float | None = None):
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
