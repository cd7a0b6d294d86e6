"""A trained run behind HTTP, on the standard library's ThreadingHTTPServer (`protloc serve`).

    GET  /         a page that uploads an image and draws a probability bar per class
    GET  /health   {"status": "ok", "run", "backbone", "engine", "labels"}
    POST /predict  the raw image file as the body; ?tta=1&threshold=0.4&allow_empty=1
                   -> {"labels": [...], "probabilities": {name: p}, "thresholds": {name: t}}

Errors are JSON {"error": "..."} with a 4xx status (5xx only for a fault of the server itself), never a
traceback. Requests decode their images in parallel threads, with the decoder files go through; the model
runs one request at a time under a lock, because one loaded network is shared. Everything about the model
comes from the run's config through the Predictor, exactly as for `protloc predict` and `protloc.load`.
"""
from __future__ import annotations

import html
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from protloc.data.images import ImageReadError, decode_image
from protloc.errors import ProtlocError
from protloc.inference.predictor import Predictor, load_predictor

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# A refused body is still read and dropped, up to this much, so that the client, which sends its whole body
# before it reads the answer, gets the 413 rather than a reset connection.
DRAIN_LIMIT = 64 * 1024 * 1024
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on", ""), ("0", "false", "no", "off")


class RequestError(Exception):
    """A request the server refuses: the status and a short message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------- request parts -> values


@dataclass(frozen=True)
class PredictOptions:
    tta: bool = False
    threshold: float | None = None
    allow_empty: bool = False


def _flag(name: str, text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise RequestError(400, f"{name}={text}: expected 1 or 0")


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:  # also refuses nan
        raise RequestError(400, f"threshold={text}: expected a probability strictly between 0 and 1")
    return value


def parse_options(query: str) -> PredictOptions:
    """The query string of POST /predict -> options; unknown, repeated or malformed parameters are a 400."""
    try:
        values = parse_qs(query, keep_blank_values=True, max_num_fields=10)
    except ValueError:
        raise RequestError(400, "too many query parameters (expected tta, threshold, allow_empty)") from None
    unknown = sorted(set(values) - {"tta", "threshold", "allow_empty"})
    if unknown:
        raise RequestError(400, f"unknown query parameter {', '.join(unknown)} (expected tta, threshold, allow_empty)")
    repeated = sorted(name for name, given in values.items() if len(given) > 1)
    if repeated:
        raise RequestError(400, f"query parameter {', '.join(repeated)} given more than once")
    single = {name: given[0] for name, given in values.items()}
    return PredictOptions(
        tta=_flag("tta", single["tta"]) if "tta" in single else False,
        threshold=_threshold(single["threshold"]) if "threshold" in single else None,
        allow_empty=_flag("allow_empty", single["allow_empty"]) if "allow_empty" in single else False,
    )


# ---------------------------------------------------------------- the server


class PredictionServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding one loaded Predictor, used by one request at a time."""

    def __init__(self, address: tuple[str, int], predictor: Predictor, *, run_name: str, engine: str, max_bytes: int):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.predictor = predictor
        self.run_name = run_name
        self.engine = engine
        self.max_bytes = max_bytes
        self.model_lock = threading.Lock()
        super().__init__(address, RequestHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def health(self) -> dict:
        config = self.predictor.config
        return {"status": "ok", "run": self.run_name, "backbone": config.backbone, "engine": self.engine,
                "labels": self.predictor.label_names}

    def predict(self, image: np.ndarray, options: PredictOptions) -> dict:
        with self.model_lock:
            prediction = self.predictor.predict(image, tta=options.tta, threshold=options.threshold,
                                                allow_empty=options.allow_empty)
        names = prediction.label_names
        thresholds = self.predictor.config.thresholds if options.threshold is None else [options.threshold] * len(names)
        return {
            "labels": prediction.labels[0],
            "probabilities": {name: float(p) for name, p in zip(names, prediction.probabilities[0])},
            "thresholds": {name: float(t) for name, t in zip(names, thresholds)},
        }


def _json(data: dict) -> bytes:
    return json.dumps(data).encode("utf-8")


class RequestHandler(BaseHTTPRequestHandler):
    server: PredictionServer
    server_version = "protloc-serve"
    timeout = 60  # seconds a stalled client may hold its thread

    def do_GET(self) -> None:
        self._respond("GET")

    def do_POST(self) -> None:
        self._respond("POST")

    # -------------------------------------------------------- routes: (status, content type, body)

    def index(self, query: str):
        return 200, HTML_TYPE, render_index(self.server.run_name).encode("utf-8")

    def health(self, query: str):
        return 200, JSON_TYPE, _json(self.server.health())

    def predict(self, query: str):
        length = self._content_length()
        if length is None:
            raise RequestError(411, "send the image with a Content-Length header")
        if length > self.server.max_bytes:
            raise RequestError(413, f"body of {length} bytes is over the limit of {self.server.max_bytes}")
        if self.headers.get_content_type().startswith("multipart/"):
            raise RequestError(400, "send the raw image file as the body, not a multipart form")
        options = parse_options(query)
        body = self._read_body(length)
        if not body:
            raise RequestError(400, "empty body: send an image file")
        try:
            image = decode_image(body)
        except ImageReadError as error:
            raise RequestError(400, str(error)) from None
        return 200, JSON_TYPE, _json(self.server.predict(image, options))

    ROUTES = {"/": {"GET": index}, "/index.html": {"GET": index}, "/health": {"GET": health},
              "/predict": {"POST": predict}}

    # -------------------------------------------------------- machinery

    def _respond(self, method: str) -> None:
        self.started = time.perf_counter()
        self.body_read = False
        path, _, query = self.path.partition("?")
        try:
            methods = self.ROUTES.get(path)
            if methods is None:
                raise RequestError(404, f"no such path {path} (try GET /, GET /health or POST /predict)")
            if method not in methods:
                raise RequestError(405, f"{path} takes {' or '.join(methods)}, not {method}")
            status, content_type, body = methods[method](self, query)
        except RequestError as error:
            status, content_type, body = error.status, JSON_TYPE, _json({"error": error.message})
        except ProtlocError as error:
            status, content_type, body = 400, JSON_TYPE, _json({"error": "; ".join(error.lines)})
        except Exception as error:  # a fault of ours: say so in the log, not to the client
            self.log_message("internal error: %s: %s", type(error).__name__, error)
            status, content_type, body = 500, JSON_TYPE, _json({"error": "internal error; see the server's log"})
        if method == "POST" and not self.body_read:
            self._drain_body()
        self._send(status, content_type, body)

    def _content_length(self) -> int | None:
        text = self.headers.get("Content-Length")
        if text is None:
            return None
        try:
            length = int(text)
        except ValueError:
            length = -1
        if length < 0:
            raise RequestError(400, f"Content-Length {text!r}: expected a byte count")
        return length

    def _read_body(self, length: int) -> bytes:
        self.body_read = True
        try:
            body = self.rfile.read(length)
        except (TimeoutError, OSError):
            self.close_connection = True
            raise RequestError(408, "timed out reading the body") from None
        if len(body) < length:
            raise RequestError(400, f"body ended after {len(body)} of {length} bytes")
        return body

    def _drain_body(self) -> None:
        self.close_connection = True
        try:
            left = self._content_length() or 0
        except RequestError:
            return
        if left > DRAIN_LIMIT:
            return
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nobody to tell

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors the base class finds itself (malformed request line or headers, unsupported method), as JSON."""
        self.close_connection = True
        self.started = getattr(self, "started", time.perf_counter())
        default = self.responses.get(code, ("error",))[0]
        self._send(code, JSON_TYPE, _json({"error": message or default}))

    def log_request(self, code="-", size="-") -> None:
        code = code.value if isinstance(code, HTTPStatus) else code
        elapsed = (time.perf_counter() - getattr(self, "started", time.perf_counter())) * 1000
        self.log_message('"%s" %s %.0f ms', self.requestline, code, elapsed)

    def log_message(self, format: str, *args) -> None:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.address_string()} {format % args}\n")


def make_server(run_dir: str | Path, host: str, port: int, *, engine: str = "torch", onnx_path: str | Path | None = None,
                device: str = "auto", precision: str = "auto", max_bytes: int = DEFAULT_MAX_BYTES) -> PredictionServer:
    """Load the run, then bind host:port (0 picks a free port; see .server_address); serve with serve_forever().
    Loading first makes a missing or broken run folder fail with a ProtlocError before any port is taken."""
    if max_bytes < 1:
        raise ProtlocError(f"max bytes {max_bytes}: expected 1 or more")
    if not 0 <= port <= 65535:
        raise ProtlocError(f"port {port}: expected 0..65535")
    predictor = load_predictor(run_dir, device=device, engine=engine, onnx_path=onnx_path, precision=precision)
    try:
        return PredictionServer((host, port), predictor, run_name=Path(run_dir).resolve().name, engine=engine,
                                max_bytes=max_bytes)
    except OSError as error:
        raise ProtlocError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


# ---------------------------------------------------------------- the page


def render_index(run_name: str) -> str:
    return _INDEX.replace("{{run}}", html.escape(run_name))


_INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>protloc: {{run}}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 720px; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; border-bottom: 2px solid #ccc; padding-bottom: .2em; }
#status { color: #555; min-height: 1.4em; }
#status.error { color: #b00020; }
#preview { max-width: 256px; max-height: 256px; display: none; margin: .5em 0; border: 1px solid #ddd; }
#labels { font-weight: 600; margin: .6em 0; }
.row { display: grid; grid-template-columns: 14em 1fr 4em; align-items: center; gap: .6em; margin: .2em 0; }
.row.on .name { font-weight: 600; }
.track { position: relative; height: 1em; background: #eee; border-radius: 3px; }
.bar { height: 100%; background: #9bb7d4; border-radius: 3px; }
.row.on .bar { background: #2a6fb0; }
.cut { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #d33; }
.value { text-align: right; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>protloc &middot; {{run}}</h1>
<p>Choose a fluorescence image (PNG, JPEG or TIFF; red microtubules, green protein, blue nucleus).</p>
<p><input type="file" id="file" accept="image/png,image/jpeg,image/tiff,.png,.jpg,.jpeg,.tif,.tiff">
<label><input type="checkbox" id="tta"> average over flips and turns (slower)</label></p>
<div id="status"></div>
<img id="preview" alt="the chosen image">
<div id="labels"></div>
<div id="bars"></div>
<p style="color:#777;font-size:.85em">Bars: probability per class; red line: the class's threshold.</p>
<script>
const fileInput = document.getElementById("file");
const tta = document.getElementById("tta");
const statusLine = document.getElementById("status");
const preview = document.getElementById("preview");

function say(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function show(result) {
  document.getElementById("labels").textContent = "Labels: " + (result.labels.join(", ") || "none");
  const bars = document.getElementById("bars");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(result.probabilities)) {
    const row = document.createElement("div");
    row.className = "row" + (result.labels.includes(name) ? " on" : "");
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = (100 * p).toFixed(1) + "%";
    const cut = document.createElement("div");
    cut.className = "cut";
    cut.style.left = (100 * result.thresholds[name]).toFixed(1) + "%";
    track.append(bar, cut);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = p.toFixed(3);
    row.append(label, track, value);
    bars.append(row);
  }
}

async function predict() {
  const file = fileInput.files[0];
  if (!file) return;
  preview.style.display = "none";
  preview.onload = () => { preview.style.display = "block"; };
  preview.src = URL.createObjectURL(file);  // browsers show PNG and JPEG; TIFF stays hidden
  say("predicting " + file.name + " ...", false);
  try {
    const response = await fetch("predict" + (tta.checked ? "?tta=1" : ""), {
      method: "POST",
      headers: {"Content-Type": file.type || "application/octet-stream"},
      body: file,
    });
    const result = await response.json();
    if (!response.ok) {
      say(file.name + ": " + (result.error || response.statusText), true);
      return;
    }
    say(file.name, false);
    show(result);
  } catch (error) {
    say("request failed: " + error, true);
  }
}

fileInput.addEventListener("change", predict);
tta.addEventListener("change", predict);
</script>
</body>
</html>
"""
