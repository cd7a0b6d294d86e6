"""How to keep decoded images on disk: reading one back, per format, against decoding the PNG again.

    python benchmarks/bench_cache_formats.py [--n 300] [--size 224]

The choice behind protloc.data.cache (one raw file per image, read into a tensor): read times of a raw file
(readinto, as the cache does), np.fromfile, .npy files (np.load, and memory-mapped), and a slice of one
memory-mapped array holding all images; then what a 512 px PNG decode + resize costs, for scale.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from protloc.data.cache import decode_resized


def per_image_microseconds(read, n: int, repeats: int = 3) -> float:
    for index in range(n):  # page cache warm, as for every epoch after the first
        read(index)
    start = time.perf_counter()
    for _ in range(repeats):
        for index in range(n):
            read(index)
    return (time.perf_counter() - start) / (repeats * n) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    shape = (3, args.size, args.size)
    nbytes = int(np.prod(shape))
    data = np.random.default_rng(0).integers(0, 256, (args.n, *shape), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for index in range(args.n):
            data[index].tofile(root / f"{index}.u8")
            np.save(root / f"{index}.npy", data[index])
        slab = np.lib.format.open_memmap(root / "slab.npy", mode="w+", dtype=np.uint8, shape=data.shape)
        slab[:] = data
        slab.flush()
        slab = np.load(root / "slab.npy", mmap_mode="r")

        def readinto(index):
            image = torch.empty(shape, dtype=torch.uint8)
            with open(root / f"{index}.u8", "rb", buffering=0) as file:
                file.readinto(memoryview(image.numpy()).cast("B"))
            return image

        readers = {
            "raw file, readinto a tensor (protloc's cache)": readinto,
            "raw file, np.fromfile": lambda i: torch.from_numpy(np.fromfile(root / f"{i}.u8", np.uint8).reshape(shape)),
            ".npy file, np.load": lambda i: torch.from_numpy(np.load(root / f"{i}.npy")),
            ".npy file, memory-mapped, copied out": lambda i: torch.from_numpy(np.array(np.load(root / f"{i}.npy", mmap_mode="r"))),
            "one memory-mapped array, a slice copied out": lambda i: torch.from_numpy(np.array(slab[i])),
        }
        for name, read in readers.items():
            print(f"{name:48s} {per_image_microseconds(read, args.n):7.0f} us/image ({nbytes / 1e3:.0f} kB)")
        png = root / "image.png"
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(png)
        decode = per_image_microseconds(lambda _: decode_resized(str(png), 3, args.size), 20)
        print(f"{'decode a 512 px PNG and resize (the cache saves)':48s} {decode:7.0f} us/image  [{os.cpu_count()} cores]")


if __name__ == "__main__":
    main()
