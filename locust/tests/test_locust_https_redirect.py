"""The ingress's HTTP→HTTPS redirect keeps a vote that Locust's HTTP users send to `http://`.

On GKE port 80 answers with the redirect code of the FrontendConfig in
k8s/overlays/gke/ingress-tls.yaml. A loopback server answers the same way and records what the
client sends after following it: with that code, Locust's HTTP client (FastHttpUser's session,
in a process of its own, as Locust runs) sends the same POST with the same body; with the
default code, 301, it sends a GET without the vote, which is why the overlay does not use it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

# Compute Engine's redirect response codes, as a FrontendConfig names them.
CODES = {"MOVED_PERMANENTLY_DEFAULT": 301, "FOUND": 302, "SEE_OTHER": 303, "TEMPORARY_REDIRECT": 307, "PERMANENT_REDIRECT": 308}
VOTE = {"name": "Alux Nahual", "album": "Conquista", "year": "1990", "rank": "9.5"}

CLIENT = """
import json, sys
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
from locust import FastHttpUser
session = FastHttpSession(base_url=sys.argv[1], request_event=Environment(user_classes=[FastHttpUser]).events.request, user=None)
response = session.post(sys.argv[2], json=json.loads(sys.argv[3]))
print(response.status_code)
"""


@pytest.fixture
def redirecting_server():
    """POST /redirect/<code> answers <code> with `location: /rust/send_data`; what arrives there
    is recorded as (method, body)."""
    arrived = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status, headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path.startswith("/redirect/"):
                self._answer(int(self.path.rsplit("/", 1)[1]), [("location", "/rust/send_data")])
            else:
                arrived.append(("POST", body))
                self._answer(200)

        def do_GET(self):
            arrived.append(("GET", b""))
            self._answer(200)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", arrived
    server.shutdown()
    server.server_close()


def follow(base_url: str, code: int) -> str:
    run = subprocess.run(
        [sys.executable, "-c", CLIENT, base_url, f"/redirect/{code}", json.dumps(VOTE)],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def overlay_redirect_code(repo) -> int:
    docs = yaml.safe_load_all((repo / "k8s" / "overlays" / "gke" / "ingress-tls.yaml").read_text())
    [frontend] = [d for d in docs if d and d["kind"] == "FrontendConfig"]
    return CODES[frontend["spec"]["redirectToHttps"].get("responseCodeName", "MOVED_PERMANENTLY_DEFAULT")]


def test_a_vote_sent_to_http_arrives_as_the_same_post_after_the_redirect(repo, redirecting_server):
    base_url, arrived = redirecting_server
    code = overlay_redirect_code(repo)
    assert follow(base_url, code) == "200"
    assert len(arrived) == 1 and arrived[0][0] == "POST", f"after a {code} the server got {arrived}"
    assert json.loads(arrived[0][1]) == VOTE


def test_the_default_redirect_would_turn_the_vote_into_a_get(redirecting_server):
    base_url, arrived = redirecting_server
    assert follow(base_url, CODES["MOVED_PERMANENTLY_DEFAULT"]) == "200"
    assert arrived == [("GET", b"")], "if 301 kept the POST, the FrontendConfig's choice would need no test"
