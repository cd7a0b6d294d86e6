"""Class-activation maps (HiResCAM, a Grad-CAM variant) and previews as PNG bytes, for POST /explain.

`explain_image` is the service's one door to the maps (inference/explanations.py and cams.py, drawn by
map_figures.py): the same maps as `protloc explain`, drawn the same way (the map's hottest areas outlined over
the input as the model saw it, stains left visible), and each map alone on a colour scale, where differences
inside the outlines show.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from protloc.inference.predictor import Predictor
from protloc.plots import rgb_view

PREVIEW_SIDE = 512  # pixels: enough to see cells on a screen, small enough to send inline
THUMBNAIL_SIDE = 96  # pixels: a table row's picture


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def explain_image(predictor: Predictor, image: np.ndarray, classes: Sequence[str]) -> dict[str, tuple[bytes, bytes]]:
    """{class name: (PNG of its map drawn over the image, PNG of the map alone on a colour scale)} for one decoded
    image (H, W, C uint8): the input comes from the predictor, the maps from inference/cams.py, their drawing from
    map_figures.py, as `protloc explain` makes them."""
    from protloc.inference.cams import compute_model_cams
    from protloc.inference.explanations import model_view
    from protloc.map_figures import heatmap_colours, overlay_map

    indices = [predictor.label_names.index(name) for name in classes]
    if not indices:
        return {}
    tensor = predictor.prepare(image)[None]
    probabilities = predictor.probabilities(tensor)[0]
    cams = compute_model_cams(predictor.model, tensor, indices, probabilities)  # a K-fold folder's: its folds' mean
    seen = rgb_view(model_view(tensor, predictor.config))
    return {name: (png_bytes(as_uint8(overlay_map(seen, cam))), png_bytes(as_uint8(heatmap_colours(cam))))
            for name, cam in zip(classes, cams)}


def as_uint8(picture: np.ndarray) -> np.ndarray:
    return (picture * 255 + 0.5).astype(np.uint8)


def thumbnail_png(image: np.ndarray) -> bytes:
    """The colour composite of a decoded image, at most THUMBNAIL_SIDE wide: a row's picture on the page, for
    files a browser cannot show itself (TIFF, stain sets)."""
    picture = Image.fromarray(np.ascontiguousarray(rgb_view(image)))
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return png_bytes(np.asarray(picture))


def preview_images(image: np.ndarray) -> tuple[bytes, bytes]:
    """(the colour composite, the green (protein) channel alone as grey), PNGs at most PREVIEW_SIDE wide."""
    composite = Image.fromarray(np.ascontiguousarray(rgb_view(image)))
    green = Image.fromarray(np.ascontiguousarray(image[:, :, 1] if image.shape[-1] >= 3 else image[:, :, 0]))
    for picture in (composite, green):
        picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return png_bytes(np.asarray(composite)), png_bytes(np.asarray(green))
