"""Install jseg (distribution name `segnext-jittor`; `jseg` on PyPI is an unrelated project)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r'__version__ = "([^"]+)"', Path("jseg/__init__.py").read_text()).group(1)

setup(
    name="segnext-jittor",
    version=version,
    description="SegNeXt semantic segmentation in Jittor, exact to the PyTorch references",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8",
    packages=find_packages(include=["jseg", "jseg.*", "weights_convert"]),
    package_data={"jseg.deploy": ["page.html"]},  # the web demo's page (tools/serve.py)
    install_requires=[
        "jittor>=1.3.11,<1.4",
        # Jittor's own offline assets (oneDNN for CPU convolutions; cub/cutt/nccl for CUDA),
        # so that Jittor never downloads at run time.
        "jittor-offline>=0.0.7",
        "numpy>=1.23",
        # OpenBLAS as numpy's and scipy's wheels build it, as a package: jseg's 1x1-conv
        # matmuls call its sgemm (jseg.ops.sgemm). 0.3.34 runs SegNeXt's shapes 5-50% faster
        # than the 0.3.23 inside numpy 1.26's wheel; no dependencies of its own.
        "scipy-openblas32>=0.3.27",
        "pillow>=9.0",
        "opencv-python-headless>=4.6",
        "pyyaml>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={
        # selenium drives a headless Chromium in the web demo's test (tools/serve.py); the
        # test is skipped without it or without chromium + chromedriver.
        "test": ["pytest>=7.0", "selenium>=4.10"],
        # The PyTorch reference for parity tests; torch 2.13.0 is the only supported build.
        "parity": ["torch==2.13.0", "mmcv-lite==2.1.0", "mmengine==0.10.7",
                   "mmsegmentation==1.2.2", "ftfy", "regex"],
        "plot": ["matplotlib>=3.5"],
        # tools/export.py --format onnx builds the graph with the onnx package (the format's
        # own library); onnxruntime runs and checks it (tests, tools/benchmark.py).
        "export": ["onnx>=1.16", "onnxruntime>=1.17"],
        # train.tensorboard: event files through tensorboardX (no TensorFlow, no torch).
        "tensorboard": ["tensorboardX>=2.6"],
        # Only for tools/dataset_converters: Cityscapes label drawing and SBD .mat files.
        "convert": ["cityscapesscripts>=2.2", "scipy>=1.7"],
    },
)
