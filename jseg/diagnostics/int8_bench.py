"""INT8 against float: the exported graph, fp32 and quantised (jseg.export.quantize), and our
Jittor model on real photos: speed and argmax agreement. Used by tools/benchmark.py --int8.

The photos are resized to `shape` (bilinear, aspect ratio not kept) and normalised as the
config says; every framework gets the same constant NMF bases (`graph_bases(model, seed)`).
The first `calib` photos calibrate the INT8 graph through the config's test pipeline and
are not measured; the others are, in rounds whose framework order alternates, each photo
once per framework per round (the first `warmup` rounds untimed). Agreement is the share
of pixels whose argmax equals the fp32 graph's.
"""
import logging
import os
import tempfile
import time

import numpy as np

from .benchmark import BenchmarkError, default_threads, set_threads, summarize

__all__ = ["run_int8_benchmark", "format_int8_report"]

logger = logging.getLogger("jseg")


def _inputs(cfg, photos, shape):
    import cv2

    from jseg.data.datasets import load_rgb
    from jseg.data.transforms import Normalize

    normalize = Normalize(cfg.data.mean, cfg.data.std)
    out = []
    for path in photos:
        rgb = cv2.resize(load_rgb(path), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        img = normalize({"img": rgb})["img"]
        out.append(np.ascontiguousarray(img.transpose(2, 0, 1)[None]))
    return out


def run_int8_benchmark(cfg, photos, calib=None, shape=(512, 512), iters=3, warmup=1,
                       threads=None, seed=0, checkpoint=None, config_name=None):
    """A dict: settings, "results" {framework: summarize(...) per photo}, "agreement"
    {framework: share of pixels equal to the fp32 graph's argmax}, "sizes" (graph bytes)."""
    import jittor as jt

    from jseg.apis import init_model
    from jseg.deploy import open_session
    from jseg.export.onnx import export_onnx, graph_bases
    from jseg.export.quantize import quantize_int8

    calib = len(photos) // 2 if calib is None else calib
    if not 1 <= calib < len(photos):
        raise BenchmarkError(f"--int8 needs photos to calibrate on and photos to measure: "
                             f"--calib {calib} of {len(photos)} photos leaves none for one")
    threads = default_threads() if threads is None else threads
    set_threads(threads)
    jt.set_global_seed(seed)
    model = init_model(cfg, checkpoint, device="cpu")
    bases = graph_bases(model, seed)  # (S, D, R), the graphs' constant
    model.decode_head.hamburger.ham.bases_fn = \
        lambda B, S, D, R: jt.array(np.tile(bases, (B, 1, 1)))
    inputs = _inputs(cfg, photos[calib:], shape)
    with tempfile.TemporaryDirectory(prefix="jseg-int8-") as folder:
        fp32, int8 = os.path.join(folder, "fp32.onnx"), os.path.join(folder, "int8.onnx")
        export_onnx(model, fp32, shape, bases="seed", seed=seed, dynamic=True)
        logger.info("calibrating INT8 on %d photo(s)", calib)
        quantize_int8(fp32, int8, cfg, photos[:calib])
        sizes = {"onnxruntime fp32": os.path.getsize(fp32), "onnxruntime int8": os.path.getsize(int8)}
        sessions = {"onnxruntime fp32": open_session(fp32, threads, spinning=False),
                    "onnxruntime int8": open_session(int8, threads, spinning=False)}

        def jittor_run(img):
            with jt.no_grad():
                out = model.inference(jt.array(img))
                jt.sync_all(True)
            return out.numpy()

        runners = {"jittor": jittor_run}
        runners.update({name: (lambda img, s=s: s.run(["logits"], {"image": img})[0])
                        for name, s in sessions.items()})
        times = {name: [] for name in runners}
        preds = {name: [None] * len(inputs) for name in runners}
        order = list(runners)
        for r in range(warmup + iters):
            for name in (order if r % 2 == 0 else order[::-1]):
                for i, img in enumerate(inputs):
                    start = time.perf_counter()
                    logits = runners[name](img)
                    seconds = time.perf_counter() - start
                    if r >= warmup:
                        times[name].append(seconds)
                    preds[name][i] = logits.argmax(1)
    reference = preds["onnxruntime fp32"]
    agreement = {name: float(np.mean([(p == q).mean() for p, q in zip(ps, reference)]))
                 for name, ps in preds.items()}
    return {"config": config_name, "shape": tuple(shape), "threads": threads, "seed": seed,
            "checkpoint": checkpoint, "photos": [os.path.basename(p) for p in photos],
            "calib": calib, "iters": iters, "warmup": warmup, "sizes": sizes,
            "results": {name: summarize(t) for name, t in times.items()},
            "agreement": agreement, "load": os.getloadavg()[0]}


def format_int8_report(r):
    """Lines: settings, then per framework median ms/img, its ratio to fp32 and agreement."""
    lines = [f"config:   {r['config']}",
             f"run:      inference at {r['shape'][0]}x{r['shape'][1]}, {r['threads']} threads, "
             f"{r['iters']} round(s) after {r['warmup']} warm-up, weights "
             f"{r['checkpoint'] or 'random (seed %d)' % r['seed']}",
             f"photos:   calibration {', '.join(r['photos'][:r['calib']])}; measured "
             f"{', '.join(r['photos'][r['calib']:])}",
             f"load:     1-min load average {r['load']:.2f} after", "",
             f"{'framework':<18}{'median ms/img':>14}{'vs fp32':>9}{'argmax = fp32':>15}"
             f"{'file MiB':>10}"]
    fp32 = r["results"]["onnxruntime fp32"]["median_ms"]
    for name, s in r["results"].items():
        size = r["sizes"].get(name)
        lines.append(f"{name:<18}{s['median_ms']:>14.1f}{fp32 / s['median_ms']:>8.2f}x"
                     f"{r['agreement'][name] * 100:>14.2f}%"
                     f"{'' if size is None else f'{size / 2 ** 20:.1f}':>10}")
    return lines
