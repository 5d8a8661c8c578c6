"""The logs console running for real: ingest and consumer (the root conftest's `pipeline`), the logs
API on the pipeline's MongoDB database, and the console's server (built by cargo-leptos) in front.
Browser tests drive Debian's Chromium through Playwright (no browser download)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from conftest import _start, _stop, _wait_ready, binary, free_port, make_test_ca, need_env, wait_until

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def site_root() -> str:
    """Where `dev/build-console` put the console's browser build."""
    root = os.environ.get("LEPTOS_SITE_ROOT")
    if not root or not (Path(root) / "pkg").is_dir():
        pytest.fail(f"no console build at {root!r}: run `dev/build-console` (dev/pytest does)")
    return root


def start_api(database: str, log: Path) -> tuple:
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MONGODB_URI": need_env("MONGODB_URI"),
        "MONGODB_DATABASE": database,
        "TALLY_CACHE": "0s",
        "RUST_LOG": "warn",
    }
    proc = _start(binary("bandvote-logs-api"), env, log)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, f"{url}/readyz", log)
    return proc, url


def start_ui(api_url: str, log: Path, **extra: str) -> tuple:
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOGS_API_URL": api_url,
        "LOGS_API_TIMEOUT": "3s",
        "LEPTOS_SITE_ROOT": site_root(),
        "RUST_LOG": "warn",
        **extra,
    }
    proc = _start(binary("bandvote-logs-ui"), env, log)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(proc, f"{url}/healthz", log)
    return proc, url


@dataclass
class Console:
    url: str
    api_url: str
    pipeline: object
    sent: int = 0

    def cast(self, band: str, album: str, route: str = "http", rank: str = "8.5") -> str:
        """Casts a vote through ingest (`/votes` or `/grpc/insert`) and returns its vote_id."""
        self.sent += 1
        vote_id = f"ui-{self.sent:04d}"
        path = "/grpc/insert" if route == "grpc" else "/votes"
        body = {"name": band, "album": album, "year": "1997", "rank": rank, "vote_id": vote_id}
        response = requests.post(f"{self.pipeline.http_url}{path}", json=body, timeout=10)
        assert response.status_code == 200, response.text
        return vote_id

    def logged(self) -> int:
        return requests.get(f"{self.api_url}/tallies", timeout=5).json()["total"]

    def wait_logged(self, expected: int) -> None:
        wait_until(lambda: self.logged() == expected, 30, f"{expected} votes in the log")


@pytest.fixture
def console(pipeline, tmp_path) -> Console:
    api, api_url = start_api(pipeline.database, tmp_path / "logs-api.log")
    try:
        ui, url = start_ui(api_url, tmp_path / "logs-ui.log")
        try:
            yield Console(url=url, api_url=api_url, pipeline=pipeline)
        finally:
            _stop(ui)
    finally:
        _stop(api)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.fail("Chromium not found: `dev/tools install chromium` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Recorder(BaseHTTPRequestHandler):
    """A stand-in for the metadata server and the logs API that records what it was asked."""

    seen: list = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        type(self).seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.path.startswith("/computeMetadata/"):
            body, kind = b"token-for-test", "text/plain"
        elif self.path.startswith("/tallies"):
            body, kind = json.dumps({"total": 0, "bands": [], "albums": [], "routes": []}).encode(), "application/json"
        else:
            body, kind = json.dumps({"votes": [], "next_cursor": None}).encode(), "application/json"
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", Recorder.seen
    server.shutdown()
    time.sleep(0)


@dataclass
class TlsFront:
    """An HTTPS server in front of a plain HTTP one, like Cloud Run's front of the logs API."""

    url: str
    ca: Path
    answered: list
    refused_handshakes: list


@pytest.fixture
def tls_front(tmp_path):
    """Call with a backend's URL: an HTTPS front for it, with a certificate of a test CA."""
    import ssl

    servers = []

    def start(backend: str) -> TlsFront:
        ca, cert, key = make_test_ca(tmp_path)
        answered, refused = [], []

        class Forward(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server API)
                upstream = requests.get(f"{backend}{self.path}", timeout=10)
                answered.append(self.path)
                self.send_response(upstream.status_code)
                self.send_header("content-type", upstream.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                refused.append(client_address)

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = Server(("127.0.0.1", 0), Forward)
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        url = f"https://localhost:{server.server_address[1]}"
        return TlsFront(url=url, ca=ca, answered=answered, refused_handshakes=refused)

    yield start
    for server in servers:
        server.shutdown()
