"""Kafka on GKE takes only its own users, each with only the ACLs its work needs: the listener asks
for SCRAM-SHA-512, every Kafka client (ingest, the consumer, KEDA's scaler) logs in as its own
KafkaUser with that user's password, and every ACL names a topic and a group that exist. The ACLs
are the ones consumer/tests/kafka_auth grants on a real broker and checks there (see kafka_auth.py
for how each check works)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from kafka_auth import acl_errors, client_errors, client_env, kafka_clients, keda_errors, listener_errors, users
from k8s_model import assert_break_reported, crd_errors, load_crds, render

OVERLAYS = ["k8s/base", "k8s/overlays/gke"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rendered(kustomize, repo, tmp_path_factory) -> dict[str, list[dict]]:
    work = tmp_path_factory.mktemp("kafka-auth")
    return {k: render(kustomize, repo, work, k) for k in OVERLAYS}


@pytest.fixture(scope="module")
def crds(crd_dir):
    loaded = load_crds(crd_dir)
    for needed in [("kafka.strimzi.io/v1", "KafkaUser"), ("keda.sh/v1alpha1", "TriggerAuthentication")]:
        assert needed in loaded, f"the cached CRDs lack {needed}; run dev/tools install k8s-schemas"
    return loaded

# What each user may do: (resource type, name) -> operations. Exactly these, no more.
EXPECTED_ACLS = {
    "ingest": {("topic", "votes"): {"Write", "Describe"}},
    "consumer": {
        ("topic", "votes"): {"Read", "Describe"},
        ("group", "bandvote-consumer"): {"Read"},
        ("topic", "votes.dlq"): {"Write", "Describe"},
        ("group", "bandvote-audit"): {"Describe"},
    },
    "keda": {("topic", "votes"): {"Describe"}, ("group", "bandvote-consumer"): {"Describe"}},
}


def audit_group() -> str:
    """The group bandvote-audit's Kafka replay reads in (consumer/src/audit.rs)."""
    found = re.search(r'\.set\("group\.id", "([^"]+)"\)', (REPO / "consumer/src/audit.rs").read_text())
    assert found, "consumer/src/audit.rs sets no group.id"
    return found[1]


def acls_of(user: dict) -> dict[tuple[str, str], set[str]]:
    acls: dict[tuple[str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        acls.setdefault((acl["resource"]["type"], acl["resource"].get("name", "")), set()).update(acl["operations"])
    return acls


def acls_granted_by_the_broker_test() -> dict[str, dict[tuple[str, str], set[str]]]:
    """The ACLs consumer/tests/kafka_auth grants on its broker, in the manifests' names."""
    source = (REPO / "consumer/tests/kafka_auth/mod.rs").read_text()
    names = {"&topic": "votes", "&dead_letters": "votes.dlq", "&group": "bandvote-consumer", "AUDIT_GROUP": audit_group()}
    granted: dict[str, dict[tuple[str, str], set[str]]] = {}
    for user, resources, operations in re.findall(r'kafka\.allow\("(\w+)", &\[([^\]]*)\], &\[([^\]]*)\]\)', source):
        words = [w.strip().strip('"') for w in resources.split(",")]
        operations = {o.strip().strip('"') for o in operations.split(",")}
        for kind, name in zip(words[::2], words[1::2]):
            if name in names:  # a test-only probe group has no manifest name
                granted.setdefault(user, {}).setdefault((kind.removeprefix("--"), names[name]), set()).update(operations)
    assert granted, "no kafka.allow(...) found in consumer/tests/kafka_auth/mod.rs"
    return granted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_listener_takes_only_kafka_users_and_the_brokers_authorize_by_acl(rendered, overlay):
    assert not listener_errors(rendered[overlay])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_kafka_client_logs_in_as_its_own_user_with_its_password(rendered, overlay):
    objects = rendered[overlay]
    assert not client_errors(objects)
    logins = {(o["metadata"]["name"], c["name"]): client_env(objects, o, c)["KAFKA_SASL_USERNAME"] for o, c in kafka_clients(objects)}
    assert logins == {
        ("ingest-grpc", "ingest"): "ingest",
        ("ingest-http", "ingest"): "ingest",
        ("ingest-wasm", "producer"): "ingest",
        ("consumer", "consumer"): "consumer",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_acl_is_as_narrow_as_the_work_and_names_what_exists(rendered, overlay):
    objects = rendered[overlay]
    assert not acl_errors(objects, {audit_group()})
    assert {name: acls_of(user) for name, user in users(objects).items()} == EXPECTED_ACLS


def test_the_acls_are_the_ones_the_broker_test_grants():
    assert acls_granted_by_the_broker_test() == EXPECTED_ACLS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_reads_the_lag_as_its_own_user(rendered, overlay):
    assert not keda_errors(rendered[overlay])


def test_kafka_users_and_trigger_authentications_validate_against_their_crds(rendered, crds):
    objects = rendered["k8s/overlays/gke"]
    checked = [o for o in objects if o["kind"] in ("KafkaUser", "TriggerAuthentication")]
    assert {o["kind"] for o in checked} == {"KafkaUser", "TriggerAuthentication"}
    for obj in checked:
        assert not crd_errors(obj, crds)
    user = copy.deepcopy(next(o for o in checked if o["kind"] == "KafkaUser"))
    user["spec"]["authentication"]["type"] = "scram-sha-256"
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Publish"]
    errors = crd_errors(user, crds)
    assert any("authentication.type" in e for e in errors) and any("operations" in e for e in errors), errors


# --- the checks can fail ------------------------------------------------------------------------


def _find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name))


def _container(objects, workload, name=None):
    pod = _find(objects, "Deployment", workload)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if name is None or c["name"] == name)


def _drop_env(container, name):
    container["env"] = [e for e in container["env"] if e["name"] != name]


def open_listener(objs):
    del _find(objs, "Kafka", "bandvote")["spec"]["kafka"]["listeners"][0]["authentication"]


def no_authorization(objs):
    del _find(objs, "Kafka", "bandvote")["spec"]["kafka"]["authorization"]


def no_user_operator(objs):
    del _find(objs, "Kafka", "bandvote")["spec"]["entityOperator"]["userOperator"]


def plaintext_client(objs):
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("kafka-client")
              and o["metadata"]["namespace"] == "consumer")
    del cm["data"]["KAFKA_SECURITY_PROTOCOL"]


def client_without_user(objs):
    _drop_env(_container(objs, "ingest-http"), "KAFKA_SASL_USERNAME")


def client_with_anothers_password(objs):
    pod = _find(objs, "Deployment", "ingest-grpc")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "kafka-password")
    consumer_secret = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].startswith("kafka-consumer"))
    # The consumer's password, as if its Secret had been copied to the ingest namespace.
    ingest_secret = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"] == volume["secret"]["secretName"])
    ingest_secret["data"]["KAFKA_INGEST_PASSWORD"] = consumer_secret["data"]["KAFKA_CONSUMER_PASSWORD"]


def client_password_unmounted(objs):
    c = _container(objs, "ingest-wasm", "producer")
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "kafka-password"]


def acl_on_a_missing_topic(objs):
    _find(objs, "KafkaUser", "ingest")["spec"]["authorization"]["acls"][0]["resource"]["name"] = "vote"


def acl_on_every_topic(objs):
    acl = _find(objs, "KafkaUser", "consumer")["spec"]["authorization"]["acls"][0]
    acl["resource"]["patternType"] = "prefix"
    acl["operations"] = ["All"]


def keda_as_nobody(objs):
    del _find(objs, "ScaledObject", "consumer")["spec"]["triggers"][0]["authenticationRef"]


def keda_without_sasl(objs):
    del _find(objs, "ScaledObject", "consumer")["spec"]["triggers"][0]["metadata"]["sasl"]


def acls(objects):
    return acl_errors(objects, {audit_group()})


BREAKS = {
    "listener without authentication": (open_listener, listener_errors, "takes connections without a user"),
    "no ACL authorization": (no_authorization, listener_errors, "no ACL authorization"),
    "no user operator": (no_user_operator, listener_errors, "no user operator"),
    "client in plaintext": (plaintext_client, client_errors, "KAFKA_SECURITY_PROTOCOL is None, the listener needs sasl_plaintext"),
    "client without a user": (client_without_user, client_errors, "ingest-http/ingest: KAFKA_SASL_USERNAME None is not a KafkaUser"),
    "client with another's password": (client_with_anothers_password, client_errors, "is not the password of KafkaUser ingest"),
    "password file not mounted": (client_password_unmounted, client_errors, "no Secret volume is mounted there"),
    "ACL on a missing topic": (acl_on_a_missing_topic, acls, "topic vote is not a KafkaTopic"),
    "ACL on every topic": (acl_on_every_topic, acls, "a prefix pattern"),
    "KEDA without authentication": (keda_as_nobody, keda_errors, "no TriggerAuthentication"),
    "KEDA without SASL": (keda_without_sasl, keda_errors, "sasl is None"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKS))
def test_a_kafka_client_or_user_that_breaks_the_rules_is_reported(rendered, breakage):
    mutate, check, expected = BREAKS[breakage]
    assert_break_reported(rendered["k8s/overlays/gke"], mutate, check, expected)
