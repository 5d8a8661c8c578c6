"""The contest, the counting settings and the Redis user `ingest`, as the rendered manifests set them.

- Every container that casts votes (the ingest image: ingest-grpc, ingest-http, ingest-wasm's
  producer) and the consumer read CONTEST_FILE from a read-only mount of their namespace's
  `contest` ConfigMap and take REDIS_KEY_PREFIX and RESEND_WINDOW from `counting`; both
  namespaces get the same data, a new contest file or counting setting rolls every one of them,
  and the file is one `bandvote-ingest` starts with (the real binary reads it).
- Ingest reaches Redis as the user `ingest`, with the password of the `ingest-redis` Secret, never
  the default user's; the ACL's key pattern is the counting prefix.
- Redis's users come from the StatefulSet's shell script, which writes them (passwords hashed) to
  an ACL file on an in-memory volume and becomes redis-server: here it runs with the Secret's
  variables and a stand-in redis-server, and no password is in redis-server's arguments, its
  environment or the file.
- The ACL for real: a redis-server started as that script starts it, with the file it wrote. As
  `ingest` the check script of ingest/src/standing.rs (read from that file) answers, and every
  write, every key outside the prefix and every dangerous command is refused; as `grafana` every
  query of the dashboard answers and nothing else does; the default user still writes; and a real
  `bandvote-ingest` connected as `ingest` answers 409 from what the default user wrote.

The redis-server is the one `dev/services` runs (PATH), or BANDVOTE_REDIS_SERVER. A Redis older
than the image's (Debian 12 has 7.0) refuses a rule for a command it does not have (CLIENT SETINFO
is 7.2's): such a rule, and only after this Redis confirms it lacks the command, is left out here,
with a warning in the test summary.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time
import urllib.parse
import uuid
import warnings
from pathlib import Path

import pytest
import redis
import requests
import yaml

from conftest import _start, _stop, _wait_ready, binary, free_port, need_env
from exposure import env, is_ingest
from k8s_model import containers, pod_template, render, selects

OVERLAYS = ["k8s/base", "k8s/overlays/gke"]
CONTEST_PATH = "/etc/bandvote/contest.json"
COUNTING_KEYS = {"REDIS_KEY_PREFIX", "RESEND_WINDOW"}
# The containers that read the contest: (Deployment, container).
READERS = {("ingest-grpc", "ingest"), ("ingest-http", "ingest"), ("ingest-wasm", "producer"), ("consumer", "consumer")}
REDIS_HOST = "redis.datastores.svc.cluster.local:6379"


@pytest.fixture(scope="module")
def rendered(kustomize, repo, tmp_path_factory) -> dict[str, list[dict]]:
    work = tmp_path_factory.mktemp("contest")
    return {k: render(kustomize, repo, work, k) for k in OVERLAYS}


@pytest.fixture(scope="module")
def gke(rendered) -> list[dict]:
    return rendered["k8s/overlays/gke"]


def generated(objects, kind, namespace, name) -> dict:
    """The object a generator made as `name` (kustomize appends a content hash)."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"].get("namespace") == namespace
        and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"{kind} {namespace}/{name}: found {[o['metadata']['name'] for o in found]}"
    return found[0]


def workload(objects, kind, name) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def readers(objects) -> list[tuple[dict, dict]]:
    """(workload, container) for every container running the ingest or the consumer image."""
    found = []
    for obj in objects:
        template = pod_template(obj)
        for c in containers(template["spec"]) if template else []:
            if is_ingest(c) or c["image"].split(":")[0].split("/")[-1] == "consumer":
                found.append((obj, c))
    assert {(w["metadata"]["name"], c["name"]) for w, c in found} == READERS
    return found


def env_value(c, name) -> dict:
    entries = [e for e in c.get("env", []) if e["name"] == name]
    assert len(entries) == 1, f"{c['name']}: {name} is set {len(entries)} times"
    return entries[0]


def secret_value(objects, namespace, name, key) -> str:
    return base64.b64decode(generated(objects, "Secret", namespace, name)["data"][key]).decode()


def redis_container(objects) -> dict:
    pod = workload(objects, "StatefulSet", "redis")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "redis")


def dashboard_queries():
    """grafana/tests/dashboard_queries.py: the commands Grafana's Redis data source sends for the
    dashboard's targets."""
    if "dashboard_queries" not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "grafana/tests/dashboard_queries.py"
        spec = importlib.util.spec_from_file_location("dashboard_queries", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["dashboard_queries"] = module
        spec.loader.exec_module(module)
    return sys.modules["dashboard_queries"]


def acl_users(text: str) -> dict[str, list[str]]:
    """user name -> its rules, from an ACL file (`user <name> <rule>...` lines)."""
    users = {}
    for line in text.splitlines():
        if line.strip():
            keyword, name, *rules = line.split()
            assert keyword == "user" and name not in users, line
            users[name] = rules
    return users


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass
class RedisStart:
    """What the Redis container's script did, run here as the pod runs it."""

    passwords: dict[str, str]  # the Secret's variables
    mounts: dict[str, Path]  # the container's mount paths -> folders here
    argv: list[str]  # what redis-server was started with
    environ: str  # redis-server's environment
    acl_path: Path  # the ACL file it wrote
    calls: str  # the arguments of every other program the script ran

    @property
    def users(self) -> dict[str, list[str]]:
        return acl_users(self.acl_path.read_text())


def run_redis_script(container: dict, root: Path) -> RedisStart:
    """Runs the Redis container's `sh -c` script with random passwords in the Secret's variables
    and its volumes as folders under `root`; a stand-in redis-server records its arguments and
    environment instead of serving."""
    assert container["command"] == ["sh", "-c"] and len(container["args"]) == 1, container["command"]
    script = container["args"][0]
    variables = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    passwords = {name: secrets.token_hex(24) for name in variables}
    mounts = {m["mountPath"]: root / m["name"] for m in container["volumeMounts"]}
    for path, folder in sorted(mounts.items(), key=lambda item: -len(item[0])):
        folder.mkdir(parents=True, exist_ok=True)
        script = script.replace(path + "/", f"{folder}/")
    record = root / "bin"
    record.mkdir()
    stand_in = record / "redis-server"
    stand_in.write_text(f'#!/bin/sh\nprintf \'%s\\n\' "$@" >"{record}/argv"\nenv >"{record}/environ"\n')
    stand_in.chmod(0o755)
    # Every other program the script may start records its arguments, then runs.
    for name in ("cat", "cut", "sha256sum", "printf", "echo", "tr", "sed", "awk", "head", "tee"):
        if real := shutil.which(name):
            wrapper = record / name
            wrapper.write_text(f'#!/bin/sh\nprintf \'%s\\n\' "$@" >>"{record}/calls"\nexec {real} "$@"\n')
            wrapper.chmod(0o755)
    env = {"PATH": f"{record}:{os.environ['PATH']}", "HOME": str(root), **passwords}
    run = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, f"the Redis container's script failed:\n{run.stderr}"
    argv = (record / "argv").read_text().splitlines()
    acl_path = Path(argv[argv.index("--aclfile") + 1])
    calls = (record / "calls").read_text() if (record / "calls").exists() else ""
    return RedisStart(passwords, mounts, argv, (record / "environ").read_text(), acl_path, calls)


@pytest.fixture(scope="module")
def redis_start(gke, tmp_path_factory) -> RedisStart:
    return run_redis_script(redis_container(gke), tmp_path_factory.mktemp("redis-start"))


def properties(text: str) -> dict[str, str]:
    return dict(l.split("=", 1) for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#"))


def ingest_env(**settings) -> dict[str, str]:
    """ingest's environment on loopback: free ports, the local Kafka, a topic of its own, no Redis."""
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_KEY_PREFIX", "RESEND_WINDOW", "CONTEST_FILE")}
    return {
        **base,
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "OPS_PORT": str(free_port()),
        "INGEST_ROUTES": "http",
        "KAFKA_BROKERS": need_env("KAFKA_BROKERS"),
        "KAFKA_TOPIC": f"pytest-contest-{uuid.uuid4().hex[:12]}",
        "KAFKA_TOPIC_PARTITIONS": "6",
        "RUST_LOG": "warn",
        **settings,
    }


@contextlib.contextmanager
def running_ingest(folder: Path, environment: dict[str, str], ready_path: str):
    """A bandvote-ingest until the block ends, from when its ops port answers `ready_path`; yields
    its HTTP route's URL and its ops port's."""
    log = folder / "ingest.log"
    proc = _start(binary("bandvote-ingest"), environment, log)
    ops = f"http://127.0.0.1:{environment['OPS_PORT']}"
    try:
        _wait_ready(proc, f"{ops}{ready_path}", log)
        yield f"http://127.0.0.1:{environment['PORT']}", ops
    finally:
        _stop(proc)


# --- the manifests -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reader_mounts_the_contest_and_takes_counting_from_its_namespace(rendered, overlay):
    objects = rendered[overlay]
    for obj, c in readers(objects):
        ns, where = obj["metadata"]["namespace"], f"{obj['metadata']['name']}/{c['name']}"
        contest = generated(objects, "ConfigMap", ns, "contest")["metadata"]["name"]
        counting = generated(objects, "ConfigMap", ns, "counting")["metadata"]["name"]

        path = env_value(c, "CONTEST_FILE")["value"]
        assert path == CONTEST_PATH, where
        volumes = {v["name"]: v for v in obj["spec"]["template"]["spec"].get("volumes", [])}
        mounted = []
        for mount in c.get("volumeMounts", []):
            source = volumes[mount["name"]].get("configMap")
            if source is None or source["name"] != contest:
                continue
            assert mount.get("readOnly") is True, f"{where}: the contest is mounted writable"
            assert "subPath" not in mount, f"{where}: a subPath mount would not follow the ConfigMap"
            mounted += [f"{mount['mountPath']}/{item['path']}" for item in source["items"] if item["key"] == "contest.json"]
        assert mounted == [path], f"{where}: CONTEST_FILE {path} is not the contest ConfigMap's file ({mounted})"

        sources = [s["configMapRef"]["name"] for s in c.get("envFrom", []) if "configMapRef" in s]
        assert counting in sources, f"{where}: no envFrom {counting}"
        # `env` wins over `envFrom`, and a later envFrom over an earlier one: nothing may set them again.
        assert not COUNTING_KEYS & {e["name"] for e in c.get("env", [])}, f"{where}: sets a counting value itself"
        for other in sources:
            if other != counting:
                data = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == other)["data"]
                assert not COUNTING_KEYS & set(data), f"{where}: {other} sets a counting value too"
        counted = generated(objects, "ConfigMap", ns, "counting")["data"]
        assert {k: env(objects, ns, c)[k] for k in COUNTING_KEYS} == counted


def test_both_namespaces_get_the_same_contest_and_counting(gke, repo):
    contests = [generated(gke, "ConfigMap", ns, "contest")["data"] for ns in ("ingest", "consumer")]
    assert contests[0] == contests[1] == {"contest.json": (repo / "k8s/base/contest.json").read_text()}
    contest = json.loads(contests[0]["contest.json"])
    assert set(contest) <= {"name", "bands", "voting", "voters"}
    assert contest["bands"], "the contest names its bands"
    for band in contest["bands"]:
        assert band["name"] and band["albums"] and all(isinstance(a, str) and a for a in band["albums"]), band

    counting = [generated(gke, "ConfigMap", ns, "counting")["data"] for ns in ("ingest", "consumer")]
    assert counting[0] == counting[1] == properties((repo / "k8s/base/counting.properties").read_text())
    assert set(counting[0]) == COUNTING_KEYS
    assert re.fullmatch(r"[A-Za-z0-9_-]+", counting[0]["REDIS_KEY_PREFIX"])
    assert re.fullmatch(r"\d+(ms|s|m|h)?", counting[0]["RESEND_WINDOW"])


@pytest.mark.parametrize(
    "file, change",
    [
        ("contest.json", lambda text: text.replace('"bands"', '"voters": {"max_votes": 3},\n  "bands"', 1)),
        ("counting.properties", lambda text: text.replace("RESEND_WINDOW=24h", "RESEND_WINDOW=12h")),
    ],
)
def test_a_new_contest_or_counting_setting_rolls_every_reader(kustomize, repo, tmp_path, gke, file, change):
    """The generated name carries a hash of the data, so a change renames the ConfigMap and every
    pod template that names it changes: Kubernetes rolls those pods, and no other."""
    copy_root = tmp_path / "repo"
    for folder in ("k8s", "grafana"):
        shutil.copytree(repo / folder, copy_root / folder, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.env"))
    target = copy_root / "k8s/base" / file
    before = target.read_text()
    target.write_text(change(before))
    assert target.read_text() != before, "the change applies"
    changed = render(kustomize, copy_root, tmp_path / "work", "k8s/overlays/gke")
    name = file.split(".")[0]
    for ns in ("ingest", "consumer"):
        old, new = (generated(objs, "ConfigMap", ns, name)["metadata"]["name"] for objs in (gke, changed))
        assert old != new, f"{ns}: the {name} ConfigMap keeps its name"
    rolled = {
        o["metadata"]["name"]
        for o in changed
        if pod_template(o) and pod_template(o) != pod_template(workload(gke, o["kind"], o["metadata"]["name"]))
    }
    assert rolled == {w for w, _ in READERS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingest_reads_redis_as_the_user_ingest_with_its_own_secret(rendered, overlay):
    objects = rendered[overlay]
    for obj, c in readers(objects):
        if not is_ingest(c):
            continue
        where = f"{obj['metadata']['name']}/{c['name']}"
        url = urllib.parse.urlsplit(env_value(c, "REDIS_URL")["value"])
        assert (url.scheme, url.username, url.password) == ("redis", "ingest", "$(REDIS_INGEST_PASSWORD)"), where
        assert f"{url.hostname}:{url.port}" == REDIS_HOST and url.path in ("", "/0"), where
        ref = env_value(c, "REDIS_INGEST_PASSWORD")["valueFrom"]["secretKeyRef"]
        assert ref == {"name": generated(objects, "Secret", "ingest", "ingest-redis")["metadata"]["name"], "key": "REDIS_INGEST_PASSWORD"}
        names = [e["name"] for e in c["env"]]
        assert names.index("REDIS_INGEST_PASSWORD") < names.index("REDIS_URL"), f"{where}: defined after its use"
        refs = [e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        assert refs == ["REDIS_INGEST_PASSWORD"] and not any("secretRef" in s for s in c.get("envFrom", [])), where
    # The ingest namespace holds no other Redis password, and the user's password is its own.
    ingest_secrets = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["namespace"] == "ingest"]
    redis_secrets = [o for o in ingest_secrets if any(k.startswith("REDIS") for k in o["data"])]
    assert [set(o["data"]) for o in redis_secrets] == [{"REDIS_INGEST_PASSWORD"}]
    ingest = secret_value(objects, "ingest", "ingest-redis", "REDIS_INGEST_PASSWORD")
    assert ingest == secret_value(objects, "datastores", "redis-auth", "REDIS_INGEST_PASSWORD")
    assert ingest != secret_value(objects, "datastores", "redis-auth", "REDIS_PASSWORD")


def test_the_ingest_users_rules_name_the_counting_prefix_and_grant_no_more(gke, redis_start):
    redis_c = redis_container(gke)
    # redis-server reads the ConfigMap's redis.conf (mounted at /etc/redis) and the ACL file.
    assert redis_start.argv[0] == f"{redis_start.mounts['/etc/redis']}/redis.conf"
    assert set(redis_start.users) == {"default", "ingest", "grafana"}
    rules = redis_start.users["ingest"]
    assert rules[0] == "on"
    password = redis_start.passwords["REDIS_INGEST_PASSWORD"]
    assert [r for r in rules if r[:1] in ">#<!" or r == "nopass"] == [f"#{sha256(password)}"], "one password, from the Secret"
    ref = env_value(redis_c, "REDIS_INGEST_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert ref["name"].startswith("redis-auth-") and ref["key"] == "REDIS_INGEST_PASSWORD"
    prefix = generated(gke, "ConfigMap", "ingest", "counting")["data"]["REDIS_KEY_PREFIX"]
    assert [r for r in rules if r[:1] in "~%" or r in ("allkeys", "resetkeys")] == [f"~{prefix}:*"]
    granted = {"on", "resetchannels", f"#{sha256(password)}", f"~{prefix}:*"}
    for rule in rules:
        assert rule in granted or rule[:1] in "+-", f"unexpected rule {rule}"
        assert rule not in ("+@all", "allcommands", "nopass", "allchannels", "+@write", "+@admin", "+@dangerous", "+eval")
    assert rules.index("-@all") < rules.index("+@read") < rules.index("-@dangerous"), "the rules apply left to right"
    # CLIENT SETINFO, which the redis crate sends on connecting, exists from Redis 7.2.
    version = re.match(r"redis:(\d+)\.(\d+)", redis_c["image"])
    assert version and (int(version[1]), int(version[2])) >= (7, 2), redis_c["image"]


def test_the_grafana_user_reads_the_counting_prefix_and_nothing_more(gke, redis_start):
    rules = redis_start.users["grafana"]
    password = redis_start.passwords["REDIS_GRAFANA_PASSWORD"]
    prefix = generated(gke, "ConfigMap", "ingest", "counting")["data"]["REDIS_KEY_PREFIX"]
    assert rules == ["on", f"#{sha256(password)}", "resetchannels", f"~{prefix}:*", "-@all", "+@read", "-@dangerous", "+ping"]
    # The data source logs in as that user with that password (grafana/provisioning).
    source = yaml.safe_load(generated(gke, "ConfigMap", "monitoring", "grafana-datasources")["data"]["redis.yaml"])["datasources"][0]
    assert (source["jsonData"]["acl"], source["jsonData"]["user"]) == (True, "grafana")
    assert source["secureJsonData"]["password"] == "$REDIS_GRAFANA_PASSWORD"
    # The dashboard's prefix variable defaults to the one prefix the user may read.
    dashboard = dashboard_queries().load(Path(__file__).resolve().parents[2] / "grafana/dashboards/bandvote-votes.json")
    assert dashboard_queries().variables(dashboard)["prefix"] == prefix


def test_no_redis_password_is_an_argument_an_environment_variable_or_in_the_acl_file(redis_start):
    """/proc/<pid>/cmdline is readable by every process of the pod: Redis's passwords reach it
    only as SHA-256 hashes in a file that only its user can read, on an in-memory volume."""
    assert redis_start.argv[1:] == ["--aclfile", str(redis_start.acl_path)]
    assert redis_start.acl_path.parent == redis_start.mounts["/run/redis"]
    text = redis_start.acl_path.read_text()
    for name, password in redis_start.passwords.items():
        assert not any(password in a for a in redis_start.argv), f"{name} is an argument of redis-server"
        assert password not in redis_start.calls, f"{name} is an argument of a program the script runs"
        assert password not in redis_start.environ, f"{name} is in redis-server's environment"
        assert password not in text and sha256(password) in text, f"{name} is not hashed in the ACL file"
    assert stat.S_IMODE(redis_start.acl_path.stat().st_mode) == 0o600
    assert redis_start.calls, "the stand-ins recorded none of the script's programs"
    default = redis_start.users["default"]
    assert default == ["on", f"#{sha256(redis_start.passwords['REDIS_PASSWORD'])}", "~*", "&*", "+@all"]


def test_a_script_that_leaks_a_password_is_caught(gke, tmp_path):
    """The same recording catches a password in a program's arguments or left in redis-server's
    environment."""
    container = copy.deepcopy(redis_container(gke))
    script = container["args"][0]
    assert "unset REDIS_PASSWORD " in script and "printf '%s' \"$1\" |" in script
    container["args"] = [
        script.replace("unset REDIS_PASSWORD ", "unset ").replace("printf '%s' \"$1\" |", "head -c0 \"$1\" 2>/dev/null; printf '%s' \"$1\" |")
    ]
    leaky = run_redis_script(container, tmp_path)
    assert leaky.passwords["REDIS_INGEST_PASSWORD"] in leaky.calls
    assert leaky.passwords["REDIS_PASSWORD"] in leaky.environ


def test_every_ingest_route_may_reach_redis_and_redis_admits_it(gke):
    policies = [o for o in gke if o["kind"] == "NetworkPolicy"]
    ingest_pods = [t for o, t in ((o, pod_template(o)) for o in gke) if t and o["metadata"]["namespace"] == "ingest"]
    redis_pod = pod_template(workload(gke, "StatefulSet", "redis"))
    redis_port = {"protocol": "TCP", "port": 6379}
    assert len(ingest_pods) == 3

    def admits(rule, namespace, labels):
        return any(
            selects(peer.get("namespaceSelector", {}), {"kubernetes.io/metadata.name": namespace})
            and selects(peer.get("podSelector", {}), labels)
            for peer in rule.get("to", rule.get("from", []))
        )

    for template in ingest_pods:
        labels = template["metadata"]["labels"]
        out = [
            rule
            for p in policies
            if p["metadata"]["namespace"] == "ingest" and selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("egress", [])
            if redis_port in rule.get("ports", [])
        ]
        assert any(admits(rule, "datastores", redis_pod["metadata"]["labels"]) for rule in out), labels
        into = [
            rule
            for p in policies
            if p["metadata"]["namespace"] == "datastores" and selects(p["spec"]["podSelector"], redis_pod["metadata"]["labels"])
            for rule in p["spec"].get("ingress", [])
            if redis_port in rule.get("ports", [])
        ]
        assert any(admits(rule, "ingest", labels) for rule in into), labels


def test_ingest_starts_with_the_contest_file_and_applies_it(gke, tmp_path):
    """The file as mounted is one `bandvote-ingest --contest-file` reads (it refuses to start with a
    file it cannot read as a contest, as the broken copy shows); the roster is then in force."""
    text = generated(gke, "ConfigMap", "ingest", "contest")["data"]["contest.json"]
    broken = json.loads(text)
    broken["voting"] = {"opens": "2026-12-05T23:00:00Z", "closes": "2026-12-05T20:00:00Z"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    refused = subprocess.run(
        [binary("bandvote-ingest"), "--contest-file", str(tmp_path / "broken.json")],
        env=ingest_env(), capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode != 0 and "voting.closes" in refused.stderr, refused.stderr

    (tmp_path / "contest.json").write_text(text)
    settings = ingest_env(CONTEST_FILE=str(tmp_path / "contest.json"), KAFKA_CREATE_TOPICS="false")
    with running_ingest(tmp_path, settings, "/healthz") as (url, _):
        band = json.loads(text)["bands"][0]
        vote = {"name": "Not A Band", "album": band["albums"][0], "year": "1990", "rank": "9"}
        answer = requests.post(f"{url}/votes", json=vote, timeout=10)
        assert answer.status_code == 400 and "is not a band in this contest" in answer.json()["error"]["message"], answer.text


# --- the ACL on a real Redis ---------------------------------------------------------------------


class AclRedis:
    """A redis-server started as the StatefulSet starts it, and clients for its three users."""

    def __init__(self, port: int, passwords: dict[str, str], prefix: str, left_out: list[str]):
        self.port, self.passwords, self.prefix, self.left_out = port, passwords, prefix, left_out
        self.default = redis.Redis(port=port, password=passwords["REDIS_PASSWORD"])
        self.ingest = redis.Redis(port=port, username="ingest", password=passwords["REDIS_INGEST_PASSWORD"])
        self.grafana = redis.Redis(port=port, username="grafana", password=passwords["REDIS_GRAFANA_PASSWORD"])

    @property
    def ingest_url(self) -> str:
        return f"redis://ingest:{self.passwords['REDIS_INGEST_PASSWORD']}@127.0.0.1:{self.port}"


def _launch(server: str, argv: list[str], log: Path) -> subprocess.Popen | None:
    """Starts redis-server; None if it exits at start (its log says why)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, *argv], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if "Ready to accept connections" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{server} did not start:\n{log.read_text()[-2000:]}")


def _lacks_command(server: str, command: str, tmp: Path) -> bool:
    """Whether this redis-server has no such command (or `container|subcommand`)."""
    port = free_port()
    proc = _launch(server, ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)], tmp / "probe.log")
    assert proc, (tmp / "probe.log").read_text()
    try:
        client = redis.Redis(port=port)
        client.set_response_callback("COMMAND", lambda response, **_: response)
        return client.execute_command("COMMAND", "INFO", command) == [None]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


UNKNOWN_RULE = re.compile(r"ACL errors: (?P<file>\S+):(?P<line>\d+): Error in applying operation '(?P<rule>[+-](?P<command>[a-z|_-]+))': Unknown command")


@pytest.fixture(scope="module")
def acl_redis(gke, redis_start, tmp_path_factory):
    """Redis as the StatefulSet starts it: its redis.conf (from the ConfigMap) and the arguments and
    ACL file of the container's script, on a free loopback port and a scratch folder."""
    tmp = tmp_path_factory.mktemp("acl-redis")
    server = os.environ.get("BANDVOTE_REDIS_SERVER") or shutil.which("redis-server")
    if not server:
        pytest.fail("redis-server not found: run `dev/services install` (dev/pytest starts the local services)")
    # Redis changes into `dir` as it reads the file, so the data folder is replaced there.
    conf = Path(redis_start.argv[0])
    text = generated(gke, "ConfigMap", "datastores", "redis-config")["data"]["redis.conf"]
    conf.write_text(re.sub(r"^dir .*$", f"dir {tmp}", text, count=1, flags=re.M))
    port = free_port()
    local = ["--bind", "127.0.0.1", "--port", str(port), "--appendonly", "no", "--save", "", "--maxmemory", "64mb"]
    left_out = []
    while (proc := _launch(server, [*redis_start.argv, *local], tmp / "redis.log")) is None:
        log = (tmp / "redis.log").read_text(errors="replace")
        unknown = UNKNOWN_RULE.search(log)
        assert unknown and _lacks_command(server, unknown["command"], tmp), f"Redis refused its ACL file:\n{log[-2000:]}"
        lines = redis_start.acl_path.read_text().splitlines()
        number = int(unknown["line"]) - 1
        lines[number] = " ".join(r for r in lines[number].split() if r != unknown["rule"])
        redis_start.acl_path.write_text("\n".join(lines) + "\n")
        left_out.append(unknown["rule"])
        version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout.split()[2].removeprefix("v=")
        warnings.warn(f"redis-server {version} has no {unknown['command']}: the rule {unknown['rule']} is left out here")
    prefix = generated(gke, "ConfigMap", "ingest", "counting")["data"]["REDIS_KEY_PREFIX"]
    acl = AclRedis(port, redis_start.passwords, prefix, left_out)
    try:
        yield acl
    finally:
        for client in (acl.default, acl.ingest, acl.grafana):
            client.close()
        proc.terminate()
        proc.wait(timeout=20)


def check_script(repo: Path) -> str:
    """The script ingest/src/standing.rs runs for its early check, as that file has it."""
    source = (repo / "ingest/src/standing.rs").read_text()
    found = re.search(r'const CHECK_PARTITION: &str = r(#*)"(.*?)"\1;', source, re.S)
    assert found, "ingest/src/standing.rs has no CHECK_PARTITION script"
    return found[2]


def test_the_ingest_user_runs_ingests_check_and_reads_what_the_default_user_wrote(acl_redis, repo):
    script, prefix = check_script(repo), acl_redis.prefix
    assert script.startswith("#!lua flags=no-writes\n")
    # The keys of partition 3 of topic `votes` (domain/src/names.rs): the voters' counts, and the
    # re-send memory of generations 4 to 8; the default user writes them as the consumer would.
    voters = f"{prefix}:{{votes/3}}:voters"
    keys = [voters] + [f"{prefix}:{{votes/3}}:resend:{g}" for g in range(4, 9)]
    acl_redis.default.hset(voters, mapping={"ana": 2, "ana|Alux Nahual": 1})
    acl_redis.default.hset(keys[3], b"digest-of-a-vote", b"C" + bytes(8))
    acl_redis.default.script_flush()
    argv = [2, b"digest-of-a-vote", "ana", "Alux Nahual", b"another-digest", "bob", "Alux Nahual"]
    sha = hashlib.sha1(script.encode()).hexdigest()
    # The redis crate's Script::invoke_async: EVALSHA, and on NOSCRIPT, SCRIPT LOAD and EVALSHA again.
    with pytest.raises(redis.exceptions.NoScriptError):
        acl_redis.ingest.evalsha(sha, len(keys), *keys, *argv)
    assert acl_redis.ingest.script_load(script) == sha
    answer = acl_redis.ingest.evalsha(sha, len(keys), *keys, *argv)
    assert answer == [b"C" + bytes(8), 2, 1, None, 0, 0]
    assert acl_redis.ingest.execute_command("PING") is True


REFUSED = {
    "HSET": lambda r, p: r.hset(f"{p}:votes:band", "Alux Nahual", 1),
    "HINCRBY": lambda r, p: r.hincrby(f"{p}:{{votes/0}}:voters", "ana", -5),
    "SET": lambda r, p: r.set(f"{p}:votes:total", 0),
    "DEL": lambda r, p: r.delete(f"{p}:leaderboard"),
    "EXPIRE": lambda r, p: r.expire(f"{p}:votes:total", 1),
    "EVAL of a writing script": lambda r, p: r.eval("return redis.call('SET', KEYS[1], '1')", 1, f"{p}:votes:total"),
    "EVAL of a reading script": lambda r, p: r.eval("return redis.call('GET', KEYS[1])", 1, f"{p}:votes:total"),
    "KEYS": lambda r, p: r.keys("*"),
    "FLUSHALL": lambda r, p: r.flushall(),
    "FLUSHDB": lambda r, p: r.flushdb(),
    "SCRIPT FLUSH": lambda r, p: r.script_flush(),
    "CONFIG GET": lambda r, p: r.config_get("requirepass"),
    "ACL SETUSER": lambda r, p: r.acl_setuser("ingest", enabled=True, commands=["+@all"]),
    "SHUTDOWN": lambda r, p: r.execute_command("SHUTDOWN", "NOSAVE"),
    "PUBLISH": lambda r, p: r.publish(f"{p}:channel", "x"),
    "GET outside the prefix": lambda r, p: r.get("other:votes:total"),
    "HGET under a longer prefix": lambda r, p: r.hget(f"{p}-other:votes:band", "Alux Nahual"),
    "HGET without the separator": lambda r, p: r.hget(f"{p}votes:band", "Alux Nahual"),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_the_ingest_user_cannot_write_or_reach_beyond_its_keys(acl_redis, what):
    with pytest.raises(redis.exceptions.NoPermissionError):
        REFUSED[what](acl_redis.ingest, acl_redis.prefix)


def test_a_script_ingest_runs_cannot_write_and_its_keys_stay_under_the_prefix(acl_redis, repo):
    """Commands inside a script are checked against the user running it, and EVALSHA's keys
    against the key pattern."""
    prefix = acl_redis.prefix
    writing = acl_redis.default.script_load("return redis.call('HSET', KEYS[1], 'Alux Nahual', '1')")
    # Redis 7.4: "ACL failure in script: User ingest has no permissions to run the 'hset' command";
    # 7.0: "The user executing the script can't run this command or subcommand".
    with pytest.raises(redis.exceptions.ResponseError, match="no permissions to run the 'hset'|can't run this command"):
        acl_redis.ingest.evalsha(writing, 1, f"{prefix}:votes:band")
    assert acl_redis.default.hget(f"{prefix}:votes:band", "Alux Nahual") is None
    sha = acl_redis.ingest.script_load(check_script(repo))
    with pytest.raises(redis.exceptions.NoPermissionError):
        acl_redis.ingest.evalsha(sha, 2, "other:{votes/0}:voters", "other:{votes/0}:resend:1", 1, b"d", "ana", "x")


def test_the_grafana_user_answers_every_query_of_the_dashboard(acl_redis, repo):
    queries = dashboard_queries()
    dashboard = queries.load(repo / "grafana/dashboards/bandvote-votes.json")
    values = queries.variables(dashboard)
    assert values["prefix"] == acl_redis.prefix
    prefix = acl_redis.prefix
    # A few of the keys the consumer writes, so that the queries read something (removed after).
    seeded = [f"{prefix}:votes:total", f"{prefix}:votes:band", f"{prefix}:leaderboard", f"{prefix}:votes:timeline"]
    assert not acl_redis.default.exists(*seeded)
    acl_redis.default.set(seeded[0], 3)
    acl_redis.default.hset(seeded[1], mapping={"Alux Nahual": 2, "Viernes Verde": 1})
    acl_redis.default.zadd(seeded[2], {"Alux Nahual": 2})
    acl_redis.default.xadd(seeded[3], {"votes": 3})
    acl_redis.default.acl_log_reset()
    now = int(time.time() * 1000)
    lines = [queries.command(target, values, (now - 3_600_000, now + 60_000)) for _, target in queries.targets(dashboard)]
    assert lines
    try:
        for line in lines:
            acl_redis.grafana.execute_command(*line)
    finally:
        acl_redis.default.delete(*seeded)
    assert acl_redis.grafana.execute_command("PING") is True, "the data source's health check"
    denied = [entry for entry in acl_redis.default.acl_log() if entry.get("username") == "grafana"]
    assert not denied, f"Redis refused Grafana: {denied}"


GRAFANA_REFUSED = {
    **REFUSED,
    "SCRIPT LOAD": lambda r, p: r.script_load("return 1"),
    "EVALSHA": lambda r, p: r.evalsha("0" * 40, 0),
    "CLIENT LIST": lambda r, p: r.client_list(),
}


@pytest.mark.parametrize("what", sorted(GRAFANA_REFUSED))
def test_the_grafana_user_cannot_write_or_reach_beyond_its_keys(acl_redis, what):
    with pytest.raises(redis.exceptions.NoPermissionError):
        GRAFANA_REFUSED[what](acl_redis.grafana, acl_redis.prefix)


def test_the_default_user_still_writes_everything(acl_redis):
    prefix = acl_redis.prefix
    default = acl_redis.default
    assert default.execute_command("ACL", "WHOAMI") == b"default"
    assert default.hincrby(f"{prefix}:votes:band", "Viernes Verde", 1) == 1
    assert default.eval("return redis.call('SET', KEYS[1], '1')", 1, f"{prefix}:votes:total") == b"OK"
    assert default.get(f"{prefix}:votes:total") == b"1"
    assert default.set("outside:any", 1) and default.delete("outside:any", f"{prefix}:votes:band") == 2
    assert isinstance(default.keys("*"), list)
    # Any other password is refused.
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis.port, password=secrets.token_hex(24)).ping()


def test_ingest_connected_as_ingest_refuses_a_voter_the_default_user_counted_to_the_limit(acl_redis, gke, repo, tmp_path):
    """The real ingest, with the rendered contest and counting settings and a per-voter rule,
    reads the consumer's counts of a voter through the ACL and answers 409 itself."""
    contest = json.loads(generated(gke, "ConfigMap", "ingest", "contest")["data"]["contest.json"])
    contest["voters"] = {"max_votes": 2}
    (tmp_path / "contest.json").write_text(json.dumps(contest))
    counting = generated(gke, "ConfigMap", "ingest", "counting")["data"]
    settings = ingest_env(CONTEST_FILE=str(tmp_path / "contest.json"), REDIS_URL=acl_redis.ingest_url, **counting)
    topic, prefix = settings["KAFKA_TOPIC"], counting["REDIS_KEY_PREFIX"]
    # What the consumer would have written after counting two votes of `ana`, in every partition.
    for partition in range(int(settings["KAFKA_TOPIC_PARTITIONS"])):
        acl_redis.default.hset(f"{prefix}:{{{topic}/{partition}}}:voters", "ana", 2)
    acl_redis.default.script_flush()
    acl_redis.default.acl_log_reset()
    band = contest["bands"][0]
    vote = {"name": band["name"], "album": band["albums"][0], "year": "1990", "rank": "9"}
    with running_ingest(tmp_path, settings, "/readyz") as (url, ops):
        # The first check loads the script (NOSCRIPT, then SCRIPT LOAD as `ingest`).
        first = requests.post(f"{url}/votes", json={**vote, "voter_id": "bob"}, timeout=15)
        assert first.status_code == 200, first.text
        over = requests.post(f"{url}/votes", json={**vote, "voter_id": "ana"}, timeout=15)
        assert over.status_code == 409 and over.json()["error"]["code"] == "limit_reached", over.text
        metrics = requests.get(f"{ops}/metrics", timeout=10).text
    skipped = re.findall(r"^bandvote_ingest_standing_unknown_total(?:\{.*\})? (\S+)$", metrics, re.M)
    assert all(float(v) == 0 for v in skipped), "a check was skipped: Redis did not answer ingest"
    denied = [entry for entry in acl_redis.default.acl_log() if entry.get("username") == "ingest"]
    assert not denied, f"Redis refused ingest: {denied}"
    assert acl_redis.default.script_exists(hashlib.sha1(check_script(repo).encode()).hexdigest()) == [True]
