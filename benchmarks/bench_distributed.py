"""What Lightning costs prediction: the one-process loop against Trainer.predict in one process, and
`protloc predict` in one process against `--devices 2`.

    python benchmarks/bench_distributed.py [--images 96] [--image-size 128] [--backbone efficientnet_lite0]

A run folder around an untrained network (speed does not depend on training) and demo-data PNGs, read through
a warm image cache, then:
- in this process, Predictor.predict_table over the table: its own loop (what one process runs), and
  distributed.Ranks(1, 1) (Lightning's Trainer.predict under DDP with one process: the Trainer, the process
  group, the writer and the merge), each timed from the call to the result, the Trainer's construction included;
- `protloc predict` as a user runs it, wall time of the whole command: one process, and --devices 2 (Lightning
  starts the second process by running the command again, so its imports and model loading come twice).
On the CPU, fp32, ONNX Runtime (the default engine there).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from protloc.data.cache import open_image_cache
from protloc.data.readers import read_inputs
from protloc.data.synthetic import write_demo_dataset
from protloc.inference.distributed import Ranks, exchange_folder
from protloc.inference.predictor import load_predictor
from protloc.labels import HPA10
from protloc.models.classifier import build_model
from protloc.models.run_weights import save_run
from protloc.runs import RunConfig


def make_run(folder: Path, backbone: str, image_size: int) -> Path:
    torch.manual_seed(0)
    model = build_model(backbone, len(HPA10), pretrained=False)
    mean, std = model.backbone.spec.normalization(3)
    config = RunConfig(backbone=backbone, label_set=HPA10.name, label_names=list(HPA10.names), image_size=image_size,
                       in_chans=3, mean=list(mean), std=list(std), thresholds=[0.5] * len(HPA10), layout="z2g")
    save_run(folder, config, model)
    return folder


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as temp:
        temp = Path(temp)
        data = temp / "data"
        write_demo_dataset(data, n_train=8, n_test=args.images, size=256, seed=0, show_progress=False)
        run = make_run(temp / "run", args.backbone, args.image_size)
        cache_dir = temp / "cache"
        os.environ["PROTLOC_CACHE_DIR"] = str(cache_dir)  # the commands below read through the same cache

        table = read_inputs([str(data)], split="test", label_set=HPA10, channels=3)
        predictor = load_predictor(run, device="cpu", engine="auto", precision="fp32", cache=open_image_cache(cache_dir))
        predictor.predict_table(table, batch_size=32)  # fills the cache and warms the engine
        out = temp / "out.csv"

        print(f"{args.images} images, {args.backbone} at {args.image_size} px, {predictor.engine_name} engine, "
              f"{os.cpu_count()} CPUs; best of {args.repeats}, the two ways alternating")
        # The commands first: a Trainer in this process leaves Lightning's variables (LOCAL_RANK...) in its
        # environment, which a command started from it would take for a launcher's.
        command = [sys.executable, "-m", "protloc", "predict", str(run), str(data), "--out", str(out),
                   "--probabilities", "--precision", "fp32", "--workers", "0"]
        ones, twos = [], []
        for _ in range(args.repeats):
            ones.append(timed(lambda: subprocess.run(command, check=True, capture_output=True)))
            twos.append(timed(lambda: subprocess.run([*command, "--devices", "2"], check=True, capture_output=True)))
        print(f"protloc predict, whole command: one process {min(ones):.2f} s, --devices 2 {min(twos):.2f} s "
              f"(each run: {', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(ones, twos))})")
        owns, lightnings = [], []
        for repeat in range(args.repeats):
            own = lambda: owns.append(timed(lambda: predictor.predict_table(table, batch_size=32)))  # noqa: E731
            lightning = lambda: lightnings.append(timed(lambda: predictor.predict_table(  # noqa: E731
                table, batch_size=32, ranks=Ranks(1, 1, device="cpu", exchange=exchange_folder(out)))))
            for way in ((own, lightning) if repeat % 2 == 0 else (lightning, own)):
                way()
        print(f"in this process, call to result: own loop {min(owns):.2f} s, Lightning Trainer.predict in one process "
              f"{min(lightnings):.2f} s (each run: {', '.join(f'{a:.1f}/{b:.1f}' for a, b in zip(owns, lightnings))})")

if __name__ == "__main__":
    main()
