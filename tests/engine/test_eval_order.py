"""Evaluation that does not depend on how it is run: the NMF bases of an image come from
(seed, a digest of its pixels[, window / view]) alone, so its prediction is bit-identical
in any list, subset, order, process count and tool (run_net, inference_model,
tools/demo.py); several NMF seeds at once (backbone once, head per seed) give each seed's
own result."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jseg.config import load_config

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES as TINY

RUN_NET = os.path.join(ROOT, "tools", "run_net.py")
DEMO_TOOL = os.path.join(ROOT, "tools", "demo.py")
MPIRUN = shutil.which("mpirun")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Six 64x48 validation images, the tiny demo model with random weights (and the
    weights file), the config."""
    import jittor as jt
    from jseg.checkpoint import write_checkpoint
    from jseg.data.demo import make_demo_data
    from jseg.models import build_model

    root = tmp_path_factory.mktemp("order")
    make_demo_data(str(root / "data"), num_train=2, num_val=6, size=64, seed=4)
    cfg = load_config(DEMO_CONFIG, TINY + [f"data.data_root={root / 'data'}",
                                           f"work_dir={root / 'work'}"])
    jt.set_global_seed(11)
    model = build_model(cfg.model)
    model.eval()
    weights = root / "tiny.pkl"
    write_checkpoint(str(weights), {"state_dict": {k: v.numpy()
                                                   for k, v in model.state_dict().items()}})
    return cfg, model, str(weights), root


def _loader(cfg, **kwargs):
    from jseg.data.loader import build_val_loader
    return build_val_loader(cfg, **kwargs)


def _confusion(model, loader, seed=3):
    from jseg.engine.evaluator import evaluate
    acc, _ = evaluate(model, loader, 6, progress=False, seed=seed)
    return acc.confusion


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_areas_do_not_depend_on_ranks_workers_or_order(setup, mode):
    import jittor as jt
    cfg, model, _, _ = setup
    if mode == "slide":  # 64x48 in 48x48 windows, stride 32: two windows per image
        model.test_mode, model.crop_size, model.stride = "slide", (48, 48), (32, 32)
    try:
        whole = _confusion(model, _loader(cfg))
        assert whole.sum() > 0
        # two ranks' shares, summed (what the MPI all-reduce does)
        shards = sum(_confusion(model, _loader(cfg, rank=r, world_size=2)) for r in range(2))
        np.testing.assert_array_equal(shards, whole)
        backwards = _loader(cfg)
        backwards.indices = backwards.indices[::-1]
        jt.set_global_seed(123)  # Jittor's RNG state plays no part any more
        np.testing.assert_array_equal(_confusion(model, backwards), whole)
        if mode == "whole":
            np.testing.assert_array_equal(_confusion(model, _loader(cfg, num_workers=2)), whole)
    finally:
        model.test_mode, model.crop_size, model.stride = "whole", None, None


def test_bases_come_from_the_seed_and_the_image(setup):
    """The evaluator's bases really change with the seed and the image (the logits do), and
    a model's own bases_fn is back in place afterwards."""
    import jittor as jt
    from jseg.models.ham_head import ImageBases, seeded_bases

    cfg, model, _, _ = setup
    item = next(iter(_loader(cfg)))
    ham = model.decode_head.hamburger.ham
    img = jt.array(item["views"][0]["img"])
    outputs = {}
    for key in [(3, 0), (4, 0), (3, 1), (3, 0)]:
        ham.bases_fn = ImageBases(key[0], key[1])
        with jt.no_grad():
            outputs.setdefault(key, []).append(model.inference(img).numpy())
    ham.bases_fn = None
    a = outputs[(3, 0)]
    np.testing.assert_array_equal(a[0], a[1])
    assert np.abs(a[0] - outputs[(4, 0)][0]).max() > 1e-4
    assert np.abs(a[0] - outputs[(3, 1)][0]).max() > 1e-4
    calls = ImageBases([5, 6], 2)
    both = calls(2, 1, 4, 3).numpy()  # two draws of one image: seeds 5 and 6, call 0
    np.testing.assert_array_equal(both[:1], seeded_bases((1, 4, 3), 5, (2, 0)))
    np.testing.assert_array_equal(both[1:], seeded_bases((1, 4, 3), 6, (2, 0)))
    np.testing.assert_array_equal(calls(2, 1, 4, 3).numpy()[:1], seeded_bases((1, 4, 3), 5, (2, 1)))

    from jseg.engine.evaluator import evaluate
    marker = ImageBases(0, 0)
    ham.bases_fn = marker
    evaluate(model, _loader(cfg), 6, progress=False)
    assert ham.bases_fn is marker and model.nmf_draws == 1
    ham.bases_fn = None


def _predictions(model, loader, seed=3):
    """{image file name: prediction} of evaluate(labelled=False) over `loader`."""
    from jseg.engine.evaluator import evaluate
    preds = {}
    evaluate(model, loader, 6, progress=False, labelled=False, seed=seed,
             on_prediction=lambda item, pred: preds.__setitem__(
                 os.path.basename(item["img_path"]), pred))
    return preds


@pytest.mark.parametrize("mode", ["whole", "slide", "tta"])
def test_an_image_gets_the_same_prediction_in_any_list_and_tool(setup, tmp_path, mode):
    """The same image, weights and seed: one prediction whether it is evaluated in the whole
    split, reversed, in a subset named by a split file, on a rank's shard, or alone through
    inference_model (an RGB array). On 5688dd8 the bases came from the position in the
    list, and the reversed split changed every prediction."""
    import cv2
    from jseg.apis import inference_model

    cfg, model, _, root = setup
    model.cfg = cfg  # what init_model gives inference_model
    tta = mode == "tta"
    if mode == "slide":  # 64x48 in 48x48 windows, stride 32: two windows per image
        model.test_mode, model.crop_size, model.stride = "slide", (48, 48), (32, 32)
    try:
        everything = _predictions(model, _loader(cfg, tta=tta))
        assert len(everything) == 6
        backwards = _loader(cfg, tta=tta)
        backwards.indices = backwards.indices[::-1]
        reversed_preds = _predictions(model, backwards)
        subset_file = tmp_path / "subset.txt"
        names = sorted(everything)
        subset_file.write_text("\n".join(os.path.splitext(n)[0] for n in names[:0:-2]) + "\n")
        sub_cfg = load_config(DEMO_CONFIG, TINY + [f"data.data_root={root / 'data'}",
                                                   f"data.val.split={subset_file}"])
        subset = _predictions(model, _loader(sub_cfg, tta=tta))
        shard = _predictions(model, _loader(cfg, tta=tta, rank=1, world_size=2))
        assert len(subset) == 3 and len(shard) == 3
        differs = 0
        for name, pred in everything.items():
            np.testing.assert_array_equal(reversed_preds[name], pred, err_msg=name)
            for part in (subset, shard):
                if name in part:
                    np.testing.assert_array_equal(part[name], pred, err_msg=name)
            path = os.path.join(root, "data", "images", "validation", name)
            rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
            alone = inference_model(model, rgb, tta=tta, seed=3)["pred"]
            np.testing.assert_array_equal(alone, pred, err_msg=name)
            other_seed = inference_model(model, rgb, tta=tta, seed=4)["pred"]
            differs += int((other_seed != pred).any())
        assert differs > 0, "no prediction changed with the seed: the bases did not reach the NMF"
    finally:
        model.test_mode, model.crop_size, model.stride = "whole", None, None


def test_image_key_is_the_pixels():
    from jseg.data.datasets import image_key
    img = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    key = image_key(img)
    assert len(key) == 4 and all(0 <= k < 2 ** 32 for k in key)
    assert image_key(img.copy()) == key
    assert image_key(np.asfortranarray(img)) == key  # the pixels, not the memory layout
    changed = img.copy()
    changed[47, 63, 2] ^= 1
    assert image_key(changed) != key
    assert image_key(img.reshape(64, 48, 3)) != key  # same bytes, another shape


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_several_seeds_share_the_backbone(setup, mode):
    """evaluate_seeds(K seeds) == K evaluations, one per seed (the batched head may differ
    by float round-off, which moves at most a pixel or two here), in slide mode too."""
    from jseg.engine.evaluator import evaluate_seeds

    cfg, model, _, _ = setup
    if mode == "slide":
        model.test_mode, model.crop_size, model.stride = "slide", (48, 48), (32, 32)
    try:
        seeds = [3, 4, 5]
        accs, _ = evaluate_seeds(model, _loader(cfg), 6, seeds, progress=False)
        for seed, acc in zip(seeds, accs):
            alone = _confusion(model, _loader(cfg), seed)
            assert acc.confusion.sum() == alone.sum()
            assert np.abs(acc.confusion - alone).sum() <= 4, (seed, acc.confusion, alone)
        assert any((a.confusion != accs[0].confusion).any() for a in accs[1:]), \
            "every seed gave the same counts: the seeds did not reach the NMF"
    finally:
        model.test_mode, model.crop_size, model.stride = "whole", None, None


def _run_net(*args, expect=0, mpi=False):
    cmd = [sys.executable, RUN_NET, "--no-progress", *args]
    env = None
    if mpi:
        cmd = [MPIRUN, "-np", "2", "--oversubscribe"] + cmd
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert out.returncode == expect, (out.returncode, out.stderr[-3000:])
    return out


def _val_args(setup, work, *extra):
    _, _, weights, root = setup
    return ["--config-file", DEMO_CONFIG, "--task", "val", "--load-from", weights,
            "--work-dir", str(work), f"data.data_root={root / 'data'}", *TINY, *extra]


def test_nmf_seeds_on_the_command_line(setup, tmp_path):
    out = _run_net(*_val_args(setup, tmp_path / "w", "--nmf-seeds", "3"))
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("mIoU over 3 NMF seeds: mean "), out.stdout
    spread = json.loads((tmp_path / "w" / "nmf_seed_spread.json").read_text())
    assert spread["seeds"] == [0, 1, 2] and spread["images"] == 6
    m = spread["summary"]["mIoU"]
    assert m["min"] <= m["mean"] <= m["max"] and len(m["per_seed"]) == 3
    assert f"mean {m['mean']:.2f}" in line
    assert set(spread["IoU"]) == {"grass", "water", "disc", "box", "triangle", "blob"}
    assert "NMF seed spread over 3 seeds" in out.stderr

    for bad, needle in ((["--nmf-seeds", "0"], "--nmf-seeds must be 1 or more, got 0"),
                        (["--nmf-seeds", "2", "--task", "test"], "use it with --task val")):
        out = _run_net(*_val_args(setup, tmp_path / "bad", *bad), expect=1)
        assert out.stderr.strip().splitlines()[-1].startswith("error: ") and \
            needle in out.stderr, out.stderr[-2000:]


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (Debian: apt-get install "
                                           "openmpi-bin libopenmpi-dev)")
def test_two_mpi_ranks_give_the_same_counts(setup, tmp_path):
    """The same weights evaluated by 1 process and by 2 MPI ranks (NMF bases random, as
    configured): identical confusion matrices and summary line."""
    one = _run_net(*_val_args(setup, tmp_path / "one"))
    two = _run_net(*_val_args(setup, tmp_path / "two"), mpi=True)
    a = np.load(tmp_path / "one" / "confusion_matrix.npy")
    b = np.load(tmp_path / "two" / "confusion_matrix.npy")
    np.testing.assert_array_equal(a, b)
    assert one.stdout.strip().splitlines()[-1] == two.stdout.strip().splitlines()[-1]


def _test_args(setup, work, save, *extra):
    _, _, weights, root = setup
    return ["--config-file", DEMO_CONFIG, "--task", "test", "--load-from", weights,
            "--work-dir", str(work), "--save-dir", str(save), "--seed", "3",
            f"data.data_root={root / 'data'}", *TINY, *extra]


def _label_maps(folder):
    import cv2
    return {name: cv2.imread(os.path.join(folder, name), cv2.IMREAD_UNCHANGED)
            for name in sorted(os.listdir(folder)) if name.endswith(".png")}


def test_split_order_and_demo_tool_give_the_same_label_maps(setup, tmp_path):
    """The report's case: --task test with a split file, then with the same file reversed,
    then one image through tools/demo.py: the same label PNGs (on 5688dd8 all differed)."""
    _, _, weights, root = setup
    names = sorted(os.path.splitext(n)[0]
                   for n in os.listdir(root / "data" / "images" / "validation"))
    forward, backward = tmp_path / "forward.txt", tmp_path / "backward.txt"
    forward.write_text("\n".join(names) + "\n")
    backward.write_text("\n".join(names[::-1]) + "\n")
    _run_net(*_test_args(setup, tmp_path / "w1", tmp_path / "p1", f"data.val.split={forward}"))
    _run_net(*_test_args(setup, tmp_path / "w2", tmp_path / "p2", f"data.val.split={backward}"))
    first, second = _label_maps(tmp_path / "p1"), _label_maps(tmp_path / "p2")
    assert len(first) == 6 and first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)

    one = names[3]
    out = subprocess.run(
        [sys.executable, DEMO_TOOL, str(root / "data" / "images" / "validation" / f"{one}.jpg"),
         "--config-file", DEMO_CONFIG, "--checkpoint", weights, "--out-dir",
         str(tmp_path / "demo"), "--seed", "3", "--cfg-options", *TINY],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_array_equal(_label_maps(tmp_path / "demo")[f"{one}.png"],
                                  first[f"{one}.png"])
    if MPIRUN is not None:  # 2 ranks, each its share of the list: the same maps again
        _run_net(*_test_args(setup, tmp_path / "w3", tmp_path / "p3"), mpi=True)
        third = _label_maps(tmp_path / "p3")
        for name in first:
            np.testing.assert_array_equal(third[name], first[name], err_msg=name)
