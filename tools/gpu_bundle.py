"""Build `.gpu/`: what an offline GPU host needs, besides this repository, to run
tools/gpu_run.py (Jittor on Python 3.12 beside the host's numpy 2, and mmseg's numbers).

    python tools/gpu_bundle.py              # needs the package registry; writes .gpu/
    python tools/gpu_bundle.py --out DIR    # elsewhere
    python tools/gpu_bundle.py --verify     # check an existing bundle against its manifest

The host this is made for: Linux x86-64, CPython 3.12, an NVIDIA driver, nvcc and the CUDA
library wheels, torch with CUDA, numpy 2, opencv-python-headless, pillow, pyyaml, tqdm,
scipy, onnx and onnxruntime, and no network. Everything else travels, as cp312
manylinux x86-64 (or pure-Python) wheels, in two groups that tools/gpu_run.py installs
into two separate folders (`pip install --no-index --no-deps --target`):

  jittor/  first on the Jittor process's path: jittor (built from its sdist, the only form
           on PyPI), jittor-offline (built and trimmed, see TRIM), numpy 1.26.4 (Jittor
           1.3.11 needs numpy < 2: its C bridge assumes numpy 1's array layout),
           astunparse, six;
  mmseg/   the path of the mmseg child process, which keeps the host's numpy 2 and torch:
           mmsegmentation 1.2.2, mmcv-lite 2.1.0, mmengine 0.10.7 and the pure-Python
           packages they import that such a host lacks.

Also `python3.12-include.tar.gz`, Python's C headers (taken from a Python 3.12 here), used
only where the host has no Python.h (a venv of a distribution Python without -dev);
Jittor compiles its core against them. `MANIFEST.json` lists every file with its size and
SHA-256. The repository plus the bundle must stay under LIMIT_MIB (what such a slot lets
travel, with room to spare).
"""
import argparse
import base64
import csv
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

__all__ = ["JITTOR_SIDE", "MMSEG_SIDE", "HOST_PACKAGES", "LEFT_OUT", "TRIM", "LIMIT_MIB", "PYTHON",
           "trim_wheel", "read_manifest", "verify_bundle", "repository_bytes", "build_bundle"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "3.12"
PLATFORM = "manylinux2014_x86_64"
LIMIT_MIB = 48
MANIFEST = "MANIFEST.json"

# (distribution, version, how): "wheel" from the registry as it is, "sdist" built here with
# `pip wheel --no-deps`, "trim" built and then trimmed (TRIM).
JITTOR_SIDE = (
    ("jittor", "1.3.11.0", "sdist"),
    ("jittor-offline", "0.0.7", "trim"),
    ("numpy", "1.26.4", "wheel"),
    ("astunparse", "1.6.3", "wheel"),
    ("six", "1.17.0", "wheel"),
)
MMSEG_SIDE = (
    ("mmsegmentation", "1.2.2", "wheel"),
    ("mmcv-lite", "2.1.0", "wheel"),
    ("mmengine", "0.10.7", "wheel"),
    ("addict", "2.4.0", "wheel"),
    ("yapf", "0.43.0", "wheel"),
    ("platformdirs", "4.14.9", "wheel"),
    ("termcolor", "3.3.0", "wheel"),
    ("rich", "15.0.0", "wheel"),
    ("markdown-it-py", "4.3.0", "wheel"),
    ("mdurl", "0.1.2", "wheel"),
    ("pygments", "2.21.0", "wheel"),
    ("regex", "2026.12.2", "wheel"),
    ("ftfy", "6.3.1", "wheel"),
    ("wcwidth", "0.2.13", "wheel"),
    ("packaging", "26.4", "wheel"),
)
# What the host already has (its base environment and what torch, onnx and onnxruntime
# pull in); the bundle's test checks that every other package jseg's GPU check and mmseg
# import is in one of the two groups.
HOST_PACKAGES = frozenset({
    "numpy", "torch", "triton", "onnx", "onnxruntime", "opencv-python-headless", "pillow",
    "pyyaml", "tqdm", "scipy", "mpi4py", "filelock", "fsspec", "jinja2", "markupsafe",
    "networkx", "sympy", "mpmath", "typing-extensions", "setuptools", "protobuf",
    "flatbuffers", "ml-dtypes", "coloredlogs", "humanfriendly"})

# Imported by jseg where installed, but left out on purpose (the bundle's size):
LEFT_OUT = {
    "scipy-openblas32": "jseg's CPU matmuls then use numpy's own OpenBLAS (jseg.platform.openblas); "
                        "the GPU check times the GPU",
}

# jittor-offline 0.0.7 ships Jittor's offline archives; an x86-64 CUDA run uses oneDNN
# (the CPU side of the GPU-vs-CPU logits check), cub and cutt (Jittor's CUDA extern) and
# nccl (several GPUs under CUDA 12; jseg leaves NCCL off with CUDA 13). Dropped:
TRIM = {
    "jittor_offline/dnnl_lnx_2.2.0_cpu_gomp_aarch64.tgz": "oneDNN for aarch64; the host is x86-64",
    "jittor_offline/train-images-idx3-ubyte.gz": "MNIST, for Jittor's own examples",
    "jittor_offline/train-labels-idx1-ubyte.gz": "MNIST, for Jittor's own examples",
    "jittor_offline/t10k-images-idx3-ubyte.gz": "MNIST, for Jittor's own examples",
    "jittor_offline/t10k-labels-idx1-ubyte.gz": "MNIST, for Jittor's own examples",
}
TRIM_LABEL = "x86cuda"  # the trimmed wheel's local version: 0.0.7+x86cuda

MIB = 2 ** 20


class BundleError(RuntimeError):
    """The bundle cannot be built or is not what its manifest says; the message says why."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def trim_wheel(wheel, out_dir, drop, label):
    """Copy `wheel` into `out_dir` without the members named in `drop` (paths inside the
    wheel), as version `<version>+<label>` with a RECORD of what remains; returns its path.

    Raises BundleError when a member of `drop` is not in the wheel (the upstream package
    changed: look again before dropping anything)."""
    name = os.path.basename(wheel)
    match = re.match(r"([^-]+)-([^-]+)-(.+)\.whl$", name)
    if not match:
        raise BundleError(f"{name} is not a wheel file name")
    dist, version, tags = match.groups()
    old_info, new_version = f"{dist}-{version}.dist-info", f"{version}+{label}"
    new_info = f"{dist}-{new_version}.dist-info"
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        missing = sorted(set(drop) - set(names))
        if missing:
            raise BundleError(f"{name} has no {', '.join(missing)}; check what it ships now")
        members = {}
        for member in names:
            if member in drop or member == f"{old_info}/RECORD":
                continue
            data = src.read(member)
            target = member
            if member.startswith(old_info + "/"):
                target = new_info + member[len(old_info):]
                if member == f"{old_info}/METADATA":
                    data = re.sub(rb"(?m)^Version: .*$", f"Version: {new_version}".encode(), data,
                                  count=1)
            members[target] = data
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for member, data in members.items():
        writer.writerow([member, _record_hash(data), len(data)])
    writer.writerow([f"{new_info}/RECORD", "", ""])
    members[f"{new_info}/RECORD"] = record.getvalue().encode()
    target = os.path.join(out_dir, f"{dist}-{new_version}-{tags}.whl")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for member, data in members.items():
            # archives are compressed already: storing them saves the build time
            method = zipfile.ZIP_STORED if member.endswith((".tgz", ".zip", ".gz")) else None
            out.writestr(member, data, compress_type=method)
    return target


def _pip(args, log):
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(command, capture_output=True, text=True)
    log.write(f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise BundleError(f"pip {args[0]} failed ({' '.join(args[1:])[:200]}):\n{tail}")


def _fetch(dist, version, how, work, dest, log):
    """The wheel of one (dist, version, how) in `dest`; returns its path."""
    spec = f"{dist}=={version}"
    before = set(os.listdir(dest))
    if how == "wheel":
        _pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON,
              "--implementation", "cp", "--platform", PLATFORM, "-d", dest, spec], log)
    else:
        sdist = os.path.join(work, "sdist")
        os.makedirs(sdist, exist_ok=True)
        _pip(["download", "--no-deps", "--no-binary=:all:", "-d", sdist, spec], log)
        built = os.path.join(work, "built", dist)
        os.makedirs(built, exist_ok=True)
        source = [p for p in glob.glob(os.path.join(sdist, "*"))
                  if os.path.basename(p).lower().replace("_", "-").startswith(f"{dist}-{version}")]
        if len(source) != 1:
            raise BundleError(f"expected one sdist of {spec}, found {source}")
        _pip(["wheel", "--no-deps", "-w", built, source[0]], log)
        wheels = glob.glob(os.path.join(built, "*.whl"))
        if len(wheels) != 1:
            raise BundleError(f"building {spec} gave {wheels}")
        if how == "trim":
            return trim_wheel(wheels[0], dest, TRIM, TRIM_LABEL)
        shutil.copy2(wheels[0], dest)
        return os.path.join(dest, os.path.basename(wheels[0]))
    new = sorted(set(os.listdir(dest)) - before)
    if len(new) != 1:
        raise BundleError(f"downloading {spec} gave {new or 'nothing'}")
    return os.path.join(dest, new[0])


def _python_include(python_version, given=None):
    """(folder with Python.h of `python_version`, its full version) or (None, reason)."""
    candidates = [given] if given else []
    for exe in [shutil.which(f"python{python_version}"),
                *sorted(glob.glob(os.path.expanduser(
                    f"~/.pyenv/versions/{python_version}*/bin/python{python_version}")))]:
        if not exe:
            continue
        try:
            out = subprocess.run([exe, "-c", "import sysconfig, platform; print(sysconfig."
                                  "get_paths()['include']); print(platform.python_version())"],
                                 capture_output=True, text=True, timeout=60).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        if len(out) == 2:
            candidates.append(out[0])
            if os.path.isfile(os.path.join(out[0], "Python.h")):
                return out[0], out[1]
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "Python.h")):
            return folder, "given"
    return None, f"no Python {python_version} with headers found (give --python-headers DIR)"


def _pack_headers(include, out_path):
    """include/python3.X/*.h (and subfolders) as a tar.gz with top folder python3.X/."""
    top = f"python{PYTHON}"
    with tarfile.open(out_path, "w:gz") as tar:
        for folder, _, files in os.walk(include):
            for name in sorted(files):
                if name.endswith(".h"):
                    path = os.path.join(folder, name)
                    tar.add(path, arcname=os.path.join(top, os.path.relpath(path, include)))


def repository_bytes(root=ROOT):
    """Bytes of the files a copy of the working tree carries: tracked and untracked files
    that git does not ignore (what a GPU host receives besides the bundle)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.decode().split("\0")):
        path = os.path.join(root, name)
        if os.path.isfile(path) and not os.path.islink(path):
            total += os.path.getsize(path)
    return total


def read_manifest(bundle):
    """The manifest of `bundle` as a dict; BundleError when it is missing or unreadable."""
    path = os.path.join(bundle, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{path} is missing or unreadable ({e}); build the bundle with "
                          "`python tools/gpu_bundle.py` on a machine with the package "
                          "registry") from None
    return manifest


def verify_bundle(bundle):
    """Check every file of the manifest (present, size, SHA-256); returns the manifest.
    Raises BundleError naming the first bad file."""
    manifest = read_manifest(bundle)
    for entry in manifest["files"]:
        path = os.path.join(bundle, entry["path"])
        if not os.path.isfile(path):
            raise BundleError(f"{path} is missing from the bundle; copy .gpu/ whole or rebuild "
                              "it with `python tools/gpu_bundle.py`")
        if os.path.getsize(path) != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise BundleError(f"{path} differs from the manifest (a truncated or changed copy); "
                              "copy it again or rebuild the bundle")
    return manifest


def build_bundle(out, python_headers=None, log=None, say=print):
    """Fetch and build everything into `out` (replaced only when complete); returns the
    manifest."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".gpu-bundle-", dir=parent)
    log = log or open(os.path.join(staging, "build.log"), "w", encoding="utf-8")
    try:
        files = []
        for group, plan in (("jittor", JITTOR_SIDE), ("mmseg", MMSEG_SIDE)):
            dest = os.path.join(staging, "bundle", group)
            os.makedirs(dest)
            for dist, version, how in plan:
                path = _fetch(dist, version, how, os.path.join(staging, "work"), dest, log)
                files.append(dict(path=f"{group}/{os.path.basename(path)}", group=group,
                                  dist=dist, version=version, how=how))
        include, version = _python_include(PYTHON, python_headers)
        if include:
            name = f"python{PYTHON}-include.tar.gz"
            _pack_headers(include, os.path.join(staging, "bundle", name))
            files.append(dict(path=name, group="headers", dist="python-headers",
                              version=version, how=f"from {include}"))
        else:
            say(f"warning: {version}; the bundle will need Python.h on the host "
                "(python3.12-dev)", file=sys.stderr)
        for entry in files:
            path = os.path.join(staging, "bundle", entry["path"])
            entry.update(bytes=os.path.getsize(path), sha256=_sha256(path))
        manifest = dict(python=PYTHON, platform=PLATFORM, created=time.strftime("%Y-%m-%d %H:%M:%S"),
                        trimmed={k: v for k, v in TRIM.items()}, files=files)
        with open(os.path.join(staging, "bundle", MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(os.path.join(staging, "bundle"), out)
        return manifest
    finally:
        log.close()
        shutil.rmtree(staging, ignore_errors=True)


def describe(manifest, repo_bytes, say=print):
    """Print every file, the totals and the limit; returns True when under the limit."""
    total = 0
    for entry in manifest["files"]:
        total += entry["bytes"]
        say(f"{entry['bytes'] / MIB:8.2f} MiB  {entry['path']}  ({entry['dist']} {entry['version']}"
            f", {entry['how']})")
    whole = total + repo_bytes
    say(f"bundle {total / MIB:.2f} MiB + repository {repo_bytes / MIB:.2f} MiB = "
        f"{whole / MIB:.2f} MiB (limit {LIMIT_MIB} MiB)")
    return whole < LIMIT_MIB * MIB


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, ".gpu"), help="default: .gpu/")
    parser.add_argument("--python-headers", metavar="DIR",
                        help=f"the include folder of a Python {PYTHON} (holding Python.h); "
                        "default: found from python3.12 on PATH or in pyenv")
    parser.add_argument("--verify", action="store_true",
                        help="only check an existing bundle against its manifest")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            manifest = verify_bundle(args.out)
        else:
            print(f"building {args.out} (Python {PYTHON}, {PLATFORM}) ...", flush=True)
            manifest = build_bundle(args.out, args.python_headers)
        ok = describe(manifest, repository_bytes())
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not ok:
        print(f"error: repository + bundle is over {LIMIT_MIB} MiB; a GPU slot cannot carry it",
              file=sys.stderr)
        return 1
    print("bundle verified" if args.verify else f"bundle written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
