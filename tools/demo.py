"""Segment images, a folder of images, a video or a camera stream and write overlays.

examples:
  python tools/demo.py photo.jpg --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --checkpoint segnext_t_ade.pkl --out-dir out/
  python tools/demo.py data/demo/images/validation --config-file configs/demo/segnext_mscan-t_demo.yaml \\
      --checkpoint work_dirs/demo/checkpoints/iter_00000400.pkl --out-dir out/ --opacity 0.6
  python tools/demo.py street.mp4 --out-file out/street_seg.mp4 \\
      --config-file configs/segnext/segnext_mscan-t_cityscapes-1024x1024.yaml \\
      --checkpoint segnext_t_city.pkl
  python tools/demo.py 0 --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --checkpoint segnext_t_ade.pkl --out-file cam.avi --fps 15 --max-frames 300 --show

Images (INPUT is an image file or a folder): for each image IMG it writes OUT_DIR/IMG_overlay.jpg
(colours over the image, with a legend of the classes found) and OUT_DIR/IMG.png (class ids),
and prints the classes found and the time taken. A file that cannot be read (or has no pixels)
is reported and skipped; the exit code is 1 if any image failed. Outputs are written
atomically; a write that fails (a full disk) stops the run with exit code 1 and leaves the
file it was writing as it was.

Videos (INPUT is a video file: .mp4 .avi .mov .mkv .webm ..., or any other file OpenCV plays
that is not an image) and cameras (INPUT is a camera index: 0, 1, ..., unless a file or folder
of that name exists): every frame is segmented and drawn over (no legend, so the size stays that
of the input) into --out-file, a video whose suffix chooses the codec (.mp4 .m4v .mov .mkv:
mp4v, .avi: MJPG, .webm: VP80; --fourcc overrides it) at the fps of the input (--fps overrides
it; cameras that report none get 30). A progress bar shows the frames; at the end the tool
prints the frames written and the processing speed. --max-frames N stops after N frames, Ctrl-C
stops a camera (the video is still finished) and --show also shows the frames in a window (q or
Esc stops) where OpenCV has a display. The video is written under a temporary name, read back
whole (its size against the sizes its container records, every frame decoded: OpenCV reports
no failed write) and renamed only then: an unreadable input, an output OpenCV cannot write, a
full disk, an error or an interrupted video file leaves no partial file and the previous
OUT_FILE as it was (a killed process leaves OUT_FILE as it was too, and its temporary file
.NAME.XXXXXXXX.tmp.SUFFIX next to it).
"""
import os
import re
import sys
import time

from jseg.utils.cli import ToolParser, run_main
import jseg  # noqa: F401; configures Jittor before it is imported

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv",
                  ".flv", ".ts", ".mts", ".m2ts", ".3gp", ".ogv", ".gif")
# The codec of each output suffix: what this OpenCV (opencv-python-headless, FFMPEG) writes
# and reads back. H.264 ('avc1') has no encoder in the pip wheels.
VIDEO_WRITERS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG",
                 ".webm": "VP80"}
CAMERA_FPS = 30.0  # for cameras that report no frame rate


class VideoError(Exception):
    """A video input or output that cannot be used; the message says why and what to do."""


def list_images(path):
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return files
    if not os.path.exists(path):
        raise FileNotFoundError(f"image or folder not found: {path}")
    return [path]


def input_kind(path):
    """'camera' for an index (digits, not the name of a file or folder), 'video' for a video
    file, else 'images'.

    A file whose suffix is neither an image's nor a video's is a video if OpenCV cannot read
    it as an image but can decode a frame of it as a video; otherwise the image path reports it.
    """
    if re.fullmatch(r"\d+", path) and not os.path.exists(path):
        return "camera"
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or suffix in IMAGE_SUFFIXES:
        return "images"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if os.path.isfile(path):
        import cv2
        if not cv2.haveImageReader(path):
            cap = _quiet_capture(path)
            try:
                if cap.isOpened() and cap.read()[0]:
                    return "video"
            finally:
                cap.release()
    return "images"


def _quiet_capture(source):
    """cv2.VideoCapture without OpenCV's and FFMPEG's own warnings on stderr (a missing
    camera, a broken file): the caller reports the failure in one line."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read at FFMPEG's first use
    import cv2
    level = cv2.getLogLevel()
    cv2.setLogLevel(0)  # silent
    try:
        return cv2.VideoCapture(source)
    finally:
        cv2.setLogLevel(level)


def open_video(source):
    """Open a video file or camera index; returns (capture, first BGR frame, fps or None,
    frame count or None). Raises VideoError naming the problem and the fix."""
    import cv2
    camera = isinstance(source, int)
    if not camera and not os.path.isfile(source):
        raise VideoError(f"video not found: {source}")
    cap = _quiet_capture(source)
    if not cap.isOpened():
        if camera:
            raise VideoError(f"camera {source} cannot be opened (no such device, or another "
                             f"program uses it); check the index (ls /dev/video*) and that "
                             f"this OpenCV has a camera backend")
        raise VideoError(f"cannot read video {source}: OpenCV cannot open it (a broken or "
                         f"incomplete file, or a codec it lacks); check that it plays, or "
                         f"convert it: ffmpeg -i {source} fixed.mp4")
    ok, frame = cap.read()
    if not ok or frame is None or frame.size == 0:
        cap.release()
        if camera:
            raise VideoError(f"camera {source} opened but gave no frame; check that no other "
                             f"program uses it, or try another index")
        raise VideoError(f"video {source} has no frames OpenCV can decode; check that it "
                         f"plays, or convert it: ffmpeg -i {source} fixed.mp4")
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = fps if fps > 0 and fps < 1000 else None  # 0 or garbage when unknown
    count = int(count) if not camera and 0 < count < 2 ** 31 else None
    return cap, frame, fps, count


def video_fourcc(out_file, fourcc=None):
    """The four-character codec for `out_file`, from its suffix or `fourcc`."""
    suffix = os.path.splitext(out_file)[1].lower()
    known = ", ".join(f"{s} ({c})" for s, c in VIDEO_WRITERS.items())
    if suffix not in VIDEO_WRITERS:
        raise VideoError(f"cannot write a video to {out_file}: unknown video suffix "
                         f"{suffix!r}; use one of {known}")
    if fourcc is not None and len(fourcc) != 4:
        raise VideoError(f"--fourcc must be four characters (e.g. mp4v, MJPG), got {fourcc!r}")
    return fourcc or VIDEO_WRITERS[suffix]


def display_problem():
    """Why --show cannot open a window here, or None if it can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set)"
    import cv2
    try:
        cv2.namedWindow("jseg demo", cv2.WINDOW_NORMAL)
    except cv2.error:
        return "this OpenCV has no GUI support (opencv-python-headless)"
    return None


def main(argv=None):
    p = ToolParser(__doc__)
    p.add_argument("input", metavar="INPUT",
                   help="an image, a folder of images, a video file or a camera index (0, 1, ...)")
    p.add_argument("--config-file", required=True)
    p.add_argument("--checkpoint", required=True, help="weights (weights_convert output or a training checkpoint)")
    p.add_argument("--out-dir", help="images: the folder for overlays and label maps")
    p.add_argument("--out-file", help="video or camera: the overlaid video (.mp4, .avi, ...)")
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--tta", action="store_true", help="multi-scale + flip")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the NMF bases (default: the config's seed, else 0); an image's "
                        "bases come from (seed, its pixels), as in run_net")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. model.test_cfg.mode=slide")
    video = p.add_argument_group("video and camera input")
    video.add_argument("--fps", type=float, help="frame rate of --out-file (default: the input's)")
    video.add_argument("--fourcc", help="codec of --out-file (default: from its suffix, e.g. "
                       "mp4v for .mp4, MJPG for .avi)")
    video.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    video.add_argument("--show", action="store_true",
                       help="also show the frames in a window (q or Esc stops)")
    args = p.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        p.error(f"--opacity must lie in [0, 1], got {args.opacity}")
    kind = input_kind(args.input)
    if kind == "images":
        video_only = [f"--{n.replace('_', '-')}" for n in ("out_file", "fps", "fourcc",
                                                            "max_frames")
                      if getattr(args, n) is not None] + (["--show"] if args.show else [])
        if video_only:
            p.error(f"{', '.join(video_only)}: only for a video or camera INPUT; "
                    f"{args.input} is taken as images (written to --out-dir)")
        if args.out_dir is None:
            p.error("images need --out-dir DIR for their overlays and label maps")
        return segment_images(args)
    if args.out_dir is not None:
        p.error(f"--out-dir is for images; {args.input} is a {kind}: give --out-file OUT.mp4")
    if args.out_file is None and not args.show:
        p.error(f"a {kind} needs --out-file OUT.mp4 (or .avi, ...) for the overlaid video, "
                f"or --show to only display it")
    if args.max_frames is not None and args.max_frames < 1:
        p.error(f"--max-frames must be at least 1, got {args.max_frames}")
    if args.fps is not None and not args.fps > 0:
        p.error(f"--fps must be positive, got {args.fps}")
    return segment_video(args, kind)


def load_model(args):
    from jseg.apis import init_model
    from jseg.config import load_config
    cfg = load_config(args.config_file, args.cfg_options)
    return init_model(cfg, args.checkpoint, device=args.device)


def segment_images(args):
    from tqdm import tqdm
    import numpy as np
    from jseg.apis import inference_model, show_result
    from jseg.config import ConfigError
    from jseg.data.datasets import DataError, dataset_settings
    from jseg.checkpoint import WeightsMismatchError
    from jseg.utils.atomic import write_image
    from jseg.checkpoint.safe_pickle import CheckpointError

    try:
        files = list_images(args.input)
        model = load_model(args)
        os.makedirs(args.out_dir, exist_ok=True)
    except (ConfigError, CheckpointError, WeightsMismatchError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    settings = dataset_settings(model.cfg.data)
    failed = 0
    for path in tqdm(files, desc="demo", unit="img", disable=len(files) == 1):
        stem = os.path.splitext(os.path.basename(path))[0]
        start = time.time()
        try:
            result = inference_model(model, path, tta=args.tta, seed=args.seed)
        except (DataError, ValueError) as e:
            failed += 1
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            continue
        seconds = time.time() - start
        pred = result["pred"]
        try:
            show_result(path, result, settings["palette"], settings["classes"], args.opacity,
                        out_file=os.path.join(args.out_dir, f"{stem}_overlay.jpg"))
            write_image(os.path.join(args.out_dir, f"{stem}.png"), pred.astype(np.uint8))
        except OSError as e:  # the output folder, not this image: the next writes fail too
            tqdm.write(f"error: {e}", file=sys.stderr)
            return 1
        ids, counts = np.unique(pred, return_counts=True)
        found = ", ".join(f"{settings['classes'][i]} {100 * n / pred.size:.0f}%"
                          for i, n in sorted(zip(ids, counts), key=lambda t: -t[1]))
        tqdm.write(f"{path}: {found} ({seconds:.2f}s)")
    print(f"{len(files) - failed} of {len(files)} images written to {args.out_dir}"
          + (f"; {failed} skipped" if failed else ""))
    return 1 if failed else 0


def segment_video(args, kind):
    """Segment every frame of a video file or camera into --out-file (and/or a window)."""
    import contextlib
    import signal

    from jseg.config import ConfigError
    from jseg.data.datasets import DataError
    from jseg.checkpoint import WeightsMismatchError
    from jseg.checkpoint.safe_pickle import CheckpointError
    from jseg.utils.atomic import atomic_path

    camera = kind == "camera"
    source = int(args.input) if camera else args.input
    cap = None
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        fourcc = video_fourcc(args.out_file, args.fourcc) if args.out_file else None
        show = args.show
        if show:
            problem = display_problem()
            if problem and not args.out_file:
                raise VideoError(f"--show cannot open a window: {problem}; give --out-file "
                                 f"OUT.mp4 to write the video instead")
            if problem:
                print(f"warning: --show ignored: {problem}", file=sys.stderr)
                show = False
        cap, frame, fps, count = open_video(source)
        model = load_model(args)
        if args.fps:
            fps = args.fps
        elif fps is None:
            fps = CAMERA_FPS
            print(f"note: {args.input} reports no frame rate; writing {fps:g} fps "
                  f"(set it with --fps)", file=sys.stderr)
        # Jittor's SIGINT handler exits at once; Python's raises KeyboardInterrupt, which
        # stops a camera cleanly (the video is finished) or discards an unfinished file.
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if args.out_file:
            os.makedirs(os.path.dirname(os.path.abspath(args.out_file)), exist_ok=True)
            output = atomic_path(args.out_file)
        else:
            output = contextlib.nullcontext()
        with output as temp:
            frames, seconds, stopped = run_frames(model, args, cap, frame, count, fps, fourcc,
                                                  temp, camera, show)
            if temp is not None and frames == 0:
                raise VideoError(f"stopped before the first frame was done; {args.out_file} "
                                 f"not written")
            if temp is not None:
                check_written(temp, args.out_file, frames)
    except (VideoError, ConfigError, CheckpointError, WeightsMismatchError, DataError,
            OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted" + (f": {args.out_file} not written (an earlier file there is "
                               f"unchanged)" if args.out_file else ""), file=sys.stderr)
        return 130
    finally:
        if cap is not None:
            cap.release()
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGINT, previous_sigint)
    where = f" written to {args.out_file}" if args.out_file else " shown"
    print(f"{frames} frames{where} ({frames / max(seconds, 1e-9):.2f} fps)"
          + (f"; {stopped}" if stopped else ""))
    return 0


def run_frames(model, args, cap, frame, count, fps, fourcc, temp, camera, show):
    """The frame loop; returns (frames written, seconds, why it stopped early or None)."""
    import cv2
    import numpy as np
    from tqdm import tqdm
    from jseg.apis import inference_model, show_result
    from jseg.data.datasets import dataset_settings

    settings = dataset_settings(model.cfg.data)
    height, width = frame.shape[:2]
    writer = None
    if temp is not None:
        writer = cv2.VideoWriter(temp, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        if not writer.isOpened():
            raise VideoError(f"OpenCV cannot write {fourcc!r} video to {args.out_file} (no such "
                             f"encoder in this build); use the default codec of the suffix "
                             f"(omit --fourcc) or another suffix: "
                             + ", ".join(f"{s} ({c})" for s, c in VIDEO_WRITERS.items()))
    total = count if args.max_frames is None else min(count or args.max_frames, args.max_frames)
    frames, stopped = 0, None
    start = time.time()
    bar = tqdm(total=total, desc="demo", unit="frame")
    try:
        while True:
            rgb = np.ascontiguousarray(frame[:, :, ::-1])  # OpenCV frames are BGR
            result = inference_model(model, rgb, tta=args.tta, seed=args.seed)
            drawn = show_result(rgb, result, settings["palette"], settings["classes"],
                                args.opacity, legend=False)
            bgr = np.ascontiguousarray(drawn[:, :, ::-1])
            if bgr.shape[:2] != (height, width):  # a stream that changes size mid-way
                bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
            if writer is not None:
                writer.write(bgr)
            frames += 1
            bar.update()
            if show:
                cv2.imshow("jseg demo", bgr)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    stopped = "stopped in the window"
                    break
            if args.max_frames is not None and frames >= args.max_frames:
                break
            ok, frame = cap.read()
            if not ok or frame is None:
                if count is not None and frames < count and args.max_frames is None:
                    stopped = f"the input claims {count} frames; the rest could not be decoded"
                break
    except KeyboardInterrupt:
        if not camera:
            raise
        stopped = "stopped by Ctrl-C"
    finally:
        bar.close()
        if writer is not None:
            writer.release()
        if show:
            cv2.destroyAllWindows()
    return frames, time.time() - start, stopped


def check_written(temp, out_file, frames):
    """Read the finished video back whole before it replaces `out_file`.

    cv2.VideoWriter reports no failed write: on a full disk the file keeps what fit while
    its header, rewritten at the end, still counts every byte the muxer wrote. So the
    file's size must be the size its container records, and all `frames` frames must
    decode (reading the first frame alone passed an .avi holding 3 of 10 frames).
    """
    import cv2
    problem = container_problem(temp)
    cap = _quiet_capture(temp)
    level = cv2.getLogLevel()
    cv2.setLogLevel(0)  # a damaged file's decoder warnings: the error line says it all
    decoded = 0
    try:
        while cap.isOpened() and cap.grab():
            decoded += 1
    finally:
        cap.release()
        cv2.setLogLevel(level)
    if problem or decoded != frames:
        why = "; ".join(filter(None, [problem, f"{decoded} of its {frames} frames decode"]))
        raise VideoError(f"the video written for {out_file} is incomplete ({why}): a full "
                         f"disk? free some space and run again; {out_file} is unchanged")


def container_problem(path):
    """Why the size of video file `path` disagrees with the sizes its container records
    (RIFF chunks of .avi, top-level boxes of .mp4 .m4v .mov, top-level EBML elements of
    .mkv .webm), or None when it agrees or the container is none of these."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF":
            walk = _riff_chunks
        elif head[4:8] in (b"ftyp", b"wide", b"free", b"mdat", b"moov"):
            walk = _bmff_boxes
        elif head[:4] == b"\x1a\x45\xdf\xa3":
            walk = _ebml_elements
        else:
            return None
        recorded, names = 0, set()
        while recorded < size:  # each step: (length of the element at `recorded`, its name)
            f.seek(recorded)
            length, name = walk(f, size - recorded)
            if length is None:
                return f"unreadable container data at byte {recorded}"
            if length == 0:  # an element of unknown size (a stream): nothing to compare
                return None
            recorded += length
            names.add(name)
    if recorded > size:
        return f"it has {size} of the {recorded} bytes its container records"
    if walk is _bmff_boxes and b"moov" not in names:
        return "it has no index, the moov box"
    return None


def _riff_chunks(f, left):
    """AVI: 'RIFF', little-endian size, then the data (one chunk, or more for OpenDML)."""
    head = f.read(8)
    if len(head) < 8 or head[:4] != b"RIFF":
        return None, None
    n = int.from_bytes(head[4:], "little")
    return 8 + n + (n & 1), b"RIFF"


def _bmff_boxes(f, left):
    """MP4/MOV: big-endian 32-bit size (1: a 64-bit size follows; 0: to the end) and type."""
    head = f.read(16)
    if len(head) < 8:
        return None, None
    n, kind = int.from_bytes(head[:4], "big"), head[4:8]
    if n == 1:
        n = int.from_bytes(head[8:16], "big") if len(head) == 16 else 0
    elif n == 0:
        n = left
    return (n, kind) if n >= 8 else (None, None)


def _ebml_elements(f, left):
    """Matroska/WebM: a 4-byte ID (the EBML header, then the Segment) and a size of 1-8
    bytes, its width told by the first byte's leading zeros; all ones: unknown (0)."""
    head = f.read(12)
    if len(head) < 5 or head[:4] not in (b"\x1a\x45\xdf\xa3", b"\x18\x53\x80\x67") \
            or not head[4]:
        return None, None
    width = 9 - head[4].bit_length()
    if len(head) < 4 + width:
        return None, None
    n = int.from_bytes(head[4:4 + width], "big") & ((1 << (7 * width)) - 1)
    if n == (1 << (7 * width)) - 1:
        return 0, head[:4]
    return 4 + width + n, head[:4]


if __name__ == "__main__":
    run_main(main)
