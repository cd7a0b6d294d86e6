"""A scale bar on the input of an explanation, for a microscope file that states its pixel size (microscopy.py)."""
from __future__ import annotations

from protloc.data.microscopy import stated_pixel_size


def add_scale_bar(figure, source, model_width: int):
    """`figure` with a bar of a round length in µm (about a quarter of the image wide) on its first panel, the
    input as the model sees it (`model_width` pixels wide), where `source` states its pixel size; else as it is."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    stated = stated_pixel_size(source)
    if not stated:
        return figure
    um_per_pixel = stated[0] * stated[1] / model_width
    quarter = um_per_pixel * model_width / 4
    length = max([step * 10**power for power in range(-2, 5) for step in (1, 2, 5) if step * 10**power <= quarter]
                 or [quarter])
    figure.axes[0].add_artist(AnchoredSizeBar(
        figure.axes[0].transData, length / um_per_pixel, f"{length:g} µm", "lower right", color="white",
        frameon=False, size_vertical=max(1, model_width // 100), fontproperties={"size": 8}))
    return figure
