"""Write files so that a reader sees either the old file or the complete new one.

`atomic_write(path)` gives a file in the same directory as `path` under a temporary name;
when the `with` block ends normally the data is flushed and fsynced, and the file is renamed
over `path` (`os.replace`, atomic on POSIX and Windows). If anything goes wrong - an
exception in the block, a full disk, an interrupt - the temporary file is removed and
whatever was at `path` is left untouched. `atomic_path` is the same for writers that need a
file name (cv2.VideoWriter), `write_image` for images (`cv2.imwrite` writes in place and
leaves an empty file on a full disk); checkpoints go through `atomic_write` too.

A process killed mid-write leaves its temporary file (`.NAME.XXXXXXXX.tmp`), which
`stale_temp_files(directory)` finds; the moments of a write can be killed on purpose for
tests (`jseg.utils.failpoint`).
"""
import contextlib
import os
import re
import secrets

import numpy as np

from .failpoint import failpoint

__all__ = ["atomic_write", "atomic_path", "check_writable", "stale_temp_files", "write_image"]


# what _open_temp names its files; atomic_path adds the suffix of the target (.tmp.mp4)
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.[^.]+)?")


def check_writable(path):
    """Raise OSError (one line) unless `path`'s folder exists and may be written: checked
    before any work, so a bad destination fails at once and nothing is written."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise OSError(f"cannot write {path}: {folder} is not a writable directory")


def _open_temp(directory, name, temp=None):
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
    if temp is not None:  # a fixed name: what an interrupted write left is overwritten
        return os.open(temp, flags | os.O_TRUNC, 0o666), temp
    while True:
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666 minus the umask, as for any new file (mkstemp would give 0o600)
            return os.open(temp, flags | os.O_EXCL, 0o666), temp
        except FileExistsError:
            continue


def _fsync_directory(directory):
    """Make the rename itself durable; not possible on every platform, so best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None, temp=None, durable=True):
    """Context manager: `with atomic_write(path) as f: f.write(...)`.

    mode "wb" (default) or "w" (text, UTF-8 unless `encoding` says otherwise).
    An existing file at `path` keeps its permission bits.
    temp: the temporary file's path (same folder), instead of a new random name; for
        writers that restart and should overwrite what a killed run left (the dataset
        converters).
    durable: fsync the file and the folder, so the new file also survives a power cut
        (False for many small files that can be made again, e.g. converted datasets).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = _open_temp(directory, os.path.basename(path), temp)
    except OSError as e:  # a missing or read-only folder: name the file asked for
        raise OSError(e.errno, f"cannot create a file in {directory}: {e.strerror}", path) from None
    try:
        if os.path.exists(path):
            with contextlib.suppress(OSError, AttributeError):
                os.fchmod(fd, os.stat(path).st_mode & 0o7777)
        with os.fdopen(fd, mode, encoding=encoding or ("utf-8" if mode == "w" else None)) as f:
            fd = None  # the file object owns it now
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        failpoint("before-rename", path)
        os.replace(temp, path)
    except BaseException as e:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # a failed write (ENOSPC, EIO) names no file; say which one, and that it is unchanged
            raise OSError(e.errno, f"{e.strerror} while writing it (the file is unchanged)",
                          path) from None
        raise
    failpoint("after-rename", path)
    if durable:
        _fsync_directory(directory)


@contextlib.contextmanager
def atomic_path(path, durable=True):
    """Context manager: `with atomic_path("out.mp4") as temp: write the file temp`.

    For writers that take a file name rather than a file object (cv2.VideoWriter, which
    picks the container from the suffix). `temp` is a new empty file in the folder of
    `path`, named `.NAME.XXXXXXXX.tmp.SUFFIX`; when the block ends normally it is
    (fsynced if `durable` and) renamed over `path`, which keeps its permission bits.
    On an exception or an interrupt it is removed and `path` is left untouched.
    The block must close its writer before it ends.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    stem, suffix = os.path.splitext(os.path.basename(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp = os.path.join(directory, f".{stem}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            fd = os.open(temp, flags, 0o666)  # claims the name; the writer opens it again
            break
        except FileExistsError:
            continue
        except OSError as e:  # a missing or read-only folder: name the file asked for
            raise OSError(e.errno, f"cannot create a file in {directory}: {e.strerror}",
                          path) from None
    try:
        if os.path.exists(path):
            with contextlib.suppress(OSError, AttributeError):
                os.fchmod(fd, os.stat(path).st_mode & 0o7777)
        os.close(fd)
        fd = None
        yield temp
        if durable:
            fd = os.open(temp, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            os.fsync(fd)
            os.close(fd)
            fd = None
        failpoint("before-rename", path)
        os.replace(temp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise
    failpoint("after-rename", path)
    if durable:
        _fsync_directory(directory)


def stale_temp_files(directory):
    """Temporary files `atomic_write` or `atomic_path` left in `directory` when its process
    was killed.

    Only call this while no other process can be writing there (e.g. holding the
    work dir's lock): a live writer's temporary file looks the same.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names if _TEMP_NAME.fullmatch(n))


def write_image(path, image):
    """Write `image` (as OpenCV expects: BGR or grey, uint8) to `path` atomically.

    The format follows the suffix of `path` (.png, .jpg, ...). The image is encoded
    in memory first, so an unknown suffix or an image OpenCV cannot encode fails
    before anything is written, and a failed write (a full disk) leaves the old
    file or nothing, never an empty or partial one. Raises OSError naming `path`.
    """
    import cv2  # only images need OpenCV; checkpoint writers do not

    path = os.fspath(path)
    suffix = os.path.splitext(path)[1]
    image = np.asarray(image)
    if not suffix or not cv2.haveImageWriter(path):
        raise OSError(f"cannot write image {path}: OpenCV has no writer for the suffix "
                      f"{suffix!r}; use .png (exact) or .jpg")
    if image.size == 0:
        raise OSError(f"cannot write image {path}: the {image.shape} image has no pixels")
    try:
        ok, encoded = cv2.imencode(suffix, image)
    except cv2.error:
        ok = False
    if not ok:
        raise OSError(f"cannot write image {path}: OpenCV cannot encode a {image.dtype} image "
                      f"of shape {image.shape} as {suffix}")
    with atomic_write(path) as f:
        f.write(encoded.tobytes())
