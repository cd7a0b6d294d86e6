from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F

from protloc.errors import ProtlocError, WeightsUnavailableError
from protloc.models import backbones
from protloc.models.backbones import (
    IMAGENET_MEAN,
    backbone_spec,
    lite0_checkpoint_path,
    lite0_key_map,
    list_backbones,
    load_backbone,
    load_efficientnet_lite0_imagenet,
)

CAT_CLASSES = {281, 282, 283, 284, 285, 286, 287}  # tabby ... lynx
COFFEE_CLASSES = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def lite0_imagenet():
    return load_efficientnet_lite0_imagenet()


@pytest.fixture(scope="module")
def lite0_checkpoint():
    return torch.load(lite0_checkpoint_path(), map_location="cpu", weights_only=True)


def _preprocess(rgb, spec) -> torch.Tensor:
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)[None]
    x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear", antialias=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (spec.mean, spec.std))
    return (x - mean) / std


@pytest.mark.parametrize(("photo", "expected"), [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_lite0_weights_recognise_natural_photos(lite0_imagenet, photo, expected):
    import skimage.data

    x = _preprocess(getattr(skimage.data, photo)(), backbone_spec("efficientnet_lite0"))
    with torch.no_grad():
        top5 = lite0_imagenet(x).softmax(-1)[0].topk(5).indices.tolist()
    assert expected & set(top5), top5


def test_lite0_key_map_covers_the_whole_checkpoint(lite0_imagenet, lite0_checkpoint):
    target = lite0_imagenet.state_dict()
    mapping = lite0_key_map(lite0_imagenet, list(lite0_checkpoint))
    assert sorted(mapping) == sorted(lite0_checkpoint)
    assert sorted(mapping.values()) == sorted(target)  # one to one, nothing left over
    for source, dest in mapping.items():
        assert lite0_checkpoint[source].shape == target[dest].shape, (source, dest)


def test_default_backbone_is_lite0_with_offline_weights(lite0_checkpoint):
    backbone = load_backbone()
    assert backbone.spec.name == "efficientnet_lite0" and backbone.spec.has_offline_weights
    assert backbone.spec.mean == backbone.spec.std == (0.5, 0.5, 0.5)
    assert torch.equal(backbone.net.conv_stem.weight, lite0_checkpoint["_conv_stem.weight"])
    assert torch.equal(backbone.net.bn2.running_var, lite0_checkpoint["_bn1.running_var"])
    assert backbone.cam_layer_name == "blocks.2" and backbone.cam_layer is backbone.net.blocks[2]
    assert not any(k.startswith("cam_layer") for k in backbone.state_dict())
    assert backbone.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, backbone.num_features) == (2, 1280)


def _random_resnet18_state(seed: int = 0) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resnet18_loads_a_torchvision_state_dict_file(tmp_path, suffix):
    state = _random_resnet18_state()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    backbone = load_backbone("resnet18", weights=path)
    loaded = backbone.net.state_dict()
    assert sorted(loaded) == sorted(k for k in state if not k.startswith("fc."))
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert backbone.spec.mean == IMAGENET_MEAN
    assert backbone.cam_layer is backbone.net.layer2
    assert backbone.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 512)


def test_weights_file_for_another_model_names_the_mismatch(tmp_path):
    import torchvision

    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ProtlocError, match="resnet34.pth") as err:
        load_backbone("resnet18", weights=path)
    assert "unexpected keys: layer1.2." in str(err.value)


def test_renamed_keys_are_reported_as_missing(tmp_path):
    path = tmp_path / "prefixed.pth"
    torch.save({"module." + k: v for k, v in _random_resnet18_state().items()}, path)
    with pytest.raises(ProtlocError, match="missing keys: conv1.weight"):
        load_backbone("resnet18", weights=path)


def test_unreadable_weights_files(tmp_path):
    with pytest.raises(ProtlocError, match="not found"):
        load_backbone("resnet18", weights=tmp_path / "absent.pth")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ProtlocError, match="notes.pth"):
        load_backbone("resnet18", weights=text)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ProtlocError, match="not a state dict"):
        load_backbone("resnet18", weights=tensor)


def test_resnet18_offline_without_cache_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args)
        raise OSError("network unreachable")

    # Offline even where the test machine has a network: urllib connects through this function.
    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("resnet18")
    assert len(attempts) <= 1  # fast: one try, no retries or waits
    message = str(err.value)
    assert "--weights" in message and "--no-pretrained" in message and "efficientnet_lite0" in message


def test_resnet18_uses_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _random_resnet18_state(seed=1)
    # Like torchvision's own file, which predates BatchNorm's num_batches_tracked.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    backbone = load_backbone("resnet18")
    assert torch.equal(backbone.net.conv1.weight, state["conv1.weight"])


def test_timm_weights_file_with_a_different_head_loads(tmp_path):
    import timm

    net = timm.create_model("resnet18", num_classes=28)
    path = tmp_path / "finetuned.pth"
    torch.save(net.state_dict(), path)
    backbone = load_backbone("timm:resnet18", weights=path)
    assert backbone.spec.library == "timm"
    assert torch.equal(backbone.net.conv1.weight, net.conv1.weight)
    assert backbone.num_features == 512


def test_models_without_bundled_weights_need_weights_or_no_pretrained():
    with pytest.raises(WeightsUnavailableError, match="--no-pretrained") as err:
        load_backbone("convnext_tiny")
    assert "--weights" in str(err.value)


def test_unknown_name():
    with pytest.raises(ProtlocError, match="Unknown backbone 'no_such_net'") as err:
        load_backbone("no_such_net", pretrained=False)
    assert "efficientnet_lite0" in str(err.value)


def test_specs_without_building():
    assert list_backbones()[:2] == ["efficientnet_lite0", "resnet18"]
    assert backbone_spec("resnet18").mean == IMAGENET_MEAN
    vit = backbone_spec("vit_small_patch16_224")
    assert (vit.library, vit.mean, vit.input_size) == ("timm", (0.5, 0.5, 0.5), 224)
    tv = backbone_spec("torchvision:convnext_tiny")
    assert (tv.library, tv.arch, tv.std) == ("torchvision", "convnext_tiny", backbones.IMAGENET_STD)


def test_one_and_four_channel_stems_derive_from_rgb(lite0_checkpoint):
    rgb = lite0_checkpoint["_conv_stem.weight"]
    grey = load_backbone("efficientnet_lite0", in_chans=1)
    assert torch.allclose(grey.net.conv_stem.weight, rgb.sum(dim=1, keepdim=True))
    assert grey.eval()(torch.zeros(2, 1, 64, 64)).shape == (2, 1280)

    rgby = load_backbone("efficientnet_lite0", in_chans=4)
    w = rgby.net.conv_stem.weight
    assert w.shape == (32, 4, 3, 3)
    assert torch.allclose(w[:, :3], rgb * 3 / 4)
    assert torch.allclose(w[:, 3], rgb.mean(dim=1) * 3 / 4)
    assert rgby.eval()(torch.zeros(2, 4, 64, 64)).shape == (2, 1280)
    assert len(rgby.spec.normalization(4)[0]) == 4

    resnet = load_backbone("resnet18", pretrained=False, in_chans=4)
    assert resnet.net.conv1.in_channels == 4
    assert resnet.eval()(torch.zeros(1, 4, 64, 64)).shape == (1, 512)


def test_extra_channels_are_normalised_with_the_rgb_average():
    # adapt_stem makes a grey or yellow kernel from the RGB ones; the statistics follow the same rule.
    spec = backbone_spec("resnet18")
    mean_avg, std_avg = sum(IMAGENET_MEAN) / 3, sum(backbones.IMAGENET_STD) / 3
    assert spec.normalization(1) == ((mean_avg,), (std_avg,))
    assert spec.normalization(3) == (IMAGENET_MEAN, backbones.IMAGENET_STD)
    assert spec.normalization(4) == (IMAGENET_MEAN + (mean_avg,), backbones.IMAGENET_STD + (std_avg,))


def test_public_names_stay_importable_from_the_package():
    for name in backbones.__all__:
        assert getattr(backbones, name) is not None, name
    assert backbones.DEFAULT_BACKBONE in list_backbones()


def test_generic_torchvision_model_drops_its_classifier():
    backbone = load_backbone("torchvision:mobilenet_v3_small", pretrained=False)
    assert backbone.num_features == 1024
    assert backbone.cam_layer is backbone.net.features
    assert backbone.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1024)
