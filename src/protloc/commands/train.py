"""protloc train DATA --out RUN: transfer-learn a localisation classifier (frozen head phase, then fine-tuning).

Each option's dest is the name of its TrainConfig field and its default is the field's: the config is filled
from the parsed options field by field.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from protloc.allocator import use_huge_pages_for_tensors
from protloc.data import BIT_DEPTHS
from protloc.data.workers import MOST_TRAINING_WORKERS, all_cores
from protloc.commands._options import add_cache_options, add_dataset_options, add_device_options, positive_int
from protloc.errors import ProtlocError
from protloc.files import check_output_path
from protloc.runs import (CONFIG_FILE, CURVES_FILE, ENSEMBLE_FILE, FOLDS_FILE, FOLDS_SUMMARY_ROWS, LR_PLOT_FILE, METRICS_FILE,
                          load_config)
# Light at import (no torch, no Lightning): `protloc --help` stays fast.
from protloc.training.config import (
    GRAD_CLIP_MODES, LOSSES, NORMALIZATIONS, OPTIMIZERS, POS_WEIGHTS, SAMPLERS, THRESHOLD_METHODS, VALIDATION_SPLITS, FOLD_SPLITS,
    TrainConfig, option,
)
from protloc.training.resume import RESUMABLE_CHANGES, resumed_config
from protloc.training_data import DATA_KINDS

DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainConfig)}


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: expected 0 or more")
    return value


def add(group, name: str, help: str, **kwargs) -> None:
    """--NAME for the TrainConfig field `name`, its default shown at the end of `help`."""
    group.add_argument(option(name), dest=name, default=DEFAULTS[name], help=f"{help} (default %(default)s)", **kwargs)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a classifier on a labelled dataset",
        # --out is required except with --resume RUN, which argparse cannot say: the usage says it instead.
        usage="protloc train DATA --out RUN [options]\n       protloc train --resume RUN [options]",
        description="Transfer learning from an ImageNet CNN, as the seed notebook does: first only a new head trains "
                    "over the frozen backbone (--epochs-frozen), then the network beyond its first --frozen-stages stages "
                    "(--epochs); each phase follows "
                    "its own one-cycle learning rate, stepped every batch. The epoch with the best validation macro F1 "
                    "is kept and per-class thresholds are tuned on validation. RUN gets config.json, model.safetensors, "
                    "metrics.csv, lr.csv, curves.png, lr.png and checkpoints/ (for --resume).")
    parser.add_argument("data", metavar="DATA", nargs="?", help="labelled dataset: folder or CSV (see --format)")
    parser.add_argument("--out", metavar="RUN", help="run folder to write (required, unless --resume RUN continues a stopped run)")
    add_model_options(parser.add_argument_group("model"))
    add_dataset_options(parser)
    add_data_options(parser.add_argument_group("data"))
    add_recipe_options(parser.add_argument_group("recipe"))
    add_training_device_options(parser)
    add_cache_options(parser)
    parser.set_defaults(handler=run)


def add_model_options(model) -> None:
    add(model, "backbone", "ImageNet backbone: efficientnet_lite0 (weights work offline), resnet18, or any timm or "
                           "torchvision model name")
    model.add_argument("--weights", default=DEFAULTS["weights"], metavar="FILE",
                       help="backbone state dict (.pth or .safetensors) instead of ImageNet weights (default: none)")
    model.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=DEFAULTS["pretrained"],
                       help="start from random weights (default: ImageNet weights)")
    add(model, "dropout", "dropout before the head", type=float)


def add_data_options(data) -> None:
    data.add_argument("--bit-depth", dest="bit_depth", type=int, choices=BIT_DEPTHS, default=DEFAULTS["bit_depth"],
                      help="intensity scale of the images: 16-bit files holding 12-bit camera data (0..4095) are 12; "
                           "stored in the run and applied to every image it reads (default: detected from a sample "
                           "of the training images)")
    data.add_argument("--image-size", dest="image_size", type=int, default=DEFAULTS["image_size"],
                      help="square input size in pixels (default: the backbone's, 224 for efficientnet_lite0)")
    add(data, "validation_split", "a single run's split: mask (each image independently, like the seed), random (exact "
                                  "size, like train_test_split) or stratified (multi-label stratified)",
        choices=VALIDATION_SPLITS)
    add(data, "val_fraction", "share of images for validation", type=float)
    add(data, "folds", "K >= 2: K-fold cross-validation, RUN/fold-0 ... fold-K-1, then RUN is the folds' ensemble "
                       "(mean probability, thresholds tuned out-of-fold; RUN/ensemble.json, folds.csv); 1: one split",
        type=positive_int)
    add(data, "fold_split", "how --folds K assigns images to folds, whatever --validation-split says: stratified "
                            "(iterative multi-label stratification) or random (a shuffled K-fold)", choices=FOLD_SPLITS)
    add(data, "normalize", "input mean/std: the backbone's, or measured per channel on the training images",
        choices=NORMALIZATIONS)
    add(data, "data_kind", "what the training images are, as config.json records it and predict, the page and the "
                           "report say: demo (generated by protloc demo-data), real, or auto: demo where the folder "
                           "holds the demo-data.json that protloc demo-data writes", choices=("auto", *DATA_KINDS))


def add_recipe_options(recipe) -> None:
    add(recipe, "seed", "seed of the split, the head, shuffling and augmentation", type=int)
    add(recipe, "epochs_frozen", "epochs training only the head, backbone frozen", type=count)
    add(recipe, "epochs", "epochs training everything, after the frozen ones", type=count)
    add(recipe, "lr_frozen", "peak one-cycle learning rate of the frozen phase", type=float)
    add(recipe, "lr", "peak one-cycle learning rate of fine-tuning", type=float)
    add(recipe, "optimizer", "adam (as the seed) or adamw", choices=OPTIMIZERS)
    add(recipe, "weight_decay", "the optimiser's weight decay", type=float)
    add(recipe, "grad_clip", "gradient clipping threshold (the seed's: 0.1); 0 = off", type=float)
    add(recipe, "grad_clip_mode", "clip each gradient value (the seed) or the gradients' total norm", choices=GRAD_CLIP_MODES)
    add(recipe, "loss", "binary cross-entropy or focal loss", choices=LOSSES)
    add(recipe, "pos_weight", "auto: weight each class's positives by negatives/positives on the training split",
        choices=POS_WEIGHTS)
    add(recipe, "sampler", "uniform: each training image once per epoch; rare: draw images of rare classes more often "
                           "(weight: (largest class count / rarest label's count) ** 0.5)", choices=SAMPLERS)
    add(recipe, "threshold_method", "per-class thresholds tuned on validation: f1 (each class's best F1, pulled "
                                    "towards 0.5 by few positives) or class-ratio (each class labelled on as many "
                                    "validation images as its share of training images)", choices=THRESHOLD_METHODS)
    add(recipe, "augment_resolution", "augmentation crops training images at their own resolution, kept (and cached) "
                                      "at up to this many times --image-size: small compartments keep their pixels "
                                      "in a zoomed crop; 1: crop from the copy at --image-size", type=float)
    recipe.add_argument("--frozen-stages", dest="frozen_stages", type=int, metavar="N", default=DEFAULTS["frozen_stages"],
                        help="fine-tuning leaves the backbone's first N stages as ImageNet trained them, the stem "
                             "counting as the first: a step skips their backward pass; 0 = fine-tune everything "
                             "(default: the backbone's, 4 for efficientnet_lite0 = its stem and blocks 0-2, 0 for others)")
    add(recipe, "crop_scale", "the smallest share of the image's area a random resized crop keeps: crops zoom in, so "
                              "objects look up to 1/sqrt(this) times larger in training than at evaluation", type=float)
    add(recipe, "head_only_features", "train the frozen phase's head on the backbone's features, computed once per "
                                      "image without augmentation (and kept in the image cache): that phase then takes "
                                      "seconds", action="store_true")


def add_training_device_options(parser) -> None:
    group = add_device_options(parser, batch_size=DEFAULTS["batch_size"], workers=DEFAULTS["workers"], help_texts={
        "precision": "auto: bf16 on GPUs that have it (else fp16), fp32 on the CPU, where bf16 trained no faster "
                     "even with native bf16 (default %(default)s)",
        "batch_size": "images per batch and process (default %(default)s)",
        "workers": "DataLoader processes per training process (default: none on the CPU with the image cache, where "
                   f"loading runs between steps; else min({MOST_TRAINING_WORKERS}, CPUs) = "
                   f"{min(MOST_TRAINING_WORKERS, all_cores())})",
    })
    add(group, "devices", "processes per node, one per device; 2 or more train with DDP (gloo on the CPU)", type=positive_int)
    add(group, "num_nodes", "machines for DDP, each running this command under a launcher that sets MASTER_ADDR, "
                             "MASTER_PORT and NODE_RANK (torchrun, SLURM)", type=positive_int)
    group.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN",
                        help="continue a stopped run from its last checkpoint: `protloc train --resume RUN` (its data and "
                             "options are read back from RUN), or the same command again plus --resume; only --stop-after, "
                             "--device, --precision, --workers, --devices, --num-nodes and the cache options may change "
                             "(default: a new run)")
    group.add_argument("--stop-after", dest="stop_after", type=positive_int, default=DEFAULTS["stop_after"], metavar="EPOCHS",
                        help="stop after this many epochs of the run (frozen + fine-tuning); --resume continues it "
                             "exactly (default: train to the end)")
    group.add_argument("--verbose", action="store_true", default=DEFAULTS["verbose"],
                        help="also show Lightning's own messages: device banners, model summaries (default: one line "
                             "per run naming the device, precision, processes and workers)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig) if hasattr(args, field.name)}
    return TrainConfig(**{**values, "resume": bool(args.resume)})


def resumed_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """`--resume RUN`: the stopped run's own options, with the ones that may change taken from the command line."""
    changes = {name: getattr(args, name) for name in RESUMABLE_CHANGES if name not in ("out", "resume") and hasattr(args, name)}
    return resumed_config(Path(args.resume), **changes)


def run(args: argparse.Namespace) -> int:
    # Before torch loads, which reads the switch once (allocator.use_huge_pages_for_tensors). Torch and Lightning
    # load only when training starts.
    use_huge_pages_for_tensors()
    from protloc.training.trainer import rank
    from protloc.training.train import train

    if isinstance(args.resume, str):
        config = resumed_config_from_args(args)
    elif not args.data or not args.out:
        raise ProtlocError("protloc train needs DATA and --out RUN (or --resume RUN to continue a stopped run)")
    else:
        config = config_from_args(args)
    check_output_path(config.out, folder=True, inputs=[config.data], makes_run=True)
    out = train(config)
    if rank() != 0:
        return 0
    if config.folds >= 2:
        print_folds(Path(out))
    else:
        print_run(Path(out), config)
    return 0


def print_run(run_dir: Path, config: TrainConfig) -> None:
    if not (run_dir / CONFIG_FILE).is_file():
        print(f"stopped after epoch {config.stop_after}; continue with: protloc train --resume {run_dir}")
        return
    training = load_config(run_dir).training
    speed = ", ".join(f"{phase} {value:.1f}" for phase, value in training.images_per_second.items())
    print(f"run: {run_dir} (config.json, model.safetensors)")
    print(f"plots: {run_dir / CURVES_FILE}, {run_dir / LR_PLOT_FILE}; per-epoch scores: {run_dir / METRICS_FILE}")
    print(f"best epoch {training.best_epoch} ({training.best_phase}); macro F1 on the validation images (the mean "
          f"over classes of each class's F1, 0 to 1), images labelled as predict labels them (at least one label each):")
    print(f"  {training.val_tuned['f1_macro']:.4f} with each class's threshold tuned on these images")
    print(f"  {training.val_at_05['f1_macro']:.4f} with every threshold at 0.5 (metrics.csv's val_f1_macro, which "
          f"picked the epoch)")
    print(f"  both in-sample: these {training.n_val} images picked the epoch and tuned the thresholds, so they flatter "
          f"the model; protloc evaluate on held-out images, or train --folds K (out-of-fold), gives honest scores")
    print(f"training speed (images/s, training loop only): {speed}")


def print_folds(out: Path) -> None:
    import pandas as pd  # here, not for --help

    path = out / FOLDS_FILE
    if not (out / ENSEMBLE_FILE).is_file():
        print(f"stopped; continue with: protloc train --resume {out}")
        return
    folds = pd.read_csv(path, dtype={"fold": str}).set_index("fold")
    for fold, row in folds.drop(index=list(FOLDS_SUMMARY_ROWS)).iterrows():
        print(f"fold {fold}: best val macro F1 {row['best_val_f1_macro']:.4f} (epoch {int(row['best_epoch'])}), "
              f"{row['val_f1_macro_tuned']:.4f} at its thresholds (both in-sample) -> {row['run']}")
    mean, spread, pooled = (folds.loc[name] for name in FOLDS_SUMMARY_ROWS)
    print(f"mean val macro F1 over {len(folds) - len(FOLDS_SUMMARY_ROWS)} folds: {mean['best_val_f1_macro']:.4f} +/- "
          f"{spread['best_val_f1_macro']:.4f} (in-sample: each fold's images picked its epoch); summary: {path}")
    print(f"out-of-fold macro F1 of all {int(pooled['images'])} images: {pooled['val_f1_macro_at_0.5']:.4f} at 0.5, "
          f"{pooled['val_f1_macro_cross_fitted']:.4f} at thresholds tuned on the other folds (the honest figure with "
          f"tuning), {pooled['val_f1_macro_oof_thresholds']:.4f} at the ensemble's thresholds (in-sample: tuned on them)")
    print(f"model: {out} (the mean of the folds' probabilities; {ENSEMBLE_FILE} holds its thresholds), for predict, "
          f"evaluate, explain, export, serve and protloc.load")
