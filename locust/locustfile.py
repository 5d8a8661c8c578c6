"""Load for bandvote, in the original contest's style: votes posted as JSON strings
{name, album, year, rank} to the routes behind the ingress, plus native gRPC calls.

Users (all four run unless named on the command line):
- GrpcInsertUser:  POST /grpc/insert, the gRPC route's HTTP front (the original's "grpc" path).
- RustSendDataUser: POST /rust/send_data, the HTTP route (the original's "rust" path).
- GrpcUser: bandvote.v1.Votes/Cast over gRPC (grpcio on gevent) at GRPC_TARGET.
- WasmUser: POST /wasm/votes, the Wasm route (the original's "wasm" path), at WASM_HOST or --host.

Settings (environment):
- VOTES_FILE (default votes.json beside this file) and VOTE_SET (`roster`, default, or `original`).
- GRPC_TARGET: host:port of the gRPC server (default: the --host's name with port 50051).
- GRPC_TLS: `1` to use TLS (the GKE Gateway listens on 443 with a certificate).
- GRPC_CA_FILE: with GRPC_TLS, a PEM file of the roots to trust instead of grpcio's own (the
  Gateway's self-signed certificate of docs/DEPLOY.md step 5, or a private CA).
- GRPC_SERVER_NAME: with GRPC_TLS, the name the certificate must carry when GRPC_TARGET is an
  address (for example the Gateway's IP before DNS points at it).
- WASM_HOST: base URL of the Wasm route when it is not behind --host (locally: wasmtime serve).
- VOTES_PER_USER: each simulated user stops after this many votes (default 0: no limit), and a
  local run quits once every user is done: it ends with no request in flight, so its counts
  compare exactly with Redis.
- WAIT_TIME: seconds each user waits between votes, `min,max` (default `0.05,0.2`); `0` sends as
  fast as answers come back (to find Locust's own ceiling).

Every request counts as a failure unless the reply says the vote was accepted, so after a run
Locust's successes must equal what the consumer counted in Redis.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from urllib.parse import urlparse

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import FastHttpUser, User, between, constant, events, task
from locust.runners import LocalRunner
from locust.exception import StopUser

import grpc_stubs

# grpcio must cooperate with Locust's gevent loop before any channel exists.
grpc_gevent.init_gevent()

HERE = Path(__file__).resolve().parent
CANDIDATES = json.loads(Path(os.environ.get("VOTES_FILE", HERE / "votes.json")).read_text())[
    os.environ.get("VOTE_SET", "roster")
]
VOTES_PER_USER = int(os.environ.get("VOTES_PER_USER", "0"))


def user_wait_time():
    """The wait between a user's votes, from WAIT_TIME (`min,max` seconds, or one number)."""
    setting = os.environ.get("WAIT_TIME", "0.05,0.2")
    try:
        bounds = [float(part) for part in setting.split(",")]
    except ValueError:
        raise SystemExit(f"WAIT_TIME must be seconds, `min,max` or one number, not {setting!r}") from None
    if len(bounds) == 1:
        return constant(bounds[0])
    if len(bounds) == 2 and 0 <= bounds[0] <= bounds[1]:
        return between(*bounds)
    raise SystemExit(f"WAIT_TIME must be `min,max` with 0 <= min <= max, not {setting!r}")


def next_vote(user: User) -> dict[str, str]:
    """The user's next vote, or StopUser once it has sent VOTES_PER_USER."""
    user.votes_sent = getattr(user, "votes_sent", 0) + 1
    if VOTES_PER_USER and user.votes_sent > VOTES_PER_USER:
        raise StopUser()
    return random_vote()


_environment = None


@events.init.add_listener
def remember_environment(environment, **_):
    global _environment
    _environment = environment


@events.spawning_complete.add_listener
def quit_when_every_user_is_done(user_count, **_):
    """With VOTES_PER_USER, a local run ends as soon as the last user has sent its votes."""
    runner = _environment.runner if _environment else None
    if not VOTES_PER_USER or not isinstance(runner, LocalRunner):
        return

    def watch():
        while runner.user_count > 0:
            gevent.sleep(0.2)
        runner.quit()

    gevent.spawn(watch)


def random_vote() -> dict[str, str]:
    """A vote as the original clients sent it: four strings."""
    band = random.choice(CANDIDATES)
    album = random.choice(band["albums"])
    rank = random.choice([f"{random.randint(0, 99)}.{random.randint(0, 9)}", str(random.randint(1, 100))])
    return {"name": band["name"], "album": album["album"], "year": album["year"], "rank": rank}


class OriginalHttpUser(FastHttpUser):
    abstract = True
    wait_time = user_wait_time()
    path = "/"

    def post_vote(self):
        with self.client.post(self.path, json=next_vote(self), name=self.path, catch_response=True) as reply:
            try:
                body = reply.json()
            except Exception:
                reply.failure(f"HTTP {reply.status_code}: the reply is not JSON")
                return
            if reply.status_code == 200 and body.get("status") == "accepted":
                reply.success()
            else:
                reply.failure(f"HTTP {reply.status_code}: {body}")


class GrpcInsertUser(OriginalHttpUser):
    path = "/grpc/insert"

    @task
    def vote(self):
        self.post_vote()


class RustSendDataUser(OriginalHttpUser):
    path = "/rust/send_data"

    @task
    def vote(self):
        self.post_vote()


class WasmUser(OriginalHttpUser):
    host = os.environ.get("WASM_HOST") or None
    path = "/wasm/votes"

    @task
    def vote(self):
        self.post_vote()


def grpc_channel(target: str) -> grpc.Channel:
    """A channel to `target`, with TLS when GRPC_TLS=1 (roots from GRPC_CA_FILE when set)."""
    if os.environ.get("GRPC_TLS") != "1":
        return grpc.insecure_channel(target)
    roots = None
    if ca_file := os.environ.get("GRPC_CA_FILE"):
        with open(ca_file, "rb") as file:
            roots = file.read()
    options = []
    if server_name := os.environ.get("GRPC_SERVER_NAME"):
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots), options=options)


class GrpcUser(User):
    """Native gRPC: one channel per simulated user, unary Cast per vote."""

    wait_time = user_wait_time()
    name = "bandvote.v1.Votes/Cast"

    def on_start(self):
        self.pb2, pb2_grpc = grpc_stubs.load()
        target = os.environ.get("GRPC_TARGET") or f"{urlparse(self.host or 'http://127.0.0.1').hostname}:50051"
        self.channel = grpc_channel(target)
        self.stub = pb2_grpc.VotesStub(self.channel)

    def on_stop(self):
        self.channel.close()

    @task
    def cast(self):
        request = self.pb2.Vote(**next_vote(self))
        started = time.perf_counter()
        exception, length = None, 0
        try:
            reply = self.stub.Cast(request, timeout=10)
            length = reply.ByteSize()
        except grpc.RpcError as error:
            exception = error
        events_fire(self, started, length, exception)


def events_fire(user: User, started: float, length: int, exception):
    user.environment.events.request.fire(
        request_type="grpc",
        name=GrpcUser.name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=length,
        exception=exception,
        context={},
    )

