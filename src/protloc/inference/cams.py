"""Class-activation maps at their own magnitude: computed with pytorch-grad-cam without its per-map stretch to
0..1, then an image's maps put on one common scale and each drawn as strong as the model's probability for its
class, so a class with little evidence looks weak (inference/explanations.py holds them with their image;
map_figures.py draws them).
"""
from __future__ import annotations

import numpy as np
import torch

from protloc.errors import ProtlocError

CAM_METHOD = "HiResCAM"  # a pytorch-grad-cam class; chosen by tools/cam_localisation.py (docs/recipe.md)


def cam_layer(model) -> torch.nn.Module:
    layer = getattr(model.backbone, "cam_layer", None)
    if layer is None:
        raise ProtlocError(f"backbone {model.backbone.spec.name}: no layer with a spatial map was found for "
                           f"class-activation maps")
    return layer


def unscaled_cam_method(method: str):
    """The pytorch-grad-cam class `method` with its maps left at their own magnitude: it stretches each map to
    0..1 on its own (min-max), so a class with almost no evidence drew as full a map as a certain one."""
    import pytorch_grad_cam

    base = getattr(pytorch_grad_cam, method)

    class Unscaled(base):
        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
            activations = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
            gradients = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
            width, height = self.get_target_width_height(input_tensor)
            maps = []
            for layer, layer_activations, layer_gradients in zip(self.target_layers, activations, gradients):
                cam = self.get_cam_image(input_tensor, layer, targets, layer_activations, layer_gradients, eigen_smooth)
                cam = torch.from_numpy(np.maximum(cam, 0).astype(np.float32))[:, None]
                # Bilinear, as the library resizes; values keep their magnitude.
                maps.append(torch.nn.functional.interpolate(cam, size=(height, width), mode="bilinear").numpy())
            return maps

        def aggregate_multi_layers(self, maps):
            return np.maximum(np.concatenate(maps, axis=1), 0).mean(axis=1)

    return Unscaled


def compute_cams(model, tensor: torch.Tensor, class_indices: list[int]) -> np.ndarray:
    """Class-activation maps (len(class_indices), H, W) at their own magnitude (>= 0, not scaled), one backward
    pass for all classes.

    `tensor` is one image (1, C, H, W), mapped for every class, or one image per class. A function of
    the model, the input and the classes only, so that maps of several models (folds) can be averaged.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not class_indices:
        return np.zeros((0, *tensor.shape[-2:]), dtype=np.float32)
    layer = cam_layer(model)
    targets = [ClassifierOutputTarget(index) for index in class_indices]
    # Channels-last model and input: on CPU the backward pass through depthwise convolutions is
    # an order of magnitude faster than in the default layout (measured: 4 s -> 0.2 s per 64 px image).
    model = model.to(memory_format=torch.channels_last)
    device = next(model.parameters()).device
    batch = tensor if len(tensor) == len(class_indices) else tensor.repeat(len(class_indices), 1, 1, 1)
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    with unscaled_cam_method(CAM_METHOD)(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=batch, targets=targets)


def scale_together(cams: np.ndarray) -> np.ndarray:
    """An image's maps on one common 0..1 scale, the strongest map's peak at 1: a class with little evidence beside
    a well-supported one looks weak, where a scale per map would stretch its faint map to full range."""
    peak = float(cams.max()) if cams.size else 0.0
    return (cams / peak if peak > 0 else np.zeros_like(cams)).astype(np.float32)


def weigh_by_probability(cams: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Maps on one scale (`scale_together`), each then multiplied by its class's probability (`probabilities`, one
    per map): the map of a class the model hardly believes in draws faintly, whatever its shape.

    Gradient x activation also rises where a class's evidence is negative overall (an absent class's positive
    parts), so on the common scale alone an absent class's peak was lower than the true class's on only 55% of
    held-out demo images (docs/recipe.md)."""
    weights = np.clip(np.asarray(probabilities, dtype=np.float32), 0, 1).reshape(-1, 1, 1)
    return (scale_together(cams) * weights).astype(np.float32)


def compute_model_cams(model, tensor: torch.Tensor, class_indices: list[int], probabilities: np.ndarray) -> np.ndarray:
    """Class-activation maps of a run's model for one image, weighed by `probabilities` (the image's, one per
    class of the run; `weigh_by_probability`); for a K-fold ensemble, the mean of its folds' maps (each fold
    seeing the image normalised as it was trained) weighed by the ensemble's probabilities."""
    from protloc.models.ensemble import FoldEnsemble

    if not isinstance(model, FoldEnsemble):
        cams = compute_cams(model, tensor, class_indices)
    else:
        cams = np.mean([compute_cams(fold, inputs, class_indices) for fold, inputs in model.fold_inputs(tensor)],
                       axis=0)
    return weigh_by_probability(cams, np.asarray(probabilities)[list(class_indices)])
