"""The model zoo against a local HTTP server on 127.0.0.1 (no internet needed).

The server serves fixture checkpoints (random SegNeXt-T weights in mmseg 1.x / ImageNet MSCAN
layout) at the zoo's real URL paths, reached through JSEG_ZOO_MIRROR. Their SHA-256 cannot
start with the published 8 hex digits, so each test swaps the table's hash prefix for the
fixture's own; URLs outside the table carry it in their name, as mmseg's files do.
"""
import dataclasses
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from urllib.parse import urlparse

import numpy as np
import pytest

from jseg.checkpoint import save_checkpoint_file, zoo
from jseg.utils.download import DownloadError, download

from conftest import ROOT

T_CONFIG = os.path.join(ROOT, "configs", "segnext", "segnext_mscan-t_ade20k-512x512.yaml")


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET with Range support; the server's `files`, `cut_once`, `ignore_range` and `log`
    decide what is served."""

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):
        server = self.server
        server.log.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and not server.ignore_range:
            start = int(ranged.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in server.cut_once:  # promise the whole body, send half, hang up
            server.cut_once.discard(self.path)
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.cut_once, httpd.ignore_range, httpd.log = {}, set(), False, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Bytes of a SegNeXt-T (ADE20K, 150 classes) checkpoint in mmseg 1.x layout and of an
    ImageNet MSCAN-T (no prefix, a 1000-class classifier), with the weights they hold."""
    from jseg.config import load_config
    from jseg.models import build_model

    model = build_model(load_config(T_CONFIG).model)
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.1
             for k, v in model.state_dict().items()}
    mmseg = dict(state)
    for k in state:  # mmseg's BatchNorms count their batches
        if k.endswith(".running_mean"):
            mmseg[k[:-len("running_mean")] + "num_batches_tracked"] = np.array(7, np.int64)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    backbone.update({"head.weight": rng.standard_normal((1000, 256)).astype(np.float32),
                     "head.bias": np.zeros(1000, np.float32)})
    folder = tmp_path_factory.mktemp("zoo_fixtures")
    blobs = {}
    for name, sd in (("mmseg", mmseg), ("imagenet", backbone)):
        save_checkpoint_file(str(folder / name), {"state_dict": sd, "meta": {}})
        blobs[name] = (folder / name).read_bytes()
    return {"blobs": blobs, "state": state}


def _sha8(data):
    return hashlib.sha256(data).hexdigest()[:8]


def _serve(monkeypatch, server, name, data, tmp_path):
    """Serve `data` at zoo model `name`'s URL path; the table expects its hash; the cache and
    the mirror point at tmp_path and the server."""
    entry = zoo.MODELS[name]
    monkeypatch.setitem(zoo.MODELS, name, dataclasses.replace(entry, sha256=_sha8(data)))
    monkeypatch.setenv("JSEG_ZOO_MIRROR", server.url)
    monkeypatch.setenv("JSEG_CACHE_DIR", str(tmp_path / "cache"))
    path = urlparse(entry.url).path
    server.files[path] = data
    return path


def test_the_table_holds_the_published_files():
    """The eight mmseg 1.x files, each with the 8 hex digits of its name as its hash prefix."""
    assert sorted(zoo.MODELS) == sorted(
        [f"segnext_mscan-{v}_ade20k" for v in "tsbl"] + [f"mscan_{v}" for v in "tsbl"])
    assert zoo.MODELS["segnext_mscan-t_ade20k"].url == (
        "https://download.openmmlab.com/mmsegmentation/v0.5/segnext/"
        "segnext_mscan-t_1x16_512x512_adamw_160k_ade20k/"
        "segnext_mscan-t_1x16_512x512_adamw_160k_ade20k_20230210_140244-05bd8466.pth")
    assert zoo.MODELS["mscan_l"].url.endswith("/pretrain/segnext/mscan_l_20230227-cef260d4.pth")
    for m in zoo.MODELS.values():
        assert m.url.endswith(f"-{m.sha256}.pth") and os.path.isfile(os.path.join(ROOT, m.config))
    assert [zoo.MODELS[f"segnext_mscan-{v}_ade20k"].miou for v in "tsbl"] == \
        [41.50, 44.16, 48.03, 50.99]


def test_init_model_from_the_zoo_then_from_the_cache(monkeypatch, server, fixtures, tmp_path):
    """init_model(config, "zoo:...") downloads, verifies, converts (num_batches_tracked dropped),
    loads strictly; the second call reads the converted file without a request."""
    from jseg.apis import init_model

    data = fixtures["blobs"]["mmseg"]
    path = _serve(monkeypatch, server, "segnext_mscan-t_ade20k", data, tmp_path)
    model = init_model(T_CONFIG, checkpoint="zoo:segnext_mscan-t_ade20k", device="cpu")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), fixtures["state"][k], err_msg=k)
    assert server.log == [(path, None)]
    cached = zoo.cached_path("zoo:segnext_mscan-t_ade20k")
    assert cached.startswith(str(tmp_path / "cache")) and os.path.isfile(cached)
    raw = os.path.join(os.path.dirname(os.path.dirname(cached)), os.path.basename(path))
    assert open(raw, "rb").read() == data

    init_model(T_CONFIG, checkpoint="zoo:segnext_mscan-t_ade20k", device="cpu")
    assert len(server.log) == 1  # cache reuse: no second request


def test_a_cut_download_resumes(monkeypatch, server, fixtures, tmp_path):
    """The connection drops halfway: the next attempt asks for the rest with Range and the
    file is whole. A server that ignores Range sends it all again: restarted, still whole."""
    data = fixtures["blobs"]["imagenet"]
    server.files["/a/w-x.pth"] = data
    server.cut_once.add("/a/w-x.pth")
    digest = download(server.url + "/a/w-x.pth", tmp_path / "w.pth", _sha8(data), progress=False)
    assert digest.startswith(_sha8(data)) and (tmp_path / "w.pth").read_bytes() == data
    half = (len(data)) // 2
    assert server.log == [("/a/w-x.pth", None), ("/a/w-x.pth", f"bytes={half}-")]

    # one attempt only: the cut leaves the part and says how to go on; a later call resumes
    server.log.clear()
    server.cut_once.add("/a/w-x.pth")
    with pytest.raises(DownloadError, match=r"was cut 1 times .* run again to resume"):
        download(server.url + "/a/w-x.pth", tmp_path / "v.pth", _sha8(data), progress=False,
                 attempts=1)
    assert os.path.getsize(tmp_path / "v.pth.part") == half and not (tmp_path / "v.pth").exists()
    server.ignore_range = True
    download(server.url + "/a/w-x.pth", tmp_path / "v.pth", _sha8(data), progress=False)
    assert (tmp_path / "v.pth").read_bytes() == data
    assert server.log[-1] == ("/a/w-x.pth", f"bytes={half}-")  # asked; got 200: restarted


def test_hash_mismatch_deletes_the_download(monkeypatch, server, fixtures, tmp_path):
    from jseg.apis import init_model

    data = fixtures["blobs"]["mmseg"]
    _serve(monkeypatch, server, "segnext_mscan-t_ade20k", data, tmp_path)
    entry = zoo.MODELS["segnext_mscan-t_ade20k"]
    monkeypatch.setitem(zoo.MODELS, entry.name, dataclasses.replace(entry, sha256="00000000"))
    with pytest.raises(DownloadError, match=r"has SHA-256 [0-9a-f]{16}\.\.\., expected "
                                            r"00000000\.\.\.: .*\(deleted\)"):
        init_model(T_CONFIG, checkpoint="zoo:segnext_mscan-t_ade20k", device="cpu")
    left = [f for _, _, fs in os.walk(tmp_path / "cache") for f in fs if not f.endswith(".lock")]
    assert left == []


def test_404_and_no_network_are_one_line_errors(monkeypatch, server, fixtures, tmp_path):
    """404: the URL and the status. No network: the URL and where to put the file by hand;
    a file put there (and matching the hash) is then used without any network."""
    monkeypatch.setenv("JSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("JSEG_ZOO_MIRROR", server.url)  # serves nothing: 404
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/"
                                            r"mmsegmentation/.*mscan_t_20230227-119e8c9f\.pth: "
                                            r"HTTP 404"):
        zoo.fetch_weights("zoo:mscan_t", progress=False)

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused, as offline
    data = fixtures["blobs"]["imagenet"]
    entry = zoo.MODELS["mscan_t"]
    monkeypatch.setitem(zoo.MODELS, "mscan_t", dataclasses.replace(entry, sha256=_sha8(data)))
    monkeypatch.setenv("JSEG_ZOO_MIRROR", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match=r"cannot reach .* put it at (\S+)$") as err:
        zoo.fetch_weights("zoo:mscan_t", progress=False)
    assert "\n" not in str(err.value)
    by_hand = str(err.value).rsplit(" put it at ", 1)[1]
    with open(by_hand, "wb") as f:
        f.write(data)
    state, _ = zoo_read(zoo.fetch_weights("zoo:mscan_t", progress=False))
    assert "backbone.norm4.weight" in state and "head.weight" not in state


def zoo_read(path):
    from jseg.checkpoint import read_checkpoint
    return read_checkpoint(path)


def test_pretrained_backbone_and_urls_from_the_zoo(monkeypatch, server, fixtures, tmp_path):
    """model.backbone.pretrained: zoo:mscan_t initialises every MSCAN tensor; a URL whose name
    carries the hash prefix is checked by it; an unknown name lists the known ones."""
    import jittor as jt
    from jseg.config import load_config
    from jseg.checkpoint import load_backbone_init
    from jseg.models import build_model

    data = fixtures["blobs"]["imagenet"]
    _serve(monkeypatch, server, "mscan_t", data, tmp_path)
    jt.set_global_seed(3)
    model = build_model(load_config(T_CONFIG).model)
    load_backbone_init(model, "zoo:mscan_t")
    for k, v in model.backbone.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), fixtures["state"]["backbone." + k], err_msg=k)

    server.files["/x/mscan_custom-" + _sha8(data) + ".pth"] = data
    url = f"{server.url}/x/mscan_custom-{_sha8(data)}.pth"
    state, _ = zoo_read(url)
    np.testing.assert_array_equal(state["backbone.norm1.weight"],
                                  fixtures["state"]["backbone.norm1.weight"])
    server.files["/x/mscan_bad-00000000.pth"] = data
    with pytest.raises(DownloadError, match="expected 00000000"):
        zoo_read(f"{server.url}/x/mscan_bad-00000000.pth")
    with pytest.raises(zoo.ZooError, match=r"unknown zoo model 'mscan_q'; choose one of "
                                           r"segnext_mscan-t_ade20k, .*mscan_l"):
        zoo_read("zoo:mscan_q")


def _tool(args, env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=dict(os.environ, **env))


def test_convert_and_list_command_lines(server, fixtures, tmp_path):
    """weights_convert/convert.py URL DST converts a download; unknown zoo names are one
    error line; tools/list_models.py prints the table with what is cached."""
    data = fixtures["blobs"]["imagenet"]
    server.files[f"/m/mscan_t_x-{_sha8(data)}.pth"] = data
    env = {"JSEG_CACHE_DIR": str(tmp_path / "cache")}
    dst = tmp_path / "mscan_t.pkl"
    out = _tool(["weights_convert/convert.py", f"{server.url}/m/mscan_t_x-{_sha8(data)}.pth",
                 str(dst)], env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "format: imagenet" in out.stdout and dst.is_file()

    out = _tool(["weights_convert/convert.py", "zoo:mscan_x", str(tmp_path / "y.pkl")], env)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        "error: unknown zoo model 'mscan_x'; choose one of " + ", ".join(zoo.MODELS)
        + " (python tools/list_models.py lists them)"]
    assert not (tmp_path / "y.pkl").exists()

    out = _tool(["tools/list_models.py"], env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    row = next(line for line in lines if line.startswith("segnext_mscan-l_ade20k"))
    assert "50.99" in row and "19b14b63" in row and "mmseg" in row
    assert any(line.startswith("mscan_s ") and "81.2" in line for line in lines)


# ---------------------------------------------------------------------------
# The cache heals: bad files are made again once; a read-only cache serves what it holds

ERROR_PAGE = b"<!DOCTYPE html><html><body><h1>Rate limit exceeded</h1></body></html>\n"


def _raw_path(spec):
    """The downloaded source file of `spec` in the cache (beside converted/)."""
    url = zoo.MODELS[spec[len("zoo:"):]].url if spec.startswith("zoo:") else spec
    return os.path.join(os.path.dirname(os.path.dirname(zoo.cached_path(spec))),
                        os.path.basename(urlparse(url).path))


def test_an_error_page_sent_as_the_file_is_not_kept(monkeypatch, server, fixtures, tmp_path):
    """A URL without a hash in its name answers 200 with an HTML page: one error naming the
    URL, the cache and JSEG_CACHE_DIR, and nothing kept, so the next call downloads again.
    An error page an older jseg kept in the cache is deleted and downloaded again."""
    monkeypatch.setenv("JSEG_CACHE_DIR", str(tmp_path / "cache"))
    url = server.url + "/x/mscan_t.pth"
    raw = _raw_path(url)
    server.files["/x/mscan_t.pth"] = ERROR_PAGE
    with pytest.raises(zoo.ZooError) as err:
        zoo.fetch_weights(url, progress=False, log=lambda line: None)
    message = str(err.value)
    print(message)
    assert message.startswith(f"{url} did not give a checkpoint") and "\n" not in message
    assert "an HTML/XML document" in message and f"{raw}:" in message, message
    assert "JSEG_CACHE_DIR" in message and str(tmp_path / "cache") in message, message
    assert not os.path.exists(raw), "the error page stayed in the cache"

    server.files["/x/mscan_t.pth"] = fixtures["blobs"]["imagenet"]
    state, _ = zoo_read(url)
    np.testing.assert_array_equal(state["backbone.norm1.weight"],
                                  fixtures["state"]["backbone.norm1.weight"])

    other = server.url + "/y/mscan_t.pth"  # what an older jseg left: the page, cached
    server.files["/y/mscan_t.pth"] = fixtures["blobs"]["imagenet"]
    os.makedirs(os.path.dirname(_raw_path(other)))
    with open(_raw_path(other), "wb") as f:
        f.write(ERROR_PAGE)
    lines = []
    state, _ = zoo_read(zoo.fetch_weights(other, progress=False, log=lines.append))
    assert "backbone.norm4.weight" in state
    print(lines)
    assert any(line.startswith(f"{_raw_path(other)}: not a checkpoint") and
               line.endswith("deleted from the weights cache, downloading it again")
               for line in lines), lines
    assert [p for p, _ in server.log].count("/y/mscan_t.pth") == 1, server.log


def test_a_cached_file_with_the_wrong_hash_is_downloaded_again(monkeypatch, server, fixtures,
                                                               tmp_path):
    data = fixtures["blobs"]["imagenet"]
    _serve(monkeypatch, server, "mscan_t", data, tmp_path)
    raw = _raw_path("zoo:mscan_t")
    os.makedirs(os.path.dirname(raw))
    with open(raw, "wb") as f:
        f.write(data[:len(data) // 2])  # a copy cut short (an older jseg, a full disk)
    lines = []
    zoo.fetch_source("zoo:mscan_t", progress=False, log=lines.append)
    assert open(raw, "rb").read() == data
    assert any(line.startswith(f"{raw} has SHA-256 ") and "downloading it again" in line
               for line in lines), lines


@pytest.mark.parametrize("damage", ["truncated", "bit flip"])
def test_a_damaged_converted_copy_is_converted_again(monkeypatch, server, fixtures, tmp_path,
                                                     damage):
    """It was found at load time only, and never made again. Now: deleted and converted
    again from the cached download (no new request), with a log line."""
    data = fixtures["blobs"]["imagenet"]
    _serve(monkeypatch, server, "mscan_t", data, tmp_path)
    converted = zoo.fetch_weights("zoo:mscan_t", progress=False, log=lambda line: None)
    good = open(converted, "rb").read()
    bad = good[:len(good) // 2] if damage == "truncated" else \
        good[:1000] + bytes([good[1000] ^ 1]) + good[1001:]
    with open(converted, "wb") as f:
        f.write(bad)
    lines = []
    state, _ = zoo_read(zoo.fetch_weights("zoo:mscan_t", progress=False, log=lines.append))
    np.testing.assert_array_equal(state["backbone.norm1.weight"],
                                  fixtures["state"]["backbone.norm1.weight"])
    print(lines[0])
    assert lines[0].startswith(f"{converted}: ") and lines[0].endswith(
        "deleted from the weights cache, converting " + _raw_path("zoo:mscan_t")
        + " again"), lines
    assert len(server.log) == 1, server.log
    state, _ = zoo_read("zoo:mscan_t")  # as init_model reads it: the remade copy, as it is
    assert "backbone.norm4.weight" in state and len(server.log) == 1, server.log


def _read_only_mount(folder):
    """Make the tmpfs mounted at `folder` read-only (root), else skip."""
    out = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot remount read-only: {out.stderr.strip()}")


def _read_only_simulated(folder, monkeypatch):
    """Every open for writing under `folder` fails with EROFS, as on a read-only mount."""
    import builtins
    import errno
    real_open, real_os_open = builtins.open, os.open
    folder = os.path.abspath(folder)

    def refuse(path):
        if os.path.abspath(os.fspath(path)).startswith(folder + os.sep):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


@pytest.mark.parametrize("how", ["read-only tmpfs", "simulated"])
def test_a_read_only_cache_serves_what_it_holds(monkeypatch, server, fixtures, tmp_path, how):
    """A shared, read-only cache (a container image, a site-wide folder) failed on its
    .lock although it held the files. `read-only tmpfs` remounts a real tmpfs read-only
    (root); `simulated` makes every open for writing under it fail with EROFS."""
    data = fixtures["blobs"]["imagenet"]
    _serve(monkeypatch, server, "mscan_t", data, tmp_path)
    cache = tmp_path / "cache"
    mounted = how == "read-only tmpfs"
    if mounted:
        cache.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(cache)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        converted = zoo.fetch_weights("zoo:mscan_t", progress=False, log=lambda line: None)
        for lock in [os.path.join(r, n) for r, _, ns in os.walk(cache) for n in ns
                     if n.endswith(".lock")]:
            os.remove(lock)  # a cache filled by a copy holds no locks
        url = f"{server.url}/m/mscan_t-{_sha8(data)}.pth"  # not cached: needs a download
        server.files[urlparse(url).path] = data
        damaged = f"{server.url}/d/mscan_t-{_sha8(data)}.pth"  # cached, converted copy cut
        server.files[urlparse(damaged).path] = data
        cut = zoo.fetch_weights(damaged, progress=False, log=lambda line: None)
        os.truncate(cut, os.path.getsize(cut) // 2)
        if mounted:
            _read_only_mount(cache)
        else:
            _read_only_simulated(cache, monkeypatch)

        assert zoo.fetch_weights("zoo:mscan_t", progress=False) == converted
        assert zoo.fetch_source("zoo:mscan_t", progress=False)[0] == \
            _raw_path("zoo:mscan_t")
        state, _ = zoo_read("zoo:mscan_t")
        assert "backbone.norm4.weight" in state
        with pytest.raises(zoo.ZooError) as err:  # what it lacks: one line, and the fix
            zoo.fetch_weights(url, progress=False, log=lambda line: None)
        print(err.value)
        assert str(err.value).startswith(f"cannot write {_raw_path(url)} to download it: "
                                         "Read-only file system; set JSEG_CACHE_DIR to a "
                                         f"writable folder (the weights cache is now {cache})"), \
            err.value
        with pytest.raises(zoo.ZooError) as err:
            zoo.fetch_weights(damaged, progress=False, log=lambda line: None)
        print(err.value)
        assert str(err.value).startswith(f"cannot write {cut} to convert it again (the copy "
                                         "there does not load): Read-only file system; set "
                                         "JSEG_CACHE_DIR"), err.value
        assert len(server.log) == 2, server.log
    finally:
        if mounted:
            subprocess.run(["umount", str(cache)])
