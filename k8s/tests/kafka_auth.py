"""Who may talk to Kafka, as the rendered manifests say it: the checks of test_k8s_kafka_auth.py.

- `listener_errors`: every listener of every Kafka asks for a user (SCRAM-SHA-512 or TLS), the
  brokers authorize by ACL (`authorization: simple`, never allow-everyone) and the User Operator
  runs, or no KafkaUser would ever exist.
- `client_errors`: every container that gets a `kafka-client` ConfigMap (a Kafka client) logs in
  with a SASL protocol that matches the listener's TLS, SCRAM-SHA-512, the name of a KafkaUser,
  and a password file that a Secret volume mounts, holding the same password as the Secret that
  KafkaUser takes its password from.
- `acl_errors`: every ACL of every KafkaUser names a KafkaTopic, or a consumer group some workload
  uses; none is on the cluster, a prefix or `All`.
- `keda_errors`: each KEDA Kafka trigger logs in as a KafkaUser through its TriggerAuthentication,
  with that user's password, and the SASL mode and TLS the listener asks for.
"""

from __future__ import annotations

import base64

from k8s_model import containers, key, pod_template

CLIENT_CONFIG_MAP = "kafka-client"


def _where(obj: dict) -> str:
    return "/".join(key(obj))


def _data(objects: list[dict], namespace: str, name: str) -> dict[str, str] | None:
    for o in objects:
        if o["kind"] == "Secret" and o["metadata"].get("namespace") == namespace and o["metadata"]["name"] == name:
            return {k: base64.b64decode(v).decode() for k, v in o.get("data", {}).items()} | dict(o.get("stringData", {}))
    return None


def kafkas(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "Kafka"]


def users(objects: list[dict]) -> dict[str, dict]:
    """KafkaUser name -> the KafkaUser (the name is the Kafka user name)."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "KafkaUser"}


def user_password(objects: list[dict], user: dict) -> str | None:
    """The password a KafkaUser takes from its Secret (None when it names none)."""
    ref = ((user["spec"].get("authentication") or {}).get("password") or {}).get("valueFrom", {}).get("secretKeyRef")
    if not ref:
        return None
    data = _data(objects, user["metadata"]["namespace"], ref["name"]) or {}
    return data.get(ref["key"])


def listener_tls(objects: list[dict]) -> bool:
    """Whether the clients' listener (the one on the bootstrap port they use, 9092) is TLS."""
    for kafka in kafkas(objects):
        for listener in kafka["spec"]["kafka"]["listeners"]:
            if listener["port"] == 9092:
                return bool(listener.get("tls"))
    return False


def listener_errors(objects: list[dict]) -> list[str]:
    errors = []
    for kafka in kafkas(objects):
        spec = kafka["spec"]
        for listener in spec["kafka"]["listeners"]:
            auth = (listener.get("authentication") or {}).get("type")
            if auth not in ("scram-sha-512", "tls"):
                errors.append(f"{_where(kafka)}: listener {listener['name']} takes connections without a user (authentication {auth})")
        if (spec["kafka"].get("authorization") or {}).get("type") != "simple":
            errors.append(f"{_where(kafka)}: no ACL authorization (spec.kafka.authorization.type is not simple)")
        if spec["kafka"].get("config", {}).get("allow.everyone.if.no.acl.found") not in (None, False):
            errors.append(f"{_where(kafka)}: allow.everyone.if.no.acl.found opens every resource without an ACL")
        if "userOperator" not in (spec.get("entityOperator") or {}):
            errors.append(f"{_where(kafka)}: no user operator, so no KafkaUser becomes a Kafka user")
    return errors


def client_env(objects: list[dict], obj: dict, container: dict) -> dict[str, str]:
    """The container's literal environment: its ConfigMaps' data, then its own values."""
    ns = obj["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        for o in objects:
            if o["kind"] == "ConfigMap" and o["metadata"].get("namespace") == ns and o["metadata"]["name"] == name:
                env.update(o.get("data", {}))
    env.update({e["name"]: e["value"] for e in container.get("env", []) if isinstance(e.get("value"), str)})
    return env


def kafka_clients(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, container) of every container that gets the kafka-client ConfigMap."""
    found = []
    for obj in objects:
        template = pod_template(obj)
        if template is None:
            continue
        for c in containers(template["spec"]):
            names = [s.get("configMapRef", {}).get("name", "") for s in c.get("envFrom", [])]
            if any(n == CLIENT_CONFIG_MAP or n.startswith(CLIENT_CONFIG_MAP + "-") for n in names):
                found.append((obj, c))
    return found


def _mounted_secret_value(objects: list[dict], obj: dict, container: dict, path: str) -> tuple[str | None, str]:
    """The value of the Secret key a container sees at `path`, and what was found on the way."""
    pod = pod_template(obj)["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        volume = volumes.get(mount["name"], {})
        if not path.startswith(prefix) or "secret" not in volume:
            continue
        relative = path[len(prefix):]
        secret = volume["secret"]
        items = secret.get("items")
        key_name = next((i["key"] for i in items if i["path"] == relative), None) if items else relative
        data = _data(objects, obj["metadata"]["namespace"], secret["secretName"])
        if key_name is None or data is None or key_name not in data:
            return None, f"Secret {secret['secretName']} has no key at {relative}"
        return data[key_name], f"Secret {secret['secretName']} key {key_name}"
    return None, "no Secret volume is mounted there"


def client_errors(objects: list[dict]) -> list[str]:
    errors = []
    known = users(objects)
    protocol = "sasl_ssl" if listener_tls(objects) else "sasl_plaintext"
    clients = kafka_clients(objects)
    if not clients:
        errors.append("no container gets the kafka-client ConfigMap: the Kafka clients cannot be found")
    for obj, c in clients:
        where = f"{_where(obj)}/{c['name']}"
        env = client_env(objects, obj, c)
        if env.get("KAFKA_SECURITY_PROTOCOL", "plaintext").lower() != protocol:
            errors.append(f"{where}: KAFKA_SECURITY_PROTOCOL is {env.get('KAFKA_SECURITY_PROTOCOL')}, the listener needs {protocol}")
        if env.get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512").upper() != "SCRAM-SHA-512":
            errors.append(f"{where}: KAFKA_SASL_MECHANISM is {env.get('KAFKA_SASL_MECHANISM')}, not SCRAM-SHA-512")
        user = env.get("KAFKA_SASL_USERNAME")
        if user not in known:
            errors.append(f"{where}: KAFKA_SASL_USERNAME {user} is not a KafkaUser")
            continue
        if "KAFKA_SASL_PASSWORD" in {e["name"] for e in c.get("env", [])}:
            errors.append(f"{where}: the password is in the environment; mount it (KAFKA_SASL_PASSWORD_FILE)")
        path = env.get("KAFKA_SASL_PASSWORD_FILE")
        if not path:
            errors.append(f"{where}: no KAFKA_SASL_PASSWORD_FILE")
            continue
        value, found = _mounted_secret_value(objects, obj, c, path)
        if value is None:
            errors.append(f"{where}: KAFKA_SASL_PASSWORD_FILE {path}: {found}")
        elif value != user_password(objects, known[user]):
            errors.append(f"{where}: {found} is not the password of KafkaUser {user}")
    return errors


def consumer_groups(objects: list[dict]) -> set[str]:
    """The consumer groups the workloads use (KAFKA_GROUP)."""
    groups = set()
    for obj in objects:
        template = pod_template(obj)
        if template is not None:
            for c in containers(template["spec"]):
                groups |= {e["value"] for e in c.get("env", []) if e["name"] == "KAFKA_GROUP" and "value" in e}
    return groups


def acl_errors(objects: list[dict], more_groups: set[str] = frozenset()) -> list[str]:
    """`more_groups`: groups the code uses without a KAFKA_GROUP (bandvote-audit's)."""
    errors = []
    topics = {o["spec"].get("topicName", o["metadata"]["name"]) for o in objects if o["kind"] == "KafkaTopic"}
    groups = consumer_groups(objects) | set(more_groups)
    for name, user in users(objects).items():
        authorization = user["spec"].get("authorization") or {}
        if authorization.get("type") != "simple" or not authorization.get("acls"):
            errors.append(f"KafkaUser {name}: no ACLs (authorization simple)")
        for acl in authorization.get("acls", []):
            resource, operations = acl["resource"], acl["operations"]
            label = f"KafkaUser {name}: {resource['type']} {resource.get('name', '')}"
            if acl.get("type", "allow") != "allow":
                continue
            if "All" in operations:
                errors.append(f"{label}: operation All")
            if resource.get("patternType", "literal") != "literal":
                errors.append(f"{label}: a {resource['patternType']} pattern, not one name")
            if resource["type"] == "cluster":
                errors.append(f"{label}: an ACL on the cluster")
            elif resource["type"] == "topic" and resource.get("name") not in topics:
                errors.append(f"{label}: topic {resource.get('name')} is not a KafkaTopic")
            elif resource["type"] == "group" and resource.get("name") not in groups:
                errors.append(f"{label}: group {resource.get('name')} is no workload's consumer group ({sorted(groups)})")
    return errors


def keda_errors(objects: list[dict]) -> list[str]:
    errors = []
    known = users(objects)
    tls = "enable" if listener_tls(objects) else "disable"
    for scaler in (o for o in objects if o["kind"] == "ScaledObject"):
        ns = scaler["metadata"]["namespace"]
        for trigger in (t for t in scaler["spec"].get("triggers", []) if t["type"] == "kafka"):
            where = f"{_where(scaler)}: kafka trigger"
            metadata = trigger["metadata"]
            if metadata.get("sasl") != "scram_sha512":
                errors.append(f"{where}: sasl is {metadata.get('sasl')}, the listener asks for scram_sha512")
            if metadata.get("tls", "disable") != tls:
                errors.append(f"{where}: tls is {metadata.get('tls', 'disable')}, the listener's is {tls}")
            ref = trigger.get("authenticationRef")
            auth = next(
                (o for o in objects if o["kind"] == "TriggerAuthentication" and ref
                 and o["metadata"]["namespace"] == ns and o["metadata"]["name"] == ref["name"]),
                None,
            )
            if auth is None:
                errors.append(f"{where}: no TriggerAuthentication, so KEDA logs in as nobody")
                continue
            params = {}
            for target in auth["spec"].get("secretTargetRef", []):
                params[target["parameter"]] = (_data(objects, ns, target["name"]) or {}).get(target["key"])
            user = params.get("username")
            if user not in known:
                errors.append(f"{where}: username {user} is not a KafkaUser")
            elif params.get("password") is None or params["password"] != user_password(objects, known[user]):
                errors.append(f"{where}: the password is not KafkaUser {user}'s")
    return errors
