"""Exports of a built model to other runtimes' formats.

    onnx          the whole SegNeXt segmentor as one ONNX graph, written node by node from
                  our modules (export_onnx), and running such a graph with onnxruntime
    mmseg         our checkpoint -> an mmsegmentation 1.x checkpoint (export_mmseg_checkpoint)
    torch_writer  torch.save's zip format, written without torch (atomically)

The command line is tools/export.py.
"""
