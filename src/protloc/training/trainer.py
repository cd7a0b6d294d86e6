"""The machinery under training: where it runs, in what precision, in how many processes, as a Lightning Trainer.

The user speaks the one device vocabulary of every command (--device auto|cpu|cuda|cuda:N, --precision
auto|fp32|bf16|fp16; protloc.devices resolves it); this module turns it into Lightning's names. Lightning's
own messages (device banners, tips, model summaries) are left out unless --verbose.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.strategies import DDPStrategy

from protloc.data.workers import training_workers
from protloc.devices import LIGHTNING_PRECISIONS, resolve_device, resolve_precision
from protloc.errors import ProtlocError
from protloc.files import atomic_path
from protloc.runs import BEST_CHECKPOINT, LAST_CHECKPOINT
from protloc.training.callbacks import RelocatableCheckpoint, RunProgressBar
from protloc.training.config import TrainConfig


def rank() -> int:
    """This process's global rank; 0 outside distributed training. Known before any Trainer exists because
    Lightning's launcher starts the other ranks with their rank in the environment."""
    return int(getattr(rank_zero_only, "rank", 0))


def worker_count(config: TrainConfig, device: str) -> int:
    """DataLoader processes per training process (data.workers.training_workers)."""
    return training_workers(config.workers, device, config.cache)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in their own folder, then renamed into place: a kill while one is
    saved leaves the previous checkpoint whole, and resuming starts from it. (Lightning's own writer goes through
    a temporary file in the system's temp folder and copies it over, which a kill can leave half done.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        import torch

        with atomic_path(path) as temp:
            torch.save(checkpoint, temp)


@dataclass(frozen=True)
class Hardware:
    device: str  # cpu, cuda or cuda:N
    precision: str  # fp32, bf16 or fp16
    processes: int  # per node
    num_nodes: int
    workers: int  # DataLoader processes per training process

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device.startswith("cuda") else "cpu"

    @property
    def lightning_devices(self) -> int | list[int]:
        index = self.device.partition(":")[2]
        return [int(index)] if index else self.processes

    @property
    def world_size(self) -> int:
        return self.processes * self.num_nodes

    def describe(self) -> str:
        nodes = f" x {self.num_nodes} nodes" if self.num_nodes > 1 else ""
        processes = f"{self.processes} process{'es' if self.processes > 1 else ''}{nodes}"
        return (f"device {self.device}, precision {self.precision} ({LIGHTNING_PRECISIONS[self.precision]}), "
                f"{processes}, {self.workers} loader worker{'s' if self.workers != 1 else ''} each")


def resolve_hardware(config: TrainConfig) -> Hardware:
    """The hardware `config` asks for on this machine, "auto" resolved; a ProtlocError if it cannot be had."""
    if config.device.partition(":")[2] and config.devices > 1:
        raise ProtlocError(f"--device {config.device} --devices {config.devices}: cuda:N names one GPU; "
                           f"for {config.devices} processes use --device cuda (GPUs 0 to {config.devices - 1})")
    device = resolve_device(config.device)
    return Hardware(device=device, precision=resolve_precision(config.precision, device), processes=config.devices,
                  num_nodes=config.num_nodes, workers=worker_count(config, device))


def make_trainer(config: TrainConfig, hardware: Hardware, *, max_epochs: int, checkpoint_dir: Path, callbacks: list) -> L.Trainer:
    distributed = hardware.world_size > 1
    strategy = DDPStrategy(process_group_backend="gloo" if hardware.accelerator == "cpu" else "nccl") if distributed else "auto"
    # Best first: the "last" checkpoint written after it then holds its updated state, so a resumed run knows
    # the best score so far. Both save after validation *and* the history callback (train epoch end), so
    # last.ckpt holds the epoch's history row.
    best = RelocatableCheckpoint(
        dirpath=checkpoint_dir, filename=Path(BEST_CHECKPOINT).stem, monitor="val_f1_macro", mode="max", save_top_k=1,
        save_weights_only=True, auto_insert_metric_name=False, enable_version_counter=False, save_on_train_epoch_end=True,
    )
    # Not save_last: Lightning 2.x refreshes last.ckpt only when a top-k checkpoint is saved, i.e. when the
    # score improved; resuming needs every epoch's.
    last = RelocatableCheckpoint(
        dirpath=checkpoint_dir, filename=Path(LAST_CHECKPOINT).stem, monitor=None, save_top_k=1,
        enable_version_counter=False, save_on_train_epoch_end=True,
    )
    run_epochs = config.epochs_frozen + config.epochs
    progress = [RunProgressBar(run_epochs)] if config.show_progress else []
    try:
        return L.Trainer(
            accelerator=hardware.accelerator, devices=hardware.lightning_devices, num_nodes=hardware.num_nodes,
            strategy=strategy, precision=LIGHTNING_PRECISIONS[hardware.precision], max_epochs=max_epochs,
            gradient_clip_val=config.grad_clip or None, gradient_clip_algorithm=config.grad_clip_mode,
            callbacks=[*callbacks, best, last, *progress], logger=False, default_root_dir=checkpoint_dir,
            # Our samplers shard and reshuffle by (seed, epoch) themselves.
            use_distributed_sampler=False, num_sanity_val_steps=0,
            enable_progress_bar=config.show_progress, enable_model_summary=config.verbose,
            plugins=[AtomicCheckpointIO()],
        )
    except MisconfigurationException as error:  # e.g. more --devices than the machine has
        raise ProtlocError(f"--device {config.device} --devices {config.devices} --precision {config.precision}: {error}") from None

