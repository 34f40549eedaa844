"""Compile Jittor's CUDA part and SegNeXt's CUDA kernels with nvcc, on a machine without a GPU.

Jittor only builds a kernel when it runs it, and refuses to start CUDA without a driver.
`compile_check` gives it stand-ins for the driver side: a CUDA runtime and CUDA libraries
(cuBLAS, cuDNN, cuRAND, cuFFT, cuSPARSE) of the same names and symbols that say "one sm_90
device" and do nothing. Everything Jittor compiles is real: its core with `-DHAS_CUDA`, the
CUDA extern sources and library ops (against the real headers and symbol sets), cub and
cutt, and every kernel of a SegNeXt-T training step and inference. Nothing computed means
anything; only that it compiled. Needs nvcc, the CUDA library headers (or `--cuda-libs`),
gcc and nm; its Jittor cache is its own (~/.cache/jseg/cuda-compile-check). Usage and a
measured run: docs/gpu.md, "Checking the CUDA build without a GPU".
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jseg.platform.env import users_nvcc_path
from jseg.platform.toolkit import (REQUIRED_LIBRARIES, build_toolkit_view, library_roots,
                                missing_libraries, nvcc_candidates, toolkit_root)

__all__ = ["compile_check"]

_PIP_HINT = ("pip install nvidia-cublas nvidia-cudnn-cu13 nvidia-curand nvidia-cufft "
             "nvidia-cusparse (about 1.4 GB), or give --cuda-libs DIR (with include/ and lib/)")

# The runtime calls whose results Jittor reads; every other exported function of the
# real libcudart becomes a stub that returns cudaSuccess.
_FAKE_CUDART = r"""
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>
#define OK return cudaSuccess
static void *alloc(size_t n) { return calloc(1, n ? n : 1); }
cudaError_t cudaGetDeviceCount(int *n) { *n = 1; OK; }
cudaError_t cudaGetDevice(int *d) { *d = 0; OK; }
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
  memset(p, 0, sizeof(*p)); strcpy(p->name, "stand-in sm_ARCH (compile check)");
  p->major = ARCH / 10; p->minor = ARCH % 10; p->totalGlobalMem = 80ull << 30;
  p->multiProcessorCount = 132; p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647; p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->warpSize = 32; p->sharedMemPerBlock = 49152; p->regsPerBlock = 65536;
  p->maxThreadsPerMultiProcessor = 2048; OK; }
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d) {
  *v = a == cudaDevAttrComputeCapabilityMajor ? ARCH / 10
     : a == cudaDevAttrComputeCapabilityMinor ? ARCH % 10
     : a == cudaDevAttrMultiProcessorCount ? 132
     : a == cudaDevAttrMaxThreadsPerBlock ? 1024
     : a == cudaDevAttrWarpSize ? 32
     : a == cudaDevAttrMaxSharedMemoryPerBlock ? 49152 : 1;
  OK; }
cudaError_t cudaMemGetInfo(size_t *f, size_t *t) { *f = 8ull << 30; *t = 80ull << 30; OK; }
cudaError_t cudaMalloc(void **p, size_t n) { *p = alloc(n); OK; }
cudaError_t cudaMallocManaged(void **p, size_t n, unsigned f) { *p = alloc(n); OK; }
cudaError_t cudaMallocHost(void **p, size_t n) { *p = alloc(n); OK; }
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned f) { *p = alloc(n); OK; }
cudaError_t cudaMallocAsync(void **p, size_t n, cudaStream_t s) { *p = alloc(n); OK; }
cudaError_t cudaFree(void *p) { free(p); OK; }
cudaError_t cudaFreeHost(void *p) { free(p); OK; }
cudaError_t cudaFreeAsync(void *p, cudaStream_t s) { free(p); OK; }
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, enum cudaMemcpyKind k) { memmove(d, s, n); OK; }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind k, cudaStream_t st) { memmove(d, s, n); OK; }
cudaError_t cudaMemset(void *d, int v, size_t n) { memset(d, v, n); OK; }
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st) { memset(d, v, n); OK; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned f) { *s = (cudaStream_t)alloc(64); OK; }
cudaError_t cudaStreamCreate(cudaStream_t *s) { *s = (cudaStream_t)alloc(64); OK; }
cudaError_t cudaEventCreate(cudaEvent_t *e) { *e = (cudaEvent_t)alloc(64); OK; }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned f) { *e = (cudaEvent_t)alloc(64); OK; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) { *ms = 0; OK; }
cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void *data) { fn(data); OK; }
cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *a, const void *f) {
  memset(a, 0, sizeof(*a)); a->maxThreadsPerBlock = 1024; a->ptxVersion = ARCH;
  a->binaryVersion = ARCH; OK; }
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *n, const void *f, int b, size_t s) { *n = 1; OK; }
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *n, const void *f, int b, size_t s, unsigned fl) { *n = 1; OK; }
cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *p) {
  memset(a, 0, sizeof(*a)); a->type = cudaMemoryTypeDevice; OK; }
cudaError_t cudaDriverGetVersion(int *v) { *v = 13000; OK; }
cudaError_t cudaRuntimeGetVersion(int *v) { *v = 13000; OK; }
cudaError_t cudaGetSymbolAddress(void **p, const void *s) { static char b[1 << 16]; *p = b; OK; }
const char *cudaGetErrorString(cudaError_t e) { return "stand-in CUDA runtime"; }
const char *cudaGetErrorName(cudaError_t e) { return "cudaStandIn"; }
static void *fatbin_handle[4];
void **__cudaRegisterFatBinary(void *fatCubin) { return fatbin_handle; }
"""
# Library calls whose results Jittor reads (a version, a string, a workspace size, the
# algorithm list a convolution picks from); the rest return 0.
_FAKE_LIBRARY = {
    "cudnn": r"""
#include <cudnn.h>
#include <string.h>
size_t cudnnGetVersion(void) { return CUDNN_VERSION; }
size_t cudnnGetCudartVersion(void) { return 13000; }
const char *cudnnGetErrorString(cudnnStatus_t s) { return "stand-in cuDNN"; }
#define WORKSPACE(NAME, A, B, C, D, E) cudnnStatus_t NAME(cudnnHandle_t h, A a, B b, C c, D d, \
    E e, size_t *size) { *size = 0; return CUDNN_STATUS_SUCCESS; }
WORKSPACE(cudnnGetConvolutionForwardWorkspaceSize, const cudnnTensorDescriptor_t,
  const cudnnFilterDescriptor_t, const cudnnConvolutionDescriptor_t,
  const cudnnTensorDescriptor_t, cudnnConvolutionFwdAlgo_t)
WORKSPACE(cudnnGetConvolutionBackwardFilterWorkspaceSize, const cudnnTensorDescriptor_t,
  const cudnnTensorDescriptor_t, const cudnnConvolutionDescriptor_t,
  const cudnnFilterDescriptor_t, cudnnConvolutionBwdFilterAlgo_t)
WORKSPACE(cudnnGetConvolutionBackwardDataWorkspaceSize, const cudnnFilterDescriptor_t,
  const cudnnTensorDescriptor_t, const cudnnConvolutionDescriptor_t,
  const cudnnTensorDescriptor_t, cudnnConvolutionBwdDataAlgo_t)
#define ONE_ALGO(PERF) memset(perf, 0, sizeof(*perf)); *count = 1; \
  return CUDNN_STATUS_SUCCESS;
cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t h,
  const cudnnTensorDescriptor_t a, const cudnnFilterDescriptor_t b,
  const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t d, const int n,
  int *count, cudnnConvolutionFwdAlgoPerf_t *perf) { ONE_ALGO(perf) }
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t h,
  const cudnnTensorDescriptor_t a, const cudnnTensorDescriptor_t b,
  const cudnnConvolutionDescriptor_t c, const cudnnFilterDescriptor_t d, const int n,
  int *count, cudnnConvolutionBwdFilterAlgoPerf_t *perf) { ONE_ALGO(perf) }
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t h,
  const cudnnFilterDescriptor_t a, const cudnnTensorDescriptor_t b,
  const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t d, const int n,
  int *count, cudnnConvolutionBwdDataAlgoPerf_t *perf) { ONE_ALGO(perf) }
cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t h,
  const cudnnTensorDescriptor_t a, const void *x, const cudnnFilterDescriptor_t b,
  const void *w, const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t d,
  void *y, const int n, int *count, cudnnConvolutionFwdAlgoPerf_t *perf, void *ws,
  size_t wss) { ONE_ALGO(perf) }
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnnHandle_t h,
  const cudnnTensorDescriptor_t a, const void *x, const cudnnTensorDescriptor_t b,
  const void *dy, const cudnnConvolutionDescriptor_t c, const cudnnFilterDescriptor_t d,
  void *dw, const int n, int *count, cudnnConvolutionBwdFilterAlgoPerf_t *perf, void *ws,
  size_t wss) { ONE_ALGO(perf) }
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(cudnnHandle_t h,
  const cudnnFilterDescriptor_t a, const void *w, const cudnnTensorDescriptor_t b,
  const void *dy, const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t d,
  void *dx, const int n, int *count, cudnnConvolutionBwdDataAlgoPerf_t *perf, void *ws,
  size_t wss) { ONE_ALGO(perf) }
""",
    "cublas": 'const char *cublasGetStatusString(int s) { return "stand-in cuBLAS"; }\n'
              'const char *cublasGetStatusName(int s) { return "CUBLAS_STAND_IN"; }\n',
}


def _exported(path, kinds="T"):
    """Names of the functions a shared library (or, kinds "T", an object file) defines."""
    dynamic = [] if str(path).endswith(".o") else ["-D"]
    out = subprocess.run(["nm", *dynamic, "--defined-only", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return sorted({line.split()[2].split("@")[0] for line in out.splitlines()
                   if len(line.split()) == 3 and line.split()[1] in kinds})


def _soname(library):
    out = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True).stdout
    match = re.search(r"Library soname: \[([^\]]+)\]", out)
    return match.group(1) if match else Path(library).name


def _build_stand_in(real, source, include, out_dir):
    """Compile `source` plus a `return 0` stub for every other function `real` exports, into
    a library with the real one's soname and symbol version; returns its path."""
    soname = _soname(real)
    work = out_dir / (soname + ".src")
    work.mkdir(parents=True, exist_ok=True)
    (work / "main.c").write_text(source)
    run = dict(check=True, capture_output=True, text=True)
    subprocess.run(["gcc", "-c", "-fPIC", "-O1", f"-I{include}", "-w", "-o",
                    str(work / "main.o"), str(work / "main.c")], **run)
    defined = set(_exported(work / "main.o", kinds="T"))
    (work / "stubs.c").write_text("".join(  # no headers: the stubs' types are not checked
        f"long {name}(void) {{ return 0; }}\n" for name in _exported(real) if name not in defined))
    (work / "version.map").write_text(f"{soname} {{ global: *; }};\n")
    target = out_dir / soname
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-w", f"-Wl,-soname,{soname}",
                    f"-Wl,--version-script={work / 'version.map'}", "-o", str(target),
                    str(work / "main.o"), str(work / "stubs.c")], **run)
    return target


def _install_stand_ins(view, arch):
    """Replace libcudart and the required libraries in the view's lib64 by stand-ins."""
    lib64, stand_ins = view / "lib64", view / "stand-ins"
    stand_ins.mkdir(exist_ok=True)
    names = {"cudart": _FAKE_CUDART.replace("ARCH", str(arch))}
    names.update({n: _FAKE_LIBRARY.get(n, "") for n in REQUIRED_LIBRARIES})
    names["cublasLt"] = ""
    for name, source in names.items():
        real = os.path.realpath(lib64 / f"lib{name}.so")
        if not os.path.exists(real):
            continue
        fake = _build_stand_in(real, source, view / "include", stand_ins)
        for link in lib64.glob(f"lib{name}.so*"):
            link.unlink()
        (lib64 / f"lib{name}.so").symlink_to(fake)
        (lib64 / fake.name).symlink_to(fake)


_CHILD = r"""
import json, os, sys, time
t0 = time.time()
import jseg, jittor as jt
from jseg.config import load_config
from jseg.models import build_model
from jseg.engine.optim import build_optimizer
import numpy as np
facts = {"core and extern": round(time.time() - t0, 1), "has_cuda": int(jt.compiler.has_cuda),
         "threads": int(jt.flags.use_parallel_op_compiler),
         "archs": list(jt.flags.cuda_archs),
         "libraries": {n: getattr(jt.compile_extern, n + "_ops", None) is not None
                       for n in ("cublas", "cudnn", "curand", "cufft", "cusparse", "cub", "cutt")}}
jt.flags.use_cuda = 1
cache = jt.flags.cache_path
before = set(os.listdir(os.path.join(cache, "jit")))
t1 = time.time()
cfg = load_config(sys.argv[1], ["model.backbone.drop_path_rate=0.1"])
model = build_model(cfg.model)
optimizer = build_optimizer(model, cfg.optimizer)
image = jt.array(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype("float32"))
label = jt.array(np.random.default_rng(1).integers(0, 150, (2, 64, 64)).astype("int32"))
model.train()
losses = model(image, label)
loss = sum(losses[k] for k in losses if k.startswith("loss"))
optimizer.step(loss)
jt.sync_all(True)
model.eval()
with jt.no_grad():
    model(image).argmax(1)[0].sync()
    jt.sync_all(True)
facts["segnext"] = round(time.time() - t1, 1)
# Jittor CUDA code the model does not reach but every user might: the ops the CUDA 13 fix
# touches (softmax, jt.where) and the cub-based ones (sort, cumsum, argmax)
x = jt.rand(4, 33)
y = jt.nn.softmax(x, dim=1)
jt.grad(y.sum() * 2, x).sync()
jt.where(x > 0.5)[0].sync()
jt.argsort(x, dim=1)[0].sync()
jt.cumsum(x, dim=1).sync()
jt.argmax(x, dim=1)[0].sync()
jt.sync_all(True)
new = sorted(set(os.listdir(os.path.join(cache, "jit"))) - before)
facts["kernels"] = len([n for n in new if n.endswith(".so")])
print("COMPILE-CHECK " + json.dumps(facts))
"""


def compile_check(jittor_directory, arch="90", cuda_libs=None, work_dir=None, config=None,
                  threads=None, fresh_kernels=False, out=print):
    """Run the check and print its result; returns the exit code (0: everything compiled).

    threads: Jittor's compile threads for a graph's kernels (`use_parallel_op_compiler`;
    0 compiles on the calling thread; None: jseg's default, 0). fresh_kernels: delete the
    kernels an earlier check compiled (keeping Jittor's core and CUDA extern), so that the
    SegNeXt kernels are timed cold."""
    from jseg.platform import jittor_cuda13

    found = [(p, v) for p, v in nvcc_candidates(users_nvcc_path()) if v]
    if not found:
        out("error: no nvcc found (nvcc_path, PATH, /usr/local/cuda/bin); fix: install a CUDA "
            "toolkit or set nvcc_path=/path/to/nvcc", file=sys.stderr)
        return 1
    nvcc, version = max(found, key=lambda f: f[1])  # the newest: the point is CUDA 13
    fix_state = jittor_cuda13.state(jittor_directory)
    if version[0] >= 13 and fix_state != "applied":
        out(f"error: Jittor's CUDA 13 fix is {fix_state} at {jittor_directory}; fix: "
            "python tools/jittor_cuda13.py apply", file=sys.stderr)
        return 1
    work = Path(work_dir or Path.home() / ".cache" / "jseg" / "cuda-compile-check")
    roots = list(cuda_libs) if cuda_libs else library_roots()
    view = work / "toolkit"
    if view.exists():
        shutil.rmtree(view)
    build_toolkit_view(nvcc, roots, view)
    missing = missing_libraries(view)
    if missing:
        out(f"error: Jittor needs {', '.join(missing)} to build its CUDA part and neither the "
            f"toolkit at {toolkit_root(nvcc)} nor {roots or 'site-packages'}"
            f" has it; fix: {_PIP_HINT}", file=sys.stderr)
        return 1
    _install_stand_ins(view, int(arch))
    root = Path(__file__).resolve().parents[2]
    config = config or root / "configs" / "segnext" / "segnext_mscan-t_ade20k-512x512.yaml"
    # the Jittor checked is the one at jittor_directory (put first on the path only when it
    # is not this Python's own: site-packages first would shadow the standard library)
    path = [str(root)]
    if Path(jittor_directory).resolve() != jittor_cuda13.jittor_dir().resolve():
        path.insert(0, str(Path(jittor_directory).resolve().parent))
    env = dict(os.environ, HOME=str(work / "home"), nvcc_path=str(view / "bin" / "nvcc"),
               use_cutlass="0", PYTHONPATH=os.pathsep.join(path))
    env.pop("JITTOR_HOME", None)
    if threads is not None:
        env["use_parallel_op_compiler"] = str(threads)
    if fresh_kernels:  # op kernels live in <cache>/jit; the core and extern elsewhere
        for jit in (work / "home").glob(".cache/jittor/**/jit"):
            shutil.rmtree(jit)
    (work / "home").mkdir(parents=True, exist_ok=True)
    out(f"compile check: nvcc {version[0]}.{version[1]} ({nvcc}), sm_{arch}, Jittor at "
        f"{jittor_directory}, libraries from {', '.join(map(str, roots)) or 'the toolkit'}; "
        f"work dir {work}")
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(config)], env=env, cwd=str(root),
                          capture_output=True, text=True)
    log = work / "compile-check.log"
    log.write_text(proc.stdout + proc.stderr)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("COMPILE-CHECK ")), None)
    if proc.returncode != 0 or line is None:
        errors = [l for l in re.sub(r"\x1b\[[0-9;]*m", "", proc.stderr).splitlines()
                  if "error" in l.lower()][:12]
        out("\n".join(errors) or proc.stderr[-3000:])
        out(f"error: the compile check failed after {time.time() - start:.0f} s (exit "
            f"{proc.returncode}); the full log is {log}", file=sys.stderr)
        return 1
    facts = json.loads(line[len("COMPILE-CHECK "):])
    libs = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in facts["libraries"].items())
    out(f"Jittor core + CUDA extern built and loaded: {facts['core and extern']} s "
        f"(CUDA archs {facts['archs']})")
    out(f"CUDA library ops compiled: {libs}")
    out(f"SegNeXt-T train step (forward, loss, backward, AdamW) + inference, then softmax, "
        f"where, argsort, cumsum, argmax: {facts['kernels']} CUDA kernels compiled "
        f"({facts['segnext']} s for SegNeXt, {facts['threads'] or 'no'} compile threads)")
    out(f"compile check passed in {time.time() - start:.0f} s; log {log}")
    return 0 if all(facts["libraries"].values()) and facts["has_cuda"] else 1
