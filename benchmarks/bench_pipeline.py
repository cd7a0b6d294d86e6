"""protloc's training and prediction speed against what this machine allows and against the seed's loop.

    python benchmarks/bench_pipeline.py [--n 128] [--scale 4] [--image-size 224] [--batch-size 32]

One run, side by side, on generated 512 px PNGs (kept in --data-dir for the next run):
  - limits: the same model and step on tensors already in memory (a fine-tuning epoch of as many steps as
    protloc's, its first step included; forward only), measured
    just before and just after the training run the table reports (in a new process, as protloc trains), and
    just before and just after prediction (in this process, where prediction is timed); each row uses the two
    beside it; PNG decoding + resizing on all cores, and ONNX Runtime's forward;
  - the seed-style loop: PIL decode and torchvision transforms on the 512 px image at every step, fp32, in a
    process of its own as protloc's runs are, with PyTorch's and glibc's memory defaults as the notebook ran
    (benchmarks/_seed_style.py);
  - protloc: `protloc train` at scale*N images (--epochs-frozen 2 --epochs 1) --rounds times on a fresh image
    cache each (the cold runs: the pre-training check fills it), then --rounds times on the first one's cache (the
    warm runs); then --rounds runs at N images, --rounds with --head-only-features (memory sampled), and
    prediction, cold (decoding, a fresh cache each pass) and warm (cache), torch and ONNX, --rounds passes each;
  - per cell: seconds per 512 px image to segment it (protloc segment), to label its cells (predict --cells
    with masks given) and, beside them, to label the image (predict), with the run the table trained (or
    --cells-run RUN alone, skipping the rest).
Every row is the median of --rounds measurements with its spread (half the range), each limit the mean of its
measurements before and after the work (both printed). Beside each training run the summary prints what else
moved: the kernel's direct compactions during it, the share of its CPU time spent in the kernel, and the load.
Prints a markdown table. A GPU section follows when CUDA is present.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import _limits as limits  # noqa: E402
import _report as report  # noqa: E402
import _runs as runs  # noqa: E402
from protloc.allocator import allow_malloc_settings, use_huge_pages_for_tensors  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128, help="images of the small run (N); default %(default)s")
    parser.add_argument("--scale", type=int, default=4, help="the large run has scale*N images; default %(default)s")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--data-dir", default="data/benchmark", help="generated images, reused while they match")
    parser.add_argument("--steps", type=int, default=4, help="fine-tune steps per limit measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements of each row (training runs, prediction passes...), whose median and "
                             "spread it reports; default %(default)s")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX Runtime rows")
    parser.add_argument("--cells-images", type=int, default=16, help="images of the per-cell rows; default %(default)s")
    parser.add_argument("--cells-run", default=None, metavar="RUN",
                        help="only the per-cell rows, with this run (no training)")
    return parser.parse_args()


def prepare_data(folder: Path, n: int, scale: int) -> tuple[Path, Path]:
    """(small, large) Zero-to-GANs folders; the small one's train.csv lists the first n of the large one's images."""
    from protloc.data.synthetic import write_demo_dataset

    large, small = folder / "large", folder / "small"
    stamp = {"n_train": n * scale, "size": 512, "seed": 0}
    stamp_file = folder / "benchmark.json"
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating {n * scale} PNGs of 512 px in {large} (once) ...", flush=True)
        write_demo_dataset(large, n_train=n * scale, n_test=0, size=512, seed=0, show_progress=False)
        small.mkdir(parents=True)
        lines = (large / "train.csv").read_text().splitlines()
        (small / "train.csv").write_text("\n".join(lines[: n + 1]) + "\n")
        (small / "train").symlink_to((large / "train").resolve())
        stamp_file.write_text(json.dumps(stamp))
    return small, large


def measure_limits(args) -> dict:
    """The limits in this process: beside prediction, which the benchmark times in this process too."""
    return limits.measure(args.backbone, args.batch_size, args.image_size, args.steps)


def measure_limits_in_new_process(args, epoch_steps: int) -> dict:
    """The limits in a new process, as `protloc train` runs: beside the training rows. In this long-lived process
    they rise as its heap grows (the fine-tune step from 9.8 to 12.3 images/s within one run), which a new
    process never sees. Fine-tuning runs as an epoch of `epoch_steps` steps, its first included, as protloc's
    fine-tuning epoch is timed (_limits.measure), and with huge pages for tensors, as protloc trains."""
    command = [sys.executable, str(Path(__file__).parent / "_limits.py"), "--backbone", args.backbone,
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--steps", str(args.steps),
               "--epoch-steps", str(epoch_steps)]
    environment = dict(os.environ)
    use_huge_pages_for_tensors(environment)  # as `protloc train` sets it for its own process
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])


def training_steps_per_epoch(args, data: Path) -> int:
    """Optimiser steps in an epoch of `protloc train DATA` with its default validation split (ragged end dropped)."""
    from protloc.data.readers import read_dataset
    from protloc.training.config import TrainConfig
    from protloc.training.splits import make_split

    config = TrainConfig(data=str(data), out="")
    train_rows, _ = make_split(config.validation_split, read_dataset(data, split="train").targets, config.val_fraction,
                               config.seed)
    return len(train_rows) // args.batch_size


def mean_of(*measurements: dict) -> dict:
    """Each limit averaged over the measurements taken just before and just after the work it is compared with:
    this machine's speed drifts over minutes, and in the benchmark's process the limits rise as its heap grows
    (the forward pass about twice as fast once glibc keeps freed memory; benchmarks/RESULTS.md, "Speed at real scale"), so a
    limit measured at another time, or the best of several, would compare unlike moments."""
    return {key: sum(m[key] for m in measurements) / len(measurements) for key in measurements[0]}


def measure_seed_style(args, small: Path, work: Path) -> dict:
    """The seed-style loop on the N images, --rounds times, each in a new process (benchmarks/_seed_style.py):
    {"frozen": (median, spread), "finetune": (median, spread)}."""
    command = [sys.executable, str(Path(__file__).parent / "_seed_style.py"), str(small), "--image-size",
               str(args.image_size), "--batch-size", str(args.batch_size), "--backbone", args.backbone]
    found = []
    for index in range(args.rounds):
        log = work / f"seed-style-{index}.log"
        runs.run_measured(command, log, sample_memory=False)
        found.append(next(json.loads(line) for line in reversed(log.read_text().splitlines()) if line.startswith("{")))
    return runs.medians(found)


def training_settings(args) -> dict:
    return dict(image_size=args.image_size, batch_size=args.batch_size, epochs_frozen=2, epochs=1)


def measure_large_run(args, large: Path, work: Path) -> dict:
    """`protloc train` on scale*N images, unwatched: --rounds times on a fresh image cache each (the cold runs,
    whose pre-training check fills it), then --rounds times on the first one's cache (the warm runs). One run's
    epoch speeds moved by up to a factor of two between runs of the same code (benchmarks/RESULTS.md), so each
    row is the median of its runs, with the spread. The first cold run is "run-large", whose model prediction
    and the per-cell rows use, and its cache "cache-large"."""
    cold, cold_metrics = [], []
    for index in range(args.rounds):
        print(f"protloc train, scale*N images, cold image cache ({index + 1} of {args.rounds}) ...", flush=True)
        name = "large" if index == 0 else f"large-cold-{index}"
        measured, metrics = runs.train_run(large, work / f"run-{name}", work / f"cache-{name}", **training_settings(args))
        if index:
            shutil.rmtree(work / f"cache-{name}")  # only the first cold run's cache is read again
        cold.append(measured)
        cold_metrics.append(metrics)
    warm, warm_metrics = [], []
    for index in range(args.rounds):
        print(f"protloc train, scale*N images, warm image cache ({index + 1} of {args.rounds}) ...", flush=True)
        measured, metrics = runs.train_run(large, work / f"run-large-warm-{index}", work / "cache-large",
                                           **training_settings(args))
        warm.append(measured)
        warm_metrics.append(metrics)
    return {"work": work, "cold": cold, "cold_metrics": cold_metrics, "warm": warm, "warm_metrics": warm_metrics}


def measure_other_runs(args, small: Path, large: Path, work: Path) -> dict:
    """`protloc train` on N images (for the cost at two sizes; a fresh cache each, as the cold runs at scale*N),
    and with --head-only-features at scale*N, its memory sampled: its fine-tune epoch (where the peak is) is the
    same as the other runs'. --rounds of each."""
    small_runs, head_only, head_only_metrics = [], [], []
    for index in range(args.rounds):
        print(f"protloc train, N images ({index + 1} of {args.rounds}) ...", flush=True)
        measured, _ = runs.train_run(small, work / f"run-small-{index}", work / f"cache-small-{index}",
                                     **training_settings(args))
        small_runs.append(measured)
    for index in range(args.rounds):
        print(f"protloc train --head-only-features, scale*N images, memory sampled ({index + 1} of {args.rounds}) ...",
              flush=True)
        name = "run-head-only" if index == 0 else f"run-head-only-{index}"
        measured, metrics = runs.train_run(large, work / name, work / "cache-large", **training_settings(args),
                                           extra=("--head-only-features",), sample_memory=True)
        head_only.append(measured)
        head_only_metrics.append(metrics)
    return {"small": small_runs, "head_only": head_only, "head_only_metrics": head_only_metrics}


def measure_features(args, large: Path, work: Path) -> tuple[float, float]:
    """Images per second computing the frozen backbone's features (images from the warm cache), as the shortcut
    does: (median, spread) of --rounds passes."""
    from protloc.data.cache import open_image_cache
    from protloc.data.readers import read_dataset
    from protloc.training.features import compute_features
    from protloc.data.dataset import ImageDataset
    from protloc.data.transforms import eval_transforms

    table = read_dataset(large, split="train")
    cache = open_image_cache(work / "cache-large")
    transform = eval_transforms(image_size=args.image_size, mean=[0.5] * 3, std=[0.25] * 3)
    dataset = ImageDataset(table, channels=3, transform=transform, image_size=args.image_size, cache=cache)
    model = limits.fresh_model(args.backbone, 10, "cpu")
    # No loader workers: protloc's default on the CPU with the image cache (training.trainer.worker_count).
    options = dict(batch_size=args.batch_size, workers=0, device="cpu", autocast_dtype=None, show_progress=False)
    rates = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        compute_features(model, dataset, **options)
        rates.append(len(table) / (time.perf_counter() - start))
    # Each pass printed: in this process the first has run at half the speed of the others (RESULTS.md).
    print(f"feature passes (images/s): {', '.join(f'{rate:.1f}' for rate in rates)}", flush=True)
    return runs.median_and_spread(rates)


def measure_predict(args, large: Path, work: Path) -> dict:
    """Steady state of prediction over the large set's images, torch and ONNX: --rounds cold passes (decoding, a
    fresh cache each), then --rounds warm ones on the first pass's cache; and the CLI on images it has not seen,
    --rounds times (a fresh cache each). Each figure is (median, spread)."""
    from protloc.data.cache import open_image_cache
    from protloc.data.readers import read_dataset
    from protloc.inference.onnx_export import run_onnx_session
    from protloc.models.run_weights import load_run

    run_dir = work / "run-large"
    config, model = load_run(run_dir)
    table = read_dataset(large, split="train")
    workers = 2  # predict's default
    results = {}
    engines = {"torch": runs.TimedTorchEngine(model, precision="fp32")}
    if args.onnx:
        session = run_onnx_session(run_dir, config, work / "onnx")  # exported once, as `protloc predict` does
        engines["onnx"] = runs.TimedOnnxEngine(session)
        batches = limits.memory_batches(2, args.batch_size, args.image_size, config.num_classes, "cpu")
        results["onnx_forward"] = limits.onnx_forward_limit(session, batches, steps=4 * args.steps)
    for name, engine in engines.items():
        caches = [open_image_cache(work / f"cache-predict-{name}-{index}") for index in range(args.rounds)]
        results[f"{name}_cold"] = runs.median_and_spread(
            [runs.predict_rate(engine, table, config, cache, batch_size=args.batch_size, workers=workers)
             for cache in caches])
        results[f"{name}_warm"] = runs.median_and_spread(
            [runs.predict_rate(engine, table, config, caches[0], batch_size=args.batch_size, workers=workers)
             for _ in range(args.rounds)])
    results["decode"] = runs.median_and_spread(
        [limits.decode_rate(list(table.frame["source"]), args.image_size, os.cpu_count() or 1)
         for _ in range(args.rounds)])[0]
    for name in engines:  # the CLI on images it has not seen: start-up, then the cold steady state
        results[f"cli_{name}"] = [
            runs.run_measured(runs.protloc_command("predict", run_dir, large / "train", "--out",
                                                   work / f"predicted-{name}.csv", "--engine", name, "--cache-dir",
                                                   work / f"cache-predict-cli-{name}-{index}"),
                              work / f"predict-{name}-{index}.log")
            for index in range(args.rounds)]
    results["n"] = len(table)
    return results


def measure_cells(args, large: Path, run_dir: Path) -> dict:
    """Seconds per 512 px image: segmentation, labelling its cells (masks given), labelling the image; one image at
    a time, ONNX Runtime on the CPU (predict's default there); (median, spread) of --rounds passes."""
    from protloc.cells.predict import predict_cells
    from protloc.cells.sources import segment_source
    from protloc.data.readers import read_dataset
    from protloc.inference.predictor import load_predictor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = load_predictor(run_dir, device=device, engine="onnx" if device == "cpu" else "torch")
    sources = list(read_dataset(large, split="train").frame["source"])[:args.cells_images]
    images = [predictor.read(source) for source in sources]
    predictor.predict_proba(images[:1])  # warm-up
    n = len(images)
    passes = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        masks = [segment_source(source).astype("int32") for source in sources]
        segment_s = time.perf_counter() - start
        start = time.perf_counter()
        probabilities = [predictor.predict_proba([image])[0] for image in images]
        image_s = time.perf_counter() - start
        start = time.perf_counter()
        for image, mask, p in zip(images, masks, probabilities):
            predict_cells(predictor, image, mask, image_probabilities=p)
        cells_s = time.perf_counter() - start
        passes.append({"segment": segment_s / n, "cells": cells_s / n, "image": image_s / n})
    return {"n": n, "cells_per_image": sum(int(m.max()) for m in masks) / n, **runs.medians(passes),
            "engine": predictor.engine_name, "device": device}


def print_cells_table(cells: dict) -> None:
    print(f"\nPer cell: seconds per 512 px image ({cells['n']} images, {cells['cells_per_image']:.0f} cells each on "
          f"average; {cells['engine']} on the {cells['device']}, one image at a time; median ± half the range)\n")
    print("| step | s / image |\n|---|---:|")
    for key, name in (("segment", "segmentation (protloc segment)"),
                      ("cells", "per-cell labels, masks given (predict --cells --masks)"),
                      ("image", "image-level labels (predict)")):
        median, spread = cells[key]
        print(f"| {name} | {median:.3f} ± {spread:.3f} |")


def main() -> None:
    args = parse_args()
    allow_malloc_settings()  # prediction is timed in this process, with the memory settings `protloc predict` uses
    small, large = prepare_data(Path(args.data_dir), args.n, args.scale)
    if args.cells_run:
        print_cells_table(measure_cells(args, large, Path(args.cells_run)))
        return
    report.print_machine()
    load_before = os.getloadavg()
    work = Path(args.data_dir) / "work"  # runs, caches and logs of this benchmark, replaced by the next
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # Each row's limits are measured just before and just after it, and the seed-style loop runs right after
    # the run it is compared with: this machine's speed drifts over minutes.
    epoch_steps = training_steps_per_epoch(args, large)
    print("limits, in a new process ...", flush=True)
    before_training = measure_limits_in_new_process(args, epoch_steps)
    training = measure_large_run(args, large, work)
    features = measure_features(args, large, work)
    print("limits again, in a new process ...", flush=True)
    after_training = measure_limits_in_new_process(args, epoch_steps)
    print("seed-style loop ...", flush=True)
    seed = measure_seed_style(args, small, work)
    training.update(measure_other_runs(args, small, large, work))
    print("limits before prediction ...", flush=True)
    before_predict = measure_limits(args)
    print("predict ...", flush=True)
    predict = measure_predict(args, large, work)
    print("limits after prediction ...", flush=True)
    after_predict = measure_limits(args)
    cpu = {"train": mean_of(before_training, after_training), "predict": mean_of(before_predict, after_predict),
           "each": (before_training, after_training, before_predict, after_predict)}
    report.print_cpu_table(args, cpu, seed, training, features, predict, load_before, os.getloadavg())
    print_cells_table(measure_cells(args, large, work / "run-large"))
    if torch.cuda.is_available():
        import _gpu as gpu

        gpu.run_gpu_section(args, large, work)


if __name__ == "__main__":
    main()
