"""protloc segment INPUT... --out DIR: find the cells of images (nuclei from the blue stain, cell bodies from the
red and yellow stains), one uint16 instance mask per image and a table of the cells."""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from protloc.commands._options import add_recursive_option
    from protloc.data import LAYOUTS

    parser = subparsers.add_parser(
        "segment", help="find every cell of images: instance masks and a table of cells",
        description="Classical segmentation (scikit-image, no downloaded weights): nuclei from the blue stain (Otsu "
                    "threshold, distance transform, seeded watershed), cell bodies from the red and yellow stains "
                    "grown from the nuclei. INPUT is what predict reads: a dataset folder, a CSV, a folder of images, "
                    "image files or stain files <Id>_<stain>.png (blue needed; red and yellow used when there). "
                    "Writes DIR/<id>.png (uint16: 0 background, cell k = k) and DIR/cells.csv (Image, Cell, "
                    "centroid_y, centroid_x, area in pixels, touches_border; area_um2 where an image "
                    "states its pixel size, as OME-TIFF, CZI, ND2 and LIF files do).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="dataset folder, CSV, image folder or image files")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the masks and cells.csv")
    parser.add_argument("--format", choices=LAYOUTS, default=None, help="input layout (default: detected)")
    add_recursive_option(parser)
    parser.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                        help="an unreadable image or one with no nuclei: fail (exit 2, nothing written) or skip "
                             "(left out, each named) (default %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm import tqdm

    from protloc.cells.masks import CELLS_CSV, cell_geometry, write_mask
    from protloc.cells.sources import segment_source, segmentation_sources
    from protloc.data.images import stated_pixel_size
    from protloc.errors import DataError, listed
    from protloc.files import atomic_dir, check_output_path, write_csv

    check_output_path(args.out, folder=True, inputs=args.inputs)
    ids, sources, problems = segmentation_sources(args.inputs, layout=args.format, recursive=args.recursive)
    total = len(ids) + len(problems)
    tables = []
    with atomic_dir(args.out) as out:  # a failure half way leaves no half-filled folder
        for identifier, source in tqdm(list(zip(ids, sources)), desc="segment", unit="img", leave=False):
            try:
                mask = segment_source(source)
            except DataError as error:
                problems.extend(error.lines)
                continue
            (out / identifier).parent.mkdir(parents=True, exist_ok=True)  # --recursive: a plate's well/field folders
            write_mask(out / f"{identifier}.png", mask)
            geometry = cell_geometry(mask).assign(Image=identifier)
            stated = stated_pixel_size(source)  # a microscope file's µm per pixel: areas in µm² too
            tables.append(geometry.assign(area_um2=geometry["area"] * stated[0] ** 2) if stated else geometry)
        if problems and (args.on_error == "fail" or not tables):
            what = "could not be segmented" if tables else "none could be segmented"
            raise DataError(*listed(problems), f"{len(problems)} of {total} images {what}; nothing written"
                            + (" (--on-error skip writes the others)" if tables else ""))
        frame = pd.concat(tables, ignore_index=True)
        columns = ["Image", "Cell", "centroid_y", "centroid_x", "area", "touches_border"]
        frame = frame[columns + (["area_um2"] if "area_um2" in frame else [])]
        write_csv(out / CELLS_CSV, frame)
    for line in listed(problems):
        print(f"protloc: warning: skipped {line}", file=sys.stderr)
    print(f"wrote {args.out}: {len(tables)} masks, {len(frame)} cells ({CELLS_CSV})")
    return 0
