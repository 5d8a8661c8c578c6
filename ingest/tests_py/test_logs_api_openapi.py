"""schemathesis against a real logs API (logs-api/openapi.json, as it serves it at GET /openapi.json)
reading a vote log that the real pipeline wrote: votes go in through ingest's three routes, Kafka
and the consumer, into a MongoDB database of this test's own."""

from __future__ import annotations

import json
import os

import pytest
import requests

from conftest import REPO, _start, _stop, _wait_ready, binary, free_port, need_env
from openapi_fuzz import check_error_body, load, run

# Examples per operation and mode (positive and negative); SCHEMATHESIS_EXAMPLES raises it.
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))


def seed_votes(http_url: str) -> list[str]:
    """Casts votes over the HTTP, gRPC and Wasm routes' HTTP endpoints; returns their ids."""
    ids = []
    for n, path in enumerate(["/votes", "/grpc/insert", "/wasm/votes", "/votes", "/grpc/insert", "/votes"]):
        vote = {"name": f"Banda {n % 3}", "album": f"Disco {n % 2}", "year": 1990 + n, "rank": 5 + n / 4}
        if n % 2 == 0:
            vote["voter_id"] = f"voter-{n}"
        reply = requests.post(f"{http_url}{path}", json=vote, timeout=10)
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["vote_id"])
    return ids


@pytest.fixture
def logs_api(pipeline, tmp_path):
    """The logs API on the pipeline's database, once the seeded votes are in it. Yields its URL
    and the ids of the votes."""
    ids = seed_votes(pipeline.http_url)
    pipeline.wait_for_logged(len(ids))
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MONGODB_URI": need_env("MONGODB_URI"),
        "MONGODB_DATABASE": pipeline.database,
        # Every filter schemathesis makes up gets a tally refreshed in the background; at the
        # default interval, and waiting for a first tally up to just under its 5 s deadline.
        "TALLY_WAIT": "4s",
        "RUST_LOG": "warn",
    }
    log = tmp_path / "logs-api.log"
    proc = _start(binary("bandvote-logs-api"), env, log)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{port}/readyz", log)
        yield f"http://127.0.0.1:{port}", ids
    finally:
        _stop(proc)


def test_logs_api_conforms_to_its_openapi_document(logs_api):
    url, ids = logs_api
    served = requests.get(f"{url}/openapi.json", timeout=5)
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json() == json.loads((REPO / "logs-api" / "openapi.json").read_text())

    schema = load(f"{url}/openapi.json")
    report = run(schema, url, MAX_EXAMPLES)
    # Random ids are almost never in the log: ask for the seeded ones too, so the 200 answer of
    # GET /votes/{vote_id} is checked against its schema.
    for vote_id in ids[:2]:
        run(schema, url, 3, report, path_parameters={"vote_id": vote_id}, only="GET /votes/{vote_id}")
    print(report.summary())
    assert not report.failures, "\n\n".join(report.failures)
    documented = {result.ok().label for result in schema.get_all_operations()}
    assert set(report.requests) == documented, "every operation was called"
    assert all(report.requests[label] > 0 for label in documented), report.summary()
    for label in ["GET /votes", "GET /votes/{vote_id}", "GET /tallies"]:
        assert report.statuses[label][200] > 0, f"{label}: never answered 200\n{report.summary()}"

    document = served.json()
    check_error_body(document, requests.get(f"{url}/no/such/path", timeout=5), 404, "not_found")
    check_error_body(document, requests.post(f"{url}/votes", timeout=5), 405, "method_not_allowed")
