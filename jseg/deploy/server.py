"""A local web demo: drop an image on a page, see its segmentation, download the label map.

`make_server(DemoApp(predict, classes, palette))` serves one static page (page.html, plain
JS) and a small JSON API with the standard library's ThreadingHTTPServer: no web framework
and no CDN, so nothing new to install and it runs offline. `predict(rgb) -> (H, W) int class
ids` is any predictor: Jittor's `inference_model` or the ONNX `OnnxSegmentor` (tools/serve.py
builds them); this module imports neither.

    GET  /                  the page
    POST /api/segment       body: the bytes of an image file (header X-Filename: its name,
                            URL-encoded, for messages) ->
                            {"width", "height", "ms": predict's time, "overlay": a data: URL
                             of a PNG, "label_url", "classes": [{"id", "name", "color": [r, g, b],
                             "share": percent of the pixels}], largest share first}
    GET  /api/label/ID.png  the label map: (H, W) uint8 class ids as a grey PNG, as run_net's
                            --save-dir writes them; the last KEEP_RESULTS are kept

Errors answer {"error": one sentence: what is wrong and what to do} with a 4xx status (500
when predict itself fails, with the traceback in the log); the server keeps serving. An
upload is checked before it is decoded: its Content-Length against `max_bytes` (nothing is
read past it), then the pixel count its header declares against `max_pixels`. Images are
decoded as jseg reads files (grey and RGBA become RGB). Requests are served in threads;
`predict` runs one at a time. Each request logs one line: method, path, status, ms.
"""
import base64
import collections
import html
import io
import json
import logging
import secrets
import threading
import time
import urllib.parse
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from jseg.data.datasets import DataError, decode_image_bytes
from jseg.data.palettes import overlay

__all__ = ["DemoApp", "UploadError", "make_server", "MAX_BYTES", "MAX_PIXELS", "KEEP_RESULTS"]

MAX_BYTES = 20 * 2 ** 20  # default upload limit: 20 MB
MAX_PIXELS = 40_000_000  # default image limit: 40 megapixels
KEEP_RESULTS = 16  # label maps kept for download
PAGE = Path(__file__).with_name("page.html")
FORMATS = "PNG, JPEG, BMP, TIFF or WebP"
# Pillow's names of the FORMATS (MPO: a camera's JPEG), all of which OpenCV decodes
DECODED = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP")

logger = logging.getLogger(__name__)


class UploadError(Exception):
    """A request the demo refuses; `status` is its HTTP status, the message says what to do."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _megabytes(n):
    return f"{n / 2 ** 20:.3g} MB"


class DemoApp:
    """What the pages and the API answer, without HTTP; `make_server` puts it on a socket.

    predict: (H, W, 3) uint8 RGB -> (H, W) integer class ids in [0, len(classes)).
    classes / palette: the class names and their (r, g, b) colours, one per id.
    title: shown on the page (e.g. the config and the backend).
    """

    def __init__(self, predict, classes, palette, title="", opacity=0.5, max_bytes=MAX_BYTES,
                 max_pixels=MAX_PIXELS):
        if len(palette) < len(classes):
            raise ValueError(f"the palette has {len(palette)} colours for {len(classes)} "
                             f"classes; give one (r, g, b) colour per class")
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or float("inf"))
        if not 0 < max_pixels <= pillow_limit:
            raise ValueError(f"max_pixels must lie in (0, {pillow_limit:.0f}] (Pillow refuses "
                             f"larger images), got {max_pixels}")
        self.predict = predict
        self.classes = [str(c) for c in classes]
        self.palette = [tuple(int(v) for v in c) for c in palette[:len(classes)]]
        self.opacity = opacity
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.page = (PAGE.read_text(encoding="utf-8")
                     .replace("{{title}}", html.escape(title or "SegNeXt"))
                     .replace("{{max_bytes}}", str(self.max_bytes))
                     .replace("{{limits}}", f"{FORMATS}, up to {_megabytes(self.max_bytes)} "
                                            f"and {self.max_pixels / 1e6:g} megapixels")).encode()
        self._labels = collections.OrderedDict()  # id -> label PNG bytes, oldest first
        self._labels_lock = threading.Lock()
        self._predict_lock = threading.Lock()  # models are not made for concurrent calls

    def check_length(self, length):
        """Refuse a Content-Length header (a str or None) before any byte of the body is read;
        returns the length as an int."""
        if length is None:
            raise UploadError(411, "the upload has no Content-Length header; send the image "
                                   "file's bytes as the request body (the page does this)")
        try:
            n = int(length)
        except ValueError:
            n = -1
        if n < 0:
            raise UploadError(400, f"the upload's Content-Length {length!r} is not a byte "
                                   f"count; send the image file's bytes as the request body")
        if n == 0:
            raise UploadError(400, f"the upload is empty (0 bytes); choose an image file "
                                   f"({FORMATS})")
        if n > self.max_bytes:
            raise UploadError(413, f"the upload is {_megabytes(n)}, over the limit of "
                                   f"{_megabytes(self.max_bytes)}; choose a smaller image, or "
                                   f"start the server with a larger --max-upload-mb")
        return n

    def read_image(self, data, name):
        """The bytes of an uploaded image -> (H, W, 3) uint8 RGB, its header's pixel count
        checked before it is decoded; UploadError if it is not an image or too large."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:  # reads the header only
                    kind, (width, height) = im.format, im.size
        except Image.DecompressionBombError:
            raise UploadError(413, f"{name} has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} "
                                   f"megapixels, over the limit of {self.max_pixels / 1e6:g} "
                                   f"megapixels; downscale it and try again") from None
        except Exception:  # Pillow raises several types for data it cannot identify
            raise UploadError(415, f"{name} is not an image ({len(data)} bytes that are not "
                                   f"{FORMATS}); choose an image file") from None
        if kind not in DECODED:
            raise UploadError(415, f"{name} is a {kind} image, which the demo does not read; "
                                   f"convert it to {FORMATS}")
        if width * height > self.max_pixels:
            raise UploadError(413, f"{name} is {width}x{height} ({width * height / 1e6:.1f} "
                                   f"megapixels), over the limit of {self.max_pixels / 1e6:g} "
                                   f"megapixels; downscale it, or start the server with a "
                                   f"larger --max-megapixels")
        try:
            return decode_image_bytes(data, name)
        except DataError as e:  # truncated, no pixels, or damaged
            raise UploadError(415, str(e)) from None

    def segment(self, data, name="the upload"):
        """The JSON answer (a dict) of POST /api/segment for the bytes of an image file."""
        rgb = self.read_image(data, name)
        with self._predict_lock:
            start = time.perf_counter()
            pred = np.asarray(self.predict(rgb))
            ms = 1000 * (time.perf_counter() - start)
        if pred.shape != rgb.shape[:2] or not np.issubdtype(pred.dtype, np.integer):
            raise ValueError(f"predict returned {pred.dtype} {pred.shape} for a {rgb.shape} "
                             f"image; it must return (H, W) integer class ids")
        if not 0 <= pred.min() <= pred.max() < len(self.classes):
            raise ValueError(f"predict returned class ids {pred.min()}..{pred.max()}, outside "
                             f"0..{len(self.classes) - 1} ({len(self.classes)} classes)")
        counts = np.bincount(pred.ravel(), minlength=len(self.classes))
        found = sorted(np.flatnonzero(counts), key=lambda c: -counts[c])
        drawn = overlay(rgb, pred, self.palette, self.opacity)[:, :, ::-1]  # BGR for OpenCV
        return {
            "width": rgb.shape[1], "height": rgb.shape[0], "ms": round(ms, 1),
            "overlay": "data:image/png;base64," + base64.b64encode(_png(drawn)).decode(),
            "label_url": f"/api/label/{self._keep(_png(pred.astype(np.uint8)))}.png",
            "classes": [{"id": int(c), "name": self.classes[c], "color": list(self.palette[c]),
                         "share": 100.0 * counts[c] / pred.size} for c in found],
        }

    def _keep(self, png):
        key = secrets.token_hex(8)
        with self._labels_lock:
            self._labels[key] = png
            while len(self._labels) > KEEP_RESULTS:
                self._labels.popitem(last=False)
        return key

    def label(self, key):
        """The label PNG of a recent result."""
        with self._labels_lock:
            png = self._labels.get(key)
        if png is None:
            raise UploadError(404, f"label map {key} is no longer kept (the server keeps the "
                                   f"last {KEEP_RESULTS}); segment the image again")
        return png


def _png(image):
    ok, encoded = cv2.imencode(".png", image)
    assert ok, f"OpenCV could not encode a {image.dtype} {image.shape} image as PNG"
    return encoded.tobytes()


class _Handler(BaseHTTPRequestHandler):
    """HTTP on top of the server's `app`."""

    server_version = "jseg-demo"
    timeout = 60  # seconds a client may stall mid-request before its connection is dropped

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _get(self):
        app, path = self.server.app, urllib.parse.urlsplit(self.path).path
        if path in ("/", "/index.html"):
            return 200, "text/html; charset=utf-8", app.page
        if path.startswith("/api/label/") and path.endswith(".png"):
            return 200, "image/png", app.label(path[len("/api/label/"):-len(".png")])
        raise UploadError(404, f"no page {path} here; open / for the demo")

    def _post(self):
        app, path = self.server.app, urllib.parse.urlsplit(self.path).path
        if path != "/api/segment":
            raise UploadError(404, f"no API {path} here; POST images to /api/segment")
        n = app.check_length(self.headers.get("Content-Length"))
        try:
            data = self.rfile.read(n)
        except OSError:  # the client stalled (timeout) or left
            data = b""
        if len(data) != n:
            raise UploadError(400, f"the upload stopped before its {n} bytes arrived; "
                                   f"try again")
        name = urllib.parse.unquote(self.headers.get("X-Filename", ""))[:200] or "the upload"
        answer = app.segment(data, name)
        return 200, "application/json", json.dumps(answer).encode()

    def _answer(self, route):
        start = time.perf_counter()
        try:
            status, content_type, body = route()
        except UploadError as e:
            status, content_type = e.status, "application/json"
            body = json.dumps({"error": str(e)}).encode()
        except Exception as e:  # predict (or this server) failed: say so, keep serving
            logger.exception("%s %s failed", self.command, self.path)
            status, content_type = 500, "application/json"
            body = json.dumps({"error": f"the server failed on this image ({type(e).__name__}: "
                                        f"{e}); its log has the details"}).encode()
        # logged before answering, so that a client that has its answer finds the line
        logger.info("%s %s %d %.0f ms", self.command, self.path, status,
                    1000 * (time.perf_counter() - start))
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
        except OSError as e:  # the client left before the answer
            logger.info("%s %s: the client left (%s)", self.command, self.path, e)

    def log_request(self, code="-", size="-"):
        """Each request is logged once, by _answer."""

    def log_message(self, format, *args):
        """http.server's own messages (malformed requests) go to the log, not to stderr."""
        logger.warning("%s: %s", self.address_string(), format % args)


def make_server(app, host="127.0.0.1", port=8000):
    """A ThreadingHTTPServer answering with `server.app` (a DemoApp) on host:port (port 0: a
    free one; `server.server_address` says which); OSError if the address cannot be bound.

    `app` may be None and set later, before `serve_forever()`: a tool binds its port first,
    so that a taken port fails before the model is loaded.
    """
    server = ThreadingHTTPServer((host, port), _Handler)
    server.app = app
    return server
