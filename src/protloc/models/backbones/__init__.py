"""ImageNet backbones: a registry in which each entry knows its weights and its normalisation.

A backbone maps (N, C, H, W) images to pooled features (N, F). Names resolve in this order:
the registry (`list_backbones()`), then timm, then torchvision; `timm:NAME` or
`torchvision:NAME` picks a library explicitly where both know a name.

Modules: ``registry`` (names and specs), ``weights`` (ImageNet weights and state dict files),
``channels`` (1- and 4-channel inputs), ``activations`` (a ReLU6 that saves no copy in training) and
``build`` (`load_backbone`, which puts them together).
"""
from __future__ import annotations

from protloc.models.backbones.build import Backbone, load_backbone
from protloc.models.backbones.channels import adapt_stem
from protloc.models.backbones.registry import (
    DEFAULT_BACKBONE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    backbone_spec,
    list_backbones,
)
from protloc.models.backbones.weights import (
    lite0_checkpoint_path,
    lite0_imagenet_state_dict,
    lite0_key_map,
    load_efficientnet_lite0_imagenet,
    read_state_dict,
)

__all__ = [
    "DEFAULT_BACKBONE", "IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "BackboneSpec", "adapt_stem",
    "backbone_spec", "list_backbones", "load_backbone", "load_efficientnet_lite0_imagenet",
    "lite0_checkpoint_path", "lite0_imagenet_state_dict", "lite0_key_map", "read_state_dict",
]
