"""Convert the SBD "aug" labels to PNG next to Pascal VOC 2012 and write aug.txt (mmseg 1.x recipe).

    python tools/dataset_converters/voc_aug.py data/VOCdevkit data/VOCdevkit/VOCaug [--nproc 8]

Input:
    DEVKIT_PATH/VOC2012/ImageSets/Segmentation/{train,val}.txt   from VOCtrainval_11-May-2012.tar
    AUG_PATH/dataset/cls/<name>.mat and AUG_PATH/dataset/{train,val}.txt
        the benchmark_RELEASE folder of SBD's benchmark.tgz (mmseg's docs rename it VOCaug)
Output:
    DEVKIT_PATH/VOC2012/SegmentationClassAug/<name>.png
        one per .mat file: 8-bit grey PNG of its GTcls.Segmentation, class ids 0..20
    DEVKIT_PATH/VOC2012/ImageSets/Segmentation/aug.txt
        SBD train + val names that are in neither VOC train nor VOC val (9,118 for the full
        release); training reads train.txt with SegmentationClass plus aug.txt with
        SegmentationClassAug, so VOC's own SegmentationClass PNGs are used as they are
    DEVKIT_PATH/VOC2012/ImageSets/Segmentation/trainaug.txt
        VOC train + SBD train + val, minus VOC val (10,582 names), for single-folder setups
    Both lists are sorted; mmseg writes the same sets in set order.

Needs the optional package scipy to read the .mat files (pip install scipy).
Restartable: PNGs that already exist are kept (--overwrite makes them again).
"""
import os
from collections import Counter


import numpy as np

from jseg.utils.cli import run_main
from jseg.data.converters import (ConvertError, converter_parser, find_files,
                                  is_complete, require_dir, require_file, run_tasks,
                                  run_cli, write_lines, write_png)

# Sizes of the lists for the full VOC 2012 + SBD release (mmseg asserts them).
FULL_TRAINAUG = 10582
FULL_AUG = 9118


def _loadmat():
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError as e:
        raise ConvertError(f"reading SBD's .mat files needs the package scipy ({e}); "
                           f"install it with: pip install scipy") from None
    return loadmat, MatReadError


def read_sbd_mask(mat_path):
    """The (H, W) uint8 class-id map stored in an SBD cls/*.mat file (GTcls.Segmentation)."""
    loadmat, MatReadError = _loadmat()
    try:
        data = loadmat(mat_path)
        mask = data["GTcls"]["Segmentation"][0, 0]
    except (MatReadError, OSError, ValueError, KeyError, IndexError, TypeError,
            NotImplementedError) as e:
        raise ConvertError(f"cannot read GTcls.Segmentation from {mat_path}: "
                           f"{type(e).__name__}: {e}; expected an SBD dataset/cls/*.mat "
                           f"file") from None
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConvertError(f"GTcls.Segmentation in {mat_path} has shape {mask.shape}; "
                           f"expected a 2-D class-id map")
    return mask.astype(np.uint8)


def convert_one(job):
    mat_path, out, overwrite = job
    if not overwrite and is_complete(out):
        return "kept"
    write_png(out, read_sbd_mask(mat_path))
    return "written"


def _read_names(path):
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def convert(devkit_path, aug_path, nproc=1, overwrite=False):
    voc = require_dir(os.path.join(devkit_path, "VOC2012"), "folder",
                      "DEVKIT_PATH must be the VOCdevkit folder of VOCtrainval_11-May-2012.tar "
                      "(holding VOC2012/)")
    seg_sets = os.path.join(voc, "ImageSets", "Segmentation")
    voc_train = _read_names(require_file(os.path.join(seg_sets, "train.txt"),
                                         "VOC 2012 split file"))
    voc_val = _read_names(require_file(os.path.join(seg_sets, "val.txt"), "VOC 2012 split file"))
    fix = ("AUG_PATH must be SBD's benchmark_RELEASE folder (from benchmark.tgz), holding "
           "dataset/cls/*.mat and dataset/{train,val}.txt")
    sbd = require_dir(os.path.join(aug_path, "dataset"), "folder", fix)
    cls_dir = require_dir(os.path.join(sbd, "cls"), "folder", fix)
    sbd_names = (_read_names(require_file(os.path.join(sbd, "train.txt"), "SBD split file", fix))
                 + _read_names(require_file(os.path.join(sbd, "val.txt"), "SBD split file", fix)))
    mats = [m for m in find_files(cls_dir, ".mat") if os.sep not in m]
    if not mats:
        raise ConvertError(f"no .mat files in {cls_dir}; {fix}")
    have = {m[:-len(".mat")] for m in mats}
    missing = sorted(set(sbd_names) - have)
    if missing:
        raise ConvertError(f"{len(missing)} name(s) of SBD's train.txt/val.txt have no .mat file "
                           f"in {cls_dir}, e.g. {', '.join(missing[:3])}; the SBD download "
                           f"looks incomplete")
    _loadmat()  # fail before starting if scipy is missing

    out_dir = os.path.join(voc, "SegmentationClassAug")
    jobs = [(os.path.join(cls_dir, m), os.path.join(out_dir, m[:-len(".mat")] + ".png"),
             overwrite) for m in mats]
    results = run_tasks(convert_one, jobs, nproc, desc="SBD .mat -> SegmentationClassAug")

    sbd_set, train_set, val_set = set(sbd_names), set(voc_train), set(voc_val)
    aug = sorted(sbd_set - train_set - val_set)
    trainaug = sorted((train_set | sbd_set) - val_set)
    write_lines(os.path.join(seg_sets, "aug.txt"), aug)
    write_lines(os.path.join(seg_sets, "trainaug.txt"), trainaug)
    counts = Counter(results)
    return {"written": counts["written"], "kept": counts["kept"], "aug": len(aug),
            "trainaug": len(trainaug), "out_dir": out_dir, "lists_dir": seg_sets}


def main(argv=None):
    p = converter_parser(__doc__, "make every PNG again, even those that exist")
    p.add_argument("devkit_path", metavar="DEVKIT_PATH", help="VOCdevkit folder (holds VOC2012/)")
    p.add_argument("aug_path", metavar="AUG_PATH",
                   help="SBD benchmark_RELEASE folder (holds dataset/cls/)")
    args = p.parse_args(argv)

    def job():
        res = convert(args.devkit_path, args.aug_path, args.nproc, args.overwrite)
        note = ""
        if (res["trainaug"], res["aug"]) != (FULL_TRAINAUG, FULL_AUG):
            note = (f" (note: the full VOC 2012 + SBD release gives {FULL_TRAINAUG} and "
                    f"{FULL_AUG})")
        return (f"voc_aug: {res['written']} PNGs written, {res['kept']} kept in "
                f"{res['out_dir']}; aug.txt {res['aug']} names, trainaug.txt "
                f"{res['trainaug']} names in {res['lists_dir']}{note}")
    return run_cli(job)


if __name__ == "__main__":
    run_main(main)
