"""Make the small checkpoint fixtures in tests/data/checkpoints/ with real torch.

    python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch==2.13.0 numpy
    /tmp/torchref/bin/python tests/data/make_checkpoint_fixtures.py   # from the repo root

torch is needed only here; the tests read these files with numpy alone and
compare with the `*_expected.npz` files written next to them. Re-running gives
the same values (fixed seed). Files:

- tensors_zip.pth / tensors_legacy.pth: one dict of every tensor kind the
  reader must handle (dtypes incl. fp16, bf16, uint16, bool, complex; 0-dim;
  transposed, offset, expanded and empty views; a Parameter; tensors inside
  lists, tuples and OrderedDicts; torch.Size, bytes, a set, a numpy array),
  written in torch's zip format and in the legacy format.
- tensors_pickle.pkl: tensors pickled with plain `pickle` (storages as
  torch.storage._load_from_bytes).
- tensors_bigendian.pth: a zip checkpoint marked big endian, storages byte-swapped
  (checked here by torch.load giving the original values back).
- segnext_mmseg_tiny.pth (zip): mmseg 1.x layout in an mmengine-style container
  (meta, state_dict, optimizer, message_hub with a HistoryBuffer); a transposed
  conv_seg weight, GN weight and bias sharing one storage.
- segnext_official_tiny.pth (zip): official layout (mlp.dwconv.dwconv, with
  num_batches_tracked), bf16 backbone and fp16 head, 'module.' prefix, mmcv 1.x
  container with meta.
- mscan_imagenet_tiny.pth (legacy format): flat ImageNet MSCAN backbone, no
  prefix, official naming, classifier head.*.
- segnext_jseg_tiny.pkl: a jt.save file (pickle 4 + SHA1 + HCAJSLHD) of a JSeg
  container {meta, model, scheduler, optimizer}, weights as jittor.Var.
- segnext_tiny_expected.npz: what every SegNeXt fixture converts to (our layout).
- malicious.pth / malicious_legacy.pth / malicious.pkl: checkpoints whose pickle
  runs a command creating the file PWNED_BY_CHECKPOINT in the working directory
  when loaded with plain pickle / torch.load(weights_only=False).
"""
import collections
import hashlib
import io
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "checkpoints"
MARKER = "PWNED_BY_CHECKPOINT"

# The tiny SegNeXt every fixture holds (the tests use the same numbers).
TINY = dict(embed_dims=(2, 4, 6, 8), depths=(2, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
            head=dict(ham_channels=4, channels=4, num_classes=3))
CLASSES = ("sky", "road", "tree")


def tiny_shapes(backbone_only=False):
    sys.path.insert(0, str(ROOT))
    from jseg.checkpoint.mapping import segnext_state_shapes
    tiny = dict(TINY, head=None) if backbone_only else TINY
    return segnext_state_shapes(**tiny)


def to_official(key):
    """Our key -> official/JSeg naming (mlp.dwconv -> mlp.dwconv.dwconv)."""
    return key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")


def with_nbt(keys):
    """PyTorch BatchNorms also have num_batches_tracked: after each running_var."""
    out = []
    for k in keys:
        out.append(k)
        if k.endswith(".running_var"):
            out.append(k[:-len("running_var")] + "num_batches_tracked")
    return out


def main():
    import torch

    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)

    def values(shape):
        # exactly representable in bf16 and fp16: 8 significant bits, |x| >= 2**-10
        v = torch.randn(shape, generator=gen) * 0.5
        v = v.sign() * v.abs().clamp(2 ** -10, 4.0)
        return v.to(torch.bfloat16).float()

    ours = {k: values(s) for k, s in tiny_shapes().items()}
    for k in ours:
        if k.endswith("running_var"):
            ours[k] = ours[k].abs()
    np.savez_compressed(OUT / "segnext_tiny_expected.npz",
                        **{k: v.numpy() for k, v in ours.items()})

    # mmseg 1.x: our names + num_batches_tracked; mmengine container
    mmseg = collections.OrderedDict()
    for k in with_nbt(ours):
        mmseg[k] = ours[k].clone() if k in ours else torch.tensor(7, dtype=torch.int64)
    w = ours["decode_head.conv_seg.weight"]           # (3, 4, 1, 1)
    mmseg["decode_head.conv_seg.weight"] = w[:, :, 0, 0].t().contiguous().t()[:, :, None, None]
    assert not mmseg["decode_head.conv_seg.weight"].is_contiguous()
    gn = torch.cat([ours["decode_head.squeeze.gn.weight"], ours["decode_head.squeeze.gn.bias"]])
    mmseg["decode_head.squeeze.gn.weight"], mmseg["decode_head.squeeze.gn.bias"] = gn[:4], gn[4:]
    history = _fake_class("mmengine.logging.history_buffer", "HistoryBuffer")
    buffer = history()
    buffer.__dict__.update(_log_history=np.array([0.5, 0.25]), _count_history=np.array([1, 1]),
                           max_length=1000000)
    torch.save({
        "meta": {"dataset_meta": {"classes": CLASSES, "palette": [[0, 0, 255]] * 3},
                 "seed": 0, "epoch": 1, "iter": 16000, "mmengine_version": "0.10.7",
                 "cfg": "model = dict(type='EncoderDecoder')"},
        "state_dict": mmseg,
        "message_hub": {"log_scalars": {"train/loss": buffer}, "runtime_info": {"iter": 16000}},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0),
                                    "exp_avg": torch.zeros(1, 3, 3, 3)}},
                      "param_groups": [{"lr": 6e-5, "params": [0]}]},
        "param_schedulers": [{"last_step": 16000}],
    }, OUT / "segnext_mmseg_tiny.pth")

    # official: nested dwconv, nbt, bf16 backbone / fp16 head, 'module.' prefix
    official = collections.OrderedDict()
    for k in with_nbt(ours):
        if k.endswith("num_batches_tracked"):
            value = torch.tensor(7, dtype=torch.int64)
        else:
            value = ours[k].to(torch.float16 if k.startswith("decode_head") else torch.bfloat16)
        official["module." + to_official(k)] = value
    torch.save({"meta": {"CLASSES": CLASSES, "PALETTE": [[1, 2, 3]] * 3,
                         "mmcv_version": "1.5.0", "config": "norm_cfg = dict(type='SyncBN')"},
                "state_dict": official}, OUT / "segnext_official_tiny.pth")

    # ImageNet backbone: flat, no prefix, official naming, nbt, classifier head; legacy format
    imagenet = collections.OrderedDict()
    for k in with_nbt(k for k in ours if k.startswith("backbone.")):
        value = torch.tensor(7, dtype=torch.int64) if k.endswith("num_batches_tracked") \
            else ours[k]
        imagenet[to_official(k)[len("backbone."):]] = value
    imagenet["head.weight"] = values((5, TINY["embed_dims"][-1]))
    imagenet["head.bias"] = values((5,))
    torch.save(imagenet, OUT / "mscan_imagenet_tiny.pth", _use_new_zipfile_serialization=False)

    # JSeg: jt.save of {meta, model, scheduler, optimizer}; jittor Vars pickle as jittor.Var(array)
    jittor = types.ModuleType("jittor")

    class Var:
        def __init__(self, data):
            self.data = data

        def __reduce__(self):
            return (Var, (self.data,))
    Var.__module__, Var.__qualname__ = "jittor", "Var"
    jittor.Var = Var
    sys.modules["jittor"] = jittor
    try:
        model = {to_official(k): Var(v.numpy()) for k, v in ours.items()}
        data = pickle.dumps({
            "meta": {"jseg_version": "0.1.0.0", "epoch": 2, "iter": 8000, "max_iter": 160000,
                     "save_time": "2023-01-01", "config": {"model": {"type": "EncoderDecoder"}}},
            "model": model,
            "scheduler": {"warmup_iters": 1500, "base_lr": 6e-05, "by_epoch": False},
            "optimizer": {"n_step": 8000, "lr": 5e-05},
        }, protocol=4)
    finally:
        del sys.modules["jittor"]
    (OUT / "segnext_jseg_tiny.pkl").write_bytes(data + hashlib.sha1(data).digest() + b"HCAJSLHD")

    make_tensor_fixtures(torch)
    make_malicious(torch)
    for path in sorted(OUT.iterdir()):
        print(f"{path.stat().st_size:8d}  {path.relative_to(ROOT)}")


def _fake_class(module_name, class_name):
    """A stand-in class importable as module_name.class_name (pickle checks that)."""
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):  # import of a.b.c needs a and a.b too
        name = ".".join(parts[:i])
        module = sys.modules.setdefault(name, types.ModuleType(name))
        if i > 1:
            setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], module)
    cls = type(class_name, (), {"__module__": module_name})
    setattr(module, class_name, cls)
    return cls


def tensor_dict(torch):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 8
    shared = torch.arange(10, dtype=torch.float32)
    d = collections.OrderedDict()
    d["f32"] = torch.tensor([[1.5, -2.0, 3.25], [0.0, 1e-8, -7.0]])
    d["f64"] = torch.tensor([1.0 / 3, -2.5], dtype=torch.float64)
    d["f16"] = torch.tensor([0.5, -1.25, 65504.0], dtype=torch.float16)
    d["bf16"] = torch.tensor([1.0, -3.140625, 1e30, 2.0 ** -100], dtype=torch.bfloat16)
    d["bf16_t"] = (base.to(torch.bfloat16)).t()           # strided bf16
    d["i64"] = torch.tensor([-(2 ** 40), 0, 5], dtype=torch.int64)
    d["i32"] = torch.tensor([-3, 4], dtype=torch.int32)
    d["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    d["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    d["u16"] = torch.tensor([1, 65535], dtype=torch.uint16)  # saved with _rebuild_tensor_v3
    d["bool"] = torch.tensor([True, False, True])
    d["c64"] = torch.tensor([1 + 2j, -3j], dtype=torch.complex64)
    d["scalar_f32"] = torch.tensor(2.5)                       # 0-dim stays 0-dim
    d["scalar_i64"] = torch.tensor(7)
    d["transposed"] = base.t()                                # (6, 4), strides (1, 6)
    d["offset_a"] = shared[2:5]                               # views into one storage
    d["offset_b"] = shared[4:10].view(2, 3)
    d["expanded"] = torch.tensor([1.0, 2.0, 3.0]).expand(2, 3)  # stride 0: read-only
    d["empty"] = torch.zeros(0, 3)
    d["param"] = torch.nn.Parameter(torch.tensor([0.25, 0.75]))
    d["nested"] = {"list": [torch.tensor([1.0]), (torch.tensor([2, 3]), "x")],
                   "od": collections.OrderedDict(a=torch.tensor([4.0]))}
    d["size"] = torch.Size([2, 3])
    d["bytes"] = b"\x00\xffab"
    d["set"] = {1, 2}
    d["numpy"] = np.array([[1, 2], [3, 4]], dtype=np.int16)
    d["plain"] = {"int": 3, "float": 0.5, "none": None, "str": "text", "tuple": (1, "a")}
    return d


def expected_tensors(d, torch):
    """name -> numpy array for every tensor in tensor_dict (bf16 widened to float32)."""
    def arr(t):
        if t.dtype == torch.bfloat16:
            return t.float().numpy()
        if t.dtype == torch.uint16:
            return t.to(torch.int32).numpy().astype(np.uint16)
        return t.detach().numpy().copy()
    out = {k: arr(v) for k, v in d.items() if isinstance(v, torch.Tensor)}
    out["nested.list.0"] = arr(d["nested"]["list"][0])
    out["nested.list.1.0"] = arr(d["nested"]["list"][1][0])
    out["nested.od.a"] = arr(d["nested"]["od"]["a"])
    return out


def make_tensor_fixtures(torch):
    d = tensor_dict(torch)
    np.savez_compressed(OUT / "tensors_expected.npz", **expected_tensors(d, torch))
    torch.save(d, OUT / "tensors_zip.pth")
    torch.save(d, OUT / "tensors_legacy.pth", _use_new_zipfile_serialization=False)
    plain = {k: d[k] for k in ("f32", "bf16", "i64", "scalar_f32", "transposed", "offset_a",
                               "offset_b", "param")}
    (OUT / "tensors_pickle.pkl").write_bytes(pickle.dumps(plain, protocol=2))

    # big endian: rewrite the byteorder record and byte-swap every storage
    small = collections.OrderedDict(f32=d["f32"], i64=d["i64"], bf16=d["bf16"],
                                    transposed=d["transposed"])
    buf = io.BytesIO()
    torch.save(small, buf)
    itemsizes = {"0": 4, "1": 8, "2": 2, "3": 4}  # storage keys in pickling order
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    path = OUT / "tensors_bigendian.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            name = info.filename.split("/", 1)[1]
            if name == "byteorder":
                data = b"big"
            elif name.startswith("data/"):
                size = itemsizes[name[len("data/"):]]
                data = np.frombuffer(data, dtype=f"<u{size}").astype(f">u{size}").tobytes()
            dst.writestr(info, data)
    back = torch.load(path, weights_only=True)
    for k, v in small.items():
        assert torch.equal(back[k], v), f"big-endian fixture wrong for {k}"


class _Payload:
    """Unpickling this runs `command` with os.system (what a malicious checkpoint does)."""

    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return (self.call, (self.arg,))


def make_malicious(torch):
    weights = {"backbone.patch_embed1.proj.0.weight": torch.zeros(2, 3, 3, 3)}
    torch.save({"state_dict": weights, "meta": _Payload(os.system, f"touch {MARKER}")},
               OUT / "malicious.pth")
    torch.save({"state_dict": weights, "meta": _Payload(os.system, f"touch {MARKER}")},
               OUT / "malicious_legacy.pth", _use_new_zipfile_serialization=False)
    data = pickle.dumps({"model": {"w": np.zeros(3, np.float32)},
                         "meta": _Payload(exec, f"open({MARKER!r}, 'w').close()")}, protocol=4)
    (OUT / "malicious.pkl").write_bytes(data + hashlib.sha1(data).digest() + b"HCAJSLHD")


if __name__ == "__main__":
    main()
