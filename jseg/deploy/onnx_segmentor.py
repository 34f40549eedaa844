"""SegNeXt without Jittor: an exported ONNX graph run by onnxruntime with our test pipeline.

`OnnxSegmentor(onnx_file, config)` predicts as `jseg.apis.inference_model` and run_net's
evaluation do, with numpy, OpenCV and onnxruntime only: the config's test pipeline
(keep-ratio resize to `data.test_scale`, normalise, pad to `size_divisor`), whole or slide
inference as `model.test_cfg` says (the same window grid and mean), optional multi-scale +
flip views, then crop, resize back and argmax (jseg.data.predictions). The graph comes
from `tools/export.py --format onnx --dynamic` (any image size), best with `--bases input`:
then every forward gets the NMF bases our evaluator draws, seeded_bases((S, D, R), seed,
(*image_key, k)) for the k-th forward of an image (views, then windows, in order), and
predictions equal the Jittor model's. A graph with constant bases gives the same bases to
every image (`--bases seed`).
"""
import numbers
import os

import numpy as np

from jseg.config import Config, load_config
from jseg.data.datasets import dataset_settings, image_key
from jseg.data.loader import image_views, test_pipelines
from jseg.data.predictions import combine_views
from jseg.utils.inference import seeded_bases, slide_windows

__all__ = ["OnnxSegmentor", "DeployError", "open_session"]

INSTALL_HINT = "pip install onnxruntime"


class DeployError(ValueError):
    """The graph or its config cannot be used as asked; the message says why and what to do."""


def open_session(path, threads=None, spinning=True, providers=None):
    """An onnxruntime InferenceSession (CPU unless `providers` say otherwise) for the graph in
    `path`. threads: intra_op_num_threads (default: onnxruntime's choice, all cores).
    spinning=False: idle threads sleep at once instead of polling (onnxruntime's default),
    which would take the cores from whatever runs next in the process or beside it.
    ImportError without onnxruntime; DeployError for a missing or unreadable file."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"running ONNX graphs needs onnxruntime ({e}); install it with: "
                          f"{INSTALL_HINT}") from None
    if threads is not None and (not isinstance(threads, numbers.Integral)
                                or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DeployError(f"ONNX file {path} not found; export one with tools/export.py "
                          "--format onnx --dynamic --bases input")
    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(path, options,
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise DeployError(f"onnxruntime cannot load {path}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


class OnnxSegmentor:
    """Semantic segmentation with an exported SegNeXt graph; see the module docstring.

    Args:
        onnx_file: a graph of tools/export.py (inputs `image` and, with --bases input, `bases`).
        config: the model's YAML config (path or Config): test pipeline, test mode, classes.
        seed: of the NMF bases (default: the config's seed, else 0, as run_net's).
        threads: onnxruntime's intra-op threads (default: its own choice, all cores).
        providers: onnxruntime execution providers (default CPU).
    """

    def __init__(self, onnx_file, config, seed=None, threads=None, providers=None):
        self.cfg = config if isinstance(config, Config) else load_config(config)
        self.onnx_file = os.fspath(onnx_file)
        try:
            self.session = open_session(self.onnx_file, threads, providers=providers)
        except ImportError as e:
            raise DeployError(str(e)) from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "image" not in inputs:
            raise DeployError(f"{self.onnx_file} has no input 'image' (inputs: {sorted(inputs)}); "
                              "export the graph with tools/export.py --format onnx")
        hw = tuple(inputs["image"].shape[2:])  # ints, or names when dynamic
        self.fixed_hw = hw if all(isinstance(d, int) for d in hw) else None
        self.takes_bases = "bases" in inputs
        head = self.cfg.model.decode_head
        self.bases_shape = (head.ham.md_s, head.ham_channels // head.ham.md_s, head.ham.md_r)
        if self.takes_bases and inputs["bases"].shape[1:] != list(self.bases_shape[1:]):
            raise DeployError(f"{self.onnx_file} takes bases {inputs['bases'].shape}, the config "
                              f"gives (S, D, R) = {self.bases_shape}: use the config the graph "
                              "was exported with")
        test_cfg = self.cfg.model.test_cfg
        self.mode, self.crop_size, self.stride = test_cfg.mode, test_cfg.crop_size, test_cfg.stride
        self.seed = int(seed if seed is not None else (self.cfg.seed or 0))
        settings = dataset_settings(self.cfg.data)
        self.classes, self.palette = list(settings["classes"]), settings["palette"]

    def __call__(self, imgs, return_probs=False, tta=False):
        """As inference_model: a path or (H, W, 3) uint8 RGB array (or a list) -> {"pred":
        (H, W) int64} (+ "probs" (C, H, W) float32 with return_probs) per image."""
        pipelines = test_pipelines(self.cfg, tta)
        single = not isinstance(imgs, (list, tuple))
        results = []
        for img in ([imgs] if single else imgs):
            rgb, views = image_views(img, pipelines)
            out = self.predict_views(views, image_key(rgb), return_probs)
            results.append({"pred": out[0], "probs": out[1]} if return_probs else {"pred": out})
        return results[0] if single else results

    def predict_views(self, views, key, return_probs=False, seed=None):
        """Prediction (H, W) int64 of one image's views (jseg.data.loader.make_views), and with
        return_probs the (C, H, W) probabilities; key: its image_key (for the NMF bases)."""
        forwards = iter(range(1 << 30))  # k-th forward of this image

        def view_logits():
            for view in views:
                yield self.inference(view["img"], key, forwards, seed), view["meta"]
        return combine_views(view_logits(), len(views), return_probs)[0]

    def inference(self, img, key, forwards, seed=None):
        """Logits (1, C, h, w) of a (1, 3, h, w) view: whole, or slide windows averaged."""
        _, _, height, width = img.shape
        boxes = self._boxes(height, width)
        if len(boxes) == 1 and boxes[0] == (0, height, 0, width):
            return self._run(self._feeds(img, key, next(forwards), seed))
        total = np.zeros((1, 0, height, width), np.float32)
        count = np.zeros((1, 1, height, width), np.float32)
        for y1, y2, x1, x2 in boxes:
            window = np.ascontiguousarray(img[:, :, y1:y2, x1:x2])
            logits = self._run(self._feeds(window, key, next(forwards), seed))
            if total.shape[1] == 0:
                total = np.zeros((1, logits.shape[1], height, width), np.float32)
            total[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
        return total / count

    def forward_inputs(self, img):
        """The graph's input dicts for one image, in the order `__call__` runs them (its test
        view, then the windows in slide mode): calibration data for INT8 (jseg.export)."""
        rgb, views = image_views(img, test_pipelines(self.cfg))
        key, forwards = image_key(rgb), iter(range(1 << 30))
        for view in views:
            _, _, height, width = view["img"].shape
            for y1, y2, x1, x2 in self._boxes(height, width):
                window = np.ascontiguousarray(view["img"][:, :, y1:y2, x1:x2])
                yield self._feeds(window, key, next(forwards), None)

    def _boxes(self, height, width):
        """The forwards' windows (y1, y2, x1, x2) over a view: the whole view, or the slide grid."""
        if self.mode != "slide":
            return [(0, height, 0, width)]
        return slide_windows(height, width, self.crop_size, self.stride)

    def _feeds(self, img, key, forward, seed):
        """The graph's inputs for (1, 3, h, w), with the image's bases for its `forward`-th run."""
        if self.fixed_hw is not None and tuple(img.shape[2:]) != self.fixed_hw:
            raise DeployError(f"{self.onnx_file} takes {self.fixed_hw[0]}x{self.fixed_hw[1]} "
                              f"inputs only, this one is {img.shape[2]}x{img.shape[3]}; export "
                              "with --dynamic for any size")
        feeds = {"image": img}
        if self.takes_bases:
            seed = self.seed if seed is None else int(seed)
            feeds["bases"] = seeded_bases(self.bases_shape, seed, (*key, forward))
        return feeds

    def _run(self, feeds):
        return self.session.run(["logits"], feeds)[0]
