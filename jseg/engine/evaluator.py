"""Evaluation and prediction over a split: logits per view -> original size -> metrics.

For each image the loader gives one view (or several for multi-scale + flip).
Each view is run through `model.inference` (whole or slide, from the config),
its logits are brought back to the original image (padding cropped, flip undone,
bilinear resize), and with several views their softmax probabilities are
averaged, as mmseg's test-time augmentation does (jseg.data.predictions). The argmax is
the prediction.
"""
import json
import logging
import os
import time

import jittor as jt
import numpy as np
from tqdm import tqdm

from jseg.checkpoint import load_weights
from jseg.data.datasets import DATASETS, dataset_settings, read_image
from jseg.data.loader import build_val_loader
from jseg.data.palettes import overlay
from jseg.data.predictions import combine_views
from jseg.deploy import OnnxSegmentor
from jseg.models.ham_head import ImageBases
from jseg.utils.atomic import atomic_write, write_image

from .confusion import save_confusion_matrix
from .metrics import IoUAccumulator, format_table
from .workdir import WorkDir

__all__ = ["EvaluationError", "predict_image", "predict_draws", "evaluate", "evaluate_seeds",
           "run_evaluation", "run_seed_spread",
           "prediction_writer", "evaluate_weights"]

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """Evaluation cannot run as asked (e.g. metrics without labels); the message says why."""


def predict_image(model, views, return_probs=False, key=None, seed=0):
    """Prediction (H, W) int64 at the original size for one loader item's `views`.

    With return_probs, also the (C, H, W) float32 class probabilities.
    key: the image's `image_key`: its NMF bases come from (seed, key) (`ImageBases`); None
        leaves the model's own bases (`bases_fn`, else Jittor's RNG).
    """
    if key is None:
        return predict_draws(model, views, return_probs)[0]
    ham = model.decode_head.hamburger.ham
    saved = ham.bases_fn
    ham.bases_fn = ImageBases(seed, key)
    try:
        return predict_draws(model, views, return_probs)[0]
    finally:
        ham.bases_fn = saved


def predict_draws(model, views, return_probs=False):
    """predict_image for every row of the model's output: one per NMF draw when
    model.nmf_draws is K > 1 (see EncoderDecoder), else a list of one."""
    def view_logits():
        for view in views:
            with jt.no_grad():
                yield model.inference(jt.array(view["img"])).numpy(), view["meta"]  # (K, C, h, w)
    return combine_views(view_logits(), len(views), return_probs)


def evaluate(model, loader, num_classes, ignore_index=255, on_prediction=None, progress=True,
             labelled=True, seed=0):
    """Run `model` over `loader`; returns (IoUAccumulator, seconds).

    on_prediction(item, pred) is called per image (e.g. to write PNGs). Under MPI each
    rank evaluates its share of the loader and the confusion matrices are summed.
    labelled=False (a split without label maps, e.g. a benchmark's test images): only
    predictions, and (None, seconds) is returned.
    seed: the NMF bases of an image come from (seed, its pixels) alone (`ImageBases`), so
    its prediction is the same in any split, subset, order, process or loader worker count.
    """
    accs, seconds = _evaluate_draws(model, loader, num_classes, ignore_index, [seed],
                                    on_prediction, progress, labelled)
    return (accs[0] if accs is not None else None), seconds


def evaluate_seeds(model, loader, num_classes, seeds, ignore_index=255, progress=True):
    """`evaluate` for each NMF seed in `seeds`, the backbone run once per view and only the
    decode head per seed (EncoderDecoder.nmf_draws); returns ([IoUAccumulator per seed],
    seconds). Each accumulator equals evaluate(..., seed=s)'s up to float round-off in the
    batched head."""
    return _evaluate_draws(model, loader, num_classes, ignore_index, list(seeds), None,
                           progress, True)


def _evaluate_draws(model, loader, num_classes, ignore_index, seeds, on_prediction, progress,
                    labelled):
    """Jittor model: every image with each seed's bases (nmf_draws); ONNX predictor
    (jseg.deploy.OnnxSegmentor): the same per-image bases, one seed."""
    if isinstance(model, OnnxSegmentor):
        if len(seeds) != 1:
            raise EvaluationError("several NMF seeds at once need the Jittor backend")
        return _evaluate_split(
            lambda item: [model.predict_views(item["views"], item["key"], seed=seeds[0])],
            loader, num_classes, ignore_index, 1, on_prediction, progress, labelled)
    was_training = model.is_training()
    model.eval()
    ham = model.decode_head.hamburger.ham
    saved = ham.bases_fn, model.nmf_draws
    model.nmf_draws = len(seeds)

    def predict(item):
        ham.bases_fn = ImageBases(seeds, item["key"])
        return predict_draws(model, item["views"])
    try:
        return _evaluate_split(predict, loader, num_classes, ignore_index, len(seeds),
                               on_prediction, progress, labelled)
    finally:
        ham.bases_fn, model.nmf_draws = saved
        if was_training:
            model.train()


def _evaluate_split(predict, loader, num_classes, ignore_index, draws, on_prediction, progress,
                    labelled):
    """predict(item) -> [prediction per draw] over the loader; ([IoUAccumulator per draw] or
    None without labels, seconds), the counts summed over MPI ranks."""
    accs = [IoUAccumulator(num_classes, ignore_index) for _ in range(draws)]
    start = time.time()
    for item in tqdm(loader, desc="eval", unit="img", disable=not progress, leave=False):
        preds = predict(item)
        if labelled:
            if item["seg"] is None:
                raise ValueError(f"{item['img_path']} has no label map in a labelled split")
            for acc, pred in zip(accs, preds):
                acc.add(pred, item["seg"])
        if on_prediction is not None:
            on_prediction(item, preds[0])
    if not labelled:
        return None, time.time() - start
    if jt.in_mpi:  # float64 counts are exact up to 2^53 pixels
        for acc in accs:
            acc.confusion = jt.array(acc.confusion.astype(np.float64)).mpi_all_reduce("add") \
                .numpy().round().astype(np.int64)
    return accs, time.time() - start


def run_evaluation(cfg, model, loader, run_log=None, iteration=None, progress=True,
                   on_prediction=None, seed=0):
    """Evaluate on `loader`, log the per-class table and the summary; returns the result dict,
    or None when the split has no labels (predictions only, through `on_prediction`).

    The metrics are cfg.evaluation.metrics (jseg.engine.metrics: aAcc, mIoU, mAcc, ... and
    per-class arrays); the result also holds the counts as "confusion_matrix". With
    cfg.evaluation.confusion_matrix, rank 0 writes them into cfg.work_dir
    (jseg.engine.confusion): confusion_matrix.{npy,png}, or during training (`iteration`
    given) confusion_matrix_iter_<iteration, 8 digits>.{npy,png}, one pair per evaluation.
    run_log: the trainer's log, which records the result as a metrics line.
    seed: of the NMF bases (see `evaluate`)."""
    head = cfg.model.decode_head
    labelled = cfg.data.val.get("ann_dir") is not None
    acc, seconds = evaluate(model, loader, head.num_classes, head.ignore_index,
                            on_prediction=on_prediction, progress=progress, labelled=labelled,
                            seed=seed)
    if acc is None:
        logger.info("predicted %d unlabelled images (%.1fs)", len(loader), seconds)
        return None
    result = acc.compute(cfg.evaluation.metrics)
    classes = dataset_settings(cfg.data)["classes"]
    logger.info("evaluation%s on %d images (%.1fs):\n%s",
                f" at iteration {iteration}" if iteration else "", len(loader), seconds,
                format_table(result, classes))
    written = None
    if cfg.evaluation.confusion_matrix and (not jt.in_mpi or jt.rank == 0):  # rank 0 writes
        name = "confusion_matrix" if iteration is None else f"confusion_matrix_iter_{iteration:08d}"
        try:
            written = save_confusion_matrix(cfg.work_dir, name, acc.confusion, classes)
            logger.info("confusion matrix written to %s (.png: normalised per label)",
                        written[0])
        except OSError as e:  # the metrics are logged already; the run goes on
            logger.warning("could not write the confusion matrix: %s", e)
    if run_log is not None:
        record = {k: _json_number(v) for k, v in result.items() if not isinstance(v, np.ndarray)}
        record.update({k: {c: _json_number(x) for c, x in zip(classes, v)}
                       for k, v in result.items() if isinstance(v, np.ndarray)})
        if written:
            record["confusion_matrix"] = os.path.basename(written[0])
        run_log.record(mode="val", iter=iteration, **record)
    result["confusion_matrix"] = acc.confusion
    return result


def run_seed_spread(cfg, model, loader, seeds, progress=True):
    """Evaluate with every NMF seed in `seeds` (`evaluate_seeds`) and log the spread of
    aAcc / mIoU / mAcc and of every class's IoU over them: mean, std (ddof 1), min, max.
    Rank 0 writes it all to cfg.work_dir/nmf_seed_spread.json. Returns that dict."""
    head = cfg.model.decode_head
    accs, seconds = evaluate_seeds(model, loader, head.num_classes, seeds, head.ignore_index,
                                   progress)
    classes = list(dataset_settings(cfg.data)["classes"])
    results = [acc.compute(["mIoU"]) for acc in accs]

    def spread(values):
        v = np.asarray(values, np.float64)
        if np.isnan(v).all():
            return {"mean": None, "std": None, "min": None, "max": None}
        std = float(np.nanstd(v, ddof=1)) if np.count_nonzero(~np.isnan(v)) > 1 else 0.0
        return {"mean": float(np.nanmean(v)), "std": std, "min": float(np.nanmin(v)),
                "max": float(np.nanmax(v))}

    summary = {key: dict(spread([r[key] for r in results]),
                         per_seed=[_json_number(r[key]) for r in results])
               for key in ("aAcc", "mIoU", "mAcc")}
    per_class = {c: spread([r["IoU"][i] for r in results]) for i, c in enumerate(classes)}
    out = {"seeds": [int(s) for s in seeds], "images": len(loader), "seconds": seconds,
           "summary": summary, "IoU": per_class}

    def cell(x):
        return "nan" if x is None else f"{x:.2f}"

    width = max(len("Class"), *(len(c) for c in classes))
    lines = [f"{'Class':<{width}}  {'IoU mean':>8}  {'std':>5}  {'min':>6}  {'max':>6}"]
    lines += [f"{c:<{width}}  {cell(v['mean']):>8}  {cell(v['std']):>5}  {cell(v['min']):>6}  "
              f"{cell(v['max']):>6}" for c, v in per_class.items()]
    for key, v in summary.items():
        lines.append(f"{key}: mean {cell(v['mean'])}  std {cell(v['std'])}  min "
                     f"{cell(v['min'])}  max {cell(v['max'])}  (per seed: "
                     + " ".join(cell(x) for x in v["per_seed"]) + ")")
    logger.info("NMF seed spread over %d seeds (%s) on %d images (%.1fs; the backbone ran once "
                "per image, the head once per seed):\n%s", len(seeds),
                ", ".join(map(str, seeds)), len(loader), seconds, "\n".join(lines))
    if not jt.in_mpi or jt.rank == 0:
        path = os.path.join(cfg.work_dir, "nmf_seed_spread.json")
        try:
            os.makedirs(cfg.work_dir, exist_ok=True)
            with atomic_write(path, "w") as f:
                json.dump(out, f, indent=1)
            logger.info("seed spread written to %s", path)
        except OSError as e:
            logger.warning("could not write %s: %s", path, e)
    return out


def _json_number(value):
    """A float for metrics.jsonl, nan (e.g. a class absent from the labels) as null."""
    return None if np.isnan(value) else float(value)


def prediction_writer(cfg, save_dir, label_ids=False):
    """on_prediction callback writing <stem>.png (class ids) and overlay/<stem>.jpg.

    label_ids: the PNGs hold the ids the dataset's official evaluation expects (Cityscapes'
    label ids) instead of the class (train) ids. Both files are written atomically.
    """
    lut = DATASETS[cfg.data.type].label_ids if cfg.data.type in DATASETS else None
    if label_ids and lut is None:
        raise EvaluationError(f"label ids are for datasets whose evaluation server reads "
                              f"other ids than the classes' (cityscapes); this config's "
                              f"data.type is {cfg.data.type!r}")
    lut = np.array(lut, np.uint8) if label_ids else None
    palette = dataset_settings(cfg.data)["palette"]
    os.makedirs(os.path.join(save_dir, "overlay"), exist_ok=True)

    def write(item, pred):
        stem = os.path.splitext(os.path.basename(item["img_path"]))[0]
        write_image(os.path.join(save_dir, f"{stem}.png"),
                    lut[pred] if lut is not None else pred.astype(np.uint8))
        drawn = overlay(read_image(item["img_path"], to_rgb=True), pred, palette, 0.5)
        write_image(os.path.join(save_dir, "overlay", f"{stem}.jpg"), drawn[:, :, ::-1])

    return write


def evaluate_weights(cfg, weights, *, save_dir=None, metrics=True, tta=False, seed=None,
                     label_ids=False, progress=True, nmf_seeds=1, onnx=None):
    """Evaluate and / or predict the validation split of `cfg` with `weights`.

    weights: a weights file, or "auto" (the newest checkpoint in cfg.work_dir).
    save_dir: also write label maps and overlays there (prediction_writer). The confusion
        matrix of a labelled split goes to cfg.work_dir (see run_evaluation), never there.
    metrics: the split must have labels (False: predictions of an unlabelled split too).
    seed: of the NMF bases (default cfg.seed, else 0): an image's bases come from (seed, a
        digest of its pixels), so the same seed gives the same prediction of an image in
        any list, order and process count.
    nmf_seeds: K > 1 evaluates with the seeds seed .. seed + K - 1 at once and returns the
        spread (run_seed_spread) instead of one result; needs labels, no save_dir.
    onnx: an exported graph (tools/export.py) run by onnxruntime instead of `weights`
        (jseg.deploy.OnnxSegmentor): the same pipeline, windows and per-image NMF bases.
    Returns (result or None without labels, number of images).
    """
    from jseg.models import build_model

    if metrics and cfg.data.val.get("ann_dir") is None:
        raise EvaluationError("evaluation with metrics needs label maps, but data.val.ann_dir "
                              "is null; write predictions of unlabelled images instead")
    if weights is None and onnx is None:
        raise EvaluationError("evaluation needs weights: give a weights file or 'auto'")
    if not isinstance(nmf_seeds, int) or nmf_seeds < 1:
        raise EvaluationError(f"the number of NMF seeds must be an integer >= 1, got "
                              f"{nmf_seeds!r}")
    if nmf_seeds > 1 and (save_dir or not metrics):
        raise EvaluationError("several NMF seeds measure the spread of the metrics: use them "
                              "with val (labels, no saved predictions)")
    if nmf_seeds > 1 and onnx is not None:
        raise EvaluationError("several NMF seeds at once need the Jittor backend; evaluate the "
                              "ONNX graph with one seed (--seed S) at a time")
    if weights == "auto":
        weights = WorkDir(cfg.work_dir).newest_checkpoint()
    on_prediction = prediction_writer(cfg, save_dir, label_ids) if save_dir else None
    seed = seed if seed is not None else (cfg.seed if cfg.seed is not None else 0)
    if onnx is not None:
        model, weights = OnnxSegmentor(onnx, cfg, seed=seed), onnx
    else:
        model = build_model(cfg.model)
        load_weights(model, weights, strict=True)
    jt.set_global_seed(seed)
    rank, world = (jt.rank, jt.world_size) if jt.in_mpi else (0, 1)
    loader = build_val_loader(cfg, tta=tta, rank=rank, world_size=world)
    logger.info("evaluating %s (seed %d%s)", weights, seed, ", multi-scale + flip" if tta else "")
    if nmf_seeds > 1:
        seeds = list(range(seed, seed + nmf_seeds))
        return run_seed_spread(cfg, model, loader, seeds, progress=progress), len(loader)
    result = run_evaluation(cfg, model, loader, progress=progress, on_prediction=on_prediction,
                            seed=seed)
    if save_dir:
        logger.info("label maps and overlays written to %s", save_dir)
    return result, len(loader)
