"""Backbone names and specs: the registry, then any timm or torchvision classification model."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from protloc.errors import ProtlocError
from protloc.models.backbones.channels import expand_channels
from protloc.models.backbones.weights import StateDict, lite0_imagenet_state_dict, torchvision_imagenet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone needs to be built and fed: its library, weights and input normalisation."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    library: str  # "timm" or "torchvision"
    arch: str  # the model's name inside `library`
    has_offline_weights: bool = False  # pretrained weights ship with an installed package
    # Class-activation-map target, a dotted path in the network; None: the last spatial map, found by probing.
    # Registered backbones name a stride-8 map (16x16 at 128 px): the last one is too coarse to separate
    # cells (measured by tools/cam_localisation.py).
    cam_layer_name: str | None = None
    # The stages whose maps, averaged over space, the outlier score reads beside the pooled features (dotted
    # paths, in the order the network runs them). Real images that the last layer maps close to the training
    # images still differ in their early textures: per-stage distances separate them (inference/outliers.py).
    stage_names: tuple[str, ...] = ()
    # How many of the first stages (the stem counting as the first) fine-tuning leaves frozen by default: chosen by
    # measurement at the make demo budget (docs/recipe.md); 0 (fine-tune everything) where nothing was measured.
    frozen_stages: int = 0
    # Returns the full classifier's ImageNet state dict in `library`'s key names.
    pretrained_state: Callable[[], StateDict] | None = field(default=None, compare=False, repr=False)

    def normalization(self, in_chans: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std for `in_chans` inputs, matching how `adapt_stem` builds extra channels."""
        return expand_channels(self.mean, in_chans), expand_channels(self.std, in_chans)


_REGISTRY: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=224,
        library="timm", arch="tf_efficientnet_lite0", has_offline_weights=True, cam_layer_name="blocks.2",
        stage_names=tuple(f"blocks.{index}" for index in range(7)), frozen_stages=4,
        pretrained_state=lite0_imagenet_state_dict,
    ),
    "resnet18": BackboneSpec(
        name="resnet18", mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224,
        library="torchvision", arch="resnet18", cam_layer_name="layer2",
        stage_names=("layer1", "layer2", "layer3"),  # layer4 averaged is the pooled features themselves
        pretrained_state=torchvision_imagenet("ResNet18_Weights", "IMAGENET1K_V1"),
    ),
}


def list_backbones() -> list[str]:
    return list(_REGISTRY)


def offline_backbones() -> list[str]:
    """Registered backbones whose ImageNet weights need no network."""
    return [n for n, s in _REGISTRY.items() if s.has_offline_weights]


def backbone_spec(name: str) -> BackboneSpec:
    """The spec for `name`, without building the network."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    library, _, arch = name.rpartition(":")
    if library not in ("", "timm", "torchvision"):
        library, arch = "", name
    if library in ("", "timm") and _is_timm_model(arch):
        return _timm_spec(name, arch)
    if library in ("", "torchvision") and arch in _torchvision_names():
        return BackboneSpec(name, IMAGENET_MEAN, IMAGENET_STD, 224, "torchvision", arch)
    raise ProtlocError(
        f"Unknown backbone {name!r}.",
        f"Registered: {', '.join(list_backbones())}; or any timm model (e.g. resnet50, convnext_tiny)",
        "or torchvision classification model (e.g. torchvision:mobilenet_v3_large);",
        "prefix timm: or torchvision: to choose the library.",
    )


def _is_timm_model(arch: str) -> bool:
    import timm

    return timm.is_model(arch)


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)  # classification models only, not detection or segmentation


def _timm_spec(name: str, arch: str) -> BackboneSpec:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, 224
    if cfg is not None:
        if len(cfg.mean) == 3 and len(cfg.std) == 3:
            mean, std = tuple(cfg.mean), tuple(cfg.std)
        size = cfg.input_size[-1]
    return BackboneSpec(name, mean, std, size, "timm", arch)
