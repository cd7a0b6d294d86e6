"""Demo-data generation speed: 1 worker against all cores, measured side by side.

    python benchmarks/bench_demo_data.py [--n 60] [--size 256]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from protloc.data.synthetic import write_demo_dataset


def images_per_second(n: int, size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        write_demo_dataset(out, n_train=n, n_test=0, size=size, seed=0, show_progress=False, workers=workers)
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    one = images_per_second(args.n, args.size, 1)
    many = images_per_second(args.n, args.size, cores)
    print(f"demo-data {args.size} px: 1 worker {one:6.1f} img/s ({60 * one:5.0f}/min) | "
          f"{cores} workers {many:6.1f} img/s ({60 * many:5.0f}/min) | ratio {many / one:4.2f}x")


if __name__ == "__main__":
    main()
