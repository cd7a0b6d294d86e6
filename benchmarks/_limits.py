"""What the hardware allows and what the seed notebook's loop gets, for bench_pipeline.py.

Limits run the same model, batch size, precision, memory format and malloc settings as protloc on tensors
already in memory: nothing to decode, load or augment. The seed-style loop decodes each PNG with PIL and applies
torchvision's transforms to the full-size image at every step, in fp32 without channels_last, as the seed
notebook did.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from multiprocessing import get_context

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from protloc.allocator import allow_malloc_settings, freed_memory_kept
from protloc.data.cache import decode_resized
from protloc.models.backbones import backbone_spec
from protloc.models.classifier import build_model, freeze_backbone, freeze_early_stages


def autocast(device: str, dtype: torch.dtype | None):
    return torch.autocast(device.split(":")[0], dtype=dtype) if dtype is not None else contextlib.nullcontext()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fresh_model(backbone: str, num_classes: int, device: str, channels_last: bool = True) -> nn.Module:
    model = build_model(backbone, num_classes, pretrained=True)
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def memory_batches(count: int, batch_size: int, image_size: int, num_classes: int, device: str):
    """Normalised-looking images and targets, already on the device."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
        targets = (torch.rand(batch_size, num_classes, generator=generator) < 0.2).float()
        batches.append((images.to(device).contiguous(memory_format=torch.channels_last), targets.to(device)))
    return batches


def rate(step, batches, steps: int, device: str) -> float:
    """Images per second of `step` over `steps` batches after one warm-up step (kernels chosen, memory taken)."""
    step(*batches[0])
    synchronize(device)
    start = time.perf_counter()
    images = 0
    for index in range(steps):
        batch = batches[index % len(batches)]
        step(*batch)
        images += len(batch[0])
    synchronize(device)
    return images / (time.perf_counter() - start)


def step_seconds(step, batches, steps: int, device: str) -> list[float]:
    """Seconds of each of `steps` calls of `step`, cycling through `batches`, the first included."""
    seconds = []
    for index in range(steps):
        start = time.perf_counter()
        step(*batches[index % len(batches)])
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(backbone: str, batch_size: int, image_size: int, steps: int, device: str = "cpu", dtype=None,
            epoch_steps: int | None = None) -> dict:
    """Images per second of the forward pass and the frozen-backbone step (`steps` of them, after a warm-up), each
    with glibc's malloc set as protloc sets it for that work: freed memory kept for forward passes (the frozen
    phase, prediction), its defaults for fine-tuning.

    Fine-tuning is measured as an epoch of `epoch_steps` steps (default `steps` + 1) from a fresh model and
    optimiser, the first step included ("finetune"), as protloc's fine-tuning epoch is timed; "finetune_steady"
    is the same steps after the first. The first step chooses kernels for the backward pass and takes the
    activations' and the optimiser's memory: about 1 s more than later steps (of about 3), so in an epoch of 14
    steps it weighs 2-3%, and in a Zero-to-GANs epoch of 600 nothing."""
    batches = memory_batches(2, batch_size, image_size, 10, device)
    model = fresh_model(backbone, 10, device)
    with freed_memory_kept():
        forward = forward_limit(model, batches, steps=4 * steps, device=device, dtype=dtype)
        frozen = train_step_limit(model, batches, frozen=True, steps=2 * steps, device=device, dtype=dtype)
    model = fresh_model(backbone, 10, device)
    # As protloc fine-tunes by default: the backbone's first stages frozen (--frozen-stages, the backbone's number).
    freeze_early_stages(model, backbone_spec(backbone).frozen_stages)
    epoch_steps = epoch_steps or steps + 1
    seconds = train_step_limit(model, batches, frozen=False, steps=epoch_steps, device=device, dtype=dtype, epoch=True)
    later = seconds[1:]  # none in an epoch of one step
    return {"forward": forward, "frozen_step": frozen, "finetune": batch_size * epoch_steps / sum(seconds),
            "finetune_steady": batch_size * len(later) / sum(later) if later else float("nan")}


def train_step_limit(model, batches, *, frozen: bool, steps: int, device: str, dtype=None, epoch: bool = False):
    """protloc's training step without Lightning or loading: forward (the frozen backbone under no_grad), BCE,
    backward, gradient clipping by value 0.1, Adam, on the parameters that require gradients. Images per second
    after a warm-up step; with `epoch`, the seconds of each step instead, the first included."""
    model.train()
    if frozen:
        freeze_backbone(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)
    loss_function = nn.BCEWithLogitsLoss()

    def step(images, targets):
        with autocast(device, dtype):
            if frozen:
                with torch.no_grad():
                    features = model.backbone(images)
                logits = model.head(features)
            else:
                logits = model(images)
        loss = loss_function(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(trainable, 0.1)
        optimizer.step()

    return step_seconds(step, batches, steps, device) if epoch else rate(step, batches, steps, device)


def forward_limit(model, batches, *, steps: int, device: str, dtype=None) -> float:
    model.eval()

    def step(images, _targets):
        with torch.inference_mode(), autocast(device, dtype):
            model(images)

    return rate(step, batches, steps, device)


def onnx_forward_limit(session, batches, *, steps: int) -> float:
    """ONNX Runtime on the CPU, fp32, on the same batches: the engine of `protloc predict --engine onnx`."""
    name = session.get_inputs()[0].name
    arrays = [(images.cpu().contiguous().numpy(), None) for images, _ in batches]
    return rate(lambda images, _: session.run(None, {name: images}), arrays, steps, "cpu")


def _decode_one(args) -> int:
    path, size = args
    return decode_resized(path, 3, size)[0].numel()


def decode_rate(paths, image_size: int, processes: int) -> float:
    """Images per second decoding and resizing (the work the cache saves), on `processes` processes."""
    with get_context("fork").Pool(processes) as pool:
        pool.map(_decode_one, [(paths[0], image_size)] * processes)  # started and warm
        start = time.perf_counter()
        pool.map(_decode_one, [(path, image_size) for path in paths], chunksize=4)
        return len(paths) / (time.perf_counter() - start)


class SeedStyleImages(Dataset):
    """PIL decode and torchvision transforms on the full-size image, every time an image is read."""

    def __init__(self, paths, targets, transform):
        self.paths, self.targets, self.transform = list(paths), torch.as_tensor(targets), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.targets[index]


def seed_transforms(original_size: int, image_size: int, mean, std) -> T.Compose:
    """The seed notebook's augmentations on the 512 px PIL image (plus the same crop scale and ratio as protloc)."""
    return T.Compose([
        T.RandomCrop(original_size, padding=original_size // 32, padding_mode="reflect"),
        T.RandomResizedCrop(image_size, scale=(0.5, 1.0), ratio=(0.9, 1.1)),
        T.RandomHorizontalFlip(),
        T.RandomRotation(10),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def seed_style_epoch(model, dataset: Dataset, *, frozen: bool, batch_size: int, workers: int) -> float:
    """One epoch as the seed trains: fresh loader workers, fp32, the frozen backbone still under autograd."""
    model.train()
    if frozen:
        freeze_backbone(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)
    loss_function = nn.BCEWithLogitsLoss()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    start = time.perf_counter()
    images = 0
    for batch, targets in loader:
        loss = loss_function(model(batch), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(trainable, 0.1)
        optimizer.step()
        images += len(batch)
    return images / (time.perf_counter() - start)


def main() -> None:
    """`python benchmarks/_limits.py [--backbone ...]`: `measure` in a process of its own; JSON on the last line."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--epoch-steps", type=int, help="fine-tune as an epoch of this many steps, the first included")
    args = parser.parse_args()
    allow_malloc_settings()  # a process of its own, with the memory settings `protloc train` uses
    print(json.dumps(measure(args.backbone, args.batch_size, args.image_size, args.steps, epoch_steps=args.epoch_steps)))


if __name__ == "__main__":
    main()
