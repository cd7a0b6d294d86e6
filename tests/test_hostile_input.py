"""Hostile input, as a user who wants to break protloc would type it: every case exits 2 with short lines naming
the file or field, no traceback, and leaves no new or changed file where the command writes.

Each case is one row of CASES: the command line (paths from the `world` of small files built once), the text
the error must contain, and the paths that must come out of the command untouched. Commands run in this process
(`protloc.cli.main`), so a traceback is an exception escaping `main`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import stat
import struct
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from protloc.cli import main
from protloc.data.images import ImageReadError, ImageTooLarge, decode_image
from protloc.errors import ProtlocError


# ---------------------------------------------------------------- hostile files


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small PNG whose header claims width x height pixels: decoded, it would take gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def tiff_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A classic little-endian TIFF of one uncompressed grayscale strip whose tags claim width x height."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 16)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 16


def jpeg_bomb(side: int = 60_000) -> bytes:
    """A real 16 px JPEG with its frame header's height and width rewritten to `side`."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 80, 120)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")
    data[frame + 5:frame + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def deflate_tiff_bomb(side: int = 64, inflated: int = 64 * 2**20) -> bytes:
    """A TIFF whose header says side x side grayscale pixels, one deflate strip that inflates to `inflated` bytes."""
    data = zlib.compress(b"\0" * inflated, 9)
    entries = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 8), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, side), (279, 4, len(data))]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def many_page_tiff(pages: int = 5000) -> bytes:
    """A TIFF of `pages` one-pixel pages, alternating in shape so that tifffile cannot take them as one series."""
    import tifffile

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for index in range(pages):
            writer.write(np.zeros((1 + index % 2, 1), np.uint8), metadata=None)
    return buffer.getvalue()


def save_png(path: Path, size: int = 32, seed: int = 0, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)


def edit_config(run: Path, **changes) -> None:
    config = json.loads((run / "config.json").read_text())
    config.update(changes)
    (run / "config.json").write_text(json.dumps(config))


# ---------------------------------------------------------------- the world the cases run in


@pytest.fixture(scope="session")
def world(tmp_path_factory, untrained_run, tiny_recipe) -> dict[str, str]:
    """Paths by name: good data and runs, and hostile ones made from them."""
    root = tmp_path_factory.mktemp("hostile")
    paths = make_hostile_data(root)
    make_tampered_runs(root, untrained_run(root / "run"), paths)
    make_tampered_ensembles(root, paths)
    make_round_two_data(root, paths)
    make_damaged_stopped_runs(root, tiny_recipe.config(paths["data"], root, backbone="test_resnet", stop_after=1), paths)
    return {name: str(path) for name, path in paths.items()}


def make_hostile_data(root: Path) -> dict[str, Path]:
    from protloc.data.synthetic import write_demo_dataset

    paths = {"data": root / "data"}
    data = paths["data"]
    write_demo_dataset(data, n_train=8, n_test=2, size=32, seed=0, show_progress=False, workers=1)
    train_ids = [line.split(",")[0] for line in (data / "train.csv").read_text().splitlines()[1:]]
    paths["images"] = data / "test"
    paths["good"] = sorted((data / "test").iterdir())[0]
    paths["bomb_id"] = Path(train_ids[0])
    bombs = root / "bombs"
    bombs.mkdir()
    for name, content in (("bomb.png", png_bomb()), ("bomb.tif", tiff_bomb()), ("bomb.jpg", jpeg_bomb())):
        (bombs / name).write_bytes(content)
        paths[name.replace(".", "_")] = bombs / name

    # The z2g dataset with one train and one test image a bomb.
    bomb_data = paths["bomb_data"] = root / "bomb-data"
    shutil.copytree(data, bomb_data)
    (bomb_data / "train" / f"{train_ids[0]}.png").write_bytes(png_bomb())
    (bomb_data / "test" / paths["good"].name).write_bytes(png_bomb())

    # Generic CSVs (paths relative to the CSV): a TIFF bomb and a JPEG bomb among good images; a path out.
    generic = root / "generic"
    for index in range(3):
        save_png(generic / f"cell{index}.png", seed=index)
    for name, bomb in (("tiff", "bomb.tif"), ("jpeg", "bomb.jpg")):
        shutil.copy(bombs / bomb, generic / bomb)
        paths[f"{name}_csv"] = generic / f"{name}.csv"
        paths[f"{name}_csv"].write_text(f"path,labels\ncell0.png,1\ncell1.png,2\n{bomb},3\ncell2.png,4\n")
    save_png(root / "outside.png", seed=7)
    paths["escape_csv"] = generic / "escape.csv"
    paths["escape_csv"].write_text("path,labels\ncell0.png,1\n../outside.png,2\n")
    paths["binary_csv"] = generic / "binary.csv"
    paths["binary_csv"].write_bytes(bytes(range(256)) * 8)

    # z2g with an id that walks out of the dataset folder, to a file that exists there; and one absolute id.
    save_png(root / "escaped.png", seed=8)
    for name, identifier in (("escape_data", "../../escaped"), ("absolute_data", root / "escaped")):
        paths[name] = root / name
        shutil.copytree(data, paths[name])
        with open(paths[name] / "train.csv", "a") as handle:
            handle.write(f"{identifier},1\n")

    # HPA 2018 layout (one grayscale file per stain) for convert: one stain a bomb; one id walking out.
    hpa = paths["hpa_bomb"] = root / "hpa-bomb"
    for index, identifier in enumerate(("a", "b")):
        for stain in ("red", "green", "blue", "yellow"):
            save_png(hpa / "train" / f"{identifier}_{stain}.png", seed=index, mode="L")
    (hpa / "train.csv").write_text("Id,Target\na,0\nb,2\n")
    paths["hpa"] = root / "hpa"
    shutil.copytree(hpa, paths["hpa"])
    (hpa / "train" / "b_green.png").write_bytes(png_bomb())
    paths["hpa_escape"] = root / "hpa-escape"
    shutil.copytree(hpa, paths["hpa_escape"])
    (paths["hpa_escape"] / "train.csv").write_text("Id,Target\na,0\n../../x,2\n")
    return paths


def make_tampered_runs(root: Path, run: Path, paths: dict[str, Path]) -> None:
    """A good untrained run, and copies of it with one field or file tampered with each."""
    from protloc.labels import HPA10

    paths["run"] = run
    (run / "metrics.csv").write_text("epoch,phase,val_f1_macro\n1,frozen,0.5\n")

    def tampered(name: str, file: str = "config.json", content: bytes | None = None, **changes) -> None:
        copy = paths[name] = root / name
        shutil.copytree(run, copy)
        if changes:
            edit_config(copy, **changes)
        elif content is None:
            (copy / file).unlink()
        else:
            (copy / file).write_bytes(content)

    tampered("run_threshold_abc", thresholds=["abc"] + [0.5] * 9)
    tampered("run_threshold_null", thresholds=None)
    tampered("run_threshold_big", thresholds=[1.5] * 10)
    tampered("run_size0", image_size=0)
    tampered("run_mean2", mean=[0.5, 0.5])
    tampered("run_std0", std=[0.2, 0.0, 0.2])
    tampered("run_chans7", in_chans=7, mean=[0.5] * 7, std=[0.2] * 7)
    tampered("run_labels9", label_names=list(HPA10.names)[:9], thresholds=[0.5] * 9)
    tampered("run_label_names_text", label_names="Nucleoplasm")
    tampered("run_backbone", backbone="resnet18")
    tampered("run_dropout_text", dropout="high")
    tampered("run_weights_garbage", "model.safetensors", b"\x00garbage" * 64)
    tampered("run_weights_truncated", "model.safetensors", (run / "model.safetensors").read_bytes()[:1000])
    tampered("run_config_text", "config.json", b"{this is not json")
    tampered("run_config_list", "config.json", b"[1, 2, 3]")
    tampered("run_no_weights", "model.safetensors")
    tampered("run_onnx_garbage", "model.onnx", b"not an onnx graph")
    tampered("run_metrics_garbage", "metrics.csv", b"\xff\xfe\x00\x01" * 40)


def make_tampered_ensembles(root: Path, paths: dict[str, Path]) -> None:
    """A K-fold folder of two copies of the good run, and copies with one field of ensemble.json tampered with
    (issue 31, findings 8 and 9)."""
    good = paths["kfold"] = root / "kfold"
    for fold in ("fold-0", "fold-1"):
        shutil.copytree(paths["run"], good / fold)
    config = json.loads((paths["run"] / "config.json").read_text())
    record = {"kind": "ensemble", "folds": ["fold-0", "fold-1"], "label_set": config["label_set"],
              "label_names": config["label_names"], "thresholds": [0.5] * 10, "training": {}}
    (good / "ensemble.json").write_text(json.dumps(record))

    def tampered(name: str, **changes) -> None:
        copy = paths[name] = root / name
        shutil.copytree(good, copy, symlinks=True)
        (copy / "ensemble.json").write_text(json.dumps({**record, **changes}))

    tampered("kfold_thresholds_null", thresholds=[None] * 10)
    tampered("kfold_thresholds_text", thresholds=["abc"] * 10)
    tampered("kfold_thresholds_5", thresholds=[5.0] * 10)
    tampered("kfold_thresholds_true", thresholds=[True] * 10)
    tampered("kfold_training_text", training="oops")
    tampered("kfold_same_fold", folds=["fold-0", "fold-0", "fold-0"])
    tampered("kfold_fold_link")
    shutil.rmtree(paths["kfold_fold_link"] / "fold-1")
    (paths["kfold_fold_link"] / "fold-1").symlink_to(paths["run_labels9"])


def make_round_two_data(root: Path, paths: dict[str, Path]) -> None:
    """Issue 31: a FIFO, a NUL byte and a duplicate in disguise in datasets; NaN pixels; damaged or diverged
    weights."""
    import tifffile
    from safetensors.torch import load_file, save_file

    generic = paths["tiff_csv"].parent
    os.mkfifo(generic / "pipe.png")
    paths["fifo_csv"] = generic / "fifo.csv"
    paths["fifo_csv"].write_text("path,labels\ncell0.png,1\npipe.png,2\n")
    first_id = paths["bomb_id"]
    for name, row in (("nul_data", "abc\0def,1"), ("dup_data", f"./{first_id},1")):
        paths[name] = root / name
        shutil.copytree(paths["data"], paths[name])
        with open(paths[name] / "train.csv", "a") as handle:
            handle.write(row + "\n")
    paths["nan_tif"] = root / "nan.tif"
    pixels = np.full((32, 32, 3), 0.5, np.float32)
    pixels[3, 4, 1] = np.nan
    tifffile.imwrite(paths["nan_tif"], pixels)

    run = paths["run"]
    changed = paths["run_weights_changed"] = root / "run_weights_changed"  # same length, one byte flipped
    shutil.copytree(run, changed)
    data = bytearray((changed / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    (changed / "model.safetensors").write_bytes(bytes(data))
    diverged = paths["run_weights_nan"] = root / "run_weights_nan"  # as a run that diverged was written before
    shutil.copytree(run, diverged)
    state = load_file(str(diverged / "model.safetensors"))
    state["head.1.bias"][0] = float("nan")
    save_file(state, str(diverged / "model.safetensors"))
    (diverged / "model.safetensors.sha256").unlink(missing_ok=True)


def make_damaged_stopped_runs(root: Path, recipe, paths: dict[str, Path]) -> None:
    """Stopped runs (their recipe, as train writes it) whose last checkpoint is damaged or foreign."""
    from protloc.training.resume import write_recipe

    def damaged(name: str, write) -> None:
        stopped = paths[name] = root / name
        write_recipe(stopped, recipe, [0.5] * 3, [0.25] * 3)
        (stopped / "checkpoints" / "frozen").mkdir()
        write(stopped / "checkpoints" / "frozen" / "last.ckpt")

    damaged("stopped_truncated", lambda path: path.write_bytes(checkpoint_bytes()[:3000]))
    damaged("stopped_foreign", lambda path: path.write_bytes(foreign_pickle()))
    damaged("stopped_not_lightning", lambda path: save_tensors(path))
    damaged("stopped_text", lambda path: path.write_text("a checkpoint, honest"))
    damaged("stopped_recipe_text", lambda path: path.parent.with_name("recipe.json").write_text("{oops"))


def foreign_pickle() -> bytes:
    """A pickle of an object that loading with weights_only=True refuses (it would run code to rebuild it)."""
    import pickle

    return pickle.dumps(Path("/etc/passwd"))


def checkpoint_bytes() -> bytes:
    """A checkpoint with what Lightning resumes from, as torch.save writes it."""
    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": {"model.head.1.weight": torch.zeros(10, 64)}, "epoch": 0, "global_step": 6, "loops": {},
                "optimizer_states": [], "pytorch-lightning_version": "2.6.0"}, buffer)
    return buffer.getvalue()


def save_tensors(path: Path) -> None:
    import torch

    torch.save({"weights": torch.zeros(3)}, path)


# ---------------------------------------------------------------- the cases

TRAIN = ("--no-pretrained --image-size 32 --epochs-frozen 1 --epochs 1 --batch-size 16 --workers 0 --device cpu "
         "--backbone test_resnet")


@dataclass(frozen=True)
class Case:
    name: str
    argv: str  # the command line after `protloc`, {name} for a path of the world; {out} is the case's own folder
    expect: str  # text the error output must contain: the file or field at fault
    watch: tuple[str, ...] = ()  # paths of the world that must not change (the case's folder is always watched)
    # ("file" | "dir" | "locked" | "fifo" | "image", path) or ("link", "path->target") made before the command runs
    make: tuple[tuple[str, str], ...] = ()
    env: dict = field(default_factory=dict)
    skip: str = ""  # "root": needs a user that file modes bind; "gpu": needs a machine without a CUDA GPU

    @property
    def command(self) -> str:
        return self.argv.split()[0]


def out_dir_cases(command: str, prefix: str, suffix: str) -> list[Case]:
    """--out a folder, under a regular file, in /proc, and in a folder the user cannot write."""
    kind_wrong = ("file", "{out}/taken") if suffix == "/" else ("dir", "{out}/taken")
    return [
        Case(f"{command}-out-wrong-kind", f"{prefix} --out {{out}}/taken", "{out}/taken", make=(kind_wrong,)),
        Case(f"{command}-out-under-a-file", f"{prefix} --out {{out}}/plain/x{suffix.strip('/')}", "{out}/plain",
             make=(("file", "{out}/plain"),)),
        Case(f"{command}-out-in-proc", f"{prefix} --out /proc/protloc-hostile/x{suffix.strip('/')}", "/proc"),
        Case(f"{command}-out-not-writable", f"{prefix} --out {{out}}/locked/x{suffix.strip('/')}", "{out}/locked",
             make=(("locked", "{out}/locked"),), skip="root"),
    ]


TAMPERED = [  # (world name, text the error names)
    ("run_threshold_abc", "thresholds"), ("run_threshold_null", "thresholds"), ("run_threshold_big", "thresholds"),
    ("run_size0", "image_size"), ("run_mean2", "mean"), ("run_std0", "std"), ("run_chans7", "in_chans"),
    ("run_labels9", "label_names"), ("run_label_names_text", "label_names"), ("run_backbone", "backbone"),
    ("run_dropout_text", "dropout"), ("run_weights_garbage", "model.safetensors"),
    ("run_weights_truncated", "model.safetensors"), ("run_config_text", "config.json"),
    ("run_config_list", "config.json"), ("run_no_weights", "model.safetensors"),
]
PREDICT = "predict {run} {good} --workers 0"
CASES = [
    # check
    Case("check-png-bomb", "check {bomb_data}", "{bomb_id}.png"),
    Case("check-tiff-bomb", "check {tiff_csv}", "bomb.tif"),
    Case("check-jpeg-bomb", "check {jpeg_csv}", "bomb.jpg"),
    Case("check-id-out-of-dataset", "check {escape_data}", "../../escaped"),
    Case("check-absolute-id", "check {absolute_data}", "absolute"),
    Case("check-path-out-of-csv-folder", "check {escape_csv}", "../outside.png"),
    Case("check-binary-csv", "check {binary_csv}", "binary.csv"),
    Case("check-max-pixels-not-a-number", "check {data}", "PROTLOC_MAX_PIXELS", env={"PROTLOC_MAX_PIXELS": "lots"}),
    Case("check-max-pixels-lowered", "check {data}", "PROTLOC_MAX_PIXELS", env={"PROTLOC_MAX_PIXELS": "100"}),
    # explore
    *out_dir_cases("explore", "explore {data}", "/"),
    Case("explore-id-out-of-dataset", "explore {escape_data} --out {out}/e", "../../escaped"),
    Case("explore-max-images-0", "explore {data} --out {out}/e --max-images 0", "--max-images"),
    # convert
    Case("convert-bomb-stain", "convert hpa2018-to-hpa10 {hpa_bomb} --out {out}/c", "b_green.png"),
    Case("convert-id-out-of-dataset", "convert hpa2018-to-hpa10 {hpa_escape} --out {out}/c", "../../x"),
    Case("convert-out-is-a-file", "convert hpa2018-to-hpa10 {hpa_bomb} --out {out}/f", "{out}/f",
         make=(("file", "{out}/f"),)),
    # demo-data
    Case("demo-data-out-is-a-file", "demo-data --out {out}/f --n-train 2 --n-test 0 --size 32", "{out}/f",
         make=(("file", "{out}/f"),)),
    Case("demo-data-out-under-a-file", "demo-data --out {out}/f/d --n-train 2 --n-test 0 --size 32", "{out}/f",
         make=(("file", "{out}/f"),)),
    Case("demo-data-out-in-proc", "demo-data --out /proc/protloc-hostile --n-train 2 --n-test 0 --size 32", "/proc"),
    # train
    Case("train-png-bomb", f"train {{bomb_data}} --out {{out}}/r {TRAIN}", "{bomb_id}.png"),
    Case("train-tiff-bomb", f"train {{tiff_csv}} --out {{out}}/r {TRAIN}", "bomb.tif"),
    Case("train-id-out-of-dataset", f"train {{escape_data}} --out {{out}}/r {TRAIN}", "../../escaped"),
    *out_dir_cases("train", f"train {{data}} {TRAIN}", "/"),
    Case("train-device-banana", f"train {{data}} --out {{out}}/r {TRAIN} --device banana", "--device"),
    Case("train-device-cuda-without-gpu", f"train {{data}} --out {{out}}/r {TRAIN} --device cuda", "--device cuda",
         skip="gpu"),
    Case("train-resume-truncated-checkpoint", "train --resume {stopped_truncated}", "not resumable",
         watch=("stopped_truncated",)),
    Case("train-resume-foreign-checkpoint", "train --resume {stopped_foreign}", "not resumable",
         watch=("stopped_foreign",)),
    Case("train-resume-not-a-lightning-checkpoint", "train --resume {stopped_not_lightning}", "not resumable",
         watch=("stopped_not_lightning",)),
    Case("train-resume-text-checkpoint", "train --resume {stopped_text}", "not resumable", watch=("stopped_text",)),
    Case("train-resume-recipe-not-json", "train --resume {stopped_recipe_text}", "recipe.json",
         watch=("stopped_recipe_text",)),
    # predict
    Case("predict-png-bomb", "predict {run} {bomb_png} --out {out}/p.csv --workers 0", "bomb.png"),
    Case("predict-tiff-bomb", "predict {run} {bomb_tif} --out {out}/p.csv --workers 0", "bomb.tif"),
    Case("predict-jpeg-bomb", "predict {run} {bomb_jpg} --out {out}/p.csv --workers 0", "bomb.jpg"),
    Case("predict-bomb-in-dataset", "predict {run} {bomb_data} --out {out}/p.csv --workers 0", "bomb-data"),
    Case("predict-skip-when-every-image-is-a-bomb",
         "predict {run} {bomb_png} {bomb_tif} --on-error skip --out {out}/p.csv --workers 0", "bomb.tif"),
    *out_dir_cases("predict", PREDICT, ".csv"),
    *[Case(f"predict-{name.replace('_', '-')}", f"predict {{{name}}} {{good}} --out {{out}}/p.csv --workers 0", text,
           watch=(name,)) for name, text in TAMPERED],
    Case("predict-onnx-garbage", "predict {run_onnx_garbage} {good} --engine onnx --onnx {run_onnx_garbage}/model.onnx --out {out}/p.csv --workers 0",
         "model.onnx"),
    Case("predict-device-banana", f"{PREDICT} --out {{out}}/p.csv --device banana", "--device"),
    Case("predict-device-cuda-without-gpu", f"{PREDICT} --out {{out}}/p.csv --device cuda", "--device cuda",
         skip="gpu"),
    Case("predict-max-pixels-zero", f"{PREDICT} --out {{out}}/p.csv", "PROTLOC_MAX_PIXELS",
         env={"PROTLOC_MAX_PIXELS": "0"}),
    Case("predict-batch-size-0", f"{PREDICT} --out {{out}}/p.csv --batch-size 0", "batch size"),
    # tune: the run's config.json must come out byte-identical
    Case("tune-unlabelled-data", "tune {run} {images} --workers 0", "labels", watch=("run",)),
    Case("tune-unlabelled-image", "tune {run} {good} --workers 0", "labels", watch=("run",)),
    Case("tune-png-bomb", "tune {run} {bomb_data} --workers 0", "{bomb_id}.png", watch=("run",)),
    Case("tune-tampered-thresholds", "tune {run_threshold_abc} {data} --workers 0", "thresholds",
         watch=("run_threshold_abc",)),
    Case("tune-tampered-in-chans", "tune {run_chans7} {data} --workers 0", "in_chans", watch=("run_chans7",)),
    # evaluate
    Case("evaluate-png-bomb", "evaluate {run} {bomb_data} --out {out}/ev --workers 0", "{bomb_id}.png"),
    Case("evaluate-unlabelled", "evaluate {run} {images} --out {out}/ev --workers 0", "labels"),
    *out_dir_cases("evaluate", "evaluate {run} {data} --workers 0", "/"),
    Case("evaluate-tampered-labels", "evaluate {run_labels9} {data} --out {out}/ev --workers 0", "label_names"),
    # explain
    Case("explain-png-bomb", "explain {run} {bomb_png} --out {out}/x", "bomb.png"),
    Case("explain-tiff-bomb", "explain {run} {bomb_tif} --out {out}/x", "bomb.tif"),
    Case("explain-good-then-bomb", "explain {run} {good} {bomb_png} --out {out}/x", "bomb.png"),
    *out_dir_cases("explain", "explain {run} {good}", "/"),
    Case("explain-tampered-mean", "explain {run_mean2} {good} --out {out}/x", "mean"),
    Case("explain-unknown-class", "explain {run} {good} --out {out}/x --target-classes Nowhere", "Nowhere"),
    # embed
    Case("segment-png-bomb", "segment {bomb_png} --out {out}/cells", "bomb.png"),
    Case("segment-tiff-bomb", "segment {bomb_tif} --out {out}/cells", "bomb.tif"),
    Case("embed-png-bomb", "embed {run} {bomb_data} --out {out}/f.parquet --workers 0", "{bomb_id}.png"),
    *out_dir_cases("embed", "embed {run} {data} --workers 0", ".parquet"),
    Case("embed-tampered-in-chans", "embed {run_chans7} {data} --out {out}/f.parquet --workers 0", "in_chans"),
    # export
    *out_dir_cases("export", "export {run}", ".onnx"),
    Case("export-tampered-backbone", "export {run_backbone} --out {out}/m.onnx", "backbone"),
    Case("export-tampered-labels", "export {run_labels9} --out {out}/m.onnx", "label_names"),
    # report
    *out_dir_cases("report", "report {run}", ".html"),
    Case("report-png-bomb", "report {run} --data {bomb_data} --out {out}/r.html --workers 0", "{bomb_id}.png",
         watch=("run",)),
    Case("report-tampered-thresholds", "report {run_threshold_null} --out {out}/r.html", "thresholds"),
    Case("report-samples-negative", "report {run} --out {out}/r.html --samples -1", "--samples"),
    # compare
    *out_dir_cases("compare", "compare {run}", ".png"),
    Case("compare-metrics-garbage", "compare {run_metrics_garbage} --out {out}/c.png", "metrics.csv"),
    Case("compare-not-a-run", "compare {data} --out {out}/c.png", "metrics.csv"),
    # outputs that must not be replaced (issue 31, finding 3): special files, links, inputs, runs, input data
    Case("compare-out-a-fifo", "compare {run} --out {out}/pipe", "special file", make=(("fifo", "{out}/pipe"),)),
    Case("predict-out-a-fifo", f"{PREDICT} --out {{out}}/pipe", "special file", make=(("fifo", "{out}/pipe"),)),
    Case("predict-out-a-link", f"{PREDICT} --out {{out}}/link.csv", "symbolic link",
         make=(("file", "{out}/target.csv"), ("link", "{out}/link.csv->{out}/target.csv"))),
    Case("explore-out-a-link", "explore {data} --out {out}/link", "symbolic link",
         make=(("dir", "{out}/real"), ("link", "{out}/link->{out}/real"))),
    Case("predict-out-is-its-input", "predict {run} {out}/img.png --out {out}/img.png --workers 0", "input files",
         make=(("image", "{out}/img.png"),)),
    Case("predict-out-run-config", "predict {run} {good} --out {run}/config.json --workers 0", "config.json",
         watch=("run",)),
    Case("compare-out-run-metrics", "compare {run} --out {run}/metrics.csv", "metrics.csv", watch=("run",)),
    Case("export-out-run-weights", "export {run} --out {run}/model.safetensors", "model.safetensors", watch=("run",)),
    Case("evaluate-out-the-run", "evaluate {run} {data} --out {run} --workers 0", "is a run folder", watch=("run",)),
    Case("convert-out-inside-source", "convert hpa2018-to-hpa10 {hpa} --out {hpa}/train", "input folder",
         watch=("hpa",)),
    Case("explore-out-inside-data", "explore {data} --out {data}/explore", "input folder", watch=("data",)),
    Case("predict-out-inside-input-folder", "predict {run} {images} --out {images}/p.csv --workers 0", "input folder",
         watch=("images",)),
    # cache options (issue 31, finding 8)
    Case("predict-cache-limit-inf", f"{PREDICT} --out {{out}}/p.csv --cache-limit-gb inf", "--cache-limit-gb"),
    Case("train-cache-limit-inf", f"train {{data}} --out {{out}}/r {TRAIN} --cache-limit-gb inf", "--cache-limit-gb"),
    Case("predict-cache-limit-env-inf", f"{PREDICT} --out {{out}}/p.csv", "PROTLOC_CACHE_LIMIT_GB",
         env={"PROTLOC_CACHE_LIMIT_GB": "inf"}),
    # training options and numbers that cannot train (issue 31, findings 7, 8 and 11)
    Case("train-lr-inf", f"train {{data}} --out {{out}}/r {TRAIN} --lr inf", "--lr inf"),
    Case("train-lr-frozen-nan", f"train {{data}} --out {{out}}/r {TRAIN} --lr-frozen nan", "--lr-frozen nan"),
    Case("train-seed-negative", f"train {{data}} --out {{out}}/r {TRAIN} --seed -1", "--seed -1"),
    Case("train-seed-huge", f"train {{data}} --out {{out}}/r {TRAIN} --seed 100000000000000000000000", "--seed"),
    Case("train-image-size-huge", f"train {{data}} --out {{out}}/r {TRAIN} --image-size 20000", "--image-size 20000"),
    Case("train-num-nodes-without-launcher", f"train {{data}} --out {{out}}/r {TRAIN} --num-nodes 2", "--num-nodes 2"),
    Case("train-diverges", f"train {{data}} --out {{out}}/r {TRAIN} --lr-frozen 1e38 --lr 1e38", "training stopped"),
    Case("train-nul-byte-in-id", f"train {{nul_data}} --out {{out}}/r {TRAIN}", "NUL byte"),
    Case("check-nul-byte-in-id", "check {nul_data}", "NUL byte"),
    Case("check-same-id-in-disguise", "check {dup_data}", "duplicate"),
    Case("check-fifo-in-csv", "check {fifo_csv}", "pipe.png"),
    Case("predict-nan-pixels", "predict {run} {nan_tif} --out {out}/p.csv --workers 0", "NaN"),
    # K-fold ensembles checked as run configs are (findings 8 and 9)
    *[Case(f"predict-{name.replace('_', '-')}", f"predict {{{name}}} {{good}} --out {{out}}/p.csv --workers 0", text,
           watch=(name,)) for name, text in (
        ("kfold_thresholds_null", "thresholds"), ("kfold_thresholds_text", "thresholds"),
        ("kfold_thresholds_5", "thresholds"), ("kfold_thresholds_true", "thresholds"),
        ("kfold_training_text", "training"), ("kfold_same_fold", "more than once"),
        ("kfold_fold_link", "symbolic link"))],
    Case("tune-kfold-thresholds-text", "tune {kfold_thresholds_text} {data} --workers 0", "thresholds",
         watch=("kfold_thresholds_text",)),
    # weights changed since training, or written non-finite (findings 7 and 10)
    Case("predict-weights-changed", "predict {run_weights_changed} {good} --engine torch --out {out}/p.csv --workers 0",
         "model.safetensors", watch=("run_weights_changed",)),
    Case("predict-weights-nan", "predict {run_weights_nan} {good} --engine torch --out {out}/p.csv --workers 0",
         "NaN", watch=("run_weights_nan",)),
    # segment
    Case("segment-out-inside-input", "segment {images} --out {images}/masks", "input folder", watch=("images",)),
    # serve: refused before it listens
    Case("serve-tampered-thresholds", "serve {run_threshold_abc} --port 0", "thresholds"),
    Case("serve-tampered-labels", "serve {run_labels9} --port 0", "label_names"),
]


# ---------------------------------------------------------------- running a case


def snapshot(path: Path) -> dict | None:
    """Every file and folder under `path` (hidden temporary files too) with its mode and content hash."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": (path.stat().st_mode, hashlib.sha256(path.read_bytes()).hexdigest())}
    state = {}
    for folder, names, files in os.walk(path):
        for name in names:
            state[os.path.relpath(os.path.join(folder, name), path)] = "folder"
        for name in files:
            file = Path(folder) / name
            mode = file.lstat().st_mode
            if stat.S_ISLNK(mode):
                state[os.path.relpath(file, path)] = ("link", os.readlink(file))
            elif not stat.S_ISREG(mode):  # a FIFO or device: its kind, never its content (reading one may block)
                state[os.path.relpath(file, path)] = ("special", mode)
            else:
                state[os.path.relpath(file, path)] = (mode, hashlib.sha256(file.read_bytes()).hexdigest())
    return state


def skip_reason(case: Case) -> str | None:
    if case.skip == "root" and os.geteuid() == 0:
        return "file modes do not bind root"
    if case.skip == "gpu":
        import torch

        if torch.cuda.is_available():
            return "this machine has a CUDA GPU"
    return None


class Hung(Exception):
    pass


def stop_hung_command(signum, frame):
    raise Hung()


def run_cli(argv: list[str], limit_s: int = 30) -> int:
    """The exit code of `protloc ARGV`; an exception escaping main fails the test as the traceback it would be,
    and a command still running after `limit_s` (serve serving a run it should have refused) as hung."""
    previous = signal.signal(signal.SIGALRM, stop_hung_command)
    signal.alarm(limit_s)
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        return exit_.code
    except Hung:
        pytest.fail(f"protloc {' '.join(argv)} still running after {limit_s} s")
    except Exception:
        pytest.fail(f"traceback from protloc {' '.join(argv)}:\n{traceback.format_exc()}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make_case_paths(case: Case, values: dict) -> None:
    """What a case makes before its command runs (its `make` rows; tools/hostile_cases.py makes them the same)."""
    for kind, template in case.make:
        path, _, target = template.format(**values).partition("->")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "file":
            path.write_text("keep me\n")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "link":
            path.symlink_to(target)
        elif kind == "image":
            save_png(path, seed=3)
        else:
            path.mkdir()
            if kind == "locked":
                path.chmod(0o555)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_exits_2_with_short_lines_and_writes_nothing(case, world, tmp_path, monkeypatch, capsys):
    if reason := skip_reason(case):
        pytest.skip(reason)
    values = {**world, "out": str(tmp_path / "out")}
    make_case_paths(case, values)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    watched = [tmp_path, *(Path(world[name]) for name in case.watch)]
    before = [snapshot(path) for path in watched]

    code = run_cli(case.argv.format(**values).split())

    error = capsys.readouterr().err
    lines = [line for line in error.replace("\r", "\n").splitlines() if "error:" in line]
    assert code == 2, f"exit {code}, expected 2; stderr:\n{error}"
    assert lines, f"no error line; stderr:\n{error}"
    assert case.expect.format(**values) in error, f"the error does not name {case.expect.format(**values)!r}:\n{error}"
    assert "Traceback" not in error and "weights_only=False" not in error
    assert all(len(line) < 600 for line in lines), "an error line too long to read"
    assert len(set(lines)) == len(lines), "a problem said more than once"
    assert [snapshot(path) for path in watched] == before, "files changed at the output path"


def test_the_table_covers_every_command_with_40_cases_or_more():
    from protloc.cli import build_parser

    subparsers = next(action for action in build_parser()._actions if hasattr(action, "choices") and action.choices)
    covered = {case.command for case in CASES}
    assert set(subparsers.choices) <= covered
    assert len(CASES) >= 40


# ---------------------------------------------------------------- what bad input may still let through


def test_skip_leaves_out_a_bomb_names_it_and_writes_the_rest(world, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert run_cli(["predict", world["run"], world["good"], world["bomb_png"], "--on-error", "skip", "--out", str(out),
                    "--workers", "0"]) == 0
    assert "bomb.png" in capsys.readouterr().err
    assert out.read_text().splitlines()[1].startswith(Path(world["good"]).stem + ",")


def test_explore_lists_a_bomb_among_unreadable_images_and_writes_every_file(world, tmp_path):
    out = tmp_path / "explore"
    assert run_cli(["explore", world["bomb_data"], "--out", str(out)]) == 0
    assert f"{world['bomb_id']}.png" in (out / "index.html").read_text()
    assert {"index.html", "summary.json", "channel_stats.json", "samples.png"} <= set(os.listdir(out))
    assert sorted(os.listdir(tmp_path)) == ["explore"]


def test_check_accepts_absolute_paths_in_a_generic_csv_and_says_so(world, tmp_path, capsys):
    csv = tmp_path / "absolute.csv"
    csv.write_text(f"path,labels\n{Path(world['good']).resolve()},1\n")
    assert run_cli(["check", str(csv)]) == 0
    assert "absolute paths outside its folder" in capsys.readouterr().out


@pytest.mark.parametrize("bomb", [png_bomb, tiff_bomb, jpeg_bomb], ids=["png", "tiff", "jpeg"])
def test_every_decoder_refuses_a_bomb_from_its_header_as_file_or_bytes(bomb, tmp_path):
    (tmp_path / "bomb").write_bytes(bomb())
    for source in (tmp_path / "bomb", bomb()):
        with pytest.raises(ImageReadError, match="pixels, more than the limit of 100,000,000"):
            decode_image(source)


@pytest.mark.parametrize("decoders", ["imagecodecs", "tifffile-fallback"])
def test_a_deflate_tiff_bomb_is_refused_whichever_decoder_tifffile_has(decoders, monkeypatch):
    """Issue 31, finding 2: one strip inflating far past the 64 x 64 its header gives. tifffile without imagecodecs
    (or without its deflate codec) falls back to zlib.decompress, with no bound."""
    import tifffile

    if decoders == "tifffile-fallback":
        from tifffile import _imagecodecs as fallback

        monkeypatch.setitem(tifffile.TIFF.DECOMPRESSORS._codecs, 8, fallback.zlib_decode)
    with pytest.raises(ImageReadError) as raised:
        decode_image(deflate_tiff_bomb())
    if decoders == "tifffile-fallback":
        assert isinstance(raised.value, ImageTooLarge) and "inflates past the 4,096 bytes" in str(raised.value)


def test_a_tiff_of_many_pages_is_refused_before_tifffile_reads_them(tmp_path):
    """Issue 31, finding 5: pages are counted from their offsets first; tifffile's reading grows quadratically."""
    from protloc.data.decode_limits import MAX_TIFF_PAGES, count_tiff_pages

    data = many_page_tiff()
    assert count_tiff_pages(io.BytesIO(data)) == MAX_TIFF_PAGES + 1  # counting stops past the limit
    (tmp_path / "pages.tif").write_bytes(data)
    for source in (data, tmp_path / "pages.tif"):
        with pytest.raises(ImageTooLarge, match="more than 512 pages"):
            decode_image(source)
    assert decode_image(many_page_tiff(4)).shape[:2] == (2, 1)  # a few pages still read


# ---------------------------------------------------------------- random input to the readers

IMAGE_HEADERS = [b"", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff", b"GIF89a", b"BM"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(header=st.sampled_from(IMAGE_HEADERS), body=st.binary(max_size=600))
def test_random_bytes_decode_to_an_image_or_an_image_read_error(header, body):
    try:
        array = decode_image(header + body)
    except ImageReadError:
        return
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] in (1, 3, 4)


CSV_TEXT = st.text(alphabet=st.sampled_from(list("ImageLabelIdTargetpathlabels,; \"'\n\r\t0123456789./-_x"))
                   | st.characters(codec="utf-8"), max_size=300)
CSV_BYTES = CSV_TEXT.map(str.encode) | st.binary(max_size=300)  # and some that are not UTF-8 at all


@FUZZ
@given(header=st.sampled_from([b"", b"Image,Label\n", b"Id,Target\n", b"path,labels\n"]), body=CSV_BYTES,
       layout=st.sampled_from(["z2g", "hpa2018", "generic", None]))
def test_random_csv_text_reads_as_a_table_or_the_projects_own_error(tmp_path_factory, header, body, layout):
    from protloc.data.readers import read_dataset

    folder = tmp_path_factory.mktemp("csv")
    (folder / "train.csv").write_bytes(header + body)
    try:
        table = read_dataset(folder / "train.csv", layout=layout)
    except ProtlocError:
        return
    for source in table.frame["source"]:  # every row names a file inside the dataset folder
        for path in [source] if isinstance(source, str) else source:
            assert not os.path.relpath(os.path.abspath(path), folder).startswith("..")


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=12), max_leaves=20)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["backbone", "label_set", "label_names", "image_size", "in_chans", "mean",
                                                "std", "thresholds", "dropout", "layout", "training"]), JSON_VALUES,
                               max_size=3))
def test_a_tampered_config_loads_as_a_valid_config_or_the_projects_own_error(changes):
    from protloc.labels import HPA10
    from protloc.runs import RunConfig, config_problems

    good = {"backbone": "test_resnet", "label_set": "hpa10", "label_names": list(HPA10.names), "image_size": 32,
            "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "thresholds": [0.5] * 10}
    try:
        config = RunConfig.from_dict({**good, **changes})
    except ProtlocError:
        return
    assert config_problems(config) == []
