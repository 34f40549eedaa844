"""Shared fixtures: tiny demo data and the overrides of a tiny SegNeXt.

Every test that runs a network uses TINY_OVERRIDES with the demo config, so that all of
them share the same few Jittor kernels (each new op shape compiles once, seconds each).
"""
import inspect
import os
import re
import signal

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo", "segnext_mscan-t_demo.yaml")

TINY_OVERRIDES = [
    "model.backbone.embed_dims=[8,16,32,64]", "model.backbone.depths=[1,1,1,1]",
    "model.backbone.drop_path_rate=0.1",
    "model.decode_head.in_channels=[16,32,64]", "model.decode_head.channels=16",
    "model.decode_head.ham_channels=16", "model.decode_head.norm_groups=4",
    "model.decode_head.ham.md_r=4",
    "data.batch_size=2", "data.num_workers=0", "data.crop_size=[48,48]",
    "data.img_scale=[64,48]", "data.test_scale=[64,48]",
    "train.log_interval=1", "train.eval_interval=0", "scheduler.warmup_iters=2",
]


# Whole-model parameter counts per variant and class count, counted from the layer shapes of
# mmseg 1.x's SegNeXt (they give the paper's Table 2/3 sizes, e.g. T 4.3M on ADE20K): 150 ADE20K,
# 19 Cityscapes, 171 COCO-Stuff, 21 VOC, 59 Pascal Context, 16 iSAID.
TOTAL_PARAMS = {
    "t": {150: 4_263_414, 19: 4_229_747, 171: 4_268_811, 21: 4_230_261, 59: 4_240_027, 16: 4_228_976},
    "s": {150: 13_932_886, 19: 13_899_219, 171: 13_938_283, 21: 13_899_733, 59: 13_909_499,
          16: 13_898_448},
    "b": {150: 27_636_310, 19: 27_569_107, 171: 27_647_083, 21: 27_570_133, 59: 27_589_627,
          16: 27_567_568},
    "l": {150: 48_926_550, 19: 48_792_275, 171: 48_948_075, 21: 48_794_325, 59: 48_833_275,
          16: 48_789_200},
}


# The shipped config of each benchmark, by its class count.
DATASET_CONFIGS = {150: "ade20k-512x512", 19: "cityscapes-1024x1024", 171: "coco-stuff164k-512x512",
                   21: "voc-aug-512x512", 59: "pascal-context59-480x480", 16: "isaid-896x896"}


def shipped_model(variant, num_classes=150):
    """The `model` section (a plain dict) of configs/segnext/segnext_mscan-<variant>_<dataset>:
    the variant table is jseg.models.mscan.MSCAN_SETTINGS and these configs, nowhere else."""
    from jseg.config import Config, load_config
    path = os.path.join(ROOT, "configs", "segnext",
                        f"segnext_mscan-{variant}_{DATASET_CONFIGS[num_classes]}.yaml")
    return Config.unwrap(load_config(path).model)


@pytest.fixture(autouse=True)
def children_may_end_by_a_signal():
    """Jittor, once a test has imported it into this process, quick-exits the process (code 1,
    no word) when a child process ends by a signal: its SIGCHLD handler, installed from C,
    which cannot be restored afterwards. Tests kill children on purpose, so every test starts
    with the default handler."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """Six training and two validation demo images of 64x48 (deterministic)."""
    from jseg.data.demo import make_demo_data
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(str(root), num_train=6, num_val=2, size=64, seed=1)
    return str(root)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A weights file of the tiny demo model (TINY_OVERRIDES), freshly initialised with
    seed 0."""
    from jseg.checkpoint import write_checkpoint  # jseg first: it sets up Jittor's start
    from jseg.config import load_config
    from jseg.models import build_model
    import jittor as jt
    jt.set_global_seed(0)
    model = build_model(load_config(DEMO_CONFIG, TINY_OVERRIDES).model)
    path = str(tmp_path_factory.mktemp("w") / "tiny.pkl")
    write_checkpoint(path, {"state_dict": {k: v.numpy() for k, v in model.state_dict().items()}})
    return path


# A test is slow when it, or a fixture it uses, starts another process (run_net, a tool, mpirun,
# the PyTorch worker) or runs the PyTorch references: `pytest -m "not slow"` is the quick loop.
# The rule is read from the source, so a new test is marked without anyone remembering to.
SLOW_SIGNS = re.compile(r"subprocess|Popen|run_net\(|run_python\(|_run\(|MPIRUN|mpirun|"
                        r"TorchProcess|importorskip\(\"(torch|mmseg|mmengine)\"\)|"
                        r"import torch\b|from mmseg|tools_main\(")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts another process or runs the PyTorch "
                                       "references (deselect with -m \"not slow\")")


def _source(obj):
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def pytest_collection_modifyitems(config, items):
    for item in items:
        funcs = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        if info is not None:
            funcs += [d.func for defs in info.name2fixturedefs.values() for d in defs]
        if any(SLOW_SIGNS.search(_source(f)) for f in funcs if f is not None):
            item.add_marker(pytest.mark.slow)
