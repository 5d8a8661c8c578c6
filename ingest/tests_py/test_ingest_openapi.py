"""schemathesis against the HTTP port of a real ingest (HTTP and gRPC routes, Kafka on its own
throwaway topic): every operation of ingest/openapi.json, as served at GET /openapi.json."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import requests
import schemathesis

from conftest import REPO, _start, _stop, _wait_ready, binary, free_port, need_env
from openapi_fuzz import check_error_body, load, run

# Examples per operation and mode (positive and negative); SCHEMATHESIS_EXAMPLES raises it for a
# longer run by hand.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
VOTE_OPERATIONS = [
    "POST /votes",
    "POST /votes/batch",
    "POST /rust/send_data",
    "POST /rust",
    "POST /insert",
    "POST /",
    "POST /grpc/insert",
    "POST /grpc",
]


@pytest.fixture
def ingest(tmp_path) -> str:
    """A real ingest on free loopback ports, publishing to a topic of its own. Returns its URL."""
    run_id = uuid.uuid4().hex[:12]
    port, ops_port = free_port(), free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GRPC_PORT": str(free_port()),
        "OPS_PORT": str(ops_port),
        "INGEST_ROUTES": "grpc,http",
        "KAFKA_BROKERS": need_env("KAFKA_BROKERS"),
        "KAFKA_TOPIC": f"pytest-schemathesis-{run_id}",
        "KAFKA_TOPIC_PARTITIONS": "1",
        "RUST_LOG": "warn",
    }
    log = tmp_path / "ingest.log"
    proc = _start(binary("bandvote-ingest"), env, log)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{ops_port}/readyz", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def test_ingest_serves_its_openapi_document(ingest):
    reply = requests.get(f"{ingest}/openapi.json", timeout=5)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == json.loads((REPO / "ingest" / "openapi.json").read_text())


def test_answers_outside_the_operations_are_the_documented_error(ingest):
    document = requests.get(f"{ingest}/openapi.json", timeout=5).json()
    check_error_body(document, requests.get(f"{ingest}/no/such/path", timeout=5), 404, "not_found")
    check_error_body(document, requests.get(f"{ingest}/votes", timeout=5), 405, "method_not_allowed")
    check_error_body(document, requests.delete(f"{ingest}/healthz", timeout=5), 405, "method_not_allowed")
    # Over MAX_BODY_BYTES (256 KiB): refused before it is read whole, with the same body.
    big = b'{"name": "' + b"x" * (300 * 1024) + b'"}'
    check_error_body(document, requests.post(f"{ingest}/votes", data=big, timeout=10), 413, "body_too_large")
    chunks = iter([big[:1024], big[1024:]])  # no Content-Length: the limit is met while reading
    reply = requests.post(f"{ingest}/votes/batch", data=chunks, timeout=10)
    check_error_body(document, reply, 413, "body_too_large")


def test_ingest_conforms_to_its_openapi_document(ingest):
    schema = load(f"{ingest}/openapi.json")
    report = run(schema, ingest, MAX_EXAMPLES)
    print(report.summary())
    assert not report.failures, "\n\n".join(report.failures)
    documented = {result.ok().label for result in schema.get_all_operations()}
    assert set(report.requests) == documented, "every operation was called"
    assert all(report.requests[label] > 0 for label in documented), report.summary()
    # Some generated votes were valid and Kafka acknowledged them, on every vote path.
    for label in VOTE_OPERATIONS:
        assert report.statuses[label][200] > 0, f"{label}: no vote accepted\n{report.summary()}"


def test_the_run_fails_on_an_answer_the_document_does_not_list(ingest):
    """The checks are live: with 400 taken out of the document, the invalid votes schemathesis
    sends are reported as undocumented answers."""
    document = requests.get(f"{ingest}/openapi.json", timeout=5).json()
    del document["paths"]["/votes"]["post"]["responses"]["400"]
    report = run(schemathesis.openapi.from_dict(document), ingest, 10, only="POST /votes")
    assert report.requests["POST /votes"] > 0
    assert any("Undocumented status code" in failure for failure in report.failures), report.failures


# What schemathesis found beyond the four checks, now fixed: votes the document allows that one
# route refused and another accepted.
VALID = {"name": "Alux Nahual", "album": "Conquista", "year": 1990, "rank": 9.5}


def test_a_year_written_with_a_zero_fraction_is_accepted(ingest):
    body = '{"name": "Alux Nahual", "album": "Conquista", "year": 1990.0, "rank": 9.5}'
    for path in ("/votes", "/grpc/insert"):
        reply = requests.post(f"{ingest}{path}", data=body, timeout=10)
        assert reply.status_code == 200, (path, reply.text)


def test_a_rank_too_fine_to_write_in_40_decimals_gets_one_answer_on_every_path(ingest):
    answers = {}
    for path in ("/votes", "/grpc/insert"):
        reply = requests.post(f"{ingest}{path}", json={**VALID, "rank": 1e-41}, timeout=10)
        error = reply.json()["error"]
        answers[path] = (reply.status_code, error["code"], [f["field"] for f in error["fields"]])
    assert answers == {path: (400, "invalid_vote", ["rank"]) for path in answers}, answers
