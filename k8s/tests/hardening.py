"""The hardening rules for what the repository ships, as functions that return one message per
violation (test_k8s_hardening.py runs them on the rendered kustomizations and on the files, and
shows that each one catches what it is meant to catch).

- `secret_findings`: secret-looking literals in a file (password/token assignments, credentials
  in redis:// and mongodb:// URLs, Redis `requirepass`, private keys and well-known token
  shapes, secret-named ENV/ARG in Dockerfiles). A value that names where the secret comes from
  (`$VAR`, `$(VAR)`, `${VAR}`, `%s`, a variable name, secretKeyRef) is fine; so is a `change-me...`
  placeholder in a committed `*.example` file, which k8s/deploy replaces with a generated password.
- `security_errors`: every container of every workload (Deployments, StatefulSets, DaemonSets,
  Jobs, CronJobs, Pods) and every pod template of the Strimzi resources runs non-root with a
  read-only root filesystem, no privilege escalation, no capabilities and the RuntimeDefault
  seccomp profile; a container writes only to emptyDir or persistent volumes.
- `env_errors`: `$(VAR)` in env values, command and args names a variable Kubernetes can expand
  (for env values: one defined earlier in the same container); a password in a redis:// or
  mongodb:// URL is always `$(VAR)` of a variable that comes from a secretKeyRef; variables named
  like secrets are never literal values; command and args never name a secretKeyRef variable
  (Kubernetes would write the secret into the process's arguments, which every process of the pod
  can read in /proc/<pid>/cmdline).
"""

from __future__ import annotations

import json
import re

# --- secrets in files ----------------------------------------------------------------------------

SECRET_KEY = re.compile(
    r"(?i)(?P<key>[\w.-]*(?:password|passwd|token|api[_-]?key|secret[_-]?key|access[_-]?key)[\w.-]*)"
    r"[\"']?\s*[:=]\s*(?P<value>.*)"
)
CREDENTIAL_URL = re.compile(r"(?i)\b(?P<scheme>mongodb(?:\+srv)?|rediss?)://(?P<user>[^\s:@/'\"]*):(?P<password>[^\s@'\"]*)@")
# Redis's setting: a `requirepass <value>` line of redis.conf, or `--requirepass <value>` arguments.
REQUIREPASS = re.compile(r"(?i)(?:^\s*|--)requirepass[\s,=\"']+(?P<value>[^\s,\]\"'`]+)")
DOCKER_SECRET_VARIABLE = re.compile(r"(?im)^\s*(?:ENV|ARG)\s+\S*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|CREDENTIAL)")
TOKEN_SHAPES = {
    "a private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "an AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "a Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "a Slack token": re.compile(r"\bxox[abprs]-[0-9A-Za-z-]{10,}"),
}

# What a value may be when it is not a secret: a reference to where the secret comes from, or no
# value at all.
REFERENCE = re.compile(
    r"""^(?:
        \$\(?\{?[A-Za-z_][A-Za-z0-9_]*\)?\}?   # $VAR, ${VAR}, $(VAR)
      | %s.*                                  # a printf placeholder filled by a script
      | <[\w -]+>                             # a placeholder in a comment: <value>
      | [A-Z][A-Z0-9_]*                       # a variable or Secret key name
      | true | false | null | ~ | [|>][-+]?   # booleans, YAML block scalars
      | \{\} | \[\]
      | valueFrom | secretKeyRef | secretRef
    )$""",
    re.X,
)
PLACEHOLDER = re.compile(r"^change-me(?:-[a-z0-9]+)*$")


def _literal(value: str) -> str:
    """The literal a `key: value` / `key=value` assigns: the quoted string, or the first word."""
    value = value.strip()
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        return value[1:end] if end > 0 else value[1:]
    return re.split(r"[\s,;}\])`'\"]", value, maxsplit=1)[0] if value else ""


# Code that computes a value (`os.environ["X"]`, `re.compile(...)`, `{...}`) is not a literal.
EXPRESSION = re.compile(r"^(?:[A-Za-z_][\w.]*[(\[]|[{(\[])")


def _is_reference(value: str, placeholders_allowed: bool) -> bool:
    if not value or REFERENCE.match(value) or EXPRESSION.match(value):
        return True
    return placeholders_allowed and bool(PLACEHOLDER.match(value))


def secret_findings(path: str, text: str) -> list[str]:
    """Secret-looking literals in the file at `path` (relative to the repository)."""
    findings = []
    placeholders = path.endswith(".example")
    if path.rsplit("/", 1)[-1] == "Dockerfile":
        for match in DOCKER_SECRET_VARIABLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            findings.append(f"{path}:{line}: a secret-named ENV/ARG ends up in the image: {match.group(0).strip()}")
    for number, line in enumerate(text.splitlines(), 1):
        for match in SECRET_KEY.finditer(line):
            value = _literal(match.group("value"))
            if not _is_reference(value, placeholders):
                findings.append(f"{path}:{number}: {match.group('key')} is given a literal value")
        for match in CREDENTIAL_URL.finditer(line):
            if not _is_reference(match.group("password"), placeholders):
                findings.append(f"{path}:{number}: a {match.group('scheme')} URL carries a literal password")
        for match in REQUIREPASS.finditer(line):
            if not _is_reference(match.group("value"), placeholders):
                findings.append(f"{path}:{number}: requirepass is given a literal password")
        for what, shape in TOKEN_SHAPES.items():
            if shape.search(line):
                findings.append(f"{path}:{number}: looks like {what}")
    return findings


# --- containers ----------------------------------------------------------------------------------

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
STRIMZI_GROUP = "kafka.strimzi.io/"
# Strimzi kinds that make no pods of their own.
STRIMZI_WITHOUT_PODS = {"KafkaTopic", "KafkaUser", "KafkaRebalance", "KafkaConnector"}


def pod_spec(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind in POD_KINDS:
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind == "Pod":
        return obj["spec"]
    return None


def _where(obj: dict) -> str:
    meta = obj.get("metadata", {})
    return f"{obj['kind']}/{meta.get('namespace', '')}/{meta.get('name', '')}"


def container_context_errors(sc: dict | None) -> list[str]:
    """What a container's own securityContext lacks (the pod-level fields are checked apart)."""
    sc = sc or {}
    errors = []
    if sc.get("readOnlyRootFilesystem") is not True:
        errors.append("readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append("allowPrivilegeEscalation is not false")
    capabilities = sc.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        errors.append("capabilities do not drop ALL")
    if capabilities.get("add"):
        errors.append(f"capabilities add {capabilities['add']}")
    if sc.get("privileged"):
        errors.append("privileged")
    if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
        errors.append("runs as root")
    if sc.get("seccompProfile") and sc["seccompProfile"].get("type") != "RuntimeDefault":
        errors.append(f"seccompProfile {sc['seccompProfile'].get('type')}")
    return errors


def pod_context_errors(sc: dict | None) -> list[str]:
    sc = sc or {}
    errors = []
    if sc.get("runAsNonRoot") is not True:
        errors.append("runAsNonRoot is not true")
    if sc.get("runAsUser") == 0:
        errors.append("runAsUser is 0")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        errors.append("seccompProfile is not RuntimeDefault")
    return errors


def workload_errors(obj: dict) -> list[str]:
    pod = pod_spec(obj)
    if pod is None:
        return []
    where = _where(obj)
    errors = []
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            errors.append(f"{where}: {flag}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])}
    for volume in volumes.values():
        if "hostPath" in volume:
            errors.append(f"{where}: volume {volume['name']} is a hostPath")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        sc = c.get("securityContext") or {}
        # A container inherits the pod's runAsNonRoot, runAsUser and seccompProfile unless it sets its own.
        effective = {**{k: pod_sc[k] for k in ("runAsNonRoot", "runAsUser", "seccompProfile") if k in pod_sc}, **sc}
        problems = container_context_errors(sc) + pod_context_errors(effective)
        errors += [f"{where}/{c['name']}: {p}" for p in dict.fromkeys(problems)]
        for mount in c.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            persistent = mount["name"] in claims or "persistentVolumeClaim" in volume or "ephemeral" in volume
            if not mount.get("readOnly") and not persistent and "emptyDir" not in volume:
                errors.append(f"{where}/{c['name']}: {mount['mountPath']} is writable but not an emptyDir or a persistent volume")
    return errors


def strimzi_errors(obj: dict) -> list[str]:
    """The pod templates of a Strimzi resource: the pods and containers the operator makes."""
    kind, spec, where = obj["kind"], obj.get("spec", {}), _where(obj)
    errors = []

    def pod(template: dict, path: str, required: bool = True):
        sc = ((template or {}).get("pod") or {}).get("securityContext")
        if sc is None and not required:
            return
        errors.extend(f"{where}: {path}.pod.securityContext: {p}" for p in pod_context_errors(sc))

    def container(template: dict, field: str, path: str, required: bool = True):
        sc = ((template or {}).get(field) or {}).get("securityContext")
        if sc is None and not required:
            return
        errors.extend(f"{where}: {path}.{field}.securityContext: {p}" for p in container_context_errors(sc))

    if kind == "Kafka":
        template = spec.get("kafka", {}).get("template")
        pod(template, "spec.kafka.template")
        container(template, "kafkaContainer", "spec.kafka.template")
        container(template, "initContainer", "spec.kafka.template")
        operators = spec.get("entityOperator")
        if operators is not None:
            template = operators.get("template")
            pod(template, "spec.entityOperator.template")
            for operator in ("topicOperator", "userOperator"):
                if operator in operators:
                    container(template, f"{operator}Container", "spec.entityOperator.template")
        for component, field in (("cruiseControl", "cruiseControlContainer"), ("kafkaExporter", "container")):
            if component in spec:
                template = spec[component].get("template")
                pod(template, f"spec.{component}.template")
                container(template, field, f"spec.{component}.template")
    elif kind == "KafkaNodePool":
        # A pool's own template replaces the Kafka resource's: whatever it sets must be as strict.
        template = spec.get("template")
        pod(template, "spec.template", required=False)
        container(template, "kafkaContainer", "spec.template", required=False)
        container(template, "initContainer", "spec.template", required=False)
    elif kind not in STRIMZI_WITHOUT_PODS:
        errors.append(f"{where}: no hardening check for Strimzi kind {kind}")
    return errors


def security_errors(objects: list[dict]) -> list[str]:
    errors = []
    for obj in objects:
        errors += workload_errors(obj)
        if str(obj.get("apiVersion", "")).startswith(STRIMZI_GROUP):
            errors += strimzi_errors(obj)
    return errors


# --- env values and datastore URLs ----------------------------------------------------------------

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
SECRET_NAME = re.compile(r"(?i)password|passwd|secret|token|api_?key")


def env_errors(objects: list[dict]) -> list[str]:
    config_maps = {
        (o["metadata"].get("namespace", ""), o["metadata"]["name"]): set(o.get("data", {}))
        for o in objects
        if o["kind"] == "ConfigMap"
    }
    errors = []
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            for name, value in obj.get("data", {}).items():
                for match in CREDENTIAL_URL.finditer(value):
                    if not _is_reference(match.group("password"), False):
                        errors.append(f"{_where(obj)}: {name}: a {match.group('scheme')} URL carries a literal password")
        pod = pod_spec(obj)
        if pod is None:
            continue
        ns = obj["metadata"].get("namespace", "")
        secret_volumes = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            where = f"{_where(obj)}/{c['name']}"
            secret_mounts = [m["mountPath"].rstrip("/") + "/" for m in c.get("volumeMounts", []) if m["name"] in secret_volumes]
            defined: dict[str, dict] = {}
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                for key in config_maps.get((ns, ref), set()):
                    defined[source.get("prefix", "") + key] = {"name": key, "valueFrom": {"configMapKeyRef": {}}}
            strings = []
            for env in c.get("env", []):
                value = env.get("value")
                if isinstance(value, str):
                    for ref in VAR_REF.findall(value):
                        if ref not in defined:
                            errors.append(f"{where}: env {env['name']} uses $({ref}), which is not defined before it")
                    strings.append((f"env {env['name']}", value))
                    if env["name"].endswith("_FILE") and SECRET_NAME.search(env["name"]):
                        # A file that holds the secret: it must be one a Secret volume mounts.
                        if not any(value.startswith(mount) for mount in secret_mounts):
                            errors.append(f"{where}: env {env['name']} names {value}, which no Secret volume of the container holds")
                    elif SECRET_NAME.search(env["name"]) and value and not VAR_REF.fullmatch(value):
                        errors.append(f"{where}: env {env['name']} is a literal value, not a secretKeyRef")
                defined[env["name"]] = env
            for field in ("command", "args"):
                for value in c.get(field) or []:
                    for ref in VAR_REF.findall(value):
                        if ref not in defined:
                            errors.append(f"{where}: {field} uses $({ref}), which is not an env variable of the container")
                        elif "secretKeyRef" in defined[ref].get("valueFrom", {}):
                            errors.append(f"{where}: {field} puts $({ref}), a Secret's value, on the command line")
                    strings.append((field, value))
            for what, value in strings:
                for match in CREDENTIAL_URL.finditer(value):
                    password = match.group("password")
                    ref = VAR_REF.fullmatch(password)
                    source = defined.get(ref.group(1), {}) if ref else {}
                    if "secretKeyRef" not in source.get("valueFrom", {}):
                        errors.append(
                            f"{where}: {what}: the password of its {match.group('scheme')} URL is not $(VAR) of a secretKeyRef variable"
                        )
    return errors


# --- MongoDB users ------------------------------------------------------------------------------


def mongodb_users(script: str) -> list[dict]:
    """The USERS list of k8s/base/mongodb-users.js (plain JSON between `const USERS =` and `];`)."""
    match = re.search(r"^const USERS = (\[.*?^\]);", script, re.S | re.M)
    if match is None:
        raise ValueError("mongodb-users.js has no `const USERS = [...];`")
    return json.loads(match.group(1))
