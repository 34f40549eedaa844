"""Exports of a built model to other runtimes' formats.

    onnx   the whole SegNeXt segmentor as one ONNX graph, written node by node from our
           modules (export_onnx), and running such a graph with onnxruntime (run_onnx)

The command line is tools/export.py. Our weights as an mmseg checkpoint are a checkpoint
matter: jseg.checkpoint.export.
"""
