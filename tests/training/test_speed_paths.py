"""The fast paths change speed, not results: the image cache, batched work on the device, the frozen backbone
without autograd, and the head-only shortcut (which changes results by design, but exactly reproducibly)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from protloc.data.cache import FEATURES_FOLDER, IMAGES_FOLDER, open_image_cache
from protloc.data.dataset import ImageDataset
from protloc.data.readers import read_dataset
from protloc.data.transforms import Augmentation, augment_batch, batch_to_model_input, eval_transforms
from protloc.models.classifier import build_model
from protloc.runs import load_config
from protloc.training.datamodule import LocalisationData, SeededAugmentation
from protloc.training.features import store_features, table_features
from protloc.training.losses import make_loss
from protloc.training.module import LocalisationModule
from protloc.training.config import TrainConfig
from protloc.training.run import build_initial_model
from protloc.training.train import train

BACKBONE = "test_resnet"


def recipe(demo_data, out, **changes) -> TrainConfig:
    config = TrainConfig(data=str(demo_data), out=str(out), backbone=BACKBONE, pretrained=False, image_size=32,
                         batch_size=16, workers=0, epochs_frozen=1, epochs=1, dropout=0.3, show_progress=False,
                         device="cpu")
    return dataclasses.replace(config, **changes)


def last_state(run_dir, phase: str = "finetune") -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / phase / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"]


def assert_same_run(expected_dir, actual_dir, phase: str = "finetune") -> None:
    expected, actual = last_state(expected_dir, phase), last_state(actual_dir, phase)
    assert expected.keys() == actual.keys()
    assert [key for key in expected if not torch.equal(expected[key], actual[key])] == []
    best_expected, best_actual = load_file(expected_dir / "model.safetensors"), load_file(actual_dir / "model.safetensors")
    assert all(torch.equal(best_expected[key], best_actual[key]) for key in best_expected)
    scores = [pd.read_csv(folder / "metrics.csv").drop(columns="images_per_second") for folder in (expected_dir, actual_dir)]
    pd.testing.assert_frame_equal(*scores, check_exact=True)


def test_runs_with_and_without_the_cache_end_with_identical_weights(demo_data, tmp_path):
    unused = tmp_path / "unused-cache"
    plain = train(recipe(demo_data, tmp_path / "plain", cache=False, cache_dir=str(unused)))
    assert not unused.exists()
    cache_dir = str(tmp_path / "cache")
    # Filled by the pre-training check (and loader workers), then read back by the next run in the main process.
    filled = train(recipe(demo_data, tmp_path / "filled", cache_dir=cache_dir, workers=1))
    # Every image at the input size (the check, validation), and the training images at their own larger size too
    # (64 px for the 32 px input: the augmentation crops there).
    n_train = load_config(filled).training.n_train
    assert len(list((tmp_path / "cache" / IMAGES_FOLDER).glob("*/*.u8"))) == 96 + n_train
    warm = train(recipe(demo_data, tmp_path / "warm", cache_dir=cache_dir))
    assert_same_run(plain, filled)
    assert_same_run(plain, warm)


def test_with_the_cache_only_training_images_are_read_in_worker_processes(demo_data, tmp_path, monkeypatch):
    """Validation, and labelling the validation images once training ends, read decoded images from the cache in
    the main process: workers forked after fine-tuning would share the activations it freed, then copy them."""
    loaders = []  # (dataset type, worker processes) of every loader the run makes
    make_loader = DataLoader.__init__

    def recorded(loader, dataset, *args, **kwargs):
        loaders.append((type(dataset).__name__, kwargs.get("num_workers", 0)))
        make_loader(loader, dataset, *args, **kwargs)

    monkeypatch.setattr(DataLoader, "__init__", recorded)
    run = train(recipe(demo_data, tmp_path / "run", cache_dir=str(tmp_path / "cache"), workers=1, batch_size=4))
    assert load_config(run).training.n_val > 4  # more than one batch: a loader for them could use workers
    assert ("SeededAugmentation", 1) in loaders
    assert {workers for dataset, workers in loaders if dataset == "ImageDataset"} == {0}
    assert loaders.count(("ImageDataset", 0)) >= 2  # validation during training, and labelling afterwards


def test_an_images_augmentation_follows_its_seed_alone_and_leaves_the_process_rng_alone(demo_data):
    transform = eval_transforms(image_size=32, mean=[0.5] * 3, std=[0.25] * 3, to_model_input=False)
    augmented = SeededAugmentation(ImageDataset(read_dataset(demo_data), channels=3, transform=transform, image_size=32),
                                   Augmentation())
    torch.manual_seed(1)
    image, *_, first = augmented[(0, 7)]
    assert image.dtype == torch.uint8 and first.shape == (2, 3)  # the image as read, and its map
    state = torch.get_rng_state()
    again = augmented[(0, 7)][-1]
    assert torch.equal(torch.get_rng_state(), state)  # dropout's draws do not depend on data loading
    torch.manual_seed(2)
    assert torch.equal(augmented[(0, 7)][-1], first) and torch.equal(again, first)
    assert not torch.equal(augmented[(0, 8)][-1], first)


def test_the_frozen_backbone_runs_without_autograd_and_only_the_head_learns():
    model = build_model(BACKBONE, 10, pretrained=False)
    module = LocalisationModule(model, phase="frozen", first_epoch=0, phase_epochs=1, lr=0.01, optimizer="adam",
                                weight_decay=0.0, loss=make_loss("bce", None), label_names=[str(i) for i in range(10)])
    seen = []
    model.backbone.register_forward_hook(lambda _m, _i, output: seen.append((torch.is_grad_enabled(), output.requires_grad)))
    module.train()
    batch = (torch.randn(4, 3, 32, 32), torch.zeros(4, 10), torch.arange(4), torch.ones(4, dtype=torch.bool))
    module.training_step(batch, 0).backward()
    assert seen == [(False, False)]
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_training_batches_are_augmented_on_the_device_and_validation_batches_are_as_prediction_sees_them(demo_data):
    table = read_dataset(demo_data, split="train")
    rows = np.arange(len(table))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    data = LocalisationData(table, rows[:64], rows[64:], image_size=32, mean=mean, std=std, channels=3, batch_size=16,
                            workers=0, seed=3)
    train_batch, val_batch = next(iter(data.train_dataloader())), next(iter(data.val_dataloader()))
    assert train_batch[0].dtype == val_batch[0].dtype == torch.uint8  # a quarter of the bytes to copy to a GPU
    images, targets, batch_rows, problems = data.on_after_batch_transfer(train_batch, 0)
    plain = batch_to_model_input(train_batch[0], torch.tensor(mean), torch.tensor(std))
    assert torch.equal(images, augment_batch(train_batch[0], train_batch[4], torch.tensor(mean), torch.tensor(std)))
    assert images.dtype == torch.float32 and not torch.allclose(images, plain, atol=0.1)
    assert torch.equal(targets, train_batch[1]) and torch.equal(batch_rows, train_batch[2]) and problems == train_batch[3]
    # Validation batches: no augmentation, and the values prediction's per-image preset gives.
    prediction = eval_transforms(image_size=32, mean=mean, std=std)
    expected = torch.stack([prediction(data.val_dataset().read(index)) for index in range(16)])
    assert torch.equal(data.on_after_batch_transfer(val_batch, 0)[0], expected)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.3, 0.2, 0.1])
    tail = eval_transforms(image_size=8, mean=mean.tolist(), std=std.tolist())
    assert torch.equal(batch_to_model_input(images, mean, std), torch.stack([tail(image) for image in images]))


def test_backbone_features_are_those_of_the_eval_images_and_are_kept(demo_data, tmp_path):
    table = read_dataset(demo_data, split="train").subset(np.arange(20))
    model = build_model(BACKBONE, 10, pretrained=False)
    cache = open_image_cache(tmp_path / "cache", limit_gb=1)
    settings = dict(image_size=32, mean=[0.5] * 3, std=[0.25] * 3, channels=3, batch_size=8, workers=0)
    features = table_features(model, table, cache=cache, **settings)
    transform = eval_transforms(image_size=32, mean=[0.5] * 3, std=[0.25] * 3)
    images = torch.stack([ImageDataset(table, channels=3, transform=transform, image_size=32)[i][0] for i in range(20)])
    with torch.inference_mode():
        expected = model.eval().backbone(images).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    (stored,) = (tmp_path / "cache" / FEATURES_FOLDER).glob("*.f32")
    marked = features.copy()
    marked[-1, -1] = 7.0
    store_features(cache, stored.name.removesuffix(".f32"), marked)  # a whole, checksummed copy that shows when read
    assert table_features(model, table, cache=cache, **settings)[-1, -1] == 7.0
    # A damaged copy (its checksum fails) or one of another shape is computed again, never served.
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    np.testing.assert_allclose(table_features(model, table, cache=cache, **settings), expected, rtol=1e-5, atol=1e-6)
    store_features(cache, stored.name.removesuffix(".f32"), np.zeros((3, 5), np.float32))
    assert table_features(model, table, cache=cache, **settings).shape == expected.shape
    # Other weights, other features.
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)
    assert table_features(model, table, cache=cache, **settings)[-1, -1] != 7.0


def test_head_only_frozen_phase_keeps_the_backbone_and_resumes_exactly(demo_data, tmp_path):
    config = recipe(demo_data, tmp_path / "straight", head_only_features=True, epochs_frozen=2, cache_dir=str(tmp_path / "cache"))
    straight = train(config)
    metrics = pd.read_csv(straight / "metrics.csv")
    assert metrics["phase"].tolist() == ["frozen", "frozen", "finetune"]
    initial = build_initial_model(config, 10).state_dict()
    frozen = {key.removeprefix("model."): value for key, value in last_state(straight, "frozen").items()}
    assert all(torch.equal(frozen[key], value) for key, value in initial.items() if key.startswith("backbone."))
    assert not torch.equal(frozen["head.1.weight"], initial["head.1.weight"])

    stopped = dataclasses.replace(config, out=str(tmp_path / "stopped"))
    train(dataclasses.replace(stopped, stop_after=1))
    train(dataclasses.replace(stopped, resume=True))
    assert_same_run(straight, tmp_path / "stopped")


def test_runs_stopped_before_the_speed_options_existed_resume_with_their_defaults(tmp_path):
    from protloc.errors import ProtlocError
    from protloc.training.resume import check_same_recipe

    config = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"))
    saved = {key: value for key, value in dataclasses.asdict(config).items()
             if key not in ("cache", "cache_dir", "cache_limit_gb", "head_only_features")}
    check_same_recipe(saved, dataclasses.replace(config, cache=False, cache_dir="elsewhere"), tmp_path)
    with pytest.raises(ProtlocError) as error:
        check_same_recipe(saved, dataclasses.replace(config, head_only_features=True), tmp_path)
    assert "--head-only-features: False in the stopped run, True now" in "\n".join(error.value.lines)
