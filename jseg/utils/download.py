"""Download one file over HTTP(S), resumably, checked against a SHA-256 prefix.

    download(url, dst, sha256_prefix="05bd8466")

The bytes go to `dst + ".part"`. A connection cut mid-way keeps the part and the next
attempt (up to `attempts` in one call, and any later call) asks the server for the rest
with a Range request; a server that ignores Range sends the whole file again and the part
is restarted. Only a complete file whose SHA-256 starts with `sha256_prefix` is renamed to
`dst`; a mismatch deletes the part. Every failure raises DownloadError (an OSError) with
one line that names the URL and what to do, e.g. where to put the file by hand offline.
"""
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request

from tqdm import tqdm

__all__ = ["DownloadError", "download", "sha256_of"]

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed; str(e) is the one-line reason and fix."""

    def __str__(self):
        return self.args[0] if self.args else "download failed"


class _Cut(Exception):
    """The connection ended before the whole file arrived (the part is kept)."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url, start, timeout):
    from jseg import __version__

    headers = {"User-Agent": f"jseg/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch_once(url, part, progress, timeout, by_hand):
    """Append the rest of `url` to `part` (or restart it); raises _Cut or DownloadError."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        response = _open(url, have, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part already holds every byte: the hash decides
            return
        hint = " (no such file: check the name, or the mirror in JSEG_ZOO_MIRROR)" \
            if e.code == 404 else ""
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot reach {url} ({reason}); without network, download it "
                            f"on another machine and put it at {by_hand}") from None
    with response:
        resumed = have and response.status == 206 and \
            (response.headers.get("Content-Range") or "").startswith(f"bytes {have}-")
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=os.path.basename(by_hand), disable=not progress, leave=False) as bar:
            try:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError):
                raise _Cut(have) from None
    if total is not None and have < total:
        raise _Cut(have)


def download(url, dst, sha256_prefix=None, progress=True, attempts=3, timeout=60):
    """Download `url` to `dst` (see the module doc); returns the file's SHA-256 hex digest.

    sha256_prefix: the leading hex digits the file's SHA-256 must have (None: not checked).
    Raises DownloadError; `dst` is only ever the complete, verified file.
    """
    dst = os.fspath(dst)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    part = dst + ".part"
    for _ in range(attempts):
        try:
            _fetch_once(url, part, progress, timeout, dst)
            break
        except _Cut:
            continue
    else:
        size = os.path.getsize(part) if os.path.exists(part) else 0
        raise DownloadError(f"the download of {url} was cut {attempts} times ({size} bytes so "
                            f"far, kept in {part}); run again to resume it")
    digest = sha256_of(part)
    if sha256_prefix and not digest.startswith(sha256_prefix.lower()):
        os.remove(part)
        raise DownloadError(f"{url} has SHA-256 {digest[:16]}..., expected {sha256_prefix}...: "
                            "the file is corrupted or not the published one (deleted); run "
                            "again, or check the mirror in JSEG_ZOO_MIRROR")
    os.replace(part, dst)
    return digest
