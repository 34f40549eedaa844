"""tools/demo.py on videos and cameras: frames in = frames out, atomic output, one-line errors,
and a full disk that keeps the old video (the written one is read back whole).

Also jseg.utils.atomic.atomic_path, through which the video is written. The videos are tiny
(8 frames of 64x48, the demo images) and the model is the tiny one of every test, so no new
Jittor kernels compile. The codecs used are those the pip opencv-python-headless writes and
reads back: mp4v in .mp4, MJPG in .avi.
"""
import importlib.util
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES
from jseg.utils.atomic import atomic_path, stale_temp_files

DEMO = os.path.join(ROOT, "tools", "demo.py")
SIZE = (64, 48)  # (width, height) of the frames: the test scale of TINY_OVERRIDES




def demo_frames(demo_root):
    """The eight demo images as 64x48 BGR frames."""
    frames = []
    for split in ("training", "validation"):
        folder = os.path.join(demo_root, "images", split)
        for name in sorted(os.listdir(folder)):
            frames.append(cv2.resize(cv2.imread(os.path.join(folder, name)), SIZE))
    assert len(frames) == 8, len(frames)
    return frames


def write_video(path, frames, fourcc, fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, SIZE)
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc} to {path}"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path)


def read_video(path):
    """(frames, fps) of a video file, decoded with OpenCV."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot read {path}"
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


@pytest.fixture(scope="module")
def video(demo_root, tmp_path_factory):
    """An 8-frame 64x48 mp4v .mp4 at 10 fps, and its frames as decoded."""
    path = write_video(tmp_path_factory.mktemp("video") / "clip.mp4", demo_frames(demo_root),
                       "mp4v")
    frames, fps = read_video(path)
    assert len(frames) == 8 and fps == 10.0, (len(frames), fps)
    return path, frames


def run_demo(inp, weights, *options, env=None):
    return subprocess.run([sys.executable, DEMO, str(inp), "--config-file", DEMO_CONFIG,
                           "--checkpoint", weights, "--device", "cpu", *options,
                           "--cfg-options", *TINY_OVERRIDES],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def load_demo_module():
    spec = importlib.util.spec_from_file_location("demo_tool", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_video_is_segmented_frame_by_frame(video, tiny_weights, tmp_path):
    src, src_frames = video
    out = tmp_path / "sub" / "seg.mp4"  # the folder is created
    res = run_demo(src, tiny_weights, "--out-file", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    frames, fps = read_video(out)
    assert len(frames) == len(src_frames) and fps == 10.0, (len(frames), fps)
    assert all(f.shape == (SIZE[1], SIZE[0], 3) for f in frames), [f.shape for f in frames]
    # the overlay (opacity 0.5, palette colours) changes the frames far beyond codec noise
    diffs = [float(np.abs(a.astype(np.float32) - b).mean()) for a, b in zip(frames, src_frames)]
    assert min(diffs) > 5.0, diffs
    print('mean |output - input| per frame', diffs)
    assert "8 frames written to" in res.stdout and " fps)" in res.stdout, res.stdout
    assert os.listdir(out.parent) == ["seg.mp4"], os.listdir(out.parent)


def test_max_frames_avi_output_replaces_an_old_file_and_show_without_display(
        video, tiny_weights, tmp_path):
    src, _ = video
    out = tmp_path / "seg.avi"
    out.write_bytes(b"an earlier video")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    res = run_demo(src, tiny_weights, "--out-file", str(out), "--max-frames", "3", "--show",
                   "--fps", "5", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--show ignored" in res.stderr, res.stderr[-3000:]
    frames, fps = read_video(out)
    assert len(frames) == 3 and fps == 5.0, (len(frames), fps)
    assert frames[0].shape == (SIZE[1], SIZE[0], 3), frames[0].shape
    assert "3 frames written to" in res.stdout, res.stdout
    assert os.listdir(tmp_path) == ["seg.avi"], os.listdir(tmp_path)


def test_a_killed_run_leaves_the_old_output(video, tiny_weights, tmp_path):
    out = tmp_path / "seg.mp4"
    out.write_bytes(b"an earlier video")
    env = dict(os.environ, JSEG_FAILPOINT="before-rename:seg.mp4")  # SIGKILL before the rename
    res = run_demo(video[0], tiny_weights, "--out-file", str(out), env=env)
    assert res.returncode == -9, (res.returncode, res.stderr[-3000:])
    assert out.read_bytes() == b"an earlier video"
    left = stale_temp_files(tmp_path)  # the complete temporary video, for clean-up
    assert len(left) == 1 and left[0].endswith(".tmp.mp4"), os.listdir(tmp_path)
    assert len(read_video(left[0])[0]) == 8


def corrupt_video(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    return path


def empty_video(tmp_path):
    return write_video(tmp_path / "empty.avi", [], "MJPG")  # a header and no frames


@pytest.mark.parametrize("make_input, options, needle", [
    (corrupt_video, None, "cannot read video"),
    (empty_video, None, "has no frames"),
    (lambda tmp: "97", None, "camera 97 cannot be opened"),
    (lambda tmp: tmp / "missing.mp4", None, "video not found"),
    (None, ["--out-file", "{out}.xyz"], "unknown video suffix '.xyz'"),
    (None, ["--out-file", "{out}.jpg"], "unknown video suffix '.jpg'"),  # an image sequence
    (None, ["--out-file", "{out}.mp4", "--fourcc", "avc1"], "cannot write 'avc1' video"),
    (None, ["--out-file", "{out}.mp4", "--fourcc", "x"], "--fourcc must be four characters"),
    (None, [], "needs --out-file"),
    (None, ["--out-dir", "{out}"], "--out-dir is for images"),
    (None, ["--out-file", "{out}.mp4", "--max-frames", "0"], "--max-frames must be at least 1"),
])
def test_bad_video_input_or_output_is_one_line_and_writes_nothing(
        video, tiny_weights, tmp_path, make_input, options, needle):
    src = video[0] if make_input is None else make_input(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / "seg.mp4"
    old.write_bytes(b"an earlier video")
    if options is None:  # the output is fine: the input is not
        options = ["--out-file", str(old)]
    options = [o.replace("{out}", str(out_dir / "seg")) for o in options]
    res = run_demo(src, tiny_weights, *options)
    errors = error_lines(res.stderr)
    assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
    assert len(errors) == 1 and needle in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "WARN" not in res.stderr, res.stderr[-3000:]
    assert os.listdir(out_dir) == ["seg.mp4"], os.listdir(out_dir)
    assert old.read_bytes() == b"an earlier video"


def test_input_kinds(video, demo_root, tmp_path, monkeypatch):
    demo = load_demo_module()
    no_suffix = tmp_path / "clip"
    no_suffix.write_bytes(open(video[0], "rb").read())
    text = tmp_path / "notes"
    text.write_text("not a video")
    (tmp_path / "2024").mkdir()  # a folder named by digits is a folder, not a camera
    monkeypatch.chdir(tmp_path)
    kinds = {p: demo.input_kind(str(p)) for p in (
        "0", "12", video[0], "missing.avi", no_suffix, text, tmp_path / "missing",
        os.path.join(demo_root, "images", "validation"), "2024",
        os.path.join(demo_root, "images", "validation", "demo_00000.jpg"))}
    assert list(kinds.values()) == ["camera", "camera", "video", "video", "video", "images",
                                    "images", "images", "images", "images"], kinds


@pytest.fixture
def in_process(tiny_weights, monkeypatch):
    """Runs tools/demo.py's main() in this process; returns (demo module, run(argv))."""
    demo = load_demo_module()

    def run(inp, *options):
        return demo.main([str(inp), "--config-file", DEMO_CONFIG, "--checkpoint", tiny_weights,
                          "--device", "cpu", *options, "--cfg-options", *TINY_OVERRIDES])
    return demo, run


def test_interrupted_video_file_leaves_the_old_output(video, in_process, tmp_path, monkeypatch,
                                                      capsys):
    import jseg.apis
    demo, run = in_process
    real = jseg.apis.inference_model
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(jseg.apis, "inference_model", interrupted)
    out = tmp_path / "seg.mp4"
    out.write_bytes(b"an earlier video")
    code = run(video[0], "--out-file", str(out))
    err = capsys.readouterr().err
    assert code == 130 and "interrupted" in err, (code, err[-2000:])
    assert out.read_bytes() == b"an earlier video"
    assert os.listdir(tmp_path) == ["seg.mp4"], os.listdir(tmp_path)


class FakeCamera:
    """cv2.VideoCapture for camera indices: `n` frames, then Ctrl-C (KeyboardInterrupt)."""

    def __init__(self, frames, n):
        self.frames, self.n, self.reads = frames, n, 0

    def isOpened(self):
        return True

    def read(self):
        self.reads += 1
        if self.reads > self.n:
            raise KeyboardInterrupt
        return True, self.frames[(self.reads - 1) % len(self.frames)].copy()

    def get(self, prop):
        return 0.0  # no fps, no frame count: as many webcams

    def release(self):
        pass


def test_camera_stops_on_ctrl_c_and_still_finishes_the_video(demo_root, in_process, tmp_path,
                                                             monkeypatch, capsys):
    import jseg.apis
    demo, run = in_process
    frames = demo_frames(demo_root)
    seen, real_inference = [], jseg.apis.inference_model

    def spy(model, img, *args, **kwargs):
        seen.append(img.copy())
        return real_inference(model, img, *args, **kwargs)
    monkeypatch.setattr(jseg.apis, "inference_model", spy)
    real = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda source, *a: FakeCamera(frames, 5)
                        if isinstance(source, int) else real(source, *a))
    out = tmp_path / "cam.avi"
    code = run("0", "--out-file", str(out))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "reports no frame rate; writing 30 fps" in captured.err, captured.err[-2000:]
    assert "5 frames written to" in captured.out and "stopped by Ctrl-C" in captured.out, \
        captured.out
    written, fps = read_video(out)
    assert len(written) == 5 and fps == 30.0, (len(written), fps)
    rgb = [np.array_equal(img, frame[:, :, ::-1]) for img, frame in zip(seen, frames)]
    assert rgb == [True] * 5, f"the model must get the frames as RGB: {rgb}"
    assert os.listdir(tmp_path) == ["cam.avi"], os.listdir(tmp_path)


# ---------------------------------------------------------------------------
# A full disk: cv2.VideoWriter reports no failed write, so the demo reads the video back whole

@pytest.fixture(scope="module")
def noisy_video(tmp_path_factory):
    """10 frames of 64x48 noise (MJPG .avi): outputs of 8-31 KiB, several 4 KiB pages in every
    container, so a small disk can cut them part-way."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for _ in range(10)]
    return write_video(tmp_path_factory.mktemp("noise") / "noise.avi", frames, "MJPG")


def small_tmpfs(path, pages):
    """Mount a tmpfs of `pages` 4 KiB pages at `path` (root, where the container allows it),
    else skip; the caller unmounts it."""
    os.makedirs(path)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * 4096}", "tmpfs",
                          str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({out.stderr.strip()}); "
                    f"test_a_short_write_keeps_the_old_video simulates one")


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm"])
def test_a_full_disk_fails_and_keeps_the_old_video(noisy_video, in_process, tmp_path, capsys,
                                                   suffix):
    """A real small filesystem per output suffix: the video fits (written), or is cut at half
    or its last page. Cut .avi said `10 frames written`, exit 0, and replaced the old file
    with 12 KiB of which 3 frames decoded."""
    demo, run = in_process
    assert suffix in demo.VIDEO_WRITERS, sorted(demo.VIDEO_WRITERS)
    whole = tmp_path / f"whole{suffix}"
    assert run(noisy_video, "--out-file", str(whole)) == 0, capsys.readouterr().err[-2000:]
    assert len(read_video(whole)[0]) == 10
    size = os.path.getsize(whole)
    pages = -(-size // 4096)
    assert pages >= 2, f"{whole} is {size} bytes: too small to be cut part-way"
    for cut, room in (("half", pages // 2), ("last page", pages - 1)):
        disk = tmp_path / cut.replace(" ", "_")
        small_tmpfs(disk, 1 + room)  # one page for the old file
        try:
            old = disk / f"seg{suffix}"
            old.write_bytes(b"an earlier video")
            capsys.readouterr()
            code = run(noisy_video, "--out-file", str(old))
            err = capsys.readouterr().err
            errors = error_lines(err)
            print(f"{suffix} {cut}: {room} of {pages} pages of room ->", errors)
            assert code == 1 and len(errors) == 1, (cut, code, err[-2000:])
            assert f"the video written for {old} is incomplete" in errors[0], errors
            assert f"{old} is unchanged" in errors[0], errors
            assert old.read_bytes() == b"an earlier video", (cut, os.path.getsize(old))
            assert os.listdir(disk) == [old.name], (cut, os.listdir(disk))
        finally:
            subprocess.run(["umount", str(disk)])


def test_a_short_write_keeps_the_old_video(noisy_video, in_process, tmp_path, monkeypatch,
                                           capsys):
    """The same without root: a writer that, as on a full disk, keeps only the first 12 KiB
    (its header already rewritten with the full sizes)."""
    demo, run = in_process
    real = cv2.VideoWriter

    class FullDiskWriter:
        def __init__(self, path, *args):
            self.path, self.writer = path, real(path, *args)

        def __getattr__(self, name):
            return getattr(self.writer, name)

        def release(self):
            self.writer.release()
            os.truncate(self.path, min(12288, os.path.getsize(self.path) // 2))
    monkeypatch.setattr(cv2, "VideoWriter", FullDiskWriter)
    old = tmp_path / "seg.avi"
    old.write_bytes(b"an earlier video")
    code = run(noisy_video, "--out-file", str(old))
    err = capsys.readouterr().err
    errors = error_lines(err)
    assert code == 1 and len(errors) == 1, (code, err[-2000:])
    found = re.search(r"incomplete \(it has 12288 of the (\d+) bytes its container records; "
                      r"(\d+) of its 10 frames decode\)", errors[0])
    assert found and int(found[1]) > 12288 and int(found[2]) < 10, errors
    assert old.read_bytes() == b"an earlier video"
    assert os.listdir(tmp_path) == ["seg.avi"], os.listdir(tmp_path)


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm"])
def test_check_written_refuses_every_cut(suffix, tmp_path):
    """Complete files pass; a file cut anywhere fails, also where every frame still decodes
    (a lost index or cue table at the end, which a frame count alone would miss)."""
    demo = load_demo_module()
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for _ in range(10)]
    path = write_video(tmp_path / f"v{suffix}", frames, demo.VIDEO_WRITERS[suffix])
    demo.check_written(path, "out" + suffix, 10)
    data = open(path, "rb").read()
    cut = tmp_path / f"cut{suffix}"
    decodable = []
    for keep in list(range(0, len(data), 97)) + [len(data) - 1]:
        cut.write_bytes(data[:keep])
        with pytest.raises(demo.VideoError, match="is incomplete"):
            demo.check_written(str(cut), "out" + suffix, 10)
        cap = cv2.VideoCapture(str(cut))
        decoded = 0
        while cap.isOpened() and cap.grab():
            decoded += 1
        cap.release()
        if decoded == 10:
            decodable.append(keep)
    print(f"{suffix}: {len(data)} bytes; cut at {decodable} all 10 frames still decode")


# ---------------------------------------------------------------------------
# jseg.utils.atomic.atomic_path

def test_atomic_path_renames_on_success_and_removes_on_failure(tmp_path):
    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    with atomic_path(target) as temp:
        assert temp.endswith(".tmp.mp4") and os.path.dirname(temp) == str(tmp_path), temp
        assert stale_temp_files(tmp_path) == [temp], stale_temp_files(tmp_path)
        with open(temp, "wb") as f:
            f.write(b"new")
    assert target.read_bytes() == b"new" and oct(os.stat(target).st_mode & 0o777) == "0o640"
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with atomic_path(target) as temp:
                with open(temp, "wb") as f:
                    f.write(b"half")
                raise error
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["v.mp4"], \
        os.listdir(tmp_path)
    with pytest.raises(OSError, match="cannot create a file in"):
        with atomic_path(tmp_path / "no" / "such" / "v.mp4"):
            pass
