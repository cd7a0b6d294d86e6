"""protloc train DATA --out RUN: transfer-learn a localisation classifier (frozen head phase, then fine-tuning)."""
from __future__ import annotations

import argparse
import os

from protloc.commands._options import add_dataset_options
# Light at import (no torch, no Lightning): `protloc --help` stays fast.
from protloc.training.train import (
    ACCELERATORS, GRAD_CLIP_MODES, LOSSES, NORMALIZATIONS, OPTIMIZERS, POS_WEIGHTS, PRECISIONS, SPLITS, TrainConfig,
)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected 1 or more")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: expected 0 or more")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a classifier on a labelled dataset",
        description="Transfer learning from an ImageNet CNN, as the seed notebook does: first only a new head trains "
                    "over the frozen backbone (--epochs-frozen), then the whole network (--epochs); each phase follows "
                    "its own one-cycle learning rate, stepped every batch. The epoch with the best validation macro F1 "
                    "is kept and per-class thresholds are tuned on validation. RUN gets config.json, model.safetensors, "
                    "metrics.csv, lr.csv, curves.png, lr.png and checkpoints/ (for --resume).")
    d = TrainConfig  # the defaults live in the dataclass, typed once
    parser.add_argument("data", nargs="?", help="labelled dataset: folder or CSV (see --format)")
    parser.add_argument("--out", metavar="RUN", help="run folder to write")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=d.backbone,
                       help="ImageNet backbone: efficientnet_lite0 (weights work offline), resnet18, or any timm or "
                            "torchvision model name (default %(default)s)")
    model.add_argument("--weights", default=None, metavar="FILE", help="backbone state dict (.pth or .safetensors) instead of ImageNet weights")
    model.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="start from random weights")
    model.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the head (default %(default)s)")
    add_dataset_options(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--bit-depth", type=int, choices=(8, 12, 16), default=None,
                      help="intensity scale of the images: 16-bit files holding 12-bit camera data (0..4095) are 12; "
                           "stored in the run and applied to every image it reads (default: detected from a sample of "
                           "the training images)")
    data.add_argument("--image-size", type=int, default=None, help="square input size in pixels (default: the backbone's, 224 for efficientnet_lite0)")
    data.add_argument("--split", choices=SPLITS, default=d.split,
                      help="validation split: mask (each image independently, like the seed), random (exact size, like "
                           "train_test_split) or stratified (multi-label stratified) (default %(default)s)")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of images for validation (default %(default)s)")
    data.add_argument("--folds", type=positive_int, default=d.folds,
                      help="K >= 2: K-fold cross-validation, RUN/fold-0 ... fold-K-1 and RUN/folds.csv (default 1: one split)")
    data.add_argument("--normalize", choices=NORMALIZATIONS, default=d.normalize,
                      help="input mean/std: the backbone's, or measured per channel on the training images (default %(default)s)")
    data.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="images per batch and device (default %(default)s)")
    data.add_argument("--workers", type=count, default=None, help=f"DataLoader worker processes (default min(4, CPUs) = {min(4, os.cpu_count() or 1)})")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--seed", type=int, default=d.seed, help="seed of the split, the head, shuffling and augmentation (default %(default)s)")
    recipe.add_argument("--epochs-frozen", type=count, default=d.epochs_frozen, help="epochs training only the head, backbone frozen (default %(default)s)")
    recipe.add_argument("--epochs", type=count, default=d.epochs, help="epochs training everything, after the frozen ones (default %(default)s)")
    recipe.add_argument("--lr-frozen", type=float, default=d.lr_frozen, help="peak one-cycle learning rate of the frozen phase (default %(default)s)")
    recipe.add_argument("--lr", type=float, default=d.lr, help="peak one-cycle learning rate of fine-tuning (default %(default)s)")
    recipe.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="default %(default)s, as the seed")
    recipe.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default %(default)s")
    recipe.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient clipping threshold, 0 = off (default %(default)s, as the seed)")
    recipe.add_argument("--grad-clip-mode", choices=GRAD_CLIP_MODES, default=d.grad_clip_mode,
                        help="clip each gradient value (the seed) or the gradients' total norm (default %(default)s)")
    recipe.add_argument("--loss", choices=LOSSES, default=d.loss, help="default %(default)s")
    recipe.add_argument("--pos-weight", choices=POS_WEIGHTS, default=d.pos_weight,
                        help="auto: weight each class's positives by negatives/positives on the training split (default %(default)s)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--accelerator", choices=ACCELERATORS, default=d.accelerator, help="default %(default)s: a GPU if there is one")
    engine.add_argument("--devices", type=positive_int, default=d.devices, help="devices (processes) per node; 2 or more trains with DDP (default %(default)s)")
    engine.add_argument("--num-nodes", type=positive_int, default=d.num_nodes, help="machines for DDP, each running this command under a launcher that sets MASTER_ADDR, "
                             "MASTER_PORT and NODE_RANK (torchrun, SLURM) (default %(default)s)")
    engine.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="auto: bf16-mixed on GPUs that have it (else 16-mixed) and on CPUs with native bf16; 32-true elsewhere")
    engine.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                        help="continue a stopped run from its last checkpoint: `protloc train --resume RUN` (its data and "
                             "options are read back from RUN), or the same command again plus --resume; only --stop-after, "
                             "--workers, --devices, --num-nodes, --accelerator and --precision may change")
    engine.add_argument("--stop-after", type=positive_int, default=None, metavar="EPOCHS",
                        help="stop after this many epochs of the run (frozen + fine-tuning); --resume continues it exactly")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data, out=args.out, backbone=args.backbone, weights=args.weights, pretrained=args.pretrained,
        layout=args.format, labels=args.labels, channels=args.channels, bit_depth=args.bit_depth,
        image_size=args.image_size,
        split=args.split, val_fraction=args.val_fraction, seed=args.seed, folds=args.folds, normalize=args.normalize,
        epochs_frozen=args.epochs_frozen, epochs=args.epochs, lr_frozen=args.lr_frozen, lr=args.lr,
        optimizer=args.optimizer, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        grad_clip_mode=args.grad_clip_mode, loss=args.loss, pos_weight=args.pos_weight, batch_size=args.batch_size,
        workers=args.workers, dropout=args.dropout, devices=args.devices, num_nodes=args.num_nodes,
        accelerator=args.accelerator, precision=args.precision, resume=bool(args.resume), stop_after=args.stop_after,
    )


def resumed_config(args: argparse.Namespace) -> TrainConfig:
    """`--resume RUN`: the stopped run's own options, with the ones that may change taken from the command line."""
    import dataclasses
    from pathlib import Path

    from protloc.errors import ProtlocError
    from protloc.training.train import read_recipe, recipe_path

    run_dir = Path(args.resume)
    recipe = read_recipe(run_dir) or read_recipe(run_dir / "fold-0")
    if recipe is None:
        raise ProtlocError(f"--resume {run_dir}: holds no stopped run (expected {recipe_path(run_dir)} from protloc train --out {run_dir})")
    saved = {key: value for key, value in recipe["config"].items() if key in {f.name for f in dataclasses.fields(TrainConfig)}}
    changes = {"resume": True, "out": str(run_dir), "stop_after": args.stop_after, "devices": args.devices,
               "num_nodes": args.num_nodes, "accelerator": args.accelerator, "precision": args.precision}
    if args.workers is not None:
        changes["workers"] = args.workers
    return dataclasses.replace(TrainConfig(**saved), **changes)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from protloc.errors import ProtlocError
    from protloc.training.train import rank, train

    if isinstance(args.resume, str):
        config = resumed_config(args)
    elif not args.data or not args.out:
        raise ProtlocError("protloc train needs DATA and --out RUN (or --resume RUN to continue a stopped run)")
    else:
        config = config_from_args(args)
    out = train(config)
    if rank() != 0:
        return 0
    if config.folds >= 2:
        print_folds(Path(out))
    else:
        print_run(Path(out), config)
    return 0


def print_run(run_dir, config) -> None:
    from protloc.runs import CONFIG_FILE, load_config
    from protloc.training.train import CURVES_FILE, LR_PLOT_FILE, METRICS_FILE

    if not (run_dir / CONFIG_FILE).is_file():
        print(f"stopped after epoch {config.stop_after}; continue with: protloc train --resume {run_dir}")
        return
    training = load_config(run_dir).training
    speed = ", ".join(f"{phase} {value:.1f}" for phase, value in training["images_per_second"].items())
    print(f"run: {run_dir} (config.json, model.safetensors)")
    print(f"plots: {run_dir / CURVES_FILE}, {run_dir / LR_PLOT_FILE}; per-epoch scores: {run_dir / METRICS_FILE}")
    print(f"best epoch {training['best_epoch']} ({training['best_phase']}): val macro F1 "
          f"{training['val_at_0.5']['f1_macro']:.4f} at 0.5; labelled as predict does, "
          f"{training['val_at_0.5_predicted']['f1_macro']:.4f} at 0.5 and {training['val_tuned']['f1_macro']:.4f} with tuned thresholds")
    print(f"training speed (images/s, training loop only): {speed}")


def print_folds(out) -> None:
    import pandas as pd

    from protloc.training.train import FOLDS_FILE

    path = out / FOLDS_FILE
    if not path.is_file():
        print(f"stopped; continue with the same command plus --resume (runs in {out})")
        return
    folds = pd.read_csv(path)
    for row in folds.itertuples():
        print(f"fold {row.fold}: best val macro F1 {row.best_val_f1_macro:.4f} (epoch {row.best_epoch}) -> {row.run}")
    scores = folds["best_val_f1_macro"]
    print(f"mean val macro F1 over {len(folds)} folds: {scores.mean():.4f} +/- {scores.std(ddof=0):.4f}; summary: {path}")
