"""INT8 ONNX: onnxruntime's static quantisation of an exported SegNeXt graph.

`quantize_int8(fp32_file, out_file, config, images)` calibrates on `images` run through the
config's test pipeline as the ONNX predictor feeds the graph (test view, slide windows,
per-image NMF bases: OnnxSegmentor.forward_inputs) and writes a QDQ graph: weights int8 per
output channel in 7 bits (reduce_range: no int16 saturation on CPUs without VNNI), uint8
activations, MinMax ranges. Quantised: the INT8_OPS (convs, and the adds and products
between them, so that fewer values go back and forth to float), except the NMF's nodes
(FLOAT_NODES: its multiplicative updates divide small numbers). Float: the NMF, softmax,
GELU's erf, the norms, resize and argmax. The choices were measured on the demo model
(docs/deploy.md): convs only -0.01 mIoU but slower; with adds and products -0.04, faster.
"""
import logging
import os
import tempfile

from jseg.utils.atomic import atomic_write

__all__ = ["INT8_OPS", "quantize_int8"]

INT8_OPS = ("Conv", "Add", "Mul")
# Node-name prefixes kept in float whatever their op: the NMF's updates.
FLOAT_NODES = ("decode_head.hamburger.ham.",)


class _QuietAdvice(logging.Filter):
    """Drops the quantiser's root-logger advice to pre-process the graph: ours is exported
    with static shapes known where they matter, and pre-processing did not change accuracy
    or speed (docs/deploy.md)."""

    def filter(self, record):
        return "pre-processing" not in record.getMessage()


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a stream of input dicts."""

    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self):  # one pass is all MinMax calibration takes
        pass


def _float_nodes(path):
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return [n.name for n in graph.node if n.name.startswith(FLOAT_NODES)]


def quantize_int8(fp32_file, out_file, config, images, op_types=INT8_OPS):
    """Write the INT8 (QDQ) form of the graph `fp32_file` to `out_file`; returns the number
    of calibration forwards. images: paths or RGB arrays (e.g. training images); config: the
    model's Config (test pipeline and mode)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from jseg.deploy import OnnxSegmentor

    if not images:
        raise ValueError("INT8 calibration needs at least one image (--calib N >= 1)")
    segmentor = OnnxSegmentor(fp32_file, config)
    feeds = [f for img in images for f in segmentor.forward_inputs(img)]
    folder = os.path.dirname(os.path.abspath(out_file))
    with tempfile.TemporaryDirectory(dir=folder, prefix=".int8-") as work:
        staged = os.path.join(work, "int8.onnx")
        quiet = _QuietAdvice()
        logging.getLogger().addFilter(quiet)
        try:
            quantize_static(fp32_file, staged, _Reader(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types), per_channel=True,
                            reduce_range=True, nodes_to_exclude=_float_nodes(fp32_file),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": False,
                                           "WeightSymmetric": True})
        finally:
            logging.getLogger().removeFilter(quiet)
        with open(staged, "rb") as src, atomic_write(out_file, "wb") as dst:
            dst.write(src.read())
    return len(feeds)
