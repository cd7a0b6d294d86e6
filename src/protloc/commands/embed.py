"""`protloc embed RUN DATA --out FILE.parquet`: the backbone's features per image, and a 2-D map of them."""
from __future__ import annotations

import argparse

from protloc.commands._options import (add_bit_depth_option, add_device_options, add_gray_as_option, add_process_options,
                                       add_recursive_option, add_run_data_options, add_stain_map_option, add_subset_option,
                                       announce_reading, ranks_from_args)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="pooled backbone features per image (Parquet) and a 2-D map coloured by label",
        description="Write one row per image (id, f0..fN-1 as float32, labels when DATA has them) to FILE and "
                    "a UMAP (or PCA) map to FILE's stem + _map.png, one panel per class. For a K-fold folder the "
                    "features are its folds' side by side.",
    )
    parser.add_argument("run", metavar="RUN", help="run folder (or K-fold folder) written by protloc train")
    parser.add_argument("data", metavar="DATA", help="dataset folder, CSV file or folder of images")
    parser.add_argument("--out", required=True, metavar="FILE", help="Parquet file to write, e.g. features.parquet")
    parser.add_argument("--method", choices=("umap", "pca"), default="umap",
                        help="2-D map: umap (neighbourhoods kept; the first map of a session spends some 5-15 s "
                             "compiling) or pca (linear, instant) (default %(default)s)")
    add_subset_option(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the map's projection (default %(default)s)")
    add_process_options(add_device_options(parser))
    add_run_data_options(parser)
    add_gray_as_option(parser)
    add_recursive_option(parser)
    add_bit_depth_option(parser)
    add_stain_map_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from protloc.data.readers import read_dataset
    from protloc.inference.predictor import load_predictor
    from protloc.labels import get_label_set
    from protloc.files import check_output_path
    from protloc.reports.embed import embed_table, map_path, resolve_method
    from protloc.runs import load_config

    check_output_path(args.out, inputs=[args.data])
    check_output_path(map_path(args.out), option="--out (its map)", inputs=[args.data])
    ranks = ranks_from_args(args, args.out)
    config = load_config(args.run)
    method = resolve_method(args.method)  # before the slow part: a missing umap-learn fails fast
    label_set = get_label_set(args.labels) if args.labels else None
    table = read_dataset(args.data, layout=args.format, split=args.subset, label_set=label_set, channels=config.in_chans,
                         recursive=args.recursive, gray_as=args.gray_as)
    predictor = load_predictor(args.run, device=ranks.device if ranks else args.device, engine="torch",
                               precision=args.precision, gray_as=args.gray_as, bit_depth=args.bit_depth,
                               stain_map=args.stain_map)
    announce_reading(table, config, args)
    embedded = embed_table(predictor, table, args.out, method=method, batch_size=args.batch_size, workers=args.workers,
                           seed=args.seed, data_name=str(args.data), ranks=ranks)
    if embedded is None:
        return 0  # one of several processes: process 0 writes the whole table
    features, map_file = embedded
    where = f" and a {method.upper()} map to {map_file}" if map_file else " (too few images for a map)"
    print(f"{features.shape[0]} images x {features.shape[1]} features written to {args.out}{where}")
    return 0
