"""Deployment without Jittor: the ONNX predictor (onnx_segmentor) and the local web demo
(server). Importing this package never imports Jittor (tests/deploy checks it)."""
from .onnx_segmentor import DeployError, OnnxSegmentor, open_session

__all__ = ["OnnxSegmentor", "DeployError", "open_session"]
