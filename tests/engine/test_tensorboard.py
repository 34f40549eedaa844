"""train.tensorboard: event files that TensorBoard reads, read back here record by record
(TFRecord framing with masked CRC-32C, then tensorboardX's Event protobuf)."""
import importlib.util
import os
import struct

import pytest

from jseg.config import load_config

from conftest import DEMO_CONFIG, TINY_OVERRIDES as TINY

pytest.importorskip("tensorboardX")


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data):
    """TFRecord's checksum: CRC-32C, rotated right by 15 bits plus 0xa282ead8."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(folder):
    """Every Event of every event file in `folder`, CRCs checked."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for name in sorted(os.listdir(folder)):
        assert name.startswith("events.out.tfevents."), name
        data = open(os.path.join(folder, name), "rb").read()
        pos = 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
            assert crc == masked_crc32c(header), "length CRC"
            body = data[pos + 12:pos + 12 + length]
            (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
            assert crc == masked_crc32c(body), "data CRC"
            event = Event()
            event.ParseFromString(body)
            events.append(event)
            pos += 16 + length
    return events


def test_training_writes_scalars_per_class_values_and_samples(demo_root, tmp_path):
    from jseg.engine.trainer import train

    cfg = load_config(DEMO_CONFIG, TINY + [
        f"data.data_root={demo_root}", f"work_dir={tmp_path}", "train.max_iters=3",
        "train.eval_interval=2", "train.tensorboard=true", "train.tensorboard_samples=2",
        "evaluation.metrics=[mIoU,mDice]"])
    train(cfg, seed=3, progress=False)
    events = read_events(tmp_path / "tensorboard")
    scalars, images = {}, {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("image"):
                images.setdefault(v.tag, []).append((e.step, v.image))
            else:
                scalars.setdefault(v.tag, {})[e.step] = v.simple_value
    assert sorted(scalars["train/loss"]) == [1, 2, 3]
    for tag in ("train/lr", "train/loss_ce", "train/loss_avg", "train/memory_mb"):
        assert sorted(scalars[tag]) == [1, 2, 3], tag
    assert sorted(scalars["val/mIoU"]) == [2, 3] and sorted(scalars["val/mDice"]) == [2, 3]
    assert "val_IoU/grass" in scalars and "val_Dice/water" in scalars
    # the scalars are metrics.jsonl's numbers
    import json
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    last_val = [r for r in records if r["mode"] == "val"][-1]
    assert scalars["val/mIoU"][3] == pytest.approx(last_val["mIoU"], rel=1e-6)
    train_loss = {r["iter"]: r["loss"] for r in records if r["mode"] == "train"}
    assert scalars["train/loss"] == pytest.approx(train_loss, rel=1e-6)
    assert sorted(images) == ["val/sample_0", "val/sample_1"]
    step, image = images["val/sample_0"][-1]
    # image | label | prediction of a 64x48 demo image, 4-pixel gaps
    assert step == 3 and (image.height, image.width) == (48, 3 * 64 + 2 * 4)
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_tensorboardx_training_stops_before_writing(demo_root, tmp_path, monkeypatch):
    from jseg.engine.trainer import TrainingError, train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboardX" else real(name, *a))
    cfg = load_config(DEMO_CONFIG, TINY + [f"data.data_root={demo_root}",
                                           f"work_dir={tmp_path / 'run'}", "train.max_iters=2",
                                           "train.tensorboard=true"])
    with pytest.raises(TrainingError, match=r"pip install tensorboardX .* or set "
                                            r"train.tensorboard=false"):
        train(cfg, seed=3, progress=False)
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")
