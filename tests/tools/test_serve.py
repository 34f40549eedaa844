"""tools/serve.py and jseg.deploy.server: the JSON API with a stub predictor (answers, bad
uploads, the label maps kept, the request log); then tools/serve.py itself with the tiny model
(Jittor, and ONNX where onnx + onnxruntime are installed) and the whole demo in a headless
Chromium driven by Selenium.

The browser test needs `chromium` and `chromedriver` (Debian: apt-get install chromium
chromium-driver) and `pip install selenium`; it is skipped without them. Set
JSEG_SCREENSHOT=path to keep its screenshot of the page.
"""
import base64
import contextlib
import http.client
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib

import cv2
import numpy as np
import pytest

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES
from jseg.data.palettes import DEMO_CLASSES, DEMO_PALETTE, overlay
from jseg.deploy.server import KEEP_RESULTS, DemoApp, make_server

SERVE = os.path.join(ROOT, "tools", "serve.py")


def stub_predict(rgb):
    """Class ids from the red channel: several classes on any image."""
    return (rgb[:, :, 0].astype(np.int64) // 43) % len(DEMO_CLASSES)


@contextlib.contextmanager
def running(app):
    """`app` served on a free port of 127.0.0.1 in a thread; yields (host, port)."""
    server = make_server(app, port=0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def address():
    with running(DemoApp(stub_predict, DEMO_CLASSES, DEMO_PALETTE)) as address:
        yield address


def fetch(address, method, path, body=None, headers=None):
    """(status, content type, body bytes) of one request."""
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def segment(address, data, name="image.png"):
    """(status, JSON answer) of POST /api/segment."""
    status, kind, body = fetch(address, "POST", "/api/segment", data,
                                 {"X-Filename": urllib.request.quote(name)})
    assert kind == "application/json", (status, kind, body[:200])
    return status, json.loads(body)


def decode_png(data, flags=cv2.IMREAD_UNCHANGED):
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert image is not None, f"not a PNG: {data[:40]!r}"
    return image


def fetch_label(address, url):
    """The label map at `url`: (H, W) uint8."""
    status, kind, body = fetch(address, "GET", url)
    assert (status, kind) == (200, "image/png"), (status, kind, body[:200])
    return decode_png(body)


def encoded(image, suffix):
    """The bytes of an RGB, grey or RGBA `image` saved as `suffix` by OpenCV."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else
                             cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(suffix, image)
    assert ok, suffix
    return data.tobytes()


def png_header(width, height):
    """A small PNG whose header says width x height (8-bit grey), with one row of pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def photo(demo_root):
    """A demo image as (H, W, 3) RGB."""
    bgr = cv2.imread(os.path.join(demo_root, "images", "validation", "demo_00000.jpg"))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_an_image_gets_its_overlay_legend_and_label_map(address, photo, suffix):
    data = encoded(photo, suffix)
    status, answer = segment(address, data, "street" + suffix)
    assert status == 200, answer
    rgb = cv2.cvtColor(decode_png(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # as uploaded
    pred = stub_predict(rgb)
    assert (answer["width"], answer["height"]) == (rgb.shape[1], rgb.shape[0]), answer
    assert answer["ms"] >= 0, answer["ms"]

    counts = np.bincount(pred.ravel(), minlength=len(DEMO_CLASSES))
    legend = answer["classes"]
    assert [c["id"] for c in legend] == sorted(np.flatnonzero(counts), key=lambda c: -counts[c])
    for c in legend:
        assert c["name"] == DEMO_CLASSES[c["id"]] and c["color"] == list(DEMO_PALETTE[c["id"]]), c
        assert abs(c["share"] - 100 * counts[c["id"]] / pred.size) < 1e-9, (c, counts)
    total = sum(c["share"] for c in legend)
    assert abs(total - 100) < 1e-6, total

    assert answer["overlay"].startswith("data:image/png;base64,"), answer["overlay"][:40]
    drawn = decode_png(base64.b64decode(answer["overlay"].split(",", 1)[1]))
    np.testing.assert_array_equal(drawn[:, :, ::-1], overlay(rgb, pred, DEMO_PALETTE, 0.5))
    label = fetch_label(address, answer["label_url"])
    assert label.dtype == np.uint8 and label.shape == pred.shape, (label.dtype, label.shape)
    np.testing.assert_array_equal(label, pred)


@pytest.mark.parametrize("mode", ["grey", "rgba"])
def test_grey_and_rgba_images_reach_predict_as_rgb(photo, mode):
    seen = []
    app = DemoApp(lambda rgb: seen.append(rgb) or stub_predict(rgb), DEMO_CLASSES, DEMO_PALETTE)
    image = photo[:, :, 0] if mode == "grey" else np.dstack([photo, np.full(photo.shape[:2], 7,
                                                                            np.uint8)])
    with running(app) as address:
        status, answer = segment(address, encoded(image, ".png"))
    assert status == 200, answer
    expected = np.repeat(photo[:, :, :1], 3, axis=2) if mode == "grey" else photo
    assert seen[0].dtype == np.uint8 and seen[0].shape == photo.shape, (seen[0].dtype,
                                                                         seen[0].shape)
    np.testing.assert_array_equal(seen[0], expected)


def gif():
    """A 4x4 GIF: an image Pillow reads but the demo does not."""
    from PIL import Image
    out = io.BytesIO()
    Image.new("P", (4, 4)).save(out, "GIF")
    return out.getvalue()


TEXT = b"name,value\nwidth,64\n" * 20

BAD_UPLOADS = {  # name: (body, status, words the message must have)
    "text": (TEXT, 415, ["notes.txt is not an image", "choose an image file"]),
    "empty": (b"", 400, ["empty (0 bytes)", "choose an image file"]),
    "8000x8000": (png_header(8000, 8000), 413, ["notes.txt is 8000x8000 (64.0 megapixels)",
                                                "limit of 40 megapixels", "downscale it"]),
    "20000x20000": (png_header(20000, 20000), 413, ["notes.txt has more than 179 megapixels",
                                                    "limit of 40 megapixels", "downscale it"]),
    "gif": (gif(), 415, ["notes.txt is a GIF image", "convert it to PNG, JPEG"]),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_a_bad_upload_is_one_clear_error_and_the_server_goes_on(address, photo, case):
    body, status, words = BAD_UPLOADS[case]
    got, answer = segment(address, body, "notes.txt")
    assert got == status and set(answer) == {"error"}, (got, answer)
    assert all(w in answer["error"] for w in words), (words, answer["error"])
    got, answer = segment(address, encoded(photo, ".png"))
    assert got == 200 and answer["width"] == photo.shape[1], (got, answer)


def test_a_truncated_image_is_refused(address, photo):
    data = encoded(photo, ".png")
    status, answer = segment(address, data[:len(data) // 2], "cut.png")
    assert status == 415 and "truncated image cut.png" in answer["error"], (status, answer)


def test_a_50_mb_upload_is_refused_before_its_body_is_read(address, photo):
    """The answer comes back although not one byte of the body is sent: the server decided
    from Content-Length alone and never waits for (or reads) the 50 MB."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    start = time.perf_counter()
    conn.putrequest("POST", "/api/segment")
    conn.putheader("Content-Length", str(50 * 2 ** 20))
    conn.endheaders()
    response = conn.getresponse()
    answer = json.loads(response.read())
    seconds = time.perf_counter() - start
    conn.close()
    assert response.status == 413, (response.status, answer)
    assert answer["error"].startswith("the upload is 50 MB, over the limit of 20 MB; choose a "
                                      "smaller image"), answer
    assert seconds < 2, seconds
    status, answer = segment(address, encoded(photo, ".png"))
    assert status == 200, answer


def test_an_upload_without_content_length_is_refused(address):
    conn = http.client.HTTPConnection(*address, timeout=10)
    conn.putrequest("POST", "/api/segment")
    conn.endheaders()
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 411 and "no Content-Length" in answer["error"], answer


def test_a_failing_predict_is_a_500_and_the_next_image_works(photo):
    calls = []

    def flaky(rgb):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return stub_predict(rgb)

    with running(DemoApp(flaky, DEMO_CLASSES, DEMO_PALETTE)) as address:
        status, answer = segment(address, encoded(photo, ".png"))
        assert status == 500, answer
        assert answer["error"].startswith("the server failed on this image (RuntimeError: out "
                                          "of memory)"), answer
        status, answer = segment(address, encoded(photo, ".png"))
        assert status == 200, answer


def test_the_last_label_maps_are_kept(address, photo):
    data = encoded(photo, ".png")
    urls = [segment(address, data)[1]["label_url"] for _ in range(KEEP_RESULTS + 1)]
    assert len(set(urls)) == len(urls), urls
    status, _, body = fetch(address, "GET", urls[0])
    assert status == 404 and "no longer kept" in json.loads(body)["error"], (status, body)
    assert fetch(address, "GET", urls[1])[0] == 200


@pytest.mark.parametrize("method, path", [("GET", "/nothing"), ("POST", "/api/other"),
                                          ("GET", "/api/label/0123.png")])
def test_unknown_paths_are_404_json(address, method, path):
    status, kind, body = fetch(address, method, path, b"x" if method == "POST" else None)
    assert status == 404 and kind == "application/json", (status, kind, body)
    assert set(json.loads(body)) == {"error"}, body


def test_the_page_is_self_contained_and_states_the_limits(address):
    status, kind, body = fetch(address, "GET", "/")
    page = body.decode()
    assert status == 200 and kind.startswith("text/html"), (status, kind)
    assert "{{" not in page, "a placeholder was not filled in"
    assert 'data-max-bytes="20971520"' in page and "up to 20 MB and 40 megapixels" in page
    hosts = re.findall(r"(?:https?:)?//[\w-]+(?:\.[\w-]+)+", page)
    assert not hosts, f"the page must load nothing from elsewhere (machines are offline): {hosts}"
    for needed in ('id="file"', 'id="message"', 'id="overlay"', 'id="legend"', 'id="download"'):
        assert needed in page, needed


def test_each_request_logs_one_line(photo):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("jseg.deploy.server")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with running(DemoApp(stub_predict, DEMO_CLASSES, DEMO_PALETTE)) as address:
            segment(address, encoded(photo, ".png"))
            segment(address, TEXT)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("POST /api/segment 200 ") and lines[0].endswith(" ms"), lines
    assert lines[1].startswith("POST /api/segment 415 "), lines


def _load_tool():
    spec = importlib.util.spec_from_file_location("tool_serve", SERVE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_it_listens_on_127_0_0_1_by_default():
    args = _load_tool().parse_args(["--config-file", DEMO_CONFIG, "--checkpoint", "w.pkl"])
    assert (args.host, args.port) == ("127.0.0.1", 8000), (args.host, args.port)
    server = make_server(DemoApp(stub_predict, DEMO_CLASSES, DEMO_PALETTE), port=0)
    with server:
        assert server.server_address[0] == "127.0.0.1", server.server_address


# ---------------------------------------------------------------------------
# tools/serve.py itself, and the whole demo in a browser.

def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("log_silent", "JSEG_VERBOSE")}
    return {**env, "JSEG_DEVICE": "cpu"}


@pytest.fixture
def serve_tool():
    """serve_tool(*args) starts tools/serve.py on a free port and returns its base URL. After
    the test, Ctrl-C ends it as every tool ends: exit code 130, "interrupted"."""
    procs = []

    def start(*args):
        proc = subprocess.Popen(
            [sys.executable, SERVE, "--port", "0", *map(str, args)], cwd=ROOT, env=_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        procs.append(proc)
        timer = threading.Timer(600, proc.kill)  # a cold Jittor compiles its kernels first
        timer.start()
        line = proc.stdout.readline()
        timer.cancel()
        assert " on http://" in line, f"serve.py did not start: {line!r}"
        return line.split(" on ")[1].split()[0]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and err.splitlines()[-1] == "interrupted", (
            proc.returncode, err)
        assert "POST /api/segment 200" in err, err


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium under Selenium, or a skip saying what is missing."""
    pytest.importorskip("selenium", reason="pip install selenium (the test extra) for the "
                                           "browser test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                    "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("no chromium or chromedriver on PATH (Debian: apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,860"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def answered(driver, act):
    """Run act(); the page's state ("done" or "error") once it has shown the answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = driver.find_element(By.ID, "app")
    driver.execute_script("arguments[0].dataset.state = 'sent'", app)
    act()
    WebDriverWait(driver, 120).until(lambda d: app.get_attribute("data-state") in
                                     ("done", "error"))
    return app.get_attribute("data-state")


def upload(driver, path):
    """Choose `path` in the page's file input; the page's state once it has the answer."""
    from selenium.webdriver.common.by import By

    return answered(driver, lambda: driver.find_element(By.ID, "file").send_keys(str(path)))


def shown_label(driver):
    """The label map behind the page's download link."""
    from selenium.webdriver.common.by import By

    with urllib.request.urlopen(driver.find_element(By.ID, "download").get_attribute("href"),
                                timeout=30) as response:
        return decode_png(response.read())


DROP = """
    const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
    const files = new DataTransfer();
    files.items.add(new File([bytes], arguments[1]));
    document.getElementById("drop").dispatchEvent(
        new DragEvent("drop", {dataTransfer: files, bubbles: true}));
"""


def drop(driver, path):
    """Drop `path` on the page as a user drags it from a file manager; the page's state once
    it has the answer."""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return answered(driver, lambda: driver.execute_script(DROP, data, os.path.basename(path)))


def check_page(driver, path, expected, tmp_path):
    """Choose a text file, then one over the size limit: each error is shown; then drop
    `path` (whose prediction is `expected`): the overlay, legend, time and a label map
    equal to `expected` are shown."""
    from selenium.webdriver.common.by import By

    message = driver.find_element(By.ID, "message")
    notes = tmp_path / "notes.txt"
    notes.write_bytes(TEXT)
    assert upload(driver, notes) == "error"
    assert message.is_displayed() and "notes.txt is not an image" in message.text, message.text
    assert not driver.find_element(By.ID, "result").is_displayed()
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(21 * 2 ** 20)  # refused by the page itself, before any upload
    assert upload(driver, big) == "error"
    assert message.is_displayed() and message.text == (
        "big.png is 21.0 MB, over the limit of 20.0 MB; choose a smaller image."), message.text

    assert drop(driver, path) == "done", message.text
    assert not message.is_displayed()
    assert driver.find_element(By.ID, "overlay").get_attribute("src").startswith(
        "data:image/png;base64,")
    assert " ms" in driver.find_element(By.ID, "time").text
    rows = driver.find_elements(By.CSS_SELECTOR, "#legend tr")
    ids, counts = np.unique(expected, return_counts=True)
    assert len(rows) == len(ids), ([r.text for r in rows], ids)
    assert rows[0].text.startswith(DEMO_CLASSES[ids[np.argmax(counts)]]), rows[0].text
    np.testing.assert_array_equal(shown_label(driver), expected.astype(np.uint8))
    assert driver.find_element(By.ID, "download").get_attribute("download") == (
        os.path.splitext(os.path.basename(path))[0] + "_label.png")


def test_a_taken_port_is_one_error_line_before_the_weights_are_read(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, SERVE, "--config-file", DEMO_CONFIG,
                              "--checkpoint", tmp_path / "missing.pkl", "--port", str(port)],
                             cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert out.stderr.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another "
        f"--port (0 picks a free one) or stop what uses it"), out.stderr


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_weights):
    """The tiny model exported as tools/serve.py --onnx wants it (dynamic, bases as input)."""
    pytest.importorskip("onnx", reason="pip install onnx (the export extra) to export a graph")
    pytest.importorskip("onnxruntime", reason="pip install onnxruntime (the export extra)")
    from jseg.apis import init_model
    from jseg.config import load_config
    from jseg.export.onnx import export_onnx

    model = init_model(load_config(DEMO_CONFIG, TINY_OVERRIDES), tiny_weights, device="cpu")
    path = str(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    export_onnx(model, path, (48, 64), bases="input", dynamic=True)
    return path


@pytest.mark.parametrize("backend", ["jittor", "onnx"])
def test_the_tool_serves_the_prediction_of_inference_model(backend, serve_tool, tiny_weights,
                                                           demo_root, request):
    """Without a browser: POST a demo image to tools/serve.py; its label map is what
    jseg.apis.inference_model predicts (the ONNX graph takes the same NMF bases)."""
    from jseg.apis import inference_model, init_model
    from jseg.config import load_config

    weights = (["--checkpoint", tiny_weights, "--device", "cpu"] if backend == "jittor" else
               ["--onnx", request.getfixturevalue("tiny_onnx")])
    path = os.path.join(demo_root, "images", "validation", "demo_00001.jpg")
    model = init_model(load_config(DEMO_CONFIG, TINY_OVERRIDES), tiny_weights, device="cpu")
    with open(path, "rb") as f:
        data = f.read()
    url = urllib.parse.urlsplit(serve_tool("--config-file", DEMO_CONFIG, *weights,
                                           *TINY_OVERRIDES))
    status, answer = segment((url.hostname, url.port), data, "demo_00001.jpg")
    assert status == 200, answer
    label = fetch_label((url.hostname, url.port), answer["label_url"])
    np.testing.assert_array_equal(label, inference_model(model, path)["pred"].astype(np.uint8))


def test_the_demo_in_a_browser_shows_what_the_model_predicts(browser, serve_tool, tiny_weights,
                                                             demo_root, tmp_path):
    from selenium.webdriver.common.by import By
    from jseg.apis import inference_model, init_model
    from jseg.config import load_config

    folder = os.path.join(demo_root, "images", "validation")
    first, second = (os.path.join(folder, n) for n in sorted(os.listdir(folder))[:2])
    model = init_model(load_config(DEMO_CONFIG, TINY_OVERRIDES), tiny_weights, device="cpu")
    browser.get(serve_tool("--config-file", DEMO_CONFIG, "--checkpoint", tiny_weights,
                           "--device", "cpu", *TINY_OVERRIDES))
    assert "Jittor tiny.pkl" in browser.find_element(By.TAG_NAME, "header").text
    assert upload(browser, first) == "done"
    np.testing.assert_array_equal(shown_label(browser),
                                  inference_model(model, first)["pred"].astype(np.uint8))
    browser.save_screenshot(str(tmp_path / "serve.png"))
    if os.environ.get("JSEG_SCREENSHOT"):
        browser.save_screenshot(os.environ["JSEG_SCREENSHOT"])
    check_page(browser, second, inference_model(model, second)["pred"], tmp_path)
