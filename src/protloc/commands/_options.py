"""Options shared by commands: reading datasets, and the one device vocabulary of every command that runs a model
(its words live in protloc.devices; --engine, what runs the model, in protloc.inference)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING
import sys

from protloc.data import BIT_DEPTHS, BIT_DEPTHS_TEXT, LAYOUTS
from protloc.data.stains import CHANNEL_COUNTS, STAINS
from protloc.data.workers import PREDICTION_WORKERS
from protloc.devices import PRECISIONS, check_device_name
from protloc.inference import ENGINES
from protloc.labels import get_label_set
from protloc.runs import ONNX_FILE

if TYPE_CHECKING:  # the readers load pandas: imported where a command runs, not for --help
    from protloc.data.readers import DatasetTable


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=LAYOUTS, default=None, help="dataset layout (default: detected from DATA)")
    parser.add_argument("--labels", default=None, metavar="SET",
                        help="label set: hpa10, hpa28 or a file with one class name per line (default: from the layout)")
    parser.add_argument("--channels", type=int, choices=CHANNEL_COUNTS, default=3,
                        help="image channels: 3 = RGB composite, 4 = with the HPA yellow (ER) stain, 1 = the protein (green) "
                             "alone (default %(default)s)")


def read_dataset_from_args(args: argparse.Namespace, path=None, split: str = "train") -> DatasetTable:
    from protloc.data.readers import read_dataset

    label_set = get_label_set(args.labels) if args.labels else None
    return read_dataset(path or args.data, layout=args.format, split=split, label_set=label_set, channels=args.channels,
                        recursive=getattr(args, "recursive", False))


def add_recursive_option(parser: argparse.ArgumentParser) -> None:
    """--recursive: a folder of images with its subfolders (readers.read_folder)."""
    parser.add_argument("--recursive", action="store_true",
                        help="read a folder of images with its subfolders (a plate's well/field folders), each image's "
                             "id its path relative to the folder, without the extension (default: the folder alone)")


def add_run_data_options(parser: argparse.ArgumentParser) -> None:
    """--format and --labels for DATA; channels come from the run's config, so there is no --channels."""
    parser.add_argument("--format", choices=LAYOUTS, default=None, help="dataset layout (default: detected from DATA)")
    parser.add_argument("--labels", default=None, metavar="SET",
                        help="label set of DATA: hpa10, hpa28 or a file with one class name per line "
                             "(default: from the layout); must be the run's")


def add_gray_as_option(parser: argparse.ArgumentParser) -> None:
    """--gray-as STAIN: how a grayscale image may enter a run of 3 or 4 channels (images.convert_channels)."""
    parser.add_argument("--gray-as", choices=STAINS, default=None, metavar="STAIN",
                        help="read a grayscale (1-channel) image as this stain (red, green, blue or yellow), the run's "
                             "other channels left dark: green for a protein-only image. Without it, an image with fewer "
                             "channels than the run reads is refused; give one file per stain, <Id>_<stain>.png")


def add_bit_depth_option(parser: argparse.ArgumentParser) -> None:
    """--bit-depth N: the depth of the input's pixels, where it differs from the run's (images.to_uint8)."""
    parser.add_argument("--bit-depth", type=int, choices=BIT_DEPTHS, default=None, metavar="N",
                        help=f"depth of the input's pixels: {BIT_DEPTHS_TEXT} (12 for 12-bit camera data in 16-bit "
                             "files); each image is scaled from its full scale, 2**N - 1, into the run's range. "
                             "Default: the run's bit depth, except that a run of 8-bit images reads a 16-bit file by "
                             "its container (0..65535), saying so in one line. 8-bit files are always 0..255")


def stain_map_text(text: str) -> dict:
    from protloc.data.stains import parse_stain_map

    try:
        return parse_stain_map(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_stain_map_option(parser: argparse.ArgumentParser) -> None:
    """--stain-map NAME=STAIN,...: the stains of a microscope file's named channels (OME-TIFF, CZI, ND2, LIF)."""
    parser.add_argument("--stain-map", type=stain_map_text, default=None, metavar="NAME=STAIN,...",
                        help="which stain each named channel of a microscope file (OME-TIFF, CZI, ND2, LIF) is, e.g. "
                             "DAPI=blue,Tubulin=red,GFP=green,Calreticulin=yellow; NAME=none leaves a channel out. "
                             "Without it: DAPI and Hoechst are blue, tubulin red, GFP green, calreticulin yellow; "
                             "another name is an error that says what to add")


def announce_reading(table: DatasetTable, config, args: argparse.Namespace) -> None:
    """One line on stderr each where the input's pixels are read at another depth than the run's (intensity.py),
    and on how a microscope file's channels, Z stack, time series or positions are read (microscopy.py)."""
    import os

    from protloc.data.intensity import NOTE_SAMPLE, describe_depth_reading, sample_files
    from protloc.data.images import describe_microscope_reading

    if any(os.environ.get(variable, "0") != "0" for variable in ("RANK", "LOCAL_RANK")):
        return  # one process of several (inference/distributed.py): the first says it

    notes = [describe_depth_reading(table, config.bit_depth, args.bit_depth),
             describe_microscope_reading(sample_files(table, NOTE_SAMPLE), config.in_chans, args.stain_map)]
    for note in filter(None, notes):
        print(f"note: {note}", file=sys.stderr)


def read_run_dataset(args: argparse.Namespace, config, path):
    """DATA read with the run's channel count."""
    label_set = get_label_set(args.labels) if args.labels else None
    from protloc.data.readers import read_dataset

    return read_dataset(path, layout=args.format, label_set=label_set, channels=config.in_chans)


def add_subset_option(parser: argparse.ArgumentParser) -> None:
    """--subset: which images of a dataset with train and test parts a command reads; the same default everywhere."""
    parser.add_argument("--subset", choices=("train", "test"), default="train",
                        help="which images of a dataset folder with train and test parts to read: train (labelled, "
                             "so true and missed classes can be shown) or test (default %(default)s)")


def threshold_value(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: expected a probability strictly between 0 and 1")
    return value


def device_name(text: str) -> str:
    """--device's type: auto, cpu, cuda or cuda:N (protloc.devices)."""
    try:
        return check_device_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_device_options(parser: argparse.ArgumentParser, *, batch_size: int = 32, workers: int | None = PREDICTION_WORKERS,
                       batches: bool = True, help_texts: dict[str, str] | None = None) -> argparse._ArgumentGroup:
    """How a model runs: device, precision and, with `batches`, batch size and loader workers (commands that take
    one image at a time, serve and explain, have no batches). Returns the "device and precision" group, where train adds its
    --devices count. `help_texts` replaces the text of options that mean more for a command (by dest name)."""
    texts = {
        "device": "auto (a CUDA GPU if there is one, else the CPU), cpu, cuda or cuda:N (default %(default)s)",
        "precision": "auto: bf16 on GPUs that have it (else fp16) and fp32 on CPUs, so CPU results are the same on "
                     "every machine; bf16/fp16 trade exactness for speed (default %(default)s)",
        "batch_size": "images per forward pass (default %(default)s)",
        "workers": "processes decoding images beside the model; 0 = decode in the main process (default %(default)s)",
        **(help_texts or {}),
    }
    group = parser.add_argument_group("device and precision")
    group.add_argument("--device", type=device_name, default="auto", help=texts["device"])
    group.add_argument("--precision", choices=PRECISIONS, default="auto", help=texts["precision"])
    if batches:
        group.add_argument("--batch-size", type=int, default=batch_size, help=texts["batch_size"])
        group.add_argument("--workers", type=int, default=workers, help=texts["workers"])
    return group


def add_engine_choice(parser: argparse.ArgumentParser) -> None:
    """--engine auto|torch|onnx and --onnx FILE, for the commands that need only probabilities."""
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help=f"onnx: ONNX Runtime (CPU, fp32) on --onnx FILE, the run's {ONNX_FILE} from protloc export, "
                             "or an export kept in the cache folder (made on first use, again when the weights "
                             "change); torch: the PyTorch model; auto: onnx on the CPU in fp32 (the same probabilities "
                             "on every machine), torch on a GPU or with --precision bf16 (default %(default)s)")
    parser.add_argument("--onnx", default=None, metavar="FILE", help=f"ONNX file for --engine onnx (default RUN/{ONNX_FILE})")


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """--no-cache, --cache-dir, --cache-limit-gb: where decoded, resized images are kept (protloc.data.cache)."""
    cache = parser.add_argument_group("image cache")
    cache.add_argument("--no-cache", dest="cache", action="store_false",
                       help="decode and resize every image on every read instead of once; results are the same "
                            "(default: cache)")
    cache.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="where decoded, resized images are kept (default $PROTLOC_CACHE_DIR, else ~/.cache/protloc)")
    cache.add_argument("--cache-limit-gb", type=float, default=None, metavar="GB",
                       help="most disk the cache may take; images past it are decoded each time "
                            "(default $PROTLOC_CACHE_LIMIT_GB, else 10)")


def image_cache_from_args(args: argparse.Namespace):
    """The ImageCache the options ask for, or None with --no-cache."""
    from protloc.data.cache import open_image_cache

    return open_image_cache(args.cache_dir, args.cache_limit_gb) if args.cache else None


def add_inference_options(parser: argparse.ArgumentParser, *, engine_choice: bool = True) -> argparse._ArgumentGroup:
    """Options shared by the commands that predict labels (predict, tune, evaluate, report). Returns the
    "device and precision" group."""
    group = add_device_options(parser)
    if engine_choice:
        add_engine_choice(parser)
    parser.add_argument("--tta", action="store_true",
                        help="average over the 8 flips and quarter turns of each image (8x slower)")
    return group


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: expected 1 or more")
    return value


def add_process_options(group: argparse._ArgumentGroup) -> None:
    """--devices N --num-nodes M: the commands that predict whole tables (predict, embed, evaluate) in several
    processes, through Lightning DDP as training does."""
    group.add_argument("--devices", type=positive_int, default=1, metavar="N",
                        help="processes per machine, one per device (GPU, or CPU share); 2 or more predict together "
                             "through Lightning DDP (gloo on the CPU), each its share of the images, merged in input "
                             "order (default %(default)s: one process, without Lightning)")
    group.add_argument("--num-nodes", type=positive_int, default=1, metavar="M",
                        help="machines, each running this command under a launcher that sets MASTER_ADDR, MASTER_PORT "
                             "and NODE_RANK (torchrun, srun; docs/cluster.md); --out must be on a file system they all "
                             "see (default %(default)s)")


def ranks_from_args(args: argparse.Namespace, out):
    """protloc.inference.distributed.Ranks for --devices and --num-nodes, its shares exchanged beside `out`; None
    for one process, which predicts without Lightning (and without its start-up)."""
    if args.devices * args.num_nodes == 1:
        return None
    from protloc.inference.distributed import Ranks, exchange_folder

    return Ranks(args.devices, args.num_nodes, device=args.device, exchange=exchange_folder(out))
