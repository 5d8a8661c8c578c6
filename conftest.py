"""Fixtures shared by the Python tests: paths, the local services and a running pipeline.

`dev/pytest` runs these tests with the local services started (`dev/services`), kustomize and the
CRD schemas installed (`dev/tools`) and the ingest and consumer binaries built. Nothing here skips:
a missing service, tool or binary fails the test that needs it, with a message that says why.

The `pipeline` fixture starts a real ingest (gRPC and HTTP routes) and a consumer on free loopback
ports, isolated from every other test by a unique Kafka topic, Redis key prefix and MongoDB
database.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pymongo
import pytest
import redis
import requests

REPO = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("BANDVOTE_CACHE", Path.home() / ".cache" / "bandvote"))


def need_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests with dev/pytest (it exports the local services)")
    return value


def make_test_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A certificate authority of its own and a certificate it signed for `localhost` and
    127.0.0.1, made with the openssl command: (CA certificate, server certificate, server key)."""
    ca_key, ca, key, request, cert = (folder / name for name in ("ca.key", "ca.pem", "tls.key", "tls.csr", "tls.pem"))
    extensions = folder / "tls.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bandvote test CA",
            "-keyout", str(ca_key), "-out", str(ca))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(request))
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(extensions), "-out", str(cert))
    return ca, cert, key


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """Calls `check` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kustomize() -> str:
    """The kustomize binary that dev/tools installs (PATH first, then the cache)."""
    found = shutil.which("kustomize") or str(CACHE / "bin" / "kustomize")
    if not Path(found).is_file():
        pytest.fail("kustomize not found: run `dev/tools install kustomize` (dev/pytest does)")
    return found


@pytest.fixture(scope="session")
def crd_dir() -> Path:
    """Where `dev/tools install k8s-schemas` put the CRDs (strimzi/, gateway-api/, gke/)."""
    path = CACHE / "schemas"
    if not (path / ".stamp").is_file():
        pytest.fail(f"no CRD schemas in {path}: run `dev/tools install k8s-schemas` (dev/pytest does)")
    return path


@pytest.fixture(scope="session")
def redis_url() -> str:
    return need_env("REDIS_URL")


def binary(name: str) -> str:
    bin_dir = Path(os.environ.get("BANDVOTE_BIN", "")) if os.environ.get("BANDVOTE_BIN") else None
    if bin_dir is None:
        target = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
        bin_dir = target / "debug"
    path = bin_dir / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with `cargo build -p {name}` (dev/pytest does)")
    return str(path)


@dataclass
class Pipeline:
    """A running ingest (gRPC and HTTP routes, and the Wasm route's producer side) and consumer,
    with their own topic, key prefix and database."""

    http_url: str
    grpc_target: str
    # Ingest's /healthz, /readyz and /metrics.
    ops_url: str
    prefix: str
    topic: str
    database: str
    redis: redis.Redis
    logs: Path
    processes: list = field(default_factory=list)

    def total(self) -> int:
        return int(self.redis.get(f"{self.prefix}:votes:total") or 0)

    def wait_for_total(self, expected: int, timeout: float = 30.0) -> None:
        """Waits until the consumer has counted `expected` votes; fails on more or on a timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            total = self.total()
            if total > expected:
                pytest.fail(f"Redis counted {total} votes, more than the {expected} accepted")
            if total == expected:
                # Exactly once: nothing more may arrive once every vote is in.
                time.sleep(1.0)
                if self.total() != expected:
                    pytest.fail(f"Redis went on counting past {expected}: {self.total()}")
                return
            time.sleep(0.1)
        pytest.fail(f"Redis counted {self.total()} of {expected} votes after {timeout:.0f} s; logs in {self.logs}")

    def wait_for_logged(self, expected: int, timeout: float = 30.0) -> None:
        """Waits until MongoDB's vote log (collection `votes`) holds exactly `expected` votes."""
        with pymongo.MongoClient(os.environ["MONGODB_URI"], serverSelectionTimeoutMS=5000) as client:
            votes = client[self.database]["votes"]
            wait_until(lambda: votes.count_documents({}) == expected, timeout, f"{expected} votes in MongoDB")


def _start(cmd: str, env: dict, log: Path) -> subprocess.Popen:
    out = open(log, "wb")
    return subprocess.Popen([cmd], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited with {proc.returncode} before it was ready:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def pipeline(tmp_path, redis_url) -> Pipeline:
    """Starts ingest (INGEST_ROUTES=grpc,http,wasm) and one consumer on free loopback ports."""
    kafka = need_env("KAFKA_BROKERS")
    mongo = need_env("MONGODB_URI")
    run = uuid.uuid4().hex[:12]
    prefix, topic, database = f"pytest-{run}", f"pytest-votes-{run}", f"pytest_{run}"
    http_port, grpc_port, ops_port, consumer_port = free_port(), free_port(), free_port(), free_port()
    common = {
        **os.environ,
        "HOST": "127.0.0.1",
        "KAFKA_BROKERS": kafka,
        "KAFKA_TOPIC": topic,
        "KAFKA_TOPIC_PARTITIONS": "6",
        "RUST_LOG": "warn",
    }
    # `wasm` adds /wasm/votes, the producer side of the Wasm route (see the wasm_route fixture).
    ingest_env = {
        **common,
        "PORT": str(http_port),
        "GRPC_PORT": str(grpc_port),
        "OPS_PORT": str(ops_port),
        "INGEST_ROUTES": "grpc,http,wasm",
    }
    consumer_env = {
        **common,
        "PORT": str(consumer_port),
        "KAFKA_GROUP": f"pytest-{run}",
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "MONGODB_URI": mongo,
        "MONGODB_DATABASE": database,
    }
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    logs = tmp_path
    ingest = _start(binary("bandvote-ingest"), ingest_env, logs / "ingest.log")
    processes = [ingest]
    try:
        # Ingest creates the topic; the consumer starts once it exists.
        _wait_ready(ingest, f"http://127.0.0.1:{ops_port}/readyz", logs / "ingest.log")
        consumer = _start(binary("bandvote-consumer"), consumer_env, logs / "consumer.log")
        processes.append(consumer)
        _wait_ready(consumer, f"http://127.0.0.1:{consumer_port}/readyz", logs / "consumer.log")
        yield Pipeline(
            http_url=f"http://127.0.0.1:{http_port}",
            grpc_target=f"127.0.0.1:{grpc_port}",
            ops_url=f"http://127.0.0.1:{ops_port}",
            prefix=prefix,
            topic=topic,
            database=database,
            redis=client,
            logs=logs,
            processes=processes,
        )
    finally:
        for proc in reversed(processes):
            _stop(proc)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()
        with pymongo.MongoClient(mongo, serverSelectionTimeoutMS=5000) as mongo_client:
            mongo_client.drop_database(database)


@pytest.fixture
def wasm_route(pipeline, tmp_path) -> str:
    """The Wasm route's component under `wasmtime serve` on a free loopback port, forwarding to the
    pipeline's ingest as its producer side (as the two containers of the ingest-wasm pod do).
    Returns its base URL."""
    component = os.environ.get("BANDVOTE_WASM_COMPONENT")
    if not component or not Path(component).is_file():
        pytest.fail(f"no Wasm component at {component!r}: run `dev/build-wasm` (dev/pytest does)")
    wasmtime = shutil.which("wasmtime") or str(CACHE / "bin" / "wasmtime")
    if not Path(wasmtime).is_file():
        pytest.fail("wasmtime not found: run `dev/tools install wasmtime` (dev/pytest does)")
    port = free_port()
    log = tmp_path / "wasmtime.log"
    out = open(log, "wb")
    proc = subprocess.Popen(
        [
            wasmtime, "serve", "-S", "cli=y", "--addr", f"127.0.0.1:{port}",
            "--env", f"INGEST_URL={pipeline.http_url}", "--env", f"INGEST_OPS_URL={pipeline.ops_url}", component,
        ],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/readyz", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
