"""Building a backbone: the network from its library, its weights, its head removed, its stem and Grad-CAM layer."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from protloc.errors import ProtlocError, WeightsUnavailableError
from protloc.models.backbones.activations import use_inplace_relu6
from protloc.models.backbones.channels import adapt_stem
from protloc.models.backbones.registry import DEFAULT_BACKBONE, BackboneSpec, backbone_spec, offline_backbones
from protloc.models.backbones.weights import load_state, read_state_dict


class Backbone(nn.Module):
    """An ImageNet network without its classifier: (N, in_chans, H, W) -> pooled features (N, num_features)."""

    def __init__(
        self, net: nn.Module, spec: BackboneSpec, num_features: int, in_chans: int, cam_layer_name: str | None,
        stage_names: tuple[str, ...] = (),
    ):
        super().__init__()
        self.stage_names = tuple(stage_names)  # dotted paths inside `net`: what features_and_stages averages
        self.net = net
        self.spec = spec
        self.num_features = num_features
        self.in_chans = in_chans
        self.cam_layer_name = cam_layer_name  # dotted path inside `net`

    @property
    def cam_layer(self) -> nn.Module | None:
        """Grad-CAM's target: the spec's `cam_layer_name`, else the last spatial map; None for token-based networks (ViT)."""
        # Looked up, not stored: a second reference would put the layer twice in state_dict().
        return self.net.get_submodule(self.cam_layer_name) if self.cam_layer_name is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def features_and_stages(self, x: torch.Tensor) -> torch.Tensor:
        """One pass: the pooled features (N, F) and after them each of the spec's stages' maps averaged over
        space, side by side (N, F + sum of the stages' channels): what the outlier score reads."""
        maps: list[torch.Tensor] = []
        handles = [self.net.get_submodule(name).register_forward_hook(lambda _module, _input, output: maps.append(output))
                   for name in self.stage_names]
        try:
            pooled = self.net(x)
        finally:
            for handle in handles:
                handle.remove()
        return torch.cat([pooled.float()] + [stage.float().mean(dim=(2, 3)) for stage in maps], dim=1)

    def early_modules(self, stages: int) -> list[nn.Module]:
        """The modules of the network's first `stages` stages, the stem (the top-level modules that run before the
        first of `stage_names` with weights) counting as the first; [] for 0. (timm lists a ResNet's stem
        activation as a stage of its own: it goes with the stem.)"""
        if stages <= 0:
            return []
        weighted = [name for name in self.stage_names if any(True for _ in self.net.get_submodule(name).parameters())]
        if not weighted:
            raise ProtlocError(f"--frozen-stages {stages}: backbone {self.spec.name!r} names no stages; use --frozen-stages 0")
        if stages > 1 + len(weighted):
            raise ProtlocError(f"--frozen-stages {stages}: backbone {self.spec.name!r} has a stem and {len(weighted)} "
                               f"stages before its last; expected 0 to {1 + len(weighted)}")
        first = weighted[0].split(".")[0]
        stem = []
        for name, child in self.net.named_children():
            if name == first:
                break
            stem.append(child)
        return stem + [self.net.get_submodule(name) for name in weighted[:stages - 1]]

    def feature_widths(self) -> list[int]:
        """The widths of the parts of `features_and_stages`: F, then each stage's channels (one small probe pass,
        in eval mode, so no BatchNorm statistics move)."""
        modes = {module: module.training for module in self.modules()}
        parameter = next(self.parameters())
        probe = torch.zeros(1, self.in_chans, 64, 64, device=parameter.device, dtype=parameter.dtype)
        maps: list[int] = []
        handles = [self.net.get_submodule(name).register_forward_hook(lambda _module, _input, output: maps.append(output.shape[1]))
                   for name in self.stage_names]
        try:
            with torch.no_grad():
                self.eval()
                width = self.net(probe).shape[1]
        finally:
            for handle in handles:
                handle.remove()
            for module, training in modes.items():  # as they were, also a frozen backbone's BatchNorm
                module.training = training
        return [int(width)] + [int(channels) for channels in maps]


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
        raise WeightsUnavailableError(
            f"No ImageNet weights are available for backbone {name!r}.",
            f"Use --weights FILE (a state dict for {spec.library} {spec.arch}), --no-pretrained,",
            f"or a backbone with offline weights ({', '.join(offline_backbones())}).",
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
        load_state(net, head, state, source)
    num_features = _remove_head(net, head, spec.library)
    if in_chans != 3:
        adapt_stem(net, in_chans)
    use_inplace_relu6(net)
    cam_layer = spec.cam_layer_name or _find_cam_layer(net, in_chans, spec.input_size)
    stages = spec.stage_names or (_timm_stages(net, in_chans) if spec.library == "timm" else ())
    return Backbone(net, spec, num_features, in_chans, cam_layer, stages)


def _timm_stages(net: nn.Module, in_chans: int) -> tuple[str, ...]:
    """For a timm network the registry does not name stages of: the stages timm lists (feature_info) but the last
    (the pooled features average it), where each gives a channels-first map (N, C, h, w) with timm's C, checked on
    one small probe; none otherwise (token or channels-last networks: their score reads the pooled features)."""
    info = getattr(net, "feature_info", None)
    try:
        entries = [(entry["module"], int(entry["num_chs"])) for entry in info][:-1] if info is not None else []
    except (TypeError, KeyError):
        return ()
    shapes: dict[str, tuple[int, ...]] = {}

    def keep_shape(name: str):
        def hook(_module, _input, output) -> None:  # returns nothing: a hook's return value replaces the output
            shapes.setdefault(name, tuple(output.shape) if isinstance(output, torch.Tensor) else ())
        return hook

    handles = []
    try:
        for name, _channels in entries:
            handles.append(net.get_submodule(name).register_forward_hook(keep_shape(name)))
        was_training = net.training
        with torch.no_grad():
            net.eval()(torch.zeros(1, in_chans, 64, 64))
        net.train(was_training)
    except Exception:  # a network that cannot be probed this way keeps the pooled features alone
        return ()
    finally:
        for handle in handles:
            handle.remove()
    fits = all(len(shapes.get(name, ())) == 4 and shapes[name][1] == channels for name, channels in entries)
    return tuple(name for name, _ in entries) if fits else ()


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
