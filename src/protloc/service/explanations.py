"""Grad-CAM overlays and previews as PNG bytes, for POST /explain.

`explain_image` is the service's one door to reports/explain.py: the same maps as `protloc explain`, drawn
the same way (pytorch-grad-cam's show_cam_on_image over the input as the model saw it).
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from protloc.data.images import convert_channels
from protloc.data.transforms import eval_transforms
from protloc.errors import ProtlocError
from protloc.inference.predictor import Predictor, TorchEngine
from protloc.reports.explore import rgb_view

PREVIEW_SIDE = 512  # pixels: enough to see cells on a screen, small enough to send inline


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def explain_image(predictor: Predictor, image: np.ndarray, classes: Sequence[str]) -> dict[str, bytes]:
    """{class name: PNG of its Grad-CAM overlay} for one decoded image (H, W, C uint8); needs the torch engine."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from protloc.reports.explain import compute_cams, displayed_image

    if not isinstance(predictor.engine, TorchEngine):
        raise ProtlocError("Grad-CAM needs the torch model (an ONNX file holds only the probabilities)")
    config = predictor.config
    indices = [predictor.label_names.index(name) for name in classes]
    if not indices:
        return {}
    array = convert_channels(image, config.in_chans)
    transform = eval_transforms(image_size=config.image_size, mean=config.mean, std=config.std)
    tensor = transform(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))[None]
    cams = compute_cams(predictor.engine.model, tensor, indices)
    seen = displayed_image(tensor, config)
    return {name: png_bytes(show_cam_on_image(seen, cam, use_rgb=True)) for name, cam in zip(classes, cams)}


def preview_images(image: np.ndarray) -> tuple[bytes, bytes]:
    """(the colour composite, the green (protein) channel alone as grey), PNGs at most PREVIEW_SIDE wide."""
    composite = Image.fromarray(np.ascontiguousarray(rgb_view(image)))
    green = Image.fromarray(np.ascontiguousarray(image[:, :, 1] if image.shape[-1] >= 3 else image[:, :, 0]))
    for picture in (composite, green):
        picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return png_bytes(np.asarray(composite)), png_bytes(np.asarray(green))
