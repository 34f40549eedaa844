"""tools/analyze_logs.py reads metrics.jsonl (resumed runs too) and draws the curves."""
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
    train, val = read_metrics(f)
    assert [r["loss"] for r in train] == [3.0, 1.5] and [r["mIoU"] for r in val] == [10.0]


def test_plot_and_bad_input(tmp_path):
    pytest.importorskip("matplotlib")
    f = tmp_path / "run" / "metrics.jsonl"
    f.parent.mkdir()
    write_jsonl(f, [{"mode": "train", "iter": i, "loss": 1.0 / i, "lr": 0.01} for i in range(1, 5)]
                + [{"mode": "val", "iter": 4, "mIoU": 12.5}])
    out = tmp_path / "curves.png"
    tool = os.path.join(ROOT, "tools", "analyze_logs.py")
    res = subprocess.run([sys.executable, tool, str(f), "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0 and out.stat().st_size > 1000, res.stderr
    f.write_text("not json\n")
    res = subprocess.run([sys.executable, tool, str(f), "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 1 and "line 1 is not JSON" in res.stderr, res.stderr
