"""Prediction in several processes, one per device, on one machine or many: Lightning's `Trainer.predict` under
the DDP strategy that training uses (gloo on the CPU, NCCL on GPUs).

Every process runs the same command. On one machine Lightning's launcher starts the other processes by running
the command line again; on a cluster a launcher (torchrun, srun) starts them all (docs/cluster.md). Each process
loads the run on its own device and predicts every world_size-th image of the table (Lightning's unrepeated
distributed sampler: no image twice, none left out), with the same engine, precision and batches as one process
would use. `ShareWriter`, a prediction writer, leaves each process's rows in an exchange folder; after a barrier,
process 0 reads them all back into input order and the others are done (they return None).

The exchange folder must be one that every process sees: beside the output (`exchange_folder`), which on a
cluster is a shared file system, as the images already are. Shares are .npz files of numbers and strings, read
with allow_pickle=False.

One process (--devices 1 --num-nodes 1) never comes here: it predicts in its own loop (predictor.py), without
Lightning's start-up.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset

from protloc.allocator import freed_memory_kept_for_batches
from protloc.devices import resolve_device
from protloc.errors import ProtlocError
from protloc.files import atomic_path
from protloc.inference.rows import RowCollector, named_outputs
from protloc.lightning_quiet import expected_warnings_ignored, lightning_output

SHARE_NAME = "rank-{rank}.npz"
OUTPUT_PREFIX = "output_"  # a share's arrays of per-image outputs: output_NAME
PIECE_PREFIX = "piece_"  # and of parts of images (cells), piece_row naming each one's image: piece_NAME


def exchange_folder(out: str | Path) -> Path:
    """Where the processes of a prediction writing `out` leave their shares: a hidden folder beside it."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.ranks"


class ShareWriter(BasePredictionWriter):
    """Keeps this process's rows and, at the end of the epoch, writes them to `folder`/rank-N.npz (a temporary
    file, then a rename), waits for every process to have written its own, and on process 0 reads them all into
    `collected`, a RowCollector over the table's `rows` rows."""

    def __init__(self, folder: Path, rows: int, *, width: int | None = None, show_progress: bool = False,
                 desc: str = "predict"):
        super().__init__(write_interval="batch")
        self.folder = folder
        self.total = rows
        self.width = width
        self.show_progress = show_progress
        self.desc = desc
        self.collected: RowCollector | None = None
        self.rows: list[np.ndarray] = []
        self.arrays: dict[str, list[np.ndarray]] = {}
        self.pieces: dict[str, list[np.ndarray]] = {}
        self.problems: list[str] = []
        self.bar = None

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.show_progress:
            from protloc.progress import progress_bar

            share = len(range(0, self.total, trainer.world_size))
            self.bar = progress_bar(total=share, desc=f"{self.desc} (process 1 of {trainer.world_size})", unit="img",
                                    leave=False)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        """`prediction`: (rows, per-row arrays, problems[, parts' arrays with their "row"])."""
        batch_rows, outputs, problems, *parts = prediction
        self.rows.append(np.asarray(batch_rows, dtype=np.int64))
        for name, values in outputs.items():
            self.arrays.setdefault(name, []).append(np.asarray(values))
        for name, values in (parts[0] if parts else {}).items():
            self.pieces.setdefault(name, []).append(np.asarray(values))
        self.problems.extend(problems)
        if self.bar is not None:
            self.bar.update(len(batch_rows))

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        share = {"rows": np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64),
                 "problems": np.array(self.problems, dtype=str), "total": np.array(self.total)}
        share.update({f"{OUTPUT_PREFIX}{name}": np.concatenate(parts) for name, parts in self.arrays.items()})
        share.update({f"{PIECE_PREFIX}{name}": np.concatenate(parts) for name, parts in self.pieces.items()})
        with atomic_path(self.folder / SHARE_NAME.format(rank=trainer.global_rank)) as temp, open(temp, "wb") as file:
            np.savez(file, **share)
        trainer.strategy.barrier("protloc-shares-written")
        if trainer.is_global_zero:
            self.collected = read_shares(self.folder, trainer.world_size, self.total, self.width)
            shutil.rmtree(self.folder, ignore_errors=True)


def read_shares(folder: Path, world_size: int, rows: int, width: int | None = None) -> RowCollector:
    """Every process's share, each row at its place; a ProtlocError when one is missing or does not fit."""
    collected = RowCollector(rows, width)
    for rank in range(world_size):
        path = folder / SHARE_NAME.format(rank=rank)
        try:
            with np.load(path, allow_pickle=False) as share:
                if int(share["total"]) != rows:
                    raise ProtlocError(f"{path}: a share of {int(share['total'])} images, not {rows} (left by another "
                                       f"prediction writing the same output?)")
                arrays = {name[len(OUTPUT_PREFIX):]: share[name] for name in share.files if name.startswith(OUTPUT_PREFIX)}
                collected.add(share["rows"], arrays, share["problems"].tolist())
                pieces = {name[len(PIECE_PREFIX):]: share[name] for name in share.files if name.startswith(PIECE_PREFIX)}
                if pieces:
                    collected.add_pieces(pieces)
        except FileNotFoundError:
            raise ProtlocError(f"{path}: process {rank} left no predictions; every process needs to see the folder of "
                               f"--out (on several machines: a shared file system)") from None
    if not collected.seen.all():
        raise ProtlocError(f"{folder}: the processes' shares leave {int((~collected.seen).sum())} of {rows} images out")
    return collected


class BatchModule(L.LightningModule):
    """predict_step: `run_batch` (an engine) on a batch's images. The batch stays where the loader left it, as
    the engine moves images to its device itself, exactly as in one process."""

    def __init__(self, run_batch: Callable):
        super().__init__()
        self.run_batch = run_batch

    def predict_step(self, batch, batch_idx):
        images, _targets, rows, problems = batch
        outputs = named_outputs(self.run_batch(images))
        return rows, {name: values.cpu() for name, values in outputs.items()}, list(problems)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch


class ItemModule(L.LightningModule):
    """predict_step: `run_item` on one row of a table, for work done image by image (the cells of an image);
    `run_item(row)` -> (arrays of the row's parts, one entry each, or {}; a problem, or "")."""

    def __init__(self, run_item: Callable):
        super().__init__()
        self.run_item = run_item

    def predict_step(self, row, batch_idx):
        parts, problem = self.run_item(row)
        count = len(next(iter(parts.values()))) if parts else 0
        return np.array([row]), {}, [problem], {**parts, "row": np.full(count, row, dtype=np.int64)} if parts else {}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch


def _the_item(items: list):
    return items[0]


class Ranks:
    """`devices` processes on each of `num_nodes` machines, predicting one table together through Lightning.

    Made in every process with the same arguments, before the run is loaded: `device` then names this process's
    own device ("cpu", or "cuda:N" for its local rank) for load_predictor. `exchange` is the folder for the
    shares (exchange_folder of the output). Raises ProtlocError for what cannot run, before any work: several
    machines without a launcher (which would wait for them forever), cuda:N with several devices, more devices
    than there are.

    A distributed launch is the whole process's: Lightning sets its environment (MASTER_ADDR, MASTER_PORT,
    LOCAL_RANK, WORLD_SIZE...) and torch's thread count, and starts the other processes of a machine by running
    its command line again. So it is for the CLI, or a script run as one process per device, not for a library
    caller inside a larger program."""

    def __init__(self, devices: int = 1, num_nodes: int = 1, *, device: str = "auto", exchange: str | Path):
        if devices < 1 or num_nodes < 1:
            raise ProtlocError(f"--devices {devices} --num-nodes {num_nodes}: expected 1 or more of each")
        if device.partition(":")[2] and devices > 1:
            raise ProtlocError(f"--device {device} --devices {devices}: cuda:N names one GPU; for {devices} processes "
                               f"use --device cuda (GPUs 0 to {devices - 1})")
        self.devices = devices
        self.num_nodes = num_nodes
        self.exchange = Path(exchange)
        self.kind = resolve_device(device)
        self.trainer = self._make_trainer()

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def _make_trainer(self):
        gpu = self.kind.startswith("cuda")
        index = self.kind.partition(":")[2]
        with lightning_output(verbose=False), expected_warnings_ignored():
            try:
                trainer = L.Trainer(
                    accelerator="gpu" if gpu else "cpu", devices=[int(index)] if index else self.devices,
                    num_nodes=self.num_nodes, strategy=DDPStrategy(process_group_backend="nccl" if gpu else "gloo"),
                    # The engine applies the run's precision itself, exactly as in one process.
                    precision="32-true", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=self.exchange,
                )
            # More --devices than the machine has; under srun, --devices or --num-nodes that are not the job's tasks
            # per node and nodes (Lightning's SLURM checks raise ValueError and RuntimeError).
            except (MisconfigurationException, ValueError, RuntimeError) as error:
                raise ProtlocError(f"--device {self.kind} --devices {self.devices} --num-nodes {self.num_nodes}: "
                                   f"{error}") from None
        check_launch(trainer.strategy.cluster_environment, self.devices, self.num_nodes)
        return trainer

    @property
    def device(self) -> str:
        """This process's device: "cpu", or "cuda:N" (N its local rank)."""
        return str(self.trainer.strategy.root_device)

    @property
    def threads(self) -> int:
        """Compute threads per process, for ONNX Runtime: $OMP_NUM_THREADS where the launcher set it (torchrun
        does), else the machine's cores shared out among its processes, as Lightning sets torch's."""
        text = os.environ.get("OMP_NUM_THREADS", "")
        if text.isdigit() and int(text) > 0:
            return int(text)
        return max(1, len(os.sched_getaffinity(0)) // self.devices)

    def run_batches(self, run_batch: Callable, dataset: Dataset, *, width: int | None, batch_size: int, workers: int,
                    show_progress: bool, desc: str) -> RowCollector | None:
        """`run_batch` over this process's share of `dataset`; on process 0 every process's rows, in `dataset`
        order; None on the others."""
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, persistent_workers=False)
        return self._predict(BatchModule(run_batch), loader, len(dataset), width=width, batch_size=batch_size,
                             show_progress=show_progress, desc=desc)

    def _predict(self, module: L.LightningModule, loader: DataLoader, rows: int, *, width: int | None, batch_size: int,
                 show_progress: bool, desc: str) -> RowCollector | None:
        writer = ShareWriter(self.exchange, rows, width=width, show_progress=show_progress, desc=desc)
        self.trainer.callbacks.append(writer)
        share = -(-rows // self.world_size)
        try:
            with lightning_output(verbose=False), expected_warnings_ignored(), \
                    freed_memory_kept_for_batches(share, batch_size):
                # --workers is the user's choice, as in one process.
                warnings.filterwarnings("ignore", message=r".*does not have many workers")
                self.trainer.predict(module, loader, return_predictions=False)
        finally:
            self.trainer.callbacks.remove(writer)
        return writer.collected if self.trainer.is_global_zero else None

    def run_each(self, run_item: Callable, rows: int, *, show_progress: bool, desc: str) -> RowCollector | None:
        """`run_item` (see ItemModule) on this process's share of rows 0..rows-1; on process 0 every row's problem
        and parts (RowCollector.pieces_by_row), None on the others."""
        loader = DataLoader(list(range(rows)), batch_size=1, shuffle=False, collate_fn=_the_item)
        return self._predict(ItemModule(run_item), loader, rows, width=None, batch_size=1, show_progress=show_progress,
                             desc=desc)


def check_launch(cluster_environment, devices: int, num_nodes: int) -> None:
    """Before any work, what Lightning would otherwise find only once it launches (a traceback) or never (a hang):
    --devices and --num-nodes that are not srun's tasks per node and nodes; several machines without a launcher on
    each (torchrun, srun, or MASTER_ADDR and NODE_RANK set by hand), where Lightning would start this machine's
    processes and wait for the others forever. (Under torchrun or srun Lightning reads their variables, not those
    of its own environment, whose node rank may also come as GROUP_RANK.)"""
    try:
        cluster_environment.validate_settings(num_devices=devices, num_nodes=num_nodes)
    except ValueError as error:
        raise ProtlocError(f"--devices {devices} --num-nodes {num_nodes}: {error}") from None
    if num_nodes < 2 or type(cluster_environment) is not LightningEnvironment:
        return
    missing = [name for name in ("MASTER_ADDR", "NODE_RANK") if name not in os.environ]
    if missing == ["NODE_RANK"] and "GROUP_RANK" in os.environ:
        missing = []
    if missing:
        raise ProtlocError(f"--num-nodes {num_nodes}: no launcher found ({' and '.join(missing)} not set); start the "
                           f"command on every machine with torchrun or srun (see docs/cluster.md), or run on one "
                           f"machine without --num-nodes")


