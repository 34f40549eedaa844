"""Pretrained SegNeXt weights by name: download, verify, convert, cache.

    init_model(cfg, checkpoint="zoo:segnext_mscan-t_ade20k")
    model.backbone.pretrained: zoo:mscan_t          (an ImageNet MSCAN)
    python weights_convert/convert.py zoo:mscan_t mscan_t.pkl

`MODELS` is the table: mmsegmentation 1.x's SegNeXt ADE20K segmentors and its re-upload
of the ImageNet MSCAN backbones. The 8 hex digits before `.pth` in every file name are the
first 8 of the file's SHA-256 (mmseg's convention) and are checked after the download.
`fetch_weights(spec)` turns "zoo:NAME" or an http(s) URL into a local checkpoint in our
format, cached under `$JSEG_CACHE_DIR` (default ~/.cache/jseg); `JSEG_ZOO_MIRROR` replaces
the URLs' scheme and host. The cache heals itself (see `fetch_weights`); only writers take
its lock, so a read-only cache that holds good files serves them. User's guide:
docs/checkpoints.md.
"""
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

from jseg.utils.download import download, sha256_of

from .convert import convert_checkpoint
from .mapping import ConversionError
from .safe_pickle import CheckpointError, load_checkpoint_file, unwrap_state_dict

__all__ = ["ZooModel", "MODELS", "ZooError", "is_remote", "cache_dir", "source_url",
           "fetch_source", "fetch_weights", "read_weights", "cached_path"]

_OPENMMLAB = "https://download.openmmlab.com/mmsegmentation/v0.5"


@dataclass(frozen=True)
class ZooModel:
    name: str
    config: str            # the config that builds this model (for backbones: the variant's)
    url: str
    sha256: str            # leading hex digits of the file's SHA-256
    source_format: str     # layout for weights_convert (jseg.checkpoint.mapping.FORMATS)
    miou: Optional[float]  # published single-scale mIoU (segmentors); None for backbones
    top1: Optional[float]  # published ImageNet-1K top-1 (backbones); None for segmentors


def _segmentor(variant, stamp, sha, miou):
    run = f"segnext_mscan-{variant}_1x16_512x512_adamw_160k_ade20k"
    return ZooModel(f"segnext_mscan-{variant}_ade20k",
                    f"configs/segnext/segnext_mscan-{variant}_ade20k-512x512.yaml",
                    f"{_OPENMMLAB}/segnext/{run}/{run}_{stamp}-{sha}.pth", sha, "mmseg", miou, None)


def _backbone(variant, sha, top1):
    return ZooModel(f"mscan_{variant}",
                    f"configs/segnext/segnext_mscan-{variant}_ade20k-512x512.yaml",
                    f"{_OPENMMLAB}/pretrain/segnext/mscan_{variant}_20230227-{sha}.pth", sha,
                    "imagenet", None, top1)


# mIoU: mmsegmentation 1.x configs/segnext/README.md (ADE20K val, single scale, 160k).
# top-1: SegNeXt paper (arXiv 2209.08575) Table 3, MSCAN on ImageNet-1K.
MODELS = {m.name: m for m in (
    _segmentor("t", "20230210_140244", "05bd8466", 41.50),
    _segmentor("s", "20230214_113014", "43013668", 44.16),
    _segmentor("b", "20230209_172053", "b6f6c70c", 48.03),
    _segmentor("l", "20230209_172055", "19b14b63", 50.99),
    _backbone("t", "119e8c9f", 75.9),
    _backbone("s", "f33ccdf2", 81.2),
    _backbone("b", "3ab7d230", 83.0),
    _backbone("l", "cef260d4", 83.9),
)}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8})\.pth$")


class ZooError(CheckpointError):
    """An unknown zoo name, a bad URL, a download that is not a SegNeXt checkpoint, or a
    cache that cannot be written."""


def is_remote(spec):
    """True for "zoo:NAME" and http(s) URLs: weights that `fetch_weights` resolves."""
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    return isinstance(spec, str) and (spec.startswith("zoo:") or
                                      spec.startswith(("http://", "https://")))


def cache_dir():
    """$JSEG_CACHE_DIR, else ~/.cache/jseg."""
    return os.environ.get("JSEG_CACHE_DIR") or os.path.join(os.path.expanduser("~"),
                                                            ".cache", "jseg")


def _entry(spec):
    """(ZooModel or None, url) of a "zoo:NAME" or URL spec."""
    if spec.startswith("zoo:"):
        name = spec[len("zoo:"):]
        if name.startswith(("http://", "https://")):
            return None, name
        if name not in MODELS:
            raise ZooError(f"unknown zoo model {name!r}; choose one of {', '.join(MODELS)} "
                           "(python tools/list_models.py lists them)")
        return MODELS[name], MODELS[name].url
    if spec.startswith(("http://", "https://")):
        return None, spec
    raise ZooError(f"{spec!r} is neither zoo:NAME nor an http(s) URL")


def source_url(url):
    """`url` with its scheme and host replaced by $JSEG_ZOO_MIRROR when that is set."""
    mirror = os.environ.get("JSEG_ZOO_MIRROR")
    if not mirror:
        return url
    return mirror.rstrip("/") + urlparse(url).path


def _paths(entry, url):
    """(downloaded source file, converted checkpoint) in the cache for this spec."""
    name = os.path.basename(urlparse(url).path) or "weights"
    if entry is not None:
        folder = os.path.join(cache_dir(), "zoo")
    else:  # any URL: one folder per URL, so equal file names from two hosts never mix
        folder = os.path.join(cache_dir(), "url", hashlib.sha1(url.encode()).hexdigest()[:12])
    stem = os.path.splitext(name)[0]
    return os.path.join(folder, name), os.path.join(folder, "converted", stem + ".pkl")


def cached_path(spec):
    """Where the converted checkpoint of `spec` is (or will be) cached."""
    entry, url = _entry(spec)
    return _paths(entry, url)[1]


@contextlib.contextmanager
def _locked(path, purpose):
    """Serialise processes (e.g. MPI ranks) writing `path` into the cache. Only taken to
    write: a read-only cache that already holds a good file serves it without a lock."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path + ".lock", "a")
    except OSError as e:  # a read-only or full cache: say where it is and how to move it
        raise ZooError(f"cannot write {path} {purpose}: {e.strerror}; set JSEG_CACHE_DIR to a "
                       f"writable folder (the weights cache is now {cache_dir()})") from None
    with f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, each process downloads alone
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _source_problem(raw, expected):
    """Why the downloaded file `raw` is unusable, or None. With a hash prefix: its SHA-256
    must start with it; without one (any URL): it must read as a checkpoint holding a state
    dict (a server may send an HTML error page with status 200)."""
    if expected:
        digest = sha256_of(raw)
        if not digest.startswith(expected):
            return f"{raw} has SHA-256 {digest[:16]}..., expected {expected}..."
        return None
    try:
        unwrap_state_dict(load_checkpoint_file(raw))
    except CheckpointError as e:
        return str(e)
    return None


def fetch_source(spec, progress=True, log=print):
    """Download (or find in the cache) the source file of `spec`, checked.

    A cached file that fails the check (hash, or for a URL without one: not a checkpoint)
    is deleted and downloaded again, once. Returns (path, source_format or "auto").
    Raises ZooError / DownloadError.
    """
    entry, url = _entry(spec)
    raw, _ = _paths(entry, url)
    fmt = entry.source_format if entry is not None else "auto"
    if entry is not None:
        expected = entry.sha256
    else:
        found = _HASH_IN_NAME.search(urlparse(url).path)
        expected = found.group(1) if found else None
    if os.path.exists(raw) and _source_problem(raw, expected) is None:
        return raw, fmt
    with _locked(raw, "to download it"):
        if os.path.exists(raw):  # bad, or fetched by another process meanwhile
            problem = _source_problem(raw, expected)
            if problem is None:
                return raw, fmt
            log(f"{problem}: deleted from the weights cache, downloading it again")
            os.remove(raw)
        fetch = source_url(url) if entry is not None else url
        log(f"downloading {fetch} to {raw}")
        download(fetch, raw, expected, progress=progress)
        if not expected:
            problem = _source_problem(raw, None)
            if problem:
                os.remove(raw)
                raise ZooError(f"{url} did not give a checkpoint (an error page sent as the "
                               f"file?): {problem}; deleted it from the weights cache "
                               f"{cache_dir()} (JSEG_CACHE_DIR). Check the URL, or put the "
                               f"file at {raw} by hand")
            log(f"warning: {url} publishes no checksum; SHA-256 of the download is "
                f"{sha256_of(raw)}")
    return raw, fmt


def fetch_weights(spec, progress=True, log=print):
    """A local checkpoint in our format for "zoo:NAME" / a URL; cached after the first call.

    The source file is downloaded into the cache (a cut download resumes), its hash checked,
    converted through the safe unpickler (`convert.convert_checkpoint`) and the converted
    file kept, so the next call reads it straight away. `JSEG_ZOO_MIRROR` (a base URL)
    replaces the scheme and host of the table's URLs, for mirrors and air-gapped sites; the
    hash check still applies. Offline, put the source file by hand where the error says.

    The cache heals itself: a cached download that fails its check (the hash; for a URL
    without one, that it reads as a checkpoint: servers send HTML error pages with status
    200) and a converted copy that does not load are deleted and made again, once, with a
    log line. Raises ZooError / DownloadError / CheckpointError (one line each).
    """
    return read_weights(spec, progress, log, load=False)[0]


def read_weights(spec, progress=True, log=print, load=True):
    """`fetch_weights` and the checkpoint it gives, loaded: (path, object). A cached copy is
    read once, which both checks it (a damaged copy is made again) and loads it; a copy
    converted here is loaded only with `load` (else the object is None)."""
    entry, url = _entry(spec)
    raw, converted = _paths(entry, url)
    damaged = None
    if os.path.exists(converted):
        try:
            return converted, load_checkpoint_file(converted)
        except CheckpointError as e:
            damaged = str(e)
    source, fmt = fetch_source(spec, progress=progress, log=log)
    with _locked(converted, "to convert it again (the copy there does not load)" if damaged
                 else "to convert it"):
        if os.path.exists(converted):  # bad, or converted by another process meanwhile
            try:
                return converted, load_checkpoint_file(converted)
            except CheckpointError as e:
                log(f"{e}: deleted from the weights cache, converting {source} again")
            os.remove(converted)
        try:
            convert_checkpoint(source, converted, fmt, log=log)
        except ConversionError as e:  # callers of read_checkpoint expect CheckpointError
            raise ZooError(f"{spec}: {e}") from None
    return converted, (load_checkpoint_file(converted) if load else None)
