"""tools/gpu_bundle.py: the trimmed wheel installs, a bundle is checked against its
manifest, and the two wheel groups hold every package the GPU check's processes import
that the GPU host lacks. (Building the real bundle needs the package registry and ~40 MB:
tools/gpu_rehearse.sh does it.)"""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_bundle", os.path.join(ROOT, "tools",
                                                                         "gpu_bundle.py"))
gpu_bundle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_bundle)


def make_wheel(folder, dist, version, files):
    """A minimal wheel of `dist` with `files` {path: bytes} and a correct RECORD."""
    import base64
    import hashlib
    info = f"{dist}-{version}.dist-info"
    members = dict(files)
    members[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                                   ).encode()
    members[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join(
        f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},"
        f"{len(v)}\n" for k, v in members.items()) + f"{info}/RECORD,,\n"
    members[f"{info}/RECORD"] = record.encode()
    path = os.path.join(folder, f"{dist}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_trimmed_wheel_installs_without_the_dropped_files(tmp_path):
    wheel = make_wheel(str(tmp_path), "jittor_offline", "0.0.7", {
        "jittor_offline/__init__.py": b"", "jittor_offline/keep.tgz": b"k" * 100,
        "jittor_offline/mnist.gz": b"m" * 100, "jittor_offline/arm.tgz": b"a" * 100})
    out = tmp_path / "out"
    out.mkdir()
    trimmed = gpu_bundle.trim_wheel(wheel, str(out), {"jittor_offline/mnist.gz": "data",
                                                      "jittor_offline/arm.tgz": "aarch64"},
                                    "x86cuda")
    assert os.path.basename(trimmed) == "jittor_offline-0.0.7+x86cuda-py3-none-any.whl"
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                           "--disable-pip-version-check", "--target", str(target), trimmed],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in (target / "jittor_offline").iterdir() if p.suffix)
    assert names == ["__init__.py", "keep.tgz"], names  # (and __pycache__)
    metadata = (target / "jittor_offline-0.0.7+x86cuda.dist-info" / "METADATA").read_text()
    assert "Version: 0.0.7+x86cuda" in metadata, metadata
    with pytest.raises(gpu_bundle.BundleError, match="has no jittor_offline/gone.txt"):
        gpu_bundle.trim_wheel(wheel, str(out), {"jittor_offline/gone.txt": "x"}, "x86cuda")


def test_the_trim_list_keeps_what_a_cuda_x86_run_uses():
    dropped = set(gpu_bundle.TRIM)
    for needed in ("dnnl_lnx_2.2.0_cpu_gomp.tgz", "cub-1.11.0.tgz", "cutt-1.2.zip", "nccl.tgz"):
        assert f"jittor_offline/{needed}" not in dropped, needed
    assert all(reason for reason in gpu_bundle.TRIM.values())


def _bundle(tmp_path):
    folder = tmp_path / "bundle"
    (folder / "jittor").mkdir(parents=True)
    wheel = make_wheel(str(folder / "jittor"), "tiny", "1.0", {"tiny/__init__.py": b"x = 1\n"})
    manifest = dict(files=[dict(path="jittor/" + os.path.basename(wheel), group="jittor",
                                dist="tiny", version="1.0", how="wheel",
                                bytes=os.path.getsize(wheel), sha256=gpu_bundle._sha256(wheel))])
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    return folder, wheel


def test_verify_names_a_missing_or_changed_file(tmp_path):
    folder, wheel = _bundle(tmp_path)
    assert gpu_bundle.verify_bundle(str(folder))["files"][0]["dist"] == "tiny"
    with open(wheel, "ab") as f:
        f.write(b"!")
    with pytest.raises(gpu_bundle.BundleError, match="differs from the manifest"):
        gpu_bundle.verify_bundle(str(folder))
    os.remove(wheel)
    with pytest.raises(gpu_bundle.BundleError, match="is missing from the bundle"):
        gpu_bundle.verify_bundle(str(folder))
    os.remove(folder / "MANIFEST.json")
    with pytest.raises(gpu_bundle.BundleError, match="python tools/gpu_bundle.py"):
        gpu_bundle.verify_bundle(str(folder))


def test_repository_is_well_under_the_limit():
    size = gpu_bundle.repository_bytes()
    # the bundle itself is ~37.5 MiB: the repository must leave room for it
    assert 0 < size < 8 * gpu_bundle.MIB, size / gpu_bundle.MIB


def _imported_distributions(code):
    """Distributions whose modules a fresh interpreter has imported after running `code`,
    with normalised names, the standard library and this project left out."""
    probe = code + r"""
import sys, importlib.metadata as md, json
owners = md.packages_distributions()
found = set()
for name in list(sys.modules):
    if name.split(".")[0] in sys.stdlib_module_names:
        continue
    for dist in owners.get(name.split(".")[0], []):
        found.add(dist.lower().replace("_", "-"))
print("DISTS " + json.dumps(sorted(found)))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    line = [l for l in out.stdout.splitlines() if l.startswith("DISTS ")]
    assert out.returncode == 0 and line, out.stdout[-2000:] + out.stderr[-3000:]
    return set(json.loads(line[0][6:])) - {"segnext-jittor"}


def _names(plan):
    return {dist for dist, _, _ in plan}


def test_the_jittor_group_holds_what_the_check_imports_beyond_the_host():
    needed = _imported_distributions(
        "import jseg, jittor\n"
        "from jseg.diagnostics import gpu_check, benchmark, parity\n"
        "from jseg.engine import trainer, evaluator\n"
        "from jseg.models import build_model\n"
        "from jseg.data import loader, demo\n"
        "import jseg.platform.openblas as o; o.set_threads(1)\n")
    missing = needed - gpu_bundle.HOST_PACKAGES - _names(gpu_bundle.JITTOR_SIDE) \
        - set(gpu_bundle.LEFT_OUT)
    assert not missing, f"imported, not on the host and not in the bundle: {sorted(missing)}"


def test_the_mmseg_group_holds_what_the_mmseg_child_imports_beyond_the_host():
    if importlib.util.find_spec("mmseg") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("the parity extra (torch, mmseg) is not installed")
    needed = _imported_distributions(
        "from jseg.diagnostics import torch_worker, parity\n"
        "ref = parity.import_reference()\n")
    missing = needed - gpu_bundle.HOST_PACKAGES - _names(gpu_bundle.MMSEG_SIDE) \
        - set(gpu_bundle.LEFT_OUT)
    assert not missing, f"imported, not on the host and not in the bundle: {sorted(missing)}"
