"""tools/analyze_logs.py reads metrics.jsonl (resumed runs too) and draws the curves; lines it
cannot plot are skipped with one warning, a bad --out is one error line."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
from analyze_logs import read_metrics  # noqa: E402


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_resumed_iterations_keep_the_last_record(tmp_path):
    f = tmp_path / "metrics.jsonl"
    write_jsonl(f, [{"mode": "train", "iter": 1, "loss": 3.0, "lr": 0.1},
                    {"mode": "train", "iter": 2, "loss": 2.0, "lr": 0.1},
                    {"mode": "train", "iter": 2, "loss": 1.5, "lr": 0.1},
                    {"mode": "val", "iter": 2, "mIoU": 10.0}])
    train, val, skipped = read_metrics(f)
    assert [r["loss"] for r in train] == [3.0, 1.5] and [r["mIoU"] for r in val] == [10.0]
    assert skipped == 0


BAD_LINES = ['{"mode": "train", "loss": 2.0, "lr": 0.1}',  # no iter
             '[1, 2]', '"text"', '3',  # JSON, not an object
             'not json', '{"mode": "train", "iter": 3',  # not JSON (a line cut short)
             '{"mode": "val", "iter": 4}']  # no mIoU


def test_lines_that_cannot_be_plotted_are_counted_and_skipped(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text("\n".join(['{"mode": "train", "iter": 1, "loss": 3.0, "lr": 0.1}', *BAD_LINES,
                             '{"mode": "val", "iter": 2, "mIoU": null}']) + "\n")
    train, val, skipped = read_metrics(f)
    assert [r["iter"] for r in train] == [1] and [r["iter"] for r in val] == [2]
    assert skipped == len(BAD_LINES), (skipped, len(BAD_LINES))


def analyze(*args):
    tool = os.path.join(ROOT, "tools", "analyze_logs.py")
    return subprocess.run([sys.executable, tool, *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def metrics(tmp_path):
    f = tmp_path / "run" / "metrics.jsonl"
    f.parent.mkdir()
    write_jsonl(f, [{"mode": "train", "iter": i, "loss": 1.0 / i, "lr": 0.01} for i in range(1, 5)]
                + [{"mode": "val", "iter": 4, "mIoU": 12.5}])
    return f


def test_odd_lines_give_one_warning_and_the_plot(metrics, tmp_path):
    pytest.importorskip("matplotlib")
    with open(metrics, "a") as f:
        f.write("\n".join(BAD_LINES) + "\n")
    res = analyze(metrics, "--out", tmp_path / "curves.png")
    assert res.returncode == 0 and (tmp_path / "curves.png").stat().st_size > 1000, res.stderr
    assert res.stderr == (f"warning: {metrics}: {len(BAD_LINES)} line(s) skipped that cannot be "
                          f"plotted (not a JSON object, or without iter and loss / lr / mIoU)\n")


@pytest.mark.parametrize("out", ["curves.xyz", "curves", "run/metrics.jsonl/curves.png", "ro"])
def test_a_bad_out_is_one_error_line_and_writes_nothing(out, metrics, tmp_path):
    """An unsupported suffix, no suffix, a folder that is a file, a read-only folder (for
    root, who may write into any folder: sysfs, where no one creates files)."""
    pytest.importorskip("matplotlib")
    if out == "ro" and os.geteuid() == 0:
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("no /sys to stand for a read-only folder")
        out = "/sys/curves.png"
    elif out == "ro":
        (tmp_path / "ro").mkdir(mode=0o555)
        out = "ro/curves.png"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = analyze(metrics, "--out", tmp_path / out)
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_plot_and_nothing_to_plot(metrics, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.pdf"
    res = analyze(metrics, "--out", out)
    assert res.returncode == 0 and out.read_bytes().startswith(b"%PDF"), res.stderr
    metrics.write_text("not json\n")
    res = analyze(metrics, "--out", out)
    assert res.returncode == 1 and res.stderr.splitlines()[-1].startswith(
        f"error: nothing to plot in {metrics}"), res.stderr
