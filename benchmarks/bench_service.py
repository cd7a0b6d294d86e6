"""`protloc serve` under load on loopback, against `protloc predict`'s core on the same images in the same run.

    python benchmarks/bench_service.py [--backbone efficientnet_lite0] [--image-size 128] [--requests 500]

A run folder around an untrained network (speed does not depend on training), demo-data PNGs, then:
- predict: Predictor.predict_table over all the images (what `protloc predict` does after start-up),
  batch 32, with 2 loader processes (its default) and with none;
- serve: a `protloc serve` subprocess, `--requests` POST /predict of one image each from `--concurrency`
  client threads, then the same images 8 to a request. Reports requests/s, p50/p95 latency and images/s.
The clients run on the same CPU as the server, so serving's figures include their cost.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import torch

from protloc.data.readers import read_inputs
from protloc.data.synthetic import write_demo_dataset
from protloc.inference.predictor import load_predictor
from protloc.labels import HPA10
from protloc.models.classifier import build_model
from protloc.models.run_weights import save_run
from protloc.runs import RunConfig

SRC = Path(__file__).resolve().parents[1] / "src"


def make_run(folder: Path, backbone: str, image_size: int) -> Path:
    torch.manual_seed(0)
    model = build_model(backbone, len(HPA10), pretrained=False)
    mean, std = model.backbone.spec.normalization(3)
    config = RunConfig(backbone=backbone, label_set=HPA10.name, label_names=list(HPA10.names), image_size=image_size,
                       in_chans=3, mean=list(mean), std=list(std), thresholds=[0.5] * len(HPA10))
    save_run(folder, config, model)
    return folder


def predict_speed(run: Path, paths: list[Path], batch_size: int, workers: int) -> float:
    """Images per second of `protloc predict`'s work: the table read, decoded and predicted."""
    predictor = load_predictor(run, device="cpu", precision="fp32")
    table = read_inputs(paths[:batch_size], label_set=predictor.label_set)
    predictor.predict_table(table, batch_size=batch_size, workers=0)  # warm-up
    table = read_inputs(paths, label_set=predictor.label_set)
    best = float("inf")
    for _ in range(2):  # the better of two: a shared CPU makes single timings noisy
        started = time.perf_counter()
        predictor.predict_table(table, batch_size=batch_size, workers=workers)
        best = min(best, time.perf_counter() - started)
    return len(paths) / best


def start_server(run: Path, batch_size: int, log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "protloc.cli", "serve", str(run), "--port", "0", "--device", "cpu",
               "--precision", "fp32", "--batch-size", str(batch_size), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with open(log, "wb") as output:  # a file, not a pipe: uvicorn logs every request
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    with httpx2.Client(trust_env=False) as http:
        for _ in range(1200):
            match = re.search(r"serving .* on (http://[\d.]+:\d+)", log.read_text())
            try:
                if match and http.get(match.group(1) + "/health").status_code == 200:
                    return server, match.group(1)
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"protloc serve did not start:\n{log.read_text()}")


def load(url: str, bodies: list[list[bytes]], concurrency: int) -> tuple[float, list[float], int]:
    """(seconds, sorted latencies, errors) of POSTing each list of images as one request."""
    latencies, errors = [], 0

    def worker(first: int) -> None:
        nonlocal errors
        with httpx2.Client(trust_env=False, timeout=60) as http:
            for index in range(first, len(bodies), concurrency):
                files = [("files", (f"{index}-{i}.png", data)) for i, data in enumerate(bodies[index])]
                started = time.perf_counter()
                response = http.post(url + "/predict", files=files)
                latencies.append(time.perf_counter() - started)
                errors += response.status_code != 200

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    return time.perf_counter() - started, sorted(latencies), errors


def report(what: str, seconds: float, latencies: list[float], errors: int, images: int) -> float:
    p50, p95 = (1000 * latencies[int(q * (len(latencies) - 1))] for q in (0.5, 0.95))
    print(f"serve, {what}: {len(latencies) / seconds:6.1f} requests/s | p50 {p50:5.0f} ms | p95 {p95:5.0f} ms | "
          f"{images / seconds:6.1f} img/s | {errors} errors")
    return images / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        run = make_run(folder / "run", args.backbone, args.image_size)
        write_demo_dataset(folder / "data", n_train=1, n_test=64, size=256, seed=0, show_progress=False, workers=1)
        images = sorted((folder / "data" / "test").glob("*.png"))
        paths = [images[i % len(images)] for i in range(args.requests)]
        print(f"{args.backbone} at {args.image_size} px, {args.requests} PNGs of 256 px, batch {args.batch_size}")
        speeds = {workers: predict_speed(run, paths, args.batch_size, workers) for workers in (2, 0)}
        for workers, speed in speeds.items():
            print(f"predict, --workers {workers}: {speed:6.1f} img/s")
        predict = max(speeds.values())
        server, url = start_server(run, args.batch_size, folder / "server.log")
        try:
            single = [[path.read_bytes()] for path in paths]
            seconds, latencies, errors = load(url, single, args.concurrency)
            served = report(f"1 image/request, {args.concurrency} at once", seconds, latencies, errors, len(paths))
            grouped = [sum(single[i:i + 8], []) for i in range(0, len(single), 8)]
            seconds, latencies, errors = load(url, grouped, args.concurrency)
            report(f"8 images/request, {args.concurrency} at once", seconds, latencies, errors, len(paths))
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"serving / predict: {served / predict:4.2f}x (1 image per request, against predict's faster setting)")


if __name__ == "__main__":
    main()
