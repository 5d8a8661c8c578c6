"""Hardening: no secret in the repository or an image, restricted containers everywhere, Redis and
MongoDB credentials only through Secrets, a read-only MongoDB user for the logs API. The rules are
in hardening.py; each is run on every rendered kustomization and shown to catch a violation."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hardening import env_errors, mongodb_users, secret_findings, security_errors
from k8s_model import assert_break_reported, reference_errors, render

OVERLAYS = ["k8s/base", "k8s/overlays/gke"]
SCANNED = ["k8s", "cloudrun", "grafana", "*/Dockerfile", "*/Dockerfile.dockerignore"]


@pytest.fixture(scope="module")
def rendered(kustomize, repo, tmp_path_factory) -> dict[str, list[dict]]:
    work = tmp_path_factory.mktemp("hardening")
    return {k: render(kustomize, repo, work, k) for k in OVERLAYS}


def find(objects, kind, name):
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert matches, f"no {kind} {name}"
    return matches[0]


def container(objects, kind, workload, name=None):
    pod = find(objects, kind, workload)["spec"]["template"]["spec"]
    return next(c for c in pod.get("initContainers", []) + pod["containers"] if name is None or c["name"] == name)


def env_entry(c, name):
    return next(e for e in c["env"] if e["name"] == name)


# --- 1. no secret in the repository or in an image -------------------------------------------------


def scanned_files(repo: Path) -> list[str]:
    """Tracked files and new ones not yet added (git-ignored files, the real secrets, excluded)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SCANNED],
        cwd=repo, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [f for f in listed if (repo / f).is_file()]


def test_no_secret_literal_in_the_repository(repo):
    files = scanned_files(repo)
    assert any(f.endswith(".env.example") for f in files) and any(f.endswith("Dockerfile") for f in files)
    findings = []
    for path in files:
        try:
            text = (repo / path).read_text()
        except UnicodeDecodeError:
            continue
        findings += secret_findings(path, text)
    assert not findings, "\n".join(findings)


# Real-looking values (split in two so that this file itself stays clean) and references.
PASS = "pass" "word"
LEAKS = {
    "k8s/base/x.yaml": f"{PASS}: hunter2",
    "k8s/base/secrets/redis.env": "REDIS_" + PASS.upper() + "=9f2c1e",
    "cloudrun/x.yaml": "value: mongodb://reader:" + "s3cr3t@10.0.0.2:27017/?authSource=admin",
    "grafana/provisioning/datasources/x.yaml": "url: redis://:" + "s3cr3t@redis:6379",
    "k8s/base/redis.conf": "require" "pass s3cr3t",
    "k8s/base/redis.yaml": "args: [--require" "pass, s3cr3t]",
    "logs-api/Dockerfile": "ENV MONGODB_" + PASS.upper() + "=x",
    "k8s/base/y.yaml": "tok" "en: 0123abcd",
    "k8s/base/z.yaml": f"{PASS}: change-me",  # placeholders only in *.example files
    "k8s/base/key.pem": "-----BEGIN " + "PRIVATE KEY-----",
    "cloudrun/gh.txt": "gh" "p_" + "a" * 36,
}
REFERENCES = {
    "grafana/provisioning/datasources/x.yaml": f"{PASS}: $REDIS_PASSWORD",
    "k8s/base/consumer.yaml": "value: redis://:" + "$(REDIS_PASSWORD)@redis.datastores.svc.cluster.local:6379",
    "docs/x.md": "mongodb://reader:" + "$READER_PASSWORD@$MONGO_ILB:27017",
    "k8s/base/secrets/redis.env.example": "REDIS_" + PASS.upper() + "=change-me-redis",
    "k8s/base/redis.yaml": "args: [--require" "pass, $(REDIS_PASSWORD)]",
    "k8s/base/ingest.yaml": "automountServiceAccount" "Token: false",
    "k8s/base/mongodb.yaml": "key: MONGO_INITDB_ROOT_" + PASS.upper(),
}


@pytest.mark.parametrize("path", sorted(LEAKS))
def test_the_scan_catches_a_literal_secret(path):
    assert secret_findings(path, LEAKS[path] + "\n"), f"{path}: {LEAKS[path]!r} was not caught"


@pytest.mark.parametrize("path", sorted(REFERENCES))
def test_the_scan_lets_references_through(path):
    assert not secret_findings(path, REFERENCES[path] + "\n")


def test_no_secret_is_written_into_the_manifests(repo):
    """Every Secret is generated from a git-ignored env file that has a committed example."""
    for path in (repo / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Secret":
                pytest.fail(f"{path.relative_to(repo)} writes a Secret: generate it from k8s/base/secrets/ instead")
    kustomization = yaml.safe_load((repo / "k8s/base/kustomization.yaml").read_text())
    for generator in kustomization["secretGenerator"]:
        assert not generator.get("literals") and not generator.get("files"), f"{generator['name']}: env files only"
        for env in generator["envs"]:
            assert (repo / "k8s/base" / f"{env}.example").is_file(), f"{env} has no committed example"
            ignored = subprocess.run(["git", "check-ignore", "-q", f"k8s/base/{env}"], cwd=repo)
            assert ignored.returncode == 0, f"k8s/base/{env} must be git-ignored"


def test_images_carry_no_secrets(repo):
    """Each image's build context (the repository root) leaves the secret env files out, and no
    Dockerfile bakes a secret-named variable in (secret_findings checks that)."""
    dockerfiles = sorted(repo.glob("*/Dockerfile"))
    assert len(dockerfiles) >= 5
    for dockerfile in dockerfiles:
        ignore = dockerfile.with_name("Dockerfile.dockerignore")
        assert ignore.is_file(), f"{ignore.relative_to(repo)} is missing: the secret env files would be in the build context"
        assert "**/*.env" in ignore.read_text().split(), f"{ignore.relative_to(repo)} does not leave out **/*.env"
        user = [l.split(None, 1)[1] for l in dockerfile.read_text().splitlines() if l.startswith("USER ")]
        assert user and not re.match(r"(root|0)\b", user[-1]), f"{dockerfile.relative_to(repo)} runs as root"


# --- 2. restricted containers ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_restricted(rendered, overlay):
    errors = security_errors(rendered[overlay])
    assert not errors, "\n".join(errors)


def test_every_kind_of_workload_is_checked(rendered):
    kinds = {o["kind"] for o in rendered["k8s/overlays/gke"]}
    assert {"Deployment", "StatefulSet", "Job", "Kafka", "KafkaNodePool"} <= kinds
    # The writable paths the design names are volumes, not the root filesystem.
    gke = rendered["k8s/overlays/gke"]
    writable = {
        ("redis", "/data"): container(gke, "StatefulSet", "redis"),
        ("redis", "/run/redis"): container(gke, "StatefulSet", "redis"),
        ("mongodb", "/data/db"): container(gke, "StatefulSet", "mongodb"),
        ("mongodb", "/tmp"): container(gke, "StatefulSet", "mongodb"),
        ("grafana", "/var/lib/grafana"): container(gke, "Deployment", "grafana", "grafana"),
        ("grafana", "/tmp"): container(gke, "Deployment", "grafana", "grafana"),
        ("mongodb-users", "/tmp"): container(gke, "Job", "mongodb-users"),
    }
    for (name, path), c in writable.items():
        assert any(m["mountPath"] == path and not m.get("readOnly") for m in c["volumeMounts"]), f"{name}: {path}"


def _drop_read_only(objs):
    container(objs, "Deployment", "consumer")["securityContext"]["readOnlyRootFilesystem"] = False


def _add_capability(objs):
    container(objs, "Deployment", "ingest-http")["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]


def _no_seccomp(objs):
    del find(objs, "StatefulSet", "redis")["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]


def _root_container(objs):
    container(objs, "Deployment", "grafana", "install-redis-datasource")["securityContext"]["runAsUser"] = 0


def _escalation(objs):
    del container(objs, "Job", "mongodb-users")["securityContext"]["allowPrivilegeEscalation"]


def _writable_config(objs):
    mount = next(m for m in container(objs, "StatefulSet", "redis")["volumeMounts"] if m["mountPath"] == "/etc/redis")
    mount["readOnly"] = False


def _host_path(objs):
    pod = find(objs, "Deployment", "ingest-grpc")["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "host", "hostPath": {"path": "/var/run"}}]


def _kafka_container(objs):
    del find(objs, "Kafka", "bandvote")["spec"]["kafka"]["template"]["kafkaContainer"]


def _topic_operator(objs):
    template = find(objs, "Kafka", "bandvote")["spec"]["entityOperator"]["template"]
    template["topicOperatorContainer"]["securityContext"]["readOnlyRootFilesystem"] = False


def _node_pool_override(objs):
    find(objs, "KafkaNodePool", "dual-role")["spec"]["template"] = {"pod": {"securityContext": {"runAsNonRoot": True}}}


def _unchecked_strimzi_kind(objs):
    objs.append({"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaConnect", "metadata": {"name": "c", "namespace": "kafka"}, "spec": {}})


RESTRICTION_BREAKS = {
    "read-only root": (_drop_read_only, "Deployment/consumer/consumer/consumer: readOnlyRootFilesystem is not true"),
    "capabilities": (_add_capability, "capabilities add ['NET_ADMIN']"),
    "seccomp": (_no_seccomp, "StatefulSet/datastores/redis/redis: seccompProfile is not RuntimeDefault"),
    "root user": (_root_container, "install-redis-datasource: runs as root"),
    "privilege escalation": (_escalation, "mongodb-users/mongosh: allowPrivilegeEscalation is not false"),
    "writable config mount": (_writable_config, "/etc/redis is writable"),
    "host path": (_host_path, "volume host is a hostPath"),
    "strimzi kafka container": (_kafka_container, "spec.kafka.template.kafkaContainer.securityContext: readOnlyRootFilesystem"),
    "strimzi topic operator": (_topic_operator, "topicOperatorContainer.securityContext: readOnlyRootFilesystem"),
    "strimzi node pool": (_node_pool_override, "spec.template.pod.securityContext: seccompProfile is not RuntimeDefault"),
    "strimzi kind": (_unchecked_strimzi_kind, "no hardening check for Strimzi kind KafkaConnect"),
}


@pytest.mark.parametrize("breakage", sorted(RESTRICTION_BREAKS))
def test_an_unrestricted_container_is_reported(rendered, breakage):
    objects = copy.deepcopy(rendered["k8s/overlays/gke"])
    mutate, expected = RESTRICTION_BREAKS[breakage]
    mutate(objects)
    errors = security_errors(objects)
    assert any(expected in e for e in errors), f"expected an error containing {expected!r}, got {errors}"


# --- 3. Redis and MongoDB credentials through Secrets --------------------------------------------


@pytest.fixture(scope="module")
def deployed(kustomize, repo, tmp_path_factory):
    """What `k8s/deploy --secrets` creates on a fresh checkout, and the gke overlay rendered with it."""
    root = tmp_path_factory.mktemp("deploy")
    for folder in ("k8s", "grafana"):
        shutil.copytree(repo / folder, root / folder, ignore=shutil.ignore_patterns("*.env", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PROJECT_ID", "TAG")}
    run = subprocess.run([str(root / "k8s/deploy"), "--secrets"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    again = subprocess.run([str(root / "k8s/deploy"), "--secrets"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "creating" not in again.stderr, "a second run must keep the files"
    objects = render(kustomize, root, tmp_path_factory.mktemp("deploy-render"), "k8s/overlays/gke")
    return root / "k8s/base/secrets", objects


def env_file(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")
    )


def test_deploy_creates_every_secret_key_the_manifests_use(deployed):
    secrets, objects = deployed
    examples = sorted(secrets.glob("*.env.example"))
    assert examples
    for example in examples:
        made = secrets / example.name.removesuffix(".example")
        assert made.is_file(), f"k8s/deploy --secrets did not create {made.name}"
        assert made.stat().st_mode & 0o077 == 0, f"{made.name} is readable by others"
        wanted, got = env_file(example), env_file(made)
        assert set(got) == set(wanted), f"{made.name}: keys {sorted(got)} != {sorted(wanted)}"
        for key, placeholder in wanted.items():
            if placeholder.startswith("change-me"):
                assert re.fullmatch(r"[0-9a-f]{48}", got[key]), f"{made.name}: {key} is not a fresh hex password"
            else:
                assert got[key] == placeholder
    # With exactly those files, every secretKeyRef and secretRef resolves (k8s_model checks keys).
    errors = reference_errors(objects)
    assert not errors, "\n".join(errors)
    refs = [
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet", "Job")
        for c in o["spec"]["template"]["spec"].get("initContainers", []) + o["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert len(refs) >= 10


def test_one_password_per_store(deployed):
    """The consumer gets Redis's password from the same file Redis does, and ingest and Grafana
    their own users'."""
    secrets, objects = deployed
    redis = env_file(secrets / "redis.env")["REDIS_PASSWORD"]
    consumer_mongo = env_file(secrets / "mongodb-consumer.env")["MONGO_CONSUMER_PASSWORD"]
    import base64

    def secret(prefix, key):
        obj = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith(prefix))
        return base64.b64decode(obj["data"][key]).decode()

    assert secret("redis-auth", "REDIS_PASSWORD") == secret("consumer-stores", "REDIS_PASSWORD") == redis
    # Redis's user `grafana`, read-only: Grafana never gets the default user's password.
    grafana_redis = env_file(secrets / "redis-grafana.env")["REDIS_GRAFANA_PASSWORD"]
    assert secret("redis-auth", "REDIS_GRAFANA_PASSWORD") == secret("grafana-auth", "REDIS_GRAFANA_PASSWORD") == grafana_redis
    grafana_secret = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith("grafana-auth"))
    assert "REDIS_PASSWORD" not in grafana_secret["data"]
    assert grafana_redis != redis
    # Redis's user `ingest`: Redis and the ingest pods get it from one file, and it is not the default user's.
    ingest_redis = env_file(secrets / "redis-ingest.env")["REDIS_INGEST_PASSWORD"]
    assert secret("redis-auth", "REDIS_INGEST_PASSWORD") == secret("ingest-redis", "REDIS_INGEST_PASSWORD") == ingest_redis
    assert ingest_redis != redis
    assert secret("mongodb-auth", "MONGO_CONSUMER_PASSWORD") == secret("consumer-stores", "MONGO_CONSUMER_PASSWORD") == consumer_mongo
    consumer_secret = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith("consumer-stores"))
    assert set(consumer_secret["data"]) == {"REDIS_PASSWORD", "MONGO_CONSUMER_PASSWORD"}, "no root password outside datastores"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_datastore_urls_and_passwords_come_from_secrets(rendered, overlay):
    errors = env_errors(rendered[overlay])
    assert not errors, "\n".join(errors)


def test_redis_mongodb_and_their_clients_use_the_secrets(rendered):
    gke = rendered["k8s/overlays/gke"]

    def from_secret(c, name, secret, key):
        ref = env_entry(c, name)["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith(secret) and ref["key"] == key, f"{c['name']}: {name} from {ref}"

    redis = container(gke, "StatefulSet", "redis")
    for name in ("REDIS_PASSWORD", "REDIS_INGEST_PASSWORD", "REDIS_GRAFANA_PASSWORD"):
        from_secret(redis, name, "redis-auth", name)
    # No password in Redis's arguments: the container's shell writes them, hashed, into an ACL file
    # on an in-memory volume (test_k8s_contest.py runs it and a real Redis with the file).
    assert redis["command"] == ["sh", "-c"] and "--aclfile /run/redis/users.acl" in redis["args"][0]
    assert not any("requirepass" in a or re.search(r"\$\(\w+\)", a) for a in redis["command"] + redis["args"])
    acl = next(m for m in redis["volumeMounts"] if m["mountPath"] == "/run/redis")
    volume = next(v for v in find(gke, "StatefulSet", "redis")["spec"]["template"]["spec"]["volumes"] if v["name"] == acl["name"])
    assert volume["emptyDir"]["medium"] == "Memory", "the ACL file stays off the disks"

    mongodb = container(gke, "StatefulSet", "mongodb")
    from_secret(mongodb, "MONGO_INITDB_ROOT_USERNAME", "mongodb-auth", "MONGO_INITDB_ROOT_USERNAME")
    from_secret(mongodb, "MONGO_INITDB_ROOT_PASSWORD", "mongodb-auth", "MONGO_INITDB_ROOT_PASSWORD")

    consumer = container(gke, "Deployment", "consumer")
    from_secret(consumer, "REDIS_PASSWORD", "consumer-stores", "REDIS_PASSWORD")
    from_secret(consumer, "MONGO_CONSUMER_PASSWORD", "consumer-stores", "MONGO_CONSUMER_PASSWORD")
    assert env_entry(consumer, "REDIS_URL")["value"].startswith("redis://:$(REDIS_PASSWORD)@redis.datastores.svc")
    assert env_entry(consumer, "MONGODB_URI")["value"].startswith("mongodb://consumer:$(MONGO_CONSUMER_PASSWORD)@mongodb.datastores.svc")

    grafana = container(gke, "Deployment", "grafana", "grafana")
    from_secret(grafana, "REDIS_GRAFANA_PASSWORD", "grafana-auth", "REDIS_GRAFANA_PASSWORD")
    assert not [e for e in grafana["env"] if e["name"] == "REDIS_PASSWORD"], "Grafana reads as `grafana`, not the default user"
    from_secret(grafana, "GF_SECURITY_ADMIN_PASSWORD", "grafana-auth", "GF_SECURITY_ADMIN_PASSWORD")
    datasources = find(gke, "ConfigMap", "grafana-datasources")
    source = yaml.safe_load(datasources["data"]["redis.yaml"])["datasources"][0]
    assert source["secureJsonData"]["password"] == "$REDIS_GRAFANA_PASSWORD"
    assert (source["jsonData"]["acl"], source["jsonData"]["user"]) == (True, "grafana")
    assert "@" not in source["url"], "no credentials in the data source URL"


def _literal_redis_password(objs):
    env_entry(container(objs, "Deployment", "consumer"), "REDIS_URL")["value"] = "redis://:" + "0123abcd@redis.datastores.svc.cluster.local:6379"


def _password_defined_after_the_url(objs):
    c = container(objs, "Deployment", "consumer")
    entry = env_entry(c, "MONGO_CONSUMER_PASSWORD")
    c["env"].remove(entry)
    c["env"].append(entry)


def _password_from_a_literal(objs):
    c = container(objs, "Deployment", "consumer")
    env_entry(c, "REDIS_PASSWORD").pop("valueFrom")
    env_entry(c, "REDIS_PASSWORD")["value"] = "$(HOST)"


def _undefined_in_args(objs):
    container(objs, "StatefulSet", "redis")["args"].append("$(REDIS_PASS)")


def _secret_in_args(objs):
    container(objs, "StatefulSet", "redis")["args"] += ["--requirepass", "$(REDIS_PASSWORD)"]


def _literal_password_variable(objs):
    c = container(objs, "Deployment", "grafana", "grafana")
    env_entry(c, "GF_SECURITY_ADMIN_PASSWORD").pop("valueFrom")
    env_entry(c, "GF_SECURITY_ADMIN_PASSWORD")["value"] = "admin"


def _password_file_outside_its_secret(objs):
    c = container(objs, "Deployment", "ingest-http")
    env_entry(c, "KAFKA_SASL_PASSWORD_FILE")["value"] = "/etc/bandvote/password"


def _url_in_a_config_map(objs):
    find(objs, "ConfigMap", "kafka-client")["data"]["MONGODB_URI"] = "mongodb://consumer:" + "0123abcd@mongodb:27017"


URL_BREAKS = {
    "literal password in a URL": (_literal_redis_password, "env REDIS_URL: the password of its redis URL is not $(VAR)"),
    "variable defined too late": (_password_defined_after_the_url, "env MONGODB_URI uses $(MONGO_CONSUMER_PASSWORD), which is not defined before it"),
    "password not from a Secret": (_password_from_a_literal, "env REDIS_URL: the password of its redis URL is not $(VAR) of a secretKeyRef"),
    "undefined variable in args": (_undefined_in_args, "args uses $(REDIS_PASS)"),
    "secret on the command line": (_secret_in_args, "args puts $(REDIS_PASSWORD), a Secret's value, on the command line"),
    "literal password variable": (_literal_password_variable, "env GF_SECURITY_ADMIN_PASSWORD is a literal value"),
    "credentials in a ConfigMap": (_url_in_a_config_map, "MONGODB_URI: a mongodb URL carries a literal password"),
    "password file outside its Secret": (
        _password_file_outside_its_secret,
        "env KAFKA_SASL_PASSWORD_FILE names /etc/bandvote/password, which no Secret volume of the container holds",
    ),
}


@pytest.mark.parametrize("breakage", sorted(URL_BREAKS))
def test_a_password_outside_a_secret_is_reported(rendered, breakage):
    mutate, expected = URL_BREAKS[breakage]
    assert_break_reported(rendered["k8s/overlays/gke"], mutate, env_errors, expected)


# --- 4. least-privilege MongoDB users -------------------------------------------------------------


def test_mongodb_users_are_least_privilege_and_the_logs_api_only_reads(rendered, repo):
    gke = rendered["k8s/overlays/gke"]
    script = find(gke, "ConfigMap", "mongodb-users")["data"]["mongodb-users.js"]
    users = {u["user"]: u for u in mongodb_users(script)}
    assert users["logs-reader"]["roles"] == [{"role": "read", "db": "bandvote"}], "the logs API only reads"
    assert users["consumer"]["roles"] == [{"role": "readWrite", "db": "bandvote"}]
    assert all(r["db"] == "bandvote" and r["role"] in ("read", "readWrite") for u in users.values() for r in u["roles"])

    # The Job runs that script with every user's password from the mongodb-auth Secret.
    job = find(gke, "Job", "mongodb-users")["spec"]["template"]["spec"]
    mongosh = job["containers"][0]
    mount = next(m for m in mongosh["volumeMounts"] if m["mountPath"] == "/scripts")
    volume = next(v for v in job["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"].startswith("mongodb-users")
    assert "/scripts/mongodb-users.js" in mongosh["command"]
    for user in users.values():
        ref = env_entry(mongosh, user["passwordEnv"])["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("mongodb-auth") and ref["key"] == user["passwordEnv"]

    # The consumer logs in as `consumer` with that user's password.
    consumer = container(gke, "Deployment", "consumer")
    uri = env_entry(consumer, "MONGODB_URI")["value"]
    name, variable = re.match("mongodb://([^:]+):" r"\$\((\w+)\)@", uri).groups()
    assert users[name]["roles"] == [{"role": "readWrite", "db": "bandvote"}]
    assert env_entry(consumer, variable)["valueFrom"]["secretKeyRef"]["key"] == users[name]["passwordEnv"]

    # Only the Job and the consumer reach MongoDB inside the cluster.
    policies = [o for o in gke if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == "datastores"]
    peers = {
        peer.get("podSelector", {}).get("matchLabels", {}).get("app")
        for p in policies
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app") == "mongodb"
        for rule in p["spec"].get("ingress", [])
        for peer in rule.get("from", [])
        if "podSelector" in peer
    }
    assert peers == {"consumer", "mongodb-users"}

    # Documented where operators look.
    for doc in ("docs/SERVICES.md", "k8s/README.md"):
        text = (repo / doc).read_text()
        assert "logs-reader" in text and "`read`" in text and "Hardening" in text, doc
