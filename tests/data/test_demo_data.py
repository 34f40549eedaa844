"""jseg.data.demo: deterministic, restartable demo data that reads as a dataset; browse tool."""
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jseg.config import load_config
from jseg.data.datasets import build_dataset
from jseg.data.demo import make_demo_data, render_sample
from jseg.data.palettes import DEMO_CLASSES, DEMO_PALETTE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(num_train=4, num_val=2, size=48, seed=0)


def files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


def test_two_runs_give_identical_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_demo_data(str(a), **SMALL)
    res = make_demo_data(str(b), **SMALL)
    fa, fb = files(a), files(b)
    assert fa == fb, sorted(set(fa.items()) ^ set(fb.items()))
    assert res["written"] == 6 and "images/training/demo_00003.jpg" in fa
    assert "annotations/validation/demo_00001.png" in fa and "README.txt" in fa


def test_restart_keeps_files_and_refills_missing(tmp_path):
    make_demo_data(str(tmp_path), **SMALL)
    before = files(tmp_path)
    os.remove(tmp_path / "annotations/training/demo_00002.png")
    res = make_demo_data(str(tmp_path), **SMALL)
    assert (res["written"], res["kept"]) == (1, 5), res
    assert files(tmp_path) == before, "the re-made pair has the same bytes"
    with pytest.raises(ValueError, match="made with .*delete it or choose another --out"):
        make_demo_data(str(tmp_path), **dict(SMALL, seed=1))


def test_pixels_and_classes_are_pinned():
    img, lab = render_sample(0, "training", 1, 48)
    assert img.shape == (36, 48, 3) and lab.shape == (36, 48) and img.dtype == np.uint8
    portrait = render_sample(0, "training", 0, 48)[1]
    assert portrait.shape == (48, 36), portrait.shape
    assert np.unique(portrait).tolist() == [0, 1, 2, 5], np.unique(portrait)
    assert (portrait[0, 0], portrait[20, 30]) == (1, 5), (portrait[0, 0], portrait[20, 30])
    assert hashlib.sha1(portrait.tobytes()).hexdigest()[:12] == "80b159818007", \
        "demo drawing changed: bump jseg.data.demo._VERSION and update this hash"
    present = set()
    for i in range(12):
        present |= set(np.unique(render_sample(0, "training", i, 48)[1]).tolist())
    assert present == set(range(7)), f"all labels 0..6 appear in 12 samples: {sorted(present)}"
    other = render_sample(1, "training", 1, 48)[1]
    assert other.shape != lab.shape or not np.array_equal(other, lab), "another seed, another scene"


def demo_config(tmp_path, root):
    path = tmp_path / "demo.yaml"
    path.write_text(textwrap.dedent(f"""\
        _base_: {os.path.join(ROOT, "configs", "_base_", "datasets", "ade20k.yaml")}
        seed: 0
        data:
          type: custom
          data_root: {root}
          classes: {list(DEMO_CLASSES)}
          palette: {[list(c) for c in DEMO_PALETTE]}
          reduce_zero_label: true
          batch_size: 2
          img_scale: [48, 36]
          crop_size: [32, 32]
          test_scale: [48, 36]
        """))
    return str(path)


def test_demo_data_reads_as_a_custom_dataset_and_browses(tmp_path):
    root = tmp_path / "demo"
    make_demo_data(str(root), **SMALL)
    cfg_path = demo_config(tmp_path, root)
    cfg = load_config(cfg_path)
    train, val = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    assert (len(train), len(val), train.num_classes) == (4, 2, 6)
    seg = train[0]["seg"]
    assert set(np.unique(seg).tolist()) <= set(range(6)) | {255}, np.unique(seg)
    assert 255 in seg, "label 0 (unlabelled) becomes the ignore index"

    out = tmp_path / "browse"
    tool = os.path.join(ROOT, "tools", "browse_dataset.py")
    run = subprocess.run([sys.executable, tool, "--config-file", cfg_path, "--out-dir", str(out),
                          "-n", "3"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    pngs = sorted(os.listdir(out))
    assert len(pngs) == 3 and all(p.startswith("train_") for p in pngs), pngs
    bad = subprocess.run([sys.executable, tool, "--config-file", cfg_path, "--out-dir", str(out),
                          "data.data_root=/nonexistent"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: data root"), bad.stderr
    assert "Traceback" not in bad.stderr
