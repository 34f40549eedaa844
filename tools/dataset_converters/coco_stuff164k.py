"""Make COCO-Stuff 164k *_labelTrainIds.png maps with 171 train ids (mmseg 1.x recipe).

    python tools/dataset_converters/coco_stuff164k.py data/coco_stuff164k [--nproc 8]

Input: COCO_PATH with train2017.zip and val2017.zip unpacked into images/ and
stuffthingmaps_trainval2017.zip unpacked into annotations/:
    COCO_PATH/images/{train2017,val2017}/<id>.jpg
    COCO_PATH/annotations/{train2017,val2017}/<id>.png   grey, ids 0..181, 255 = unlabelled
Output, next to each map:
    COCO_PATH/annotations/<split>/<id>_labelTrainIds.png
        8-bit grey train ids 0..170: the 182 COCO-Stuff ids without the 11 thing ids that
        COCO 2017 never uses, in order (0..10 stay, 12 -> 11, ..., 91 -> 80, 181 -> 170);
        255 and every id outside the table -> 255 (mmseg leaves ids outside its table
        unchanged; none occur in the release)

Restartable: maps that already exist are kept (--overwrite makes them again).
"""
import os
from collections import Counter


import cv2
import numpy as np

from jseg.utils.cli import run_main
from jseg.data.converters import (ConvertError, converter_parser, id_lut, is_complete,
                                  require_dir, run_cli, run_tasks, write_png)

SPLITS = ("train2017", "val2017")
OUT_SUFFIX = "_labelTrainIds.png"
# COCO thing ids (0-based, as in the stuffthingmaps) that no COCO 2017 image uses.
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
NUM_RAW_IDS = 182  # 0..90 things (incl. unused), 91..181 stuff
CLS_TO_TRAIN_ID = {cls: train for train, cls in
                   enumerate(i for i in range(NUM_RAW_IDS) if i not in UNUSED_IDS)}
assert len(CLS_TO_TRAIN_ID) == 171 and CLS_TO_TRAIN_ID[181] == 170, "COCO-Stuff id table"
FULL_COUNT = 123287  # train2017 + val2017 maps in the full release (mmseg asserts it)
_LUT = id_lut(CLS_TO_TRAIN_ID)


def convert_one(job):
    src, out, overwrite = job
    if not overwrite and is_complete(out):
        return "kept"
    raw = cv2.imread(src, cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ConvertError(f"cannot read label map {src}; re-extract "
                           f"stuffthingmaps_trainval2017.zip")
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise ConvertError(f"label map {src} is {raw.dtype} with shape {raw.shape}; expected "
                           f"an 8-bit grey stuffthingmaps PNG")
    write_png(out, _LUT[raw])
    return "written"


def convert(coco_path, nproc=1, overwrite=False):
    require_dir(coco_path, "COCO-Stuff root")
    fix = (f"unzip stuffthingmaps_trainval2017.zip -d {os.path.join(coco_path, 'annotations')} "
           f"(it makes train2017/ and val2017/)")
    ann_root = require_dir(os.path.join(coco_path, "annotations"), "folder", fix)
    jobs, found = [], {}
    for split in SPLITS:
        folder = os.path.join(ann_root, split)
        if not os.path.isdir(folder):
            continue
        names = sorted(n for n in os.listdir(folder) if n.endswith(".png")
                       and not n.endswith(OUT_SUFFIX) and not n.startswith("."))
        found[split] = len(names)
        jobs += [(os.path.join(folder, n), os.path.join(folder, n.split(".")[0] + OUT_SUFFIX),
                  overwrite) for n in names]
    if not jobs:
        raise ConvertError(f"no stuffthingmaps PNGs in {ann_root}/{{train2017,val2017}}; {fix}")
    results = run_tasks(convert_one, jobs, nproc, desc="coco_stuff164k labelTrainIds")
    counts = Counter(results)
    return {"written": counts["written"], "kept": counts["kept"], "found": found}


def main(argv=None):
    p = converter_parser(__doc__, "make every map again, even those that exist")
    p.add_argument("coco_path", metavar="COCO_PATH",
                   help="COCO-Stuff folder holding images/ and annotations/")
    args = p.parse_args(argv)

    def job():
        res = convert(args.coco_path, args.nproc, args.overwrite)
        found = ", ".join(f"{s} {n}" for s, n in res["found"].items())
        total = sum(res["found"].values())
        note = "" if total == FULL_COUNT else \
            f" (note: the full release has {FULL_COUNT} maps in train2017 + val2017)"
        return (f"coco_stuff164k: {res['written']} maps written, {res['kept']} kept "
                f"({found}){note}")
    return run_cli(job)


if __name__ == "__main__":
    run_main(main)
