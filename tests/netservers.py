"""Loopback test servers: a video server and misbehaving proxies, all on 127.0.0.1 only.

Each server runs in a daemon thread and stops when its context ends; request loops are
bounded by the test that drives them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import socket
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

HOST = "127.0.0.1"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # clients that give up on a bad proxy reset their connections: expected here


@contextlib.contextmanager
def _serve(handler: type) -> Iterator[_Server]:
    server = _Server((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class VideoServer:
    """Serves the files of a folder; records every GET's path, percent-decoded; optionally slow per response."""

    def __init__(self, root: Path, delay: float = 0.0):
        self.root = Path(root)
        self.delay = delay
        self.gets: list[str] = []
        self.proxied: list[bool] = []  # per GET: did it come through our forwarding proxy?
        self.lock = threading.Lock()
        self.port = 0

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{name}"

    def fetched(self, name: str) -> int:
        with self.lock:
            return sum(1 for path in self.gets if path.lstrip("/") == name)

    @contextlib.contextmanager
    def running(self) -> Iterator["VideoServer"]:
        owner = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(owner.root), **kwargs)

            def do_GET(self):
                with owner.lock:
                    owner.gets.append(unquote(urlsplit(self.path).path))
                    owner.proxied.append(self.headers.get("Via") == "1.1 v2m-test-proxy")
                if owner.delay:
                    time.sleep(owner.delay)
                super().do_GET()

            def log_message(self, *args):
                pass

        with _serve(Handler) as server:
            self.port = server.server_address[1]
            yield self


@contextlib.contextmanager
def forwarding_proxy(user: str | None = None, password: str | None = None) -> Iterator[str]:
    """A working HTTP proxy (absolute-URI requests), with Basic proxy auth when credentials are given.

    Yields its URL, credentials included.
    """
    expected = None
    if user is not None:
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self):
            if expected is not None and self.headers.get("Proxy-Authorization") != expected:
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            target = urlsplit(self.path)
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("proxy-authorization", "proxy-connection", "connection")}
            headers["Via"] = "1.1 v2m-test-proxy"
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request(self.command, path, headers=headers)
            response = upstream.getresponse()
            body = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            upstream.close()

        do_GET = do_HEAD = _forward

        def log_message(self, *args):
            pass

    with _serve(Handler) as server:
        port = server.server_address[1]
        credentials = f"{user}:{password}@" if user is not None else ""
        yield f"http://{credentials}{HOST}:{port}"


@contextlib.contextmanager
def status_proxy(status: int) -> Iterator[str]:
    """A proxy that answers every request with ``status`` (403 blocked, 429 rate limited...)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            body = f"proxy says {status}".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 429:
                self.send_header("Retry-After", "1")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer

        def log_message(self, *args):
            pass

    with _serve(Handler) as server:
        yield f"http://{HOST}:{server.server_address[1]}"


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """Accepts connections and never answers: only a timeout gets the client out."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                connection, _ = listener.accept()
                held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


def dead_port() -> str:
    """A proxy URL where nothing listens: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    return f"http://{HOST}:{port}"
