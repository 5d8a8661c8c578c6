"""Renders the kustomizations of k8s/ and checks what a cluster would check, without a cluster.

- `render` runs kustomize on a copy of k8s/ and grafana/ in which every git-ignored secret env file
  is filled from its committed `.example`, so the real credentials never need to exist here.
- `schema_errors` validates each object: built-in kinds against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict: unknown fields are errors), custom resources against the CRDs
  that `dev/tools install k8s-schemas` caches (Strimzi, Gateway API, GKE's BackendConfig,
  FrontendConfig, ManagedCertificate and HealthCheckPolicy, KEDA).
- `reference_errors` follows every reference between objects (Service selectors and ports,
  Ingress and HTTPRoute backends, the Ingress's ManagedCertificates and FrontendConfig and the
  Services' BackendConfigs named in annotations, Secret and ConfigMap keys, volumes, PVCs, service accounts,
  the KEDA ScaledObject's target, Kafka address, topic and consumer group, health-check policy
  targets, PDB selectors, Strimzi cluster labels, `<service>.<namespace>.svc` addresses in
  configuration) and returns one message per broken one.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"

# Objects the manifests use but operators create outside kustomize (docs/DEPLOY.md says how).
EXTERNAL = {
    ("Secret", "ingest", "bandvote-grpc-tls"),
}

# Namespaces that exist in every cluster.
SYSTEM_NAMESPACES = {"kube-system", "default", "kube-public"}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def render(kustomize: str, repo: Path, work: Path, kustomization: str) -> list[dict]:
    """`kustomize build` of `kustomization` (a folder relative to the repository) on a copy."""
    for folder in ("k8s", "grafana"):
        dest = work / folder
        if not dest.exists():
            shutil.copytree(repo / folder, dest, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    for example in (work / "k8s").rglob("*.env.example"):
        real = example.with_name(example.name.removesuffix(".example"))
        if not real.exists():
            shutil.copy(example, real)
    result = subprocess.run(
        [kustomize, "build", str(work / kustomization)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"kustomize build {kustomization} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def key(obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return obj["kind"], meta.get("namespace", ""), meta.get("name", "")


# --- schemas -------------------------------------------------------------------------------------


def load_crds(crd_dir: Path) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the openAPIV3Schema of every served version of every cached CRD."""
    schemas = {}
    for path in sorted(crd_dir.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if version.get("served", True):
                    schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def _strict(schema):
    """A structural schema as the API server applies it with strict field validation (kubectl's
    default): an object with declared properties refuses fields it does not declare, unless it
    preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def crd_errors(obj: dict, crds: dict) -> list[str]:
    schema = crds.get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        return [f"{'/'.join(key(obj))}: no CRD schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    body = copy.deepcopy(obj)
    body.pop("status", None)
    # The API server takes apiVersion, kind and metadata at the root of every object, declared in
    # the CRD's schema or not (ManagedCertificate's declares only spec and status).
    schema = copy.deepcopy(schema)
    root = schema.setdefault("properties", {})
    for name, kind in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
        root.setdefault(name, {"type": kind})
    validator = jsonschema.Draft7Validator(_strict(schema))
    return [
        f"{'/'.join(key(obj))}: {'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(body)
    ]


def schema_errors(objects: list[dict], crds: dict) -> list[str]:
    errors = []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in crds:
            errors += crd_errors(obj, crds)
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path) or "<root>"
            errors.append(f"{'/'.join(key(obj))}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{'/'.join(key(obj))}: no schema for {obj.get('apiVersion')} {obj.get('kind')}")
    return errors


# --- references ----------------------------------------------------------------------------------


def pod_template(obj: dict) -> dict | None:
    if obj["kind"] in WORKLOAD_KINDS:
        return obj["spec"]["template"]
    return None


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec.get("containers", [])


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels/matchExpressions, or a plain map) matches labels."""
    if not selector:
        return True
    structured = "matchLabels" in selector or "matchExpressions" in selector
    match_labels = selector.get("matchLabels", {}) if structured else selector
    for k, v in match_labels.items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr.get("values", []):
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


class Index:
    def __init__(self, objects: list[dict]):
        self.objects = objects
        self.by_key = {key(o): o for o in objects}
        self.pods = [
            (o, pod_template(o)) for o in objects if pod_template(o) is not None
        ]  # (workload, template)

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        return self.by_key.get((kind, namespace, name))

    def exists(self, kind: str, namespace: str, name: str) -> bool:
        return (kind, namespace, name) in self.by_key or (kind, namespace, name) in EXTERNAL

    def pods_selected(self, namespace: str, selector: dict) -> list[tuple[dict, dict]]:
        return [
            (w, t)
            for w, t in self.pods
            if w["metadata"].get("namespace") == namespace and selects(selector, t["metadata"].get("labels", {}))
        ]

    def data_keys(self, kind: str, namespace: str, name: str) -> set[str] | None:
        obj = self.get(kind, namespace, name)
        if obj is None:
            return None
        return set(obj.get("data", {})) | set(obj.get("stringData", {})) | set(obj.get("binaryData", {}))

    def data_values(self) -> list[tuple[dict, str]]:
        """Every string of configuration: env values, ConfigMap and Secret data."""
        values = []
        for obj in self.objects:
            if obj["kind"] == "ConfigMap":
                values += [(obj, v) for v in obj.get("data", {}).values()]
            elif obj["kind"] == "Secret":
                values += [(obj, base64.b64decode(v).decode()) for v in obj.get("data", {}).values()]
                values += [(obj, v) for v in obj.get("stringData", {}).values()]
            template = pod_template(obj)
            if template:
                for c in containers(template["spec"]):
                    values += [(obj, e["value"]) for e in c.get("env", []) if isinstance(e.get("value"), str)]
        return values


# The annotations by which GKE's Ingress controller finds its ManagedCertificates (a comma-separated
# list), its FrontendConfig, and a Service's BackendConfigs (JSON: {"ports": {port: name}} and/or
# {"default": name}).
MANAGED_CERTIFICATES = "networking.gke.io/managed-certificates"
FRONTEND_CONFIG = "networking.gke.io/v1beta1.FrontendConfig"
BACKEND_CONFIG = "cloud.google.com/backend-config"

SVC_ADDRESS = re.compile(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)")


def service_port(service: dict, port) -> dict | None:
    for p in service["spec"].get("ports", []):
        if port in (p.get("port"), p.get("name")):
            return p
    return None


def reference_errors(objects: list[dict]) -> list[str]:
    idx = Index(objects)
    errors: list[str] = []

    def where(obj):
        return "/".join(key(obj))

    namespaces = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"} | SYSTEM_NAMESPACES
    for obj in objects:
        ns = obj.get("metadata", {}).get("namespace")
        if ns and ns not in namespaces:
            errors.append(f"{where(obj)}: namespace {ns} is not defined")

    kafka_listeners = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): {l["port"] for l in o["spec"]["kafka"]["listeners"]}
        for o in objects
        if o["kind"] == "Kafka"
    }

    for obj in objects:
        kind, ns, name = key(obj)
        spec = obj.get("spec", {})

        template = pod_template(obj)
        if template is not None:
            pod = template["spec"]
            labels = template["metadata"].get("labels", {})
            if not selects(spec.get("selector", {}), labels):
                errors.append(f"{where(obj)}: selector does not match its own pod template labels")
            sa = pod.get("serviceAccountName")
            if sa and not idx.exists("ServiceAccount", ns, sa):
                errors.append(f"{where(obj)}: serviceAccountName {sa} does not exist")
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            claim_templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
            for vol in volumes.values():
                if "secret" in vol:
                    ref = vol["secret"]["secretName"]
                    keys = idx.data_keys("Secret", ns, ref)
                    if keys is None and not idx.exists("Secret", ns, ref):
                        errors.append(f"{where(obj)}: volume {vol['name']}: Secret {ref} does not exist")
                    for item in vol["secret"].get("items", []):
                        if keys is not None and item["key"] not in keys:
                            errors.append(f"{where(obj)}: volume {vol['name']}: Secret {ref} has no key {item['key']}")
                if "configMap" in vol:
                    ref = vol["configMap"]["name"]
                    keys = idx.data_keys("ConfigMap", ns, ref)
                    if keys is None:
                        errors.append(f"{where(obj)}: volume {vol['name']}: ConfigMap {ref} does not exist")
                    for item in vol["configMap"].get("items", []):
                        if keys is not None and item["key"] not in keys:
                            errors.append(f"{where(obj)}: volume {vol['name']}: ConfigMap {ref} has no key {item['key']}")
                if "persistentVolumeClaim" in vol:
                    claim = vol["persistentVolumeClaim"]["claimName"]
                    if not idx.exists("PersistentVolumeClaim", ns, claim):
                        errors.append(f"{where(obj)}: volume {vol['name']}: PersistentVolumeClaim {claim} does not exist")
            for c in containers(pod):
                for mount in c.get("volumeMounts", []):
                    if mount["name"] not in volumes and mount["name"] not in claim_templates:
                        errors.append(f"{where(obj)}: container {c['name']} mounts undefined volume {mount['name']}")
                for env in c.get("env", []):
                    source = env.get("valueFrom", {})
                    for ref_kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                        if field in source:
                            ref = source[field]
                            keys = idx.data_keys(ref_kind, ns, ref["name"])
                            if keys is None:
                                errors.append(f"{where(obj)}: env {env['name']}: {ref_kind} {ref['name']} does not exist")
                            elif ref["key"] not in keys:
                                errors.append(f"{where(obj)}: env {env['name']}: {ref_kind} {ref['name']} has no key {ref['key']}")
                for source in c.get("envFrom", []):
                    for ref_kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                        if field in source and idx.data_keys(ref_kind, ns, source[field]["name"]) is None:
                            errors.append(f"{where(obj)}: envFrom {ref_kind} {source[field]['name']} does not exist")
                port_names = {p.get("name") for p in c.get("ports", [])}
                for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                    probe = c.get(probe_name) or {}
                    for handler in ("httpGet", "tcpSocket", "grpc"):
                        port = (probe.get(handler) or {}).get("port")
                        if isinstance(port, str) and port not in port_names:
                            errors.append(f"{where(obj)}: container {c['name']} {probe_name} uses unknown port {port}")
            if kind == "StatefulSet":
                service = idx.get("Service", ns, spec.get("serviceName", ""))
                if service is None:
                    errors.append(f"{where(obj)}: serviceName {spec.get('serviceName')} is not a Service")

        if kind == "Service" and spec.get("selector"):
            selected = idx.pods_selected(ns, spec["selector"])
            if not selected:
                errors.append(f"{where(obj)}: selector {spec['selector']} matches no pods")
            for port in spec.get("ports", []):
                target = port.get("targetPort", port["port"])
                for workload, template in selected:
                    declared = [p for c in containers(template["spec"]) for p in c.get("ports", [])]
                    if not any(target in (p.get("name"), p.get("containerPort")) for p in declared):
                        errors.append(f"{where(obj)}: port {port.get('name')} targets {target}, which {'/'.join(key(workload))} does not expose")

        if kind == "Ingress":
            backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
            for rule in spec.get("rules", []):
                backends += [p["backend"] for p in rule.get("http", {}).get("paths", [])]
            for backend in backends:
                svc_ref = backend["service"]
                service = idx.get("Service", ns, svc_ref["name"])
                port = svc_ref["port"].get("number", svc_ref["port"].get("name"))
                if service is None:
                    errors.append(f"{where(obj)}: backend Service {svc_ref['name']} does not exist")
                elif service_port(service, port) is None:
                    errors.append(f"{where(obj)}: backend Service {svc_ref['name']} has no port {port}")
            annotations = obj["metadata"].get("annotations", {})
            for cert in filter(None, (c.strip() for c in annotations.get(MANAGED_CERTIFICATES, "").split(","))):
                if idx.get("ManagedCertificate", ns, cert) is None:
                    errors.append(f"{where(obj)}: {MANAGED_CERTIFICATES}: ManagedCertificate {cert} does not exist")
            frontend = annotations.get(FRONTEND_CONFIG)
            if frontend is not None and idx.get("FrontendConfig", ns, frontend) is None:
                errors.append(f"{where(obj)}: {FRONTEND_CONFIG}: FrontendConfig {frontend} does not exist")

        if kind == "Service" and BACKEND_CONFIG in obj["metadata"].get("annotations", {}):
            config = json.loads(obj["metadata"]["annotations"][BACKEND_CONFIG])
            named = [(port, name) for port, name in config.get("ports", {}).items()]
            named += [(None, config["default"])] if "default" in config else []
            for port, name in named:
                if idx.get("BackendConfig", ns, name) is None:
                    errors.append(f"{where(obj)}: {BACKEND_CONFIG}: BackendConfig {name} does not exist")
                if port is not None and service_port(obj, int(port) if port.isdigit() else port) is None:
                    errors.append(f"{where(obj)}: {BACKEND_CONFIG}: the Service has no port {port}")

        if kind == "HTTPRoute" or kind == "GRPCRoute":
            for parent in spec.get("parentRefs", []):
                gateway = idx.get("Gateway", parent.get("namespace", ns), parent["name"])
                if gateway is None:
                    errors.append(f"{where(obj)}: parent Gateway {parent['name']} does not exist")
                elif "sectionName" in parent and parent["sectionName"] not in {
                    l["name"] for l in gateway["spec"]["listeners"]
                }:
                    errors.append(f"{where(obj)}: Gateway {parent['name']} has no listener {parent['sectionName']}")
            for rule in spec.get("rules", []):
                for backend in rule.get("backendRefs", []):
                    service = idx.get("Service", backend.get("namespace", ns), backend["name"])
                    if service is None:
                        errors.append(f"{where(obj)}: backend Service {backend['name']} does not exist")
                    elif service_port(service, backend.get("port")) is None:
                        errors.append(f"{where(obj)}: backend Service {backend['name']} has no port {backend.get('port')}")

        if kind == "Gateway":
            for listener in spec.get("listeners", []):
                for cert in (listener.get("tls") or {}).get("certificateRefs", []):
                    if not idx.exists(cert.get("kind", "Secret"), cert.get("namespace", ns), cert["name"]):
                        errors.append(f"{where(obj)}: listener {listener['name']}: Secret {cert['name']} does not exist")

        if kind == "HealthCheckPolicy":
            target = spec["targetRef"]
            if idx.get(target["kind"], target.get("namespace", ns), target["name"]) is None:
                errors.append(f"{where(obj)}: targetRef {target['kind']} {target['name']} does not exist")

        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = spec["scaleTargetRef"]
            workload = idx.get(target.get("kind", "Deployment"), ns, target["name"])
            if workload is None:
                errors.append(f"{where(obj)}: scaleTargetRef {target.get('kind', 'Deployment')} {target['name']} does not exist")
            for trigger in (t for t in spec.get("triggers", []) if t["type"] == "kafka"):
                errors += kafka_trigger_errors(where(obj), trigger["metadata"], workload, kafka_listeners, objects)
            for trigger in spec.get("triggers", []):
                auth = trigger.get("authenticationRef")
                if auth and not idx.exists(auth.get("kind", "TriggerAuthentication"), ns, auth["name"]):
                    errors.append(f"{where(obj)}: authenticationRef {auth.get('kind', 'TriggerAuthentication')} {auth['name']} does not exist")

        def secret_key_errors(what: str, ref: dict) -> list[str]:
            keys = idx.data_keys("Secret", ns, ref["name"])
            if keys is None:
                return [f"{where(obj)}: {what} Secret {ref['name']} does not exist"]
            return [] if ref["key"] in keys else [f"{where(obj)}: {what} Secret {ref['name']} has no key {ref['key']}"]

        if kind == "TriggerAuthentication":
            for ref in spec.get("secretTargetRef", []):
                errors += secret_key_errors(f"parameter {ref['parameter']}:", ref)

        if kind == "KafkaUser":
            ref = ((spec.get("authentication") or {}).get("password") or {}).get("valueFrom", {}).get("secretKeyRef")
            if ref:
                errors += secret_key_errors("the password's", ref)

        if kind == "PodDisruptionBudget":
            if not idx.pods_selected(ns, spec.get("selector", {})):
                errors.append(f"{where(obj)}: selector {spec.get('selector')} matches no pods")

        if kind == "NetworkPolicy" and spec.get("podSelector"):
            if not idx.pods_selected(ns, spec["podSelector"]):
                errors.append(f"{where(obj)}: podSelector {spec['podSelector']} matches no pods")

        if kind in {"KafkaNodePool", "KafkaTopic", "KafkaUser"}:
            cluster = obj["metadata"].get("labels", {}).get("strimzi.io/cluster")
            if (ns, cluster) not in kafka_listeners:
                errors.append(f"{where(obj)}: strimzi.io/cluster {cluster} is not a Kafka in {ns}")

    # Addresses written into configuration must name a Service (or a Strimzi bootstrap) and port.
    for obj, value in idx.data_values():
        for name, ns, port in SVC_ADDRESS.findall(value):
            port = int(port)
            service = idx.get("Service", ns, name)
            if service is not None:
                if service_port(service, port) is None:
                    errors.append(f"{where(obj)}: {name}.{ns}.svc has no port {port}")
                continue
            cluster = name.removesuffix("-kafka-bootstrap")
            if name.endswith("-kafka-bootstrap") and (ns, cluster) in kafka_listeners:
                if port not in kafka_listeners[(ns, cluster)]:
                    errors.append(f"{where(obj)}: Kafka {cluster} has no listener on port {port}")
                continue
            errors.append(f"{where(obj)}: {name}.{ns}.svc:{port} is not a Service of these manifests")

    # Every KAFKA_TOPIC in configuration must be a KafkaTopic.
    topics = {o["spec"].get("topicName", o["metadata"]["name"]) for o in objects if o["kind"] == "KafkaTopic"}
    for obj in objects:
        if obj["kind"] == "ConfigMap" and "KAFKA_TOPIC" in obj.get("data", {}):
            topic = obj["data"]["KAFKA_TOPIC"]
            for needed in (topic, f"{topic}.dlq"):
                if needed not in topics:
                    errors.append(f"{where(obj)}: topic {needed} is not a KafkaTopic")
    return errors


def kafka_trigger_errors(where: str, metadata: dict, workload: dict | None, kafka_listeners: dict, objects: list[dict]) -> list[str]:
    """A KEDA Kafka trigger must read the brokers, topic and consumer group its target uses."""
    errors = []
    for address in metadata.get("bootstrapServers", "").split(","):
        found = SVC_ADDRESS.fullmatch(address.strip())
        cluster = found and found[1].removesuffix("-kafka-bootstrap")
        if not found or not found[1].endswith("-kafka-bootstrap") or (found[2], cluster) not in kafka_listeners:
            errors.append(f"{where}: bootstrapServers {address} is not a Strimzi bootstrap of these manifests")
        elif int(found[3]) not in kafka_listeners[(found[2], cluster)]:
            errors.append(f"{where}: Kafka {cluster} has no listener on port {found[3]}")
    topics = {o["spec"].get("topicName", o["metadata"]["name"]) for o in objects if o["kind"] == "KafkaTopic"}
    if metadata.get("topic") not in topics:
        errors.append(f"{where}: topic {metadata.get('topic')} is not a KafkaTopic")
    if workload is not None:
        groups = {
            e.get("value")
            for c in containers(workload["spec"]["template"]["spec"])
            for e in c.get("env", [])
            if e["name"] == "KAFKA_GROUP"
        }
        if metadata.get("consumerGroup") not in groups:
            errors.append(f"{where}: consumerGroup {metadata.get('consumerGroup')} is not the KAFKA_GROUP of {workload['metadata']['name']} ({sorted(groups)})")
    return errors


def assert_break_reported(objects: list[dict], mutate, check, expected: str) -> None:
    """A rule's check passes on a copy of `objects`, and reports `expected` once `mutate` broke it."""
    objects = copy.deepcopy(objects)
    assert not check(objects)
    mutate(objects)
    errors = check(objects)
    assert any(expected in e for e in errors), f"expected an error containing {expected!r}, got {errors}"
