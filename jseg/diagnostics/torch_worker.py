"""The PyTorch side of tools/benchmark.py --vs-torch: mmseg's model in a child process.

jseg.diagnostics.benchmark.TorchProcess starts `main()` in a child (same Python) and
asks it for one timed iteration at a time, so that each framework has its own process,
peak RSS and OpenMP runtime.

Pipe protocol: the parent writes one JSON object per line to the child's stdin, the child
answers one JSON line on its stdout (its other output goes to stderr):
  (on start)                                    -> {"ready": versions}
  {"cmd": "setup", "model": ..., "mode": ..., "weights": npz, "inputs": npz, ...}
                                                -> {"ok": true, "params": n,
                                                    "torch_threads": n}
  {"cmd": "step"}                               -> {"seconds": t}   (timed in the child)
  {"cmd": "finite"}                             -> {"finite": bool}     (last output)
  {"cmd": "memory"}                             -> {"mb": m, "kind": "..."}
  {"cmd": "quit"} or end of input               -> exits
A failure answers {"error": "...", "known": bool} and exits; "known" errors (a missing
package, a setting mmseg cannot express) become one line, others come with the child's
traceback.
"""
import json
import os
import sys
import time

import numpy as np

from jseg.platform.env import restore_openmp_defaults

from . import parity
from .benchmark import BenchmarkError, _peak_rss_mb

__all__ = ["main"]


class _TorchBench:
    """The child's model: mmseg's EncoderDecoder with the parent's weights, on the request's
    device ("cpu" or "cuda"; CUDA steps are timed between two synchronisations)."""

    def __init__(self, ref, request):
        torch = self.torch = ref.torch
        torch.set_num_threads(int(request["threads"]))
        self.mode = request["mode"]
        self.device = request.get("device", "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BenchmarkError(f"torch {torch.__version__} sees no CUDA device")
        self.sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        try:
            model = parity.build_reference_model(ref, request["model"])
        except ValueError as e:
            raise BenchmarkError(f"cannot build mmseg's model of this config: {e}") from None
        with np.load(request["weights"]) as f:
            state = {k: torch.from_numpy(f[k]) for k in f.files}
        own = model.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        misshaped = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or misshaped:
            raise BenchmarkError(f"our weights do not fit mmseg's model: missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}, misshaped {misshaped[:3]}")
        model.load_state_dict(state, strict=False)
        self.model = model.to(self.device)
        with np.load(request["inputs"]) as f:
            self.img = torch.from_numpy(f["img"]).to(self.device)
            label = torch.from_numpy(f["label"].astype(np.int64)).to(self.device)
        batch, _, height, width = self.img.shape
        shape = (height, width)
        meta = dict(ori_shape=shape, img_shape=shape, pad_shape=shape, padding_size=[0, 0, 0, 0])
        self.metas = [dict(meta) for _ in range(batch)]
        self.samples = []
        for i in range(batch):
            sample = ref.SegDataSample(metainfo=dict(meta))
            sample.gt_sem_seg = ref.PixelData(data=label[i][None])
            self.samples.append(sample)
        self.optimizer = None
        if self.mode == "train":
            opt = request["optimizer"]
            self.model.train()
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt["lr"],
                                               betas=tuple(opt["betas"]), eps=opt["eps"],
                                               weight_decay=opt["weight_decay"])
        else:
            self.model.eval()
        self.params = sum(p.numel() for p in self.model.parameters())
        self._last = None
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def step(self):
        torch = self.torch
        self.sync()
        if self.mode == "infer":
            with torch.no_grad():
                t0 = time.perf_counter()
                out = self.model.inference(self.img, self.metas)
                self.sync()
                elapsed = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            losses = self.model.loss(self.img, self.samples)
            out = sum(v for k, v in losses.items() if "loss" in k)
            out.backward()
            self.optimizer.step()
            self.sync()
            elapsed = time.perf_counter() - t0
        self._last = out.detach()
        return elapsed

    def finite(self):
        return bool(self.torch.isfinite(self._last).all())

    def memory(self):
        if self.device == "cuda":
            return self.torch.cuda.max_memory_allocated() / 2 ** 20, "GPU, torch peak allocated"
        return _peak_rss_mb(), "CPU, peak RSS"


def main():
    """Entry point of the child process: answer the parent's requests (see the docstring)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything printed by torch / mmseg goes to stderr, not into the protocol
    sys.stdout = sys.stderr

    def send(**reply):
        proto.write(json.dumps(reply) + "\n")
        proto.flush()

    try:
        restore_openmp_defaults()  # torch runs with its own OpenMP defaults
        ref = parity.import_reference()
        send(ready={"torch": ref.torch.__version__, "mmseg": ref.mmseg_version})
        bench = None
        for line in sys.stdin:
            request = json.loads(line)
            cmd = request.get("cmd")
            if cmd == "setup":
                bench = _TorchBench(ref, request)
                send(ok=True, params=bench.params, torch_threads=ref.torch.get_num_threads())
            elif cmd == "step":
                send(seconds=bench.step())
            elif cmd == "finite":
                send(finite=bench.finite())
            elif cmd == "memory":
                mb, kind = bench.memory()
                send(mb=mb, kind=kind)
            elif cmd == "quit":
                break
            else:
                raise RuntimeError(f"unknown request {cmd!r}")
    except (ImportError, ValueError) as e:  # ReferenceUnavailable, BenchmarkError
        send(error=str(e), known=True)
        sys.exit(1)
    except Exception as e:
        import traceback
        traceback.print_exc()
        send(error=f"{type(e).__name__}: {e}", known=False)
        sys.exit(1)
