"""The gRPC user through TLS, as against the GKE Gateway with the self-signed certificate of
docs/DEPLOY.md step 5: a TLS front (ALPN h2, a certificate of a test CA) before a real ingest's
gRPC port. With GRPC_CA_FILE every vote is accepted; without it the certificate is refused."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from conftest import make_test_ca

VOTES_PER_USER = 20
USERS = 2
GRPC_NAME = "bandvote.v1.Votes/Cast"


@pytest.fixture
def tls_front(pipeline, tmp_path):
    """Ends TLS on a loopback port and passes the HTTP/2 bytes on to ingest's gRPC port."""
    ca, cert, key = make_test_ca(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", 0))
    host, port = pipeline.grpc_target.rsplit(":", 1)
    handshakes = {"done": 0, "refused": 0}

    def pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve(client):
        try:
            secured = context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            handshakes["refused"] += 1
            client.close()
            return
        handshakes["done"] += 1
        upstream = socket.create_connection((host, int(port)))
        threading.Thread(target=pipe, args=(upstream, secured), daemon=True).start()
        pipe(secured, upstream)

    def accept():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"localhost:{listener.getsockname()[1]}", ca, handshakes
    listener.close()


def run_grpc_user(repo, pipeline, tmp_path, **settings: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(repo / "locust"),
        "VOTES_PER_USER": str(VOTES_PER_USER),
        "GRPC_TLS": "1",
        **settings,
    }
    run = subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(repo / "locust" / "locustfile.py"),
            "--headless", "--users", str(USERS), "--spawn-rate", str(USERS), "--run-time", "60s",
            "--stop-timeout", "10", "--host", pipeline.http_url, "--only-summary", "--json",
            "--loglevel", "WARNING", "GrpcUser",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    stats = {entry["name"]: entry for entry in json.loads(run.stdout or "[]")}
    assert GRPC_NAME in stats, f"no gRPC request made (exit {run.returncode}):\n{run.stderr[-3000:]}"
    return stats[GRPC_NAME]


def test_grpc_user_trusts_the_ca_file_it_is_given(repo, pipeline, tls_front, tmp_path):
    target, ca, handshakes = tls_front
    trusted = run_grpc_user(repo, pipeline, tmp_path, GRPC_TARGET=target, GRPC_CA_FILE=str(ca))
    assert trusted["num_requests"] == USERS * VOTES_PER_USER, trusted
    assert trusted["num_failures"] == 0, trusted
    assert handshakes["done"] >= 1, handshakes
    pipeline.wait_for_total(USERS * VOTES_PER_USER, timeout=30)

    # The same front without the CA: grpcio's own roots do not hold the test CA, so nothing passes.
    untrusted = run_grpc_user(repo, pipeline, tmp_path, GRPC_TARGET=target)
    assert untrusted["num_failures"] == untrusted["num_requests"] > 0, untrusted
    assert handshakes["refused"] >= 1, handshakes


def test_grpc_user_checks_the_server_name_when_given_an_address(repo, pipeline, tls_front, tmp_path):
    target, ca, _ = tls_front
    address = target.replace("localhost", "127.0.0.1")
    named = run_grpc_user(repo, pipeline, tmp_path, GRPC_TARGET=address, GRPC_CA_FILE=str(ca), GRPC_SERVER_NAME="localhost")
    assert named["num_failures"] == 0 and named["num_requests"] == USERS * VOTES_PER_USER, named
    wrong = run_grpc_user(repo, pipeline, tmp_path, GRPC_TARGET=address, GRPC_CA_FILE=str(ca), GRPC_SERVER_NAME="other.example")
    assert wrong["num_failures"] == wrong["num_requests"] > 0, wrong
