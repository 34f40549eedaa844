"""Make Cityscapes *_gtFine_labelTrainIds.png label maps and split lists (mmseg 1.x recipe).

    python tools/dataset_converters/cityscapes.py data/cityscapes [--nproc 8]

Input: RAW_ROOT with gtFine_trainvaltest.zip unpacked in it (and leftImg8bit beside it):
    RAW_ROOT/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_polygons.json
Output:
    RAW_ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png
        next to each polygons file: 8-bit grey PNG of the 19 train ids, 255 = ignore, drawn
        by cityscapesscripts (its label table and polygon order, as its json2labelImg -t)
    RAW_ROOT/{train,val,test}.txt
        one `<city>/<city>_<seq>_<frame>` per line, sorted, for each split folder present

Needs the optional package cityscapesscripts (pip install cityscapesscripts).
Restartable: label maps that already exist are kept (--overwrite makes them again).
"""
import io
import os
from collections import Counter

from jseg.utils.cli import run_main
from jseg.data.converters import (ConvertError, converter_parser, find_files,
                                  is_complete, require_dir, run_cli, run_tasks,
                                  write_bytes, write_lines)

SPLITS = ("train", "val", "test")
POLYGONS = "_gtFine_polygons.json"
TRAIN_IDS = "_gtFine_labelTrainIds.png"


def _cityscapesscripts():
    try:
        from cityscapesscripts.helpers.annotation import Annotation
        from cityscapesscripts.helpers.labels import name2label
        from cityscapesscripts.preparation.json2labelImg import createLabelImage
    except ImportError as e:
        raise ConvertError(f"the Cityscapes converter needs the package cityscapesscripts "
                           f"({e}); install it with: pip install cityscapesscripts") from None
    return Annotation, name2label, createLabelImage


def label_path(polygons_path):
    return polygons_path[:-len(POLYGONS)] + TRAIN_IDS


def convert_one(job):
    """Draw one *_gtFine_polygons.json as train ids; returns 'written' or 'kept'."""
    polygons_path, overwrite = job
    out = label_path(polygons_path)
    if not overwrite and is_complete(out):
        return "kept"
    Annotation, name2label, createLabelImage = _cityscapesscripts()
    annotation = Annotation()
    try:
        annotation.fromJsonFile(polygons_path)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ConvertError(f"cannot read Cityscapes polygons {polygons_path}: "
                           f"{type(e).__name__}: {e}") from None
    # createLabelImage exits the process on an unknown label; say which file instead.
    for obj in annotation.objects:
        name = getattr(obj, "label", None)
        if getattr(obj, "deleted", 0) or name in name2label:
            continue
        if not (name and name.endswith("group") and name[:-len("group")] in name2label):
            raise ConvertError(f"unknown label '{name}' in {polygons_path}; not in "
                               f"cityscapesscripts' label table")
    image = createLabelImage(annotation, "trainIds")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_bytes(out, buf.getvalue())
    return "written"


def convert(raw_root, nproc=1, overwrite=False):
    """Convert every polygons file under RAW_ROOT/gtFine and write the split lists."""
    require_dir(raw_root, "Cityscapes root")
    gt_dir = require_dir(os.path.join(raw_root, "gtFine"), "folder",
                         f"unpack gtFine_trainvaltest.zip into {raw_root} (it makes "
                         f"gtFine/{{train,val,test}}/<city>/)")
    polygons = find_files(gt_dir, POLYGONS)
    if not polygons:
        raise ConvertError(f"no *{POLYGONS} files under {gt_dir}; expected "
                           f"gtFine/<split>/<city>/<city>_<seq>_<frame>{POLYGONS} from "
                           f"gtFine_trainvaltest.zip")
    _cityscapesscripts()  # fail before starting if the package is missing
    results = run_tasks(convert_one, [(os.path.join(gt_dir, p), overwrite) for p in polygons],
                        nproc, desc="cityscapes labelTrainIds")
    lists = {}
    for split in SPLITS:
        split_dir = os.path.join(gt_dir, split)
        if not os.path.isdir(split_dir):
            continue
        names = [p[:-len(POLYGONS)] for p in find_files(split_dir, POLYGONS)]
        write_lines(os.path.join(raw_root, f"{split}.txt"), names)
        lists[split] = len(names)
    counts = Counter(results)
    return {"written": counts["written"], "kept": counts["kept"], "lists": lists}


def main(argv=None):
    p = converter_parser(__doc__, "make every label map again, even those that exist")
    p.add_argument("raw_root", metavar="RAW_ROOT", help="Cityscapes folder holding gtFine/")
    args = p.parse_args(argv)

    def job():
        res = convert(args.raw_root, args.nproc, args.overwrite)
        lists = ", ".join(f"{s}.txt ({n})" for s, n in res["lists"].items())
        return (f"cityscapes: {res['written']} label maps written, {res['kept']} kept; "
                f"split lists {lists} in {args.raw_root}")
    return run_cli(job)


if __name__ == "__main__":
    run_main(main)
