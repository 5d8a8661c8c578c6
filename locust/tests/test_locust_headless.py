"""A headless Locust run (bounded users, votes and time, loopback only) with both HTTP users, the
Wasm route's user and the native gRPC user against a real ingest, the Wasm component under
wasmtime and a consumer: no request may fail, Redis must count exactly the votes Locust saw
accepted, per route, and MongoDB must log exactly as many.

Each user stops after VOTES_PER_USER votes (the locustfile's StopUser), so no request is in flight
when the run ends and the two counts can be compared exactly. Locust's final JSON stats are the
source (its CSV summary is written periodically and can miss the last second)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

USERS = 8  # two of each user class
VOTES_PER_USER = 50
RUN_TIME = "30s"  # an upper bound: Locust quits when the users are done, after about 8 s
HTTP_NAMES = {"/grpc/insert": "grpc", "/rust/send_data": "http", "/wasm/votes": "wasm"}
GRPC_NAME = "bandvote.v1.Votes/Cast"


def test_headless_locust_against_the_local_stack(repo, pipeline, wasm_route, tmp_path):
    env = {
        **os.environ,
        "GRPC_TARGET": pipeline.grpc_target,
        "PYTHONPATH": str(repo / "locust"),
        "VOTES_PER_USER": str(VOTES_PER_USER),
        "WASM_HOST": wasm_route,
    }
    run = subprocess.run(
        [
            sys.executable, "-m", "locust",
            "-f", str(repo / "locust" / "locustfile.py"),
            "--headless", "--users", str(USERS), "--spawn-rate", str(USERS),
            "--run-time", RUN_TIME, "--stop-timeout", "10",
            "--host", pipeline.http_url,
            "--only-summary", "--json", "--loglevel", "WARNING",
            "GrpcInsertUser", "RustSendDataUser", "WasmUser", "GrpcUser",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, f"locust exited {run.returncode}:\n{run.stderr[-4000:]}"
    stats = {entry["name"]: entry for entry in json.loads(run.stdout)}
    for name, entry in stats.items():
        seconds = max(entry["last_request_timestamp"] - entry["start_time"], 1e-9)
        print(f"{name}: {entry['num_requests']} requests, {entry['num_failures']} failures, "
              f"{entry['num_requests'] / seconds:.1f}/s, {entry['total_response_time'] / max(entry['num_requests'], 1):.1f} ms mean")

    succeeded = {}
    for name in [*HTTP_NAMES, GRPC_NAME]:
        assert name in stats, f"Locust made no {name} request: {sorted(stats)}"
        entry = stats[name]
        assert entry["num_failures"] == 0, f"{name}: {entry['num_failures']} failures: {run.stderr[-4000:]}"
        succeeded[name] = entry["num_requests"] - entry["num_failures"]
    assert sorted(stats) == sorted(succeeded), f"unexpected request names: {sorted(stats)}"
    total = sum(succeeded.values())
    assert total == USERS * VOTES_PER_USER, succeeded

    pipeline.wait_for_total(total, timeout=30)
    pipeline.wait_for_logged(total, timeout=30)
    routes = pipeline.redis.hgetall(f"{pipeline.prefix}:votes:route")
    assert int(routes.get("grpc", 0)) == succeeded["/grpc/insert"] + succeeded[GRPC_NAME], routes
    assert int(routes.get("http", 0)) == succeeded["/rust/send_data"], routes
    assert int(routes.get("wasm", 0)) == succeeded["/wasm/votes"], routes
    bands = pipeline.redis.hgetall(f"{pipeline.prefix}:votes:band")
    assert sum(int(v) for v in bands.values()) == total
