#!/usr/bin/env python
"""Convert the official labeled NYUv2 file into the plain folder layout (``type: nyuv2_folder``).

    python datasets/prepare_nyuv2.py --mat datasets/nyuv2/nyu_depth_v2_labeled.mat \
        --splits datasets/nyuv2/splits.mat --mapping-40 datasets/nyuv2/classMapping40.mat \
        --mapping-13 datasets/nyuv2/class13Mapping.mat --classes 13 --out datasets/nyuv2_folder

Writes {out}/{train,val}/rgb/*.png, depth/*.png (uint16 millimetres) and label/*.png (class ids, 255 = ignore);
``val`` holds the 654 official test images. Reading PNGs is much faster than the HDF5 file in DataLoader workers.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.data.datasets.nyuv2 import NYUv2MatDataset, write_nyuv2_folder  # noqa: E402
from perception.utils.cli import run_tool, tool_parser  # noqa: E402


def _main(argv=None) -> None:
    parser = tool_parser(__doc__)
    parser.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat")
    parser.add_argument("--splits", default=None, help="splits.mat (default: next to --mat)")
    parser.add_argument("--mapping-40", default=None, help="894 -> 40 mapping file (classMapping40.mat)")
    parser.add_argument("--mapping-13", default=None, help="40 -> 13 mapping file (class13Mapping.mat)")
    parser.add_argument("--classes", type=int, default=13, choices=[13, 40, 894])
    parser.add_argument("--out", default="datasets/nyuv2_folder")
    args = parser.parse_args(argv)
    for split in ("train", "val"):
        ds = NYUv2MatDataset(args.mat, split, splits=args.splits, classes=args.classes,
                             mapping_40=args.mapping_40, mapping_13=args.mapping_13)
        for i in range(len(ds)):
            s = ds.load(i)
            write_nyuv2_folder(Path(args.out) / split, f"{int(ds.indices[i]) + 1:04d}", s["image"], s["semantic"],
                               s["depth"])
        print(f"wrote {len(ds)} {split} images to {Path(args.out) / split}")


def main(argv=None) -> int:
    """Convert; a bad input ends with one ``error:`` line and exit code 2 (``--debug``: with the traceback)."""
    return run_tool(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
