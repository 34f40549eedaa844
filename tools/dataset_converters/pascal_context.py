"""Make Pascal Context (59 classes + background) label PNGs and split lists (mmseg 1.x recipe).

    python tools/dataset_converters/pascal_context.py data/VOCdevkit \\
        data/VOCdevkit/VOC2010/trainval_merged.json [--nproc 8]

Input:
    DEVKIT_PATH/VOC2010/JPEGImages/<name>.jpg   from VOCtrainval_03-May-2010.tar
    JSON_PATH   trainval_merged.json, the PASCAL-in-Detail annotation file that mmseg's docs
                link: "images" (file_name, image_id, height, width, phase train/val) and
                "annos_segmentation" (image_id, category_id, COCO RLE "segmentation")
Output:
    DEVKIT_PATH/VOC2010/SegmentationClassContext/<name>.png
        8-bit grey: 0 = background, 1..59 = the 59 Pascal Context classes in the order of
        their Detail category ids; the config's reduce_zero_label turns them into 0..58 and
        background into 255
    DEVKIT_PATH/VOC2010/ImageSets/SegmentationContext/{train,val}.txt   sorted names

mmseg's converter reads the json with the `detail` package (detail-api), which is not on
PyPI and needs compiling. This converter reads the same json itself and makes the same
mask as Detail.getMask: the image's segmentation annotations painted in file order (later
ones on top) with their category ids, then each id replaced by its place among the 60 ids
below. An id outside them is an error, as in mmseg.
Restartable: PNGs that already exist are kept (--overwrite makes them again).
"""
import json
import os
from collections import Counter, defaultdict


import numpy as np

from jseg.utils.cli import run_main
from jseg.data.converters import (ConvertError, converter_parser, decode_coco_rle,
                                  is_complete, require_dir, require_file, run_cli,
                                  run_tasks, write_lines, write_png)

# Detail category ids of background (0) and the 59 classes, sorted; label = place in this list.
CATEGORY_IDS = (
    0, 2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105,
    113, 115, 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308,
    324, 326, 347, 349, 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)
assert len(CATEGORY_IDS) == 60 and list(CATEGORY_IDS) == sorted(set(CATEGORY_IDS)), "PC-59 ids"
_LABEL_OF = {cat: label for label, cat in enumerate(CATEGORY_IDS)}
SPLITS = ("train", "val")
FULL_SIZES = {"train": 4996, "val": 5104}  # images of each phase in trainval_merged.json


def context_mask(height, width, annotations, source):
    """(H, W) uint8 labels 0..59 from [(category_id, rle), ...] painted in order."""
    mask = np.zeros((height, width), np.uint8)
    for category_id, rle in annotations:
        if category_id not in _LABEL_OF:
            raise ConvertError(f"{source} has category id {category_id}, which is not one of "
                               f"the 59 Pascal Context classes or background; use "
                               f"trainval_merged.json")
        try:
            region = decode_coco_rle(rle)
        except (KeyError, TypeError, ValueError) as e:
            raise ConvertError(f"bad segmentation of {source}: {type(e).__name__}: {e}; "
                               f"expected a COCO RLE dict") from None
        if region.shape != mask.shape:
            raise ConvertError(f"a segmentation of {source} is {region.shape[0]}x"
                               f"{region.shape[1]} but the image is {height}x{width}")
        mask[region] = _LABEL_OF[category_id]
    return mask


def convert_one(job):
    image, annotations, out, overwrite = job
    if not overwrite and is_complete(out):
        return "kept"
    write_png(out, context_mask(image["height"], image["width"], annotations,
                                f"image {image['file_name']}"))
    return "written"


def load_detail_json(json_path):
    """{split: [(image dict, [(category_id, rle), ...]), ...]} from a Detail json."""
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConvertError(f"cannot read {json_path} as JSON: {e}") from None
    if not isinstance(data, dict) or "images" not in data or "annos_segmentation" not in data:
        raise ConvertError(f"{json_path} has no 'images' and 'annos_segmentation'; expected "
                           f"PASCAL-in-Detail's trainval_merged.json")
    by_image = defaultdict(list)
    try:
        for ann in data["annos_segmentation"]:
            by_image[ann["image_id"]].append((int(ann["category_id"]), ann["segmentation"]))
        splits = {s: [] for s in SPLITS}
        for img in data["images"]:
            if img.get("phase") in splits:
                entry = {k: img[k] for k in ("file_name", "image_id", "height", "width")}
                splits[img["phase"]].append((entry, by_image.get(img["image_id"], [])))
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"unexpected entry in {json_path}: {type(e).__name__}: {e}; "
                           f"expected PASCAL-in-Detail's trainval_merged.json") from None
    return splits


def convert(devkit_path, json_path, nproc=1, overwrite=False):
    voc = require_dir(os.path.join(devkit_path, "VOC2010"), "folder",
                      "DEVKIT_PATH must be the VOCdevkit folder of VOCtrainval_03-May-2010.tar "
                      "(holding VOC2010/)")
    img_dir = require_dir(os.path.join(voc, "JPEGImages"), "folder",
                          "unpack VOCtrainval_03-May-2010.tar")
    require_file(json_path, "annotation file",
                 "download trainval_merged.json (PASCAL in Detail) as mmseg's docs say")
    splits = load_detail_json(json_path)
    if not any(splits.values()):
        raise ConvertError(f"{json_path} lists no images of phase 'train' or 'val'")
    out_dir = os.path.join(voc, "SegmentationClassContext")
    list_dir = os.path.join(voc, "ImageSets", "SegmentationContext")
    results, sizes, no_image = [], {}, 0
    for split in SPLITS:
        jobs, names = [], []
        for image, anns in splits[split]:
            name = os.path.splitext(os.path.basename(image["file_name"]))[0]
            names.append(name)
            no_image += not os.path.isfile(os.path.join(img_dir, image["file_name"]))
            jobs.append((image, anns, os.path.join(out_dir, name + ".png"), overwrite))
        results += run_tasks(convert_one, jobs, nproc, desc=f"pascal_context {split}")
        write_lines(os.path.join(list_dir, f"{split}.txt"), sorted(names))
        sizes[split] = len(names)
    counts = Counter(results)
    return {"written": counts["written"], "kept": counts["kept"], "lists": sizes,
            "no_image": no_image, "out_dir": out_dir, "list_dir": list_dir}


def main(argv=None):
    p = converter_parser(__doc__, "make every PNG again, even those that exist")
    p.add_argument("devkit_path", metavar="DEVKIT_PATH", help="VOCdevkit folder (holds VOC2010/)")
    p.add_argument("json_path", metavar="JSON_PATH", help="trainval_merged.json")
    args = p.parse_args(argv)

    def job():
        res = convert(args.devkit_path, args.json_path, args.nproc, args.overwrite)
        lists = ", ".join(f"{s}.txt ({n})" for s, n in res["lists"].items())
        note = f"; note: {res['no_image']} listed images are missing from JPEGImages" \
            if res["no_image"] else ""
        if res["lists"] != FULL_SIZES:
            note += (f" (note: the full trainval_merged.json gives train {FULL_SIZES['train']}, "
                     f"val {FULL_SIZES['val']})")
        return (f"pascal_context: {res['written']} PNGs written, {res['kept']} kept in "
                f"{res['out_dir']}; {lists} in {res['list_dir']}{note}")
    return run_cli(job)


if __name__ == "__main__":
    run_main(main)
