"""Rerun the hostile-input cases and count what went wrong, as the red team of issue 31 counted it.

    PYTHONPATH=src python tools/hostile_cases.py [--only TEXT] [--skip TEXT] [--limit-s 60]

Every row of tests/test_hostile_input.py's CASES (bombs, tampered runs and ensembles, outputs that must not be
replaced, options that cannot train...) runs as `protloc.cli.main` in this process, in a world of small files
built once in a temporary folder; then the round-two probes that are not an exit code (cache poisoning, stale
and damaged cache entries, links in the cache, a deflate bomb through tifffile's fallback decoder, a TIFF of
many pages, an edited ONNX graph). Each case lands in one of:

  clean       exit 2, a short error line naming what was expected, nothing changed (or, for a probe, the safe
              outcome)
  traceback   an exception escaped (the command line would print a traceback)
  hang        still running after --limit-s seconds
  silent      exit 0 (or the unsafe outcome) where a refusal was expected: a silent wrong result
  damaged     a file the case reads changed, or the output folder changed on a refusal (or, for a probe, a file
              outside the cache was removed or written)

The cases share one world: where a case damages it (on a version without these checks), later cases that read
the same files may fail for that reason ("other").
  other       another exit code, or an error that does not name what it should

Prints one line per case that is not clean, then the counts; exits 1 when any case is not clean.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import tests.conftest  # noqa: E402,F401  (its environment: a private cache folder and torch home)


class Hung(Exception):
    pass


def _alarm(signum, frame):
    raise Hung()


def run_in_process(argv: list[str], limit_s: int) -> tuple[str, int | None, str]:
    """(how it ended: "exit", "traceback" or "hang"; exit code; stderr)."""
    from protloc.cli import main

    stderr = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code
        return "exit", code, stderr.getvalue()
    except Hung:
        return "hang", None, stderr.getvalue()
    except Exception:
        return "traceback", None, stderr.getvalue() + traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def untrained_run(run_dir: Path, spread: float | None = None) -> Path:
    """A run folder around an untrained test network, as the tests' untrained_run fixture makes it."""
    import torch

    from protloc.labels import HPA10
    from protloc.models.classifier import build_model
    from protloc.models.run_weights import save_run
    from protloc.runs import DEFAULT_THRESHOLD, RunConfig

    torch.manual_seed(0)
    model = build_model("test_resnet", len(HPA10), pretrained=False, in_chans=3)
    if spread is not None:
        with torch.no_grad():
            model.head[1].weight.mul_(spread)
    mean, std = model.backbone.spec.normalization(3)
    config = RunConfig(backbone="test_resnet", label_set=HPA10.name, label_names=list(HPA10.names), image_size=32,
                       in_chans=3, mean=list(mean), std=list(std), thresholds=[DEFAULT_THRESHOLD] * len(HPA10))
    save_run(run_dir, config, model)
    return run_dir


def build_world(root: Path) -> dict[str, str]:
    from protloc.training.config import TrainConfig
    from tests import test_hostile_input as hostile
    from tests.conftest import TINY_TRAINING

    paths = hostile.make_hostile_data(root)
    hostile.make_tampered_runs(root, untrained_run(root / "run"), paths)
    hostile.make_tampered_ensembles(root, paths)
    hostile.make_round_two_data(root, paths)
    recipe = TrainConfig(data=str(paths["data"]), out=str(root), **{**TINY_TRAINING, "show_progress": False},
                         backbone="test_resnet", stop_after=1)
    hostile.make_damaged_stopped_runs(root, recipe, paths)
    return {name: str(path) for name, path in paths.items()}


def table_cases(world: dict, scratch: Path, only: str, limit_s: int, skip: list[str] = ()) -> list[tuple[str, str, str]]:
    """(case, category, detail) for every row of CASES."""
    from tests.test_hostile_input import CASES, make_case_paths, skip_reason, snapshot

    results = []
    for case in CASES:
        if only not in case.name or skip_reason(case) or any(text in case.name for text in skip):
            continue
        out = scratch / case.name
        values = {**world, "out": str(out / "out")}
        out.mkdir(exist_ok=True)
        make_case_paths(case, values)
        watched = [out, *(Path(world[name]) for name in case.watch)]
        before = [snapshot(path) for path in watched]
        saved = {name: os.environ.get(name) for name in case.env}
        os.environ.update(case.env)
        try:
            ended, code, error = run_in_process(case.argv.format(**values).split(), limit_s)
        finally:
            for name, value in saved.items():
                os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
        after = [snapshot(path) for path in watched]
        inputs_changed = after[1:] != before[1:]  # the world's files the case reads
        if ended != "exit":
            results.append((case.name, ended, error.strip().splitlines()[-1] if error.strip() else ""))
        elif inputs_changed:
            results.append((case.name, "damaged", f"exit {code}: an input changed"))
        elif code == 0:
            results.append((case.name, "silent", "exit 0" + (", output written" if after[0] != before[0] else "")))
        elif after[0] != before[0]:
            results.append((case.name, "damaged", f"exit {code}: the output folder changed"))
        elif code != 2 or case.expect.format(**values) not in error or "Traceback" in error:
            results.append((case.name, "other", f"exit {code}: {error.strip()[:200]}"))
        else:
            results.append((case.name, "clean", ""))
    return results


# ---------------------------------------------------------------- the probes that are not an exit code


def probe_cache_poisoning(world: dict, scratch: Path) -> tuple[str, str]:
    """Pixels planted in a cache folder others can write: predictions must equal those without the cache."""
    from protloc.data.cache import HEADER, MAGIC, ImageCache, entry_key

    image = Path(world["good"])
    shared = scratch / "shared-cache"
    shared.mkdir()
    entry = ImageCache(shared, limit_bytes=0).entry_path(entry_key(image, 3, 32))
    entry.parent.mkdir(parents=True, exist_ok=True)
    pixels = b"\xff" * (3 * 32 * 32)
    entry.write_bytes(HEADER.pack(MAGIC, 32, 32, 3, zlib.crc32(pixels)) + pixels)
    shared.chmod(0o777)
    plain = predict_lines(world, scratch / "plain.csv", "--no-cache")
    cached = predict_lines(world, scratch / "shared.csv", "--cache-dir", str(shared))
    return ("clean", "") if cached == plain else ("silent", "planted pixels were served")


def predict_lines(world: dict, out: Path, *options: str) -> list[str] | str:
    ended, code, error = run_in_process(["predict", world["run"], world["good"], "--out", str(out), "--workers", "0",
                                         "--probabilities", *options], 120)
    return out.read_text().splitlines() if ended == "exit" and code == 0 else f"{ended} {code}: {error[-300:]}"


def probe_stale_rewrite(world: dict, scratch: Path) -> tuple[str, str]:
    """A file rewritten with its old size and mtime must not be served from the cache."""
    import numpy as np
    from PIL import Image

    from protloc.data.cache import open_image_cache

    path = scratch / "rewritten.png"
    Image.fromarray(np.full((40, 48, 3), 10, np.uint8)).save(path, compress_level=0)
    cache = open_image_cache(scratch / "stale-cache", limit_gb=1)
    cache.load(path, 3, 32)
    before = path.stat()
    Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(path, compress_level=0)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return ("clean", "") if int(cache.load(path, 3, 32).min()) == 200 else ("silent", "stale pixels served")


def probe_damaged_entry(world: dict, scratch: Path) -> tuple[str, str]:
    from protloc.data.cache import HEADER, entry_key, open_image_cache

    image = Path(world["good"])
    cache = open_image_cache(scratch / "damaged-cache", limit_gb=1)
    expected = cache.load(image, 3, 32).clone()
    entry = cache.entry_path(entry_key(image, 3, 32))
    data = bytearray(entry.read_bytes())
    data[HEADER.size + 10] ^= 0xFF
    entry.write_bytes(bytes(data))
    return ("clean", "") if bool((cache.load(image, 3, 32) == expected).all()) else ("silent", "a flipped byte was served")


def probe_cache_links(world: dict, scratch: Path) -> tuple[str, str]:
    """Eviction through a linked subfolder, and the usage file written through a link."""
    from protloc.data.cache import IMAGES_FOLDER, USAGE_FILE, ImageCache

    victim = scratch / "victim"
    victim.mkdir()
    (victim / ("ab" * 32 + ".u8")).write_text("mine")
    (victim / "notes.txt").write_text("precious")
    os.utime(victim / ("ab" * 32 + ".u8"), (1_000_000, 1_000_000))
    cache = ImageCache(scratch / "linked-cache", limit_bytes=1)
    cache.load(Path(world["good"]), 3, 32)
    (cache.folder / IMAGES_FOLDER / "ab").symlink_to(victim)
    (cache.folder / USAGE_FILE).unlink(missing_ok=True)
    (cache.folder / USAGE_FILE).symlink_to(victim / "notes.txt")
    cache.prepare(sorted(Path(world["images"]).iterdir()), 3, 32)
    intact = (victim / ("ab" * 32 + ".u8")).exists() and (victim / "notes.txt").read_text() == "precious"
    return ("clean", "") if intact else ("damaged", "a file outside the cache was removed or written")


def probe_deflate_fallback(world: dict, scratch: Path) -> tuple[str, str]:
    import tifffile
    from tifffile import _imagecodecs as fallback

    from protloc.data.images import ImageReadError, decode_image
    from tests.test_hostile_input import deflate_tiff_bomb

    codecs = tifffile.TIFF.DECOMPRESSORS._codecs
    saved = codecs.get(8)
    codecs[8] = fallback.zlib_decode
    try:
        decode_image(deflate_tiff_bomb())
        return "silent", "a 64 x 64 TIFF inflating to 64 MiB was decoded"
    except ImageReadError:
        return "clean", ""
    finally:
        codecs.pop(8) if saved is None else codecs.__setitem__(8, saved)


def probe_many_pages(world: dict, scratch: Path, limit_s: int) -> tuple[str, str]:
    from protloc.data.images import ImageReadError, decode_image
    from tests.test_hostile_input import many_page_tiff

    data = many_page_tiff(20_000)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    started = time.monotonic()
    try:
        decode_image(data)
        return "silent", "a TIFF of 20,000 pages was read as an image"
    except ImageReadError:
        return "clean", f"refused in {time.monotonic() - started:.2f} s"
    except Hung:
        return "hang", f"still reading after {limit_s} s"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def probe_edited_onnx(world: dict, scratch: Path) -> tuple[str, str]:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    run = scratch / "onnx-run"
    shutil.copytree(world["run"], run)
    ended, code, _ = run_in_process(["export", str(run)], 300)
    if (ended, code) != ("exit", 0):
        return "other", f"export: {ended} {code}"
    graph = onnx.load(str(run / "model.onnx"))
    (bias,) = [item for item in graph.graph.initializer if item.name.endswith("head.1.bias")]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(8), bias.name))
    onnx.save(graph, str(run / "model.onnx"))
    world = {**world, "run": str(run)}
    torch_lines = predict_lines(world, scratch / "torch.csv", "--engine", "torch", "--no-cache")
    onnx_lines = predict_lines(world, scratch / "onnx.csv", "--engine", "onnx", "--no-cache")
    if isinstance(onnx_lines, str) or isinstance(torch_lines, str):
        return "other", str(onnx_lines)[:200]
    numbers = [np.array(lines[1].split(",")[1:], float) for lines in (torch_lines, onnx_lines)]
    return ("clean", "") if np.abs(numbers[0] - numbers[1]).max() < 1e-3 else ("silent", "the edited graph was used")


def probes(world: dict, scratch: Path, only: str, limit_s: int, skip: list[str] = ()) -> list[tuple[str, str, str]]:
    found = {"cache-poisoning": probe_cache_poisoning, "cache-stale-rewrite": probe_stale_rewrite,
             "cache-damaged-entry": probe_damaged_entry, "cache-links": probe_cache_links,
             "tiff-deflate-fallback": probe_deflate_fallback,
             "tiff-many-pages": lambda w, s: probe_many_pages(w, s, limit_s), "onnx-edited": probe_edited_onnx}
    results = []
    for name, probe in found.items():
        if only not in name or any(text in name for text in skip):
            continue
        folder = scratch / name
        folder.mkdir()
        try:
            category, detail = probe(world, folder)
        except Exception:
            category, detail = "traceback", traceback.format_exc().strip().splitlines()[-1]
        results.append((name, category, detail))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run only the cases whose name holds this text")
    parser.add_argument("--skip", action="append", default=[], help="leave out the cases whose name holds this text "
                        "(repeatable): a case that blocks a thread for ever cannot be stopped by the time limit")
    parser.add_argument("--limit-s", type=int, default=60, help="a case still running after this is a hang")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="protloc-hostile-") as folder:
        root = Path(folder)
        (root / "world").mkdir()
        (root / "scratch").mkdir()
        started = time.monotonic()
        world = build_world(root / "world")
        results = table_cases(world, root / "scratch", args.only, args.limit_s, args.skip)
        results += probes(world, root / "scratch", args.only, args.limit_s, args.skip)
        # Folders made read-only by a case would stop the temporary folder's removal.
        for path in (root / "scratch").rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.chmod(0o755)
    counts = {category: 0 for category in ("clean", "traceback", "hang", "silent", "damaged", "other")}
    for name, category, detail in results:
        counts[category] += 1
        if category != "clean":
            print(f"{category:9} {name}: {detail}")
    print(f"{len(results)} cases in {time.monotonic() - started:.0f} s: " + ", ".join(f"{count} {category}"
                                                                                for category, count in counts.items()))
    return 0 if counts["clean"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
