"""k8s/: every kustomization renders, every object validates, every reference resolves, and the
deployment has the shape the design asks for (namespaces, Strimzi KRaft, routes, scaling,
hardening). No cluster is needed: see k8s_model.py for how each check works."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from k8s_model import load_crds, reference_errors, render, schema_errors, crd_errors

OVERLAYS = ["k8s/base", "k8s/overlays/gke"]


def kustomizations(repo: Path) -> list[str]:
    found = sorted(str(p.parent.relative_to(repo)) for p in repo.glob("k8s/**/kustomization.yaml"))
    found += sorted(str(p.parent.relative_to(repo)) for p in repo.glob("grafana/**/kustomization.yaml"))
    return found


@pytest.fixture(scope="module")
def rendered(kustomize, repo, tmp_path_factory) -> dict[str, list[dict]]:
    work = tmp_path_factory.mktemp("k8s")
    return {k: render(kustomize, repo, work, k) for k in kustomizations(repo)}


@pytest.fixture(scope="module")
def crds(crd_dir):
    loaded = load_crds(crd_dir)
    for needed in [("kafka.strimzi.io/v1", k) for k in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser")] + [
        ("gateway.networking.k8s.io/v1", k) for k in ("Gateway", "HTTPRoute")
    ] + [
        ("cloud.google.com/v1", "BackendConfig"),
        ("networking.gke.io/v1", "HealthCheckPolicy"),
        ("networking.gke.io/v1", "ManagedCertificate"),
        ("networking.gke.io/v1beta1", "FrontendConfig"),
    ] + [
        ("keda.sh/v1alpha1", k) for k in ("ScaledObject", "TriggerAuthentication")
    ]:
        assert needed in loaded, f"the cached CRDs lack {needed}; run dev/tools install k8s-schemas"
    return loaded


def objects_of(rendered, kustomization, kind):
    return [o for o in rendered[kustomization] if o["kind"] == kind]


def by_name(objects, kind, name):
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert matches, f"no {kind} {name}"
    return matches[0]


def test_every_kustomization_renders(rendered, repo):
    assert set(OVERLAYS) <= set(rendered), f"expected kustomizations {OVERLAYS}, found {sorted(rendered)}"
    for name, objects in rendered.items():
        assert objects, f"{name} renders nothing"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_its_schema(rendered, crds, overlay):
    errors = schema_errors(rendered[overlay], crds)
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_between_objects_resolves(rendered, overlay):
    errors = reference_errors(rendered[overlay])
    assert not errors, "\n".join(errors)


# --- the checks can fail ------------------------------------------------------------------------


def _find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name))


def _container(objects, workload, name=None):
    pod = _find(objects, "Deployment", workload)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if name is None or c["name"] == name)


def break_service_selector(objs):
    _find(objs, "Service", "ingest-http")["spec"]["selector"] = {"app": "ingest-htp"}


def break_service_target_port(objs):
    _find(objs, "Service", "ingest-grpc")["spec"]["ports"][1]["targetPort"] = "grcp"


def break_ingress_service(objs):
    _find(objs, "Ingress", "bandvote")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "ingest-rpc"


def break_ingress_port(objs):
    path = _find(objs, "Ingress", "bandvote")["spec"]["rules"][0]["http"]["paths"][1]
    path["backend"]["service"]["port"] = {"number": 8081}


def break_secret_key(objs):
    env = _container(objs, "consumer")["env"]
    next(e for e in env if e["name"] == "MONGO_CONSUMER_PASSWORD")["valueFrom"]["secretKeyRef"]["key"] = "MONGO_PASSWORD"


def break_secret_name(objs):
    stateful = _find(objs, "StatefulSet", "redis")
    stateful["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] = "redis-password"


def break_configmap_ref(objs):
    _container(objs, "ingest-http")["envFrom"][0]["configMapRef"]["name"] = "kafka-clients"


def break_configmap_key(objs):
    volumes = _find(objs, "StatefulSet", "redis")["spec"]["template"]["spec"]["volumes"]
    next(v for v in volumes if v["name"] == "config")["configMap"]["items"][0]["key"] = "redis.cnf"


def break_pvc(objs):
    pod = _find(objs, "Deployment", "grafana")["spec"]["template"]["spec"]
    pod["volumes"].append({"name": "extra", "persistentVolumeClaim": {"claimName": "grafana-data"}})


def break_service_account(objs):
    _find(objs, "Deployment", "consumer")["spec"]["template"]["spec"]["serviceAccountName"] = "consumers"


def break_scaler_target(objs):
    _find(objs, "ScaledObject", "consumer")["spec"]["scaleTargetRef"]["name"] = "consumers"


def _kafka_trigger(objs):
    return _find(objs, "ScaledObject", "consumer")["spec"]["triggers"][0]["metadata"]


def break_scaler_group(objs):
    _kafka_trigger(objs)["consumerGroup"] = "consumer"


def break_scaler_topic(objs):
    _kafka_trigger(objs)["topic"] = "vote"


def break_scaler_brokers(objs):
    _kafka_trigger(objs)["bootstrapServers"] = "bandvote-kafka-bootstrap.kafka.svc:9093"


def break_pdb_selector(objs):
    _find(objs, "PodDisruptionBudget", "ingest-wasm")["spec"]["selector"]["matchLabels"]["app"] = "wasm"


def break_kafka_address(objs):
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("kafka-client"))
    cm["data"]["KAFKA_BROKERS"] = "bandvote-kafka-bootstrap.kafka.svc.cluster.local:9093"


def break_topic(objs):
    next(o for o in objs if o["kind"] == "KafkaTopic" and o["metadata"]["name"] == "votes-dlq")["spec"]["topicName"] = "votes-dlq"


def break_strimzi_cluster_label(objs):
    _find(objs, "KafkaNodePool", "dual-role")["metadata"]["labels"]["strimzi.io/cluster"] = "votes"


def break_volume_mount(objs):
    _container(objs, "grafana")["volumeMounts"][0]["name"] = "grafana-data"


def break_health_check_target(objs):
    _find(objs, "HealthCheckPolicy", "ingest-grpc-health")["spec"]["targetRef"]["name"] = "ingest-rpc"


def break_trigger_authentication(objs):
    _find(objs, "ScaledObject", "consumer")["spec"]["triggers"][0]["authenticationRef"]["name"] = "consumer-kafka"


def break_trigger_authentication_secret(objs):
    _find(objs, "TriggerAuthentication", "consumer-kafka-lag")["spec"]["secretTargetRef"][1]["key"] = "KAFKA_PASSWORD"


def break_kafka_user_secret(objs):
    user = _find(objs, "KafkaUser", "ingest")
    user["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"]["name"] = "kafka-ingest"


def break_managed_certificate(objs):
    _find(objs, "Ingress", "bandvote")["metadata"]["annotations"]["networking.gke.io/managed-certificates"] = "bandvote"


def break_frontend_config(objs):
    _find(objs, "Ingress", "bandvote")["metadata"]["annotations"]["networking.gke.io/v1beta1.FrontendConfig"] = "bandvote"


def break_backend_config(objs):
    annotations = _find(objs, "Service", "ingest-http")["metadata"]["annotations"]
    annotations["cloud.google.com/backend-config"] = '{"ports": {"http": "ingest-health"}}'


def break_backend_config_port(objs):
    annotations = _find(objs, "Service", "ingest-grpc")["metadata"]["annotations"]
    annotations["cloud.google.com/backend-config"] = '{"ports": {"htp": "ingest-serving-health"}}'


def break_probe_port(objs):
    _container(objs, "ingest-wasm", "producer")["readinessProbe"]["httpGet"]["port"] = "http"


BREAKS = {
    "service selector": (break_service_selector, "matches no pods"),
    "service target port": (break_service_target_port, "targets grcp"),
    "ingress service": (break_ingress_service, "Service ingest-rpc does not exist"),
    "ingress port": (break_ingress_port, "has no port 8081"),
    "secret key": (break_secret_key, "has no key MONGO_PASSWORD"),
    "secret name": (break_secret_name, "Secret redis-password does not exist"),
    "configmap name": (break_configmap_ref, "ConfigMap kafka-clients does not exist"),
    "configmap key": (break_configmap_key, "has no key redis.cnf"),
    "persistent volume claim": (break_pvc, "PersistentVolumeClaim grafana-data does not exist"),
    "service account": (break_service_account, "serviceAccountName consumers does not exist"),
    "scaler target": (break_scaler_target, "Deployment consumers does not exist"),
    "scaler consumer group": (break_scaler_group, "consumerGroup consumer is not the KAFKA_GROUP of consumer"),
    "scaler topic": (break_scaler_topic, "topic vote is not a KafkaTopic"),
    "scaler brokers": (break_scaler_brokers, "Kafka bandvote has no listener on port 9093"),
    "pdb selector": (break_pdb_selector, "matches no pods"),
    "address in configuration": (break_kafka_address, "no listener on port 9093"),
    "dead-letter topic": (break_topic, "topic votes.dlq is not a KafkaTopic"),
    "strimzi cluster label": (break_strimzi_cluster_label, "strimzi.io/cluster votes"),
    "volume mount": (break_volume_mount, "mounts undefined volume grafana-data"),
    "probe port": (break_probe_port, "readinessProbe uses unknown port http"),
    "health check target": (break_health_check_target, "targetRef Service ingest-rpc does not exist"),
    "trigger authentication": (break_trigger_authentication, "authenticationRef TriggerAuthentication consumer-kafka does not exist"),
    "trigger authentication secret": (break_trigger_authentication_secret, "has no key KAFKA_PASSWORD"),
    "kafka user password secret": (break_kafka_user_secret, "the password's Secret kafka-ingest does not exist"),
    "managed certificate": (break_managed_certificate, "ManagedCertificate bandvote does not exist"),
    "frontend config": (break_frontend_config, "FrontendConfig bandvote does not exist"),
    "backend config": (break_backend_config, "BackendConfig ingest-health does not exist"),
    "backend config port": (break_backend_config_port, "the Service has no port htp"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKS))
def test_a_broken_reference_is_reported(rendered, breakage):
    objects = copy.deepcopy(rendered["k8s/overlays/gke"])
    assert not reference_errors(objects)
    mutate, expected = BREAKS[breakage]
    mutate(objects)
    errors = reference_errors(objects)
    assert any(expected in e for e in errors), f"expected an error containing {expected!r}, got {errors}"


def test_a_custom_resource_that_breaks_its_crd_is_reported(rendered, crds):
    objects = copy.deepcopy(rendered["k8s/overlays/gke"])
    topic = _find(objects, "KafkaTopic", "votes")
    topic["spec"]["partitions"] = "six"
    assert any("partitions" in e for e in crd_errors(topic, crds))
    kafka = _find(objects, "Kafka", "bandvote")
    del kafka["spec"]["kafka"]["listeners"]
    assert any("listeners" in e for e in crd_errors(kafka, crds))
    pool = _find(objects, "KafkaNodePool", "dual-role")
    pool["spec"]["storage"]["volumez"] = []
    assert any("volumez" in e for e in crd_errors(pool, crds))
    route = _find(objects, "HTTPRoute", "ingest-grpc")
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = "grpc"
    assert any("port" in e for e in crd_errors(route, crds))
    health = _find(objects, "BackendConfig", "ingest-serving-health")
    health["spec"]["healthCheck"]["requestPaths"] = ["/healthz"]
    assert any("requestPaths" in e for e in crd_errors(health, crds))
    policy = _find(objects, "HealthCheckPolicy", "ingest-grpc-health")
    policy["spec"]["default"]["config"]["httpHealthCheck"]["port"] = 0
    assert any("port" in e for e in crd_errors(policy, crds))
    certificate = _find(objects, "ManagedCertificate", "bandvote-ingress")
    certificate["spec"]["domains"] = ["*.bandas.gt"]
    assert any("domains.0" in e for e in crd_errors(certificate, crds))
    certificate["spec"] = {"domain": "votos.bandas.gt"}
    assert any("domain" in e for e in crd_errors(certificate, crds))
    frontend = _find(objects, "FrontendConfig", "bandvote-ingress")
    frontend["spec"]["redirectToHttps"]["enabled"] = "yes"
    assert any("enabled" in e for e in crd_errors(frontend, crds))
    frontend["spec"] = {"redirectToHTTPS": {"enabled": True}}
    assert any("redirectToHTTPS" in e for e in crd_errors(frontend, crds))
    scaler = _find(objects, "ScaledObject", "consumer")
    scaler["spec"]["maxReplicaCount"] = "five"
    scaler["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10000
    errors = crd_errors(scaler, crds)
    assert any("maxReplicaCount" in e for e in errors) and any("lagThreshold" in e for e in errors), errors


def test_a_built_in_object_that_breaks_its_schema_is_reported(rendered, crds):
    objects = copy.deepcopy(rendered["k8s/overlays/gke"])
    deployment = _find(objects, "Deployment", "consumer")
    deployment["spec"]["replicas"] = "two"
    service = _find(objects, "Service", "ingest-http")
    service["spec"]["prots"] = []
    errors = schema_errors([deployment, service], crds)
    assert any("replicas" in e for e in errors), errors
    assert any("prots" in e for e in errors), errors


# --- the shape the design asks for --------------------------------------------------------------


@pytest.fixture(scope="module")
def gke(rendered):
    return rendered["k8s/overlays/gke"]


def pods_of(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_namespaces_per_role(gke):
    names = {o["metadata"]["name"] for o in gke if o["kind"] == "Namespace"}
    assert {"ingest", "kafka", "consumer", "datastores", "monitoring"} <= names


def test_kafka_is_strimzi_kraft_with_topics_for_five_consumers(gke):
    kafka = by_name(gke, "Kafka", "bandvote")
    pools = [o for o in gke if o["kind"] == "KafkaNodePool"]
    assert "zookeeper" not in kafka["spec"]
    assert any("controller" in p["spec"]["roles"] for p in pools), "KRaft needs a controller node pool"
    assert any("broker" in p["spec"]["roles"] for p in pools)
    topics = {o["spec"]["topicName"]: o for o in gke if o["kind"] == "KafkaTopic"}
    scaler = by_name(gke, "ScaledObject", "consumer")
    assert topics["votes"]["spec"]["partitions"] >= max(6, scaler["spec"]["maxReplicaCount"])
    assert "votes.dlq" in topics
    assert sum(p["spec"]["replicas"] for p in pools) >= topics["votes"]["spec"]["replicas"]


def test_the_votes_topic_keeps_records_as_long_as_the_design_relies_on(gke):
    topic = next(o for o in gke if o["kind"] == "KafkaTopic" and o["spec"]["topicName"] == "votes")["spec"]["config"]
    # The same settings as the topic the services create locally (ops/src/topics.rs).
    source = (Path(__file__).resolve().parents[2] / "ops/src/topics.rs").read_text()
    local = dict(re.findall(r'\("([a-z.]+)", "([^"]*)"\)', source.split("VOTES_CONFIG", 1)[1].split("];", 1)[0]))
    assert local, "VOTES_CONFIG not found in ops/src/topics.rs"
    assert {k: str(v).lower() for k, v in topic.items() if k in local} == {k: v.lower() for k, v in local.items()}
    assert topic["retention.bytes"] == -1, "a size cap could delete records not yet counted"
    assert topic["message.timestamp.type"] == "LogAppendTime"
    assert topic["unclean.leader.election.enable"] is False
    broker = by_name(gke, "Kafka", "bandvote")["spec"]["kafka"]["config"]
    assert broker["unclean.leader.election.enable"] is False
    # Committed offsets outlive the oldest record a segment can still hold.
    assert broker["offsets.retention.minutes"] * 60_000 >= topic["retention.ms"] + topic["segment.ms"]


def test_services_do_not_create_topics(gke):
    for cm in (o for o in gke if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("kafka-client")):
        assert cm["data"]["KAFKA_CREATE_TOPICS"] == "false"
    for workload in ("ingest-grpc", "ingest-http", "ingest-wasm", "consumer"):
        pod = by_name(gke, "Deployment", workload)["spec"]["template"]["spec"]
        for c in pod["containers"]:
            if c["image"].rsplit("/", 1)[-1].split(":")[0] in ("ingest", "consumer"):
                sources = [s.get("configMapRef", {}).get("name", "") for s in c.get("envFrom", [])]
                assert any(name.startswith("kafka-client") for name in sources), f"{workload}/{c['name']}"
                assert "KAFKA_CREATE_TOPICS" not in env_of(c), f"{workload}/{c['name']} overrides KAFKA_CREATE_TOPICS"


def test_routes_each_have_their_pod_and_clusterip(gke):
    grpc = by_name(gke, "Deployment", "ingest-grpc")["spec"]["template"]["spec"]["containers"][0]
    http = by_name(gke, "Deployment", "ingest-http")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(grpc)["INGEST_ROUTES"] == "grpc"
    assert env_of(http)["INGEST_ROUTES"] == "http"
    for name in ("ingest-grpc", "ingest-http", "ingest-wasm"):
        assert by_name(gke, "Service", name)["spec"]["type"] == "ClusterIP"
    wasm = by_name(gke, "Deployment", "ingest-wasm")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in wasm] == ["wasm", "producer"]
    assert env_of(wasm[0])["INGEST_URL"] == "http://127.0.0.1:8090"
    assert env_of(wasm[1])["INGEST_ROUTES"] == "wasm" and env_of(wasm[1])["PORT"] == "8090"
    assert [p["port"] for p in by_name(gke, "Service", "ingest-wasm")["spec"]["ports"]] == [8080]


def test_ingress_routes_the_original_paths(gke):
    ingress = by_name(gke, "Ingress", "bandvote")
    paths = {p["path"]: p["backend"]["service"]["name"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/grpc"] == "ingest-grpc"
    assert paths["/rust"] == "ingest-http"
    assert paths["/wasm"] == "ingest-wasm"
    assert ingress["metadata"]["annotations"]["kubernetes.io/ingress.class"] == "gce"


def test_native_grpc_reaches_every_pod_over_http2(gke):
    route = by_name(gke, "HTTPRoute", "ingest-grpc")
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    service = by_name(gke, "Service", backend["name"])
    port = next(p for p in service["spec"]["ports"] if p["port"] == backend["port"])
    assert port["appProtocol"] == "kubernetes.io/h2c"
    prefixes = {m["path"]["value"] for m in route["spec"]["rules"][0]["matches"]}
    assert "/bandvote.v1.Votes/" in prefixes and "/confproto.getInfo/" in prefixes
    headless = by_name(gke, "Service", "ingest-grpc-headless")
    assert headless["spec"]["clusterIP"] == "None"


def kafka_scaler_metadata(crd_dir):
    """The trigger metadata KEDA's Kafka scaler reads (name -> allowed values, or None for any),
    from the scaler's source that `dev/tools install k8s-schemas` caches beside KEDA's CRDs."""
    source = (crd_dir / "keda" / "kafka_scaler.go").read_text()
    names = {}
    for tag in re.findall(r'keda:"([^"]+)"', source):
        fields = dict(part.split("=", 1) for part in tag.split(",") if "=" in part)
        if "triggerMetadata" in fields.get("order", "").split(";"):
            names[fields["name"]] = fields["enum"].split(";") if "enum" in fields else None
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= set(names), "the Kafka scaler's tags were not found"
    return names


def test_consumer_scales_from_two_to_five_on_its_consumer_group_lag(gke, crd_dir):
    # KEDA's HPA owns the replica count; a count in the Deployment would fight it on every apply.
    assert "replicas" not in by_name(gke, "Deployment", "consumer")["spec"]
    assert not [o for o in gke if o["kind"] == "HorizontalPodAutoscaler"], "KEDA makes the consumer's HPA"
    scaler = by_name(gke, "ScaledObject", "consumer")["spec"]
    assert (scaler["minReplicaCount"], scaler["maxReplicaCount"]) == (2, 5)
    assert scaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "consumer"}
    [trigger] = scaler["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    known = kafka_scaler_metadata(crd_dir)
    unknown = sorted(set(metadata) - set(known))
    assert not unknown, f"KEDA's Kafka scaler reads no {unknown}"
    for name, value in metadata.items():
        assert known[name] is None or value in known[name], f"{name}: {value!r} is not one of {known[name]}"
    assert int(metadata["lagThreshold"]) > 0
    # The consumer starts a partition it never committed from its first record (auto.offset.reset).
    assert metadata["offsetResetPolicy"] == "earliest"
    assert 'set("auto.offset.reset", "earliest")' in (Path(__file__).resolve().parents[2] / "consumer/src/lib.rs").read_text()
    # KEDA's operator reads the lag from Kafka: the listener's NetworkPolicy must admit it.
    peers = by_name(gke, "Kafka", "bandvote")["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}},
            "podSelector": {"matchLabels": {"app": "keda-operator"}}} in peers
    behavior = scaler["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300, "each rebalance pauses the partitions that move"


def test_datastores_are_persistent_statefulsets_with_secret_credentials(gke):
    for name in ("redis", "mongodb"):
        stateful = by_name(gke, "StatefulSet", name)
        assert stateful["metadata"]["namespace"] == "datastores"
        assert stateful["spec"]["volumeClaimTemplates"], f"{name} has no persistent volume"
        env = stateful["spec"]["template"]["spec"]["containers"][0]["env"]
        assert all("secretKeyRef" in e["valueFrom"] for e in env if "PASSWORD" in e["name"])
    redis_conf = next(o for o in gke if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("redis-config"))
    assert "appendonly yes" in redis_conf["data"]["redis.conf"]


def test_redis_evicts_only_resend_memory_and_stays_inside_its_pod(gke):
    redis_conf = next(o for o in gke if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("redis-config"))
    settings = dict(
        line.split(None, 1) for line in redis_conf["data"]["redis.conf"].splitlines() if line and not line.startswith("#")
    )
    # Only the re-send sets have a TTL: volatile-ttl can never evict a tally or a counting position.
    assert settings["maxmemory-policy"] == "volatile-ttl"
    units = {"kb": 1000, "mb": 1000**2, "gb": 1000**3}
    value = settings["maxmemory"].strip().lower()
    maxmemory = int(value[:-2]) * units[value[-2:]]
    limit = by_name(gke, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    limit_bytes = int(limit[:-2]) * 1024**3
    # Room for the copy-on-write of an append-only file rewrite and the client buffers.
    assert maxmemory <= 0.6 * limit_bytes, f"maxmemory {value} is more than 60% of the {limit} limit"


def test_grafana_gets_the_plugin_and_the_provisioning(gke):
    pod = by_name(gke, "Deployment", "grafana")["spec"]["template"]["spec"]
    assert any("redis-datasource" in c.get("command", []) for c in pod["initContainers"])
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards"} <= mounts
    dashboards = next(o for o in gke if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("grafana-dashboards"))
    assert "bandvote-votes.json" in dashboards["data"]


def test_every_pod_is_hardened_probed_and_bounded(gke):
    problems = []
    for workload in pods_of(gke):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{where}: not runAsNonRoot")
        if pod.get("automountServiceAccountToken") is None and not any(
            sa["metadata"]["name"] == pod.get("serviceAccountName") and sa.get("automountServiceAccountToken") is False
            for sa in gke
            if sa["kind"] == "ServiceAccount"
        ):
            problems.append(f"{where}: mounts a service account token it does not need")
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}/{c['name']}: root filesystem writable or privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}/{c['name']}: capabilities not dropped")
            if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits", {}).get("memory"):
                problems.append(f"{where}/{c['name']}: no requests or memory limit")
            if c in pod["containers"] and not (c.get("readinessProbe") and c.get("livenessProbe")):
                problems.append(f"{where}/{c['name']}: no readiness or liveness probe")
    assert not problems, "\n".join(problems)


def test_every_workload_has_a_disruption_budget(gke):
    pdbs = [o for o in gke if o["kind"] == "PodDisruptionBudget"]
    from k8s_model import selects

    for workload in pods_of(gke):
        if workload["kind"] == "StatefulSet":
            continue  # one replica each: a budget would only block node drains
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ns = workload["metadata"]["namespace"]
        assert any(
            p["metadata"]["namespace"] == ns and selects(p["spec"]["selector"], labels) for p in pdbs
        ), f"{workload['metadata']['name']} has no PodDisruptionBudget"


def test_network_policies_deny_by_default_and_open_only_the_design_flows(gke):
    policies = [o for o in gke if o["kind"] == "NetworkPolicy"]
    for ns in ("ingest", "consumer", "datastores", "monitoring"):
        assert any(
            p["metadata"]["namespace"] == ns and p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")
            for p in policies
        ), f"{ns} has no default-deny policy"
    redis_in = by_name(gke, "NetworkPolicy", "redis-clients")["spec"]["ingress"][0]["from"]
    assert {peer["podSelector"]["matchLabels"]["app"] for peer in redis_in} == {"consumer", "grafana"}
    mongo_in = [o for o in policies if o["metadata"]["name"] == "mongodb-clients"][0]["spec"]["ingress"][0]["from"]
    assert [peer["podSelector"]["matchLabels"]["app"] for peer in mongo_in] == ["consumer"]
    serve = by_name(gke, "NetworkPolicy", "ingest-serve")["spec"]["ingress"]
    assert [p["port"] for rule in serve for p in rule["ports"]] == [8080], "the Wasm producer's 8090 must stay closed"
    peers = by_name(gke, "Kafka", "bandvote")["spec"]["kafka"]["listeners"][0]["networkPolicyPeers"]
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers} == {"ingest", "consumer", "keda"}


def test_no_real_secret_is_committed(repo):
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "k8s"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    assert not [f for f in tracked if f.endswith(".env")], "secret env files must stay untracked"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "k8s/base/secrets/redis.env"], cwd=repo
    )
    assert ignored.returncode == 0, "k8s/base/secrets/*.env must be git-ignored"


def lost_client_address_errors(objects) -> list[str]:
    """LoadBalancer Services whose pods admit clients by address (a NetworkPolicy ipBlock) but
    whose traffic policy replaces that address: with `externalTrafficPolicy: Cluster` a connection
    that lands on a node without the pod is forwarded with the node's address, which no ipBlock of
    the clients' subnet matches."""
    from k8s_model import selects

    errors = []
    for service in (o for o in objects if o["kind"] == "Service" and o["spec"].get("type") == "LoadBalancer"):
        ns, spec = service["metadata"]["namespace"], service["spec"]
        pods = [
            t["metadata"].get("labels", {})
            for w in objects
            if w["kind"] in ("Deployment", "StatefulSet") and w["metadata"]["namespace"] == ns
            for t in [w["spec"]["template"]]
            if selects(spec.get("selector", {}), t["metadata"].get("labels", {}))
        ]
        by_address = [
            p["metadata"]["name"]
            for p in objects
            if p["kind"] == "NetworkPolicy" and p["metadata"]["namespace"] == ns
            and any(selects(p["spec"].get("podSelector", {}), labels) for labels in pods)
            and any("ipBlock" in peer for rule in p["spec"].get("ingress", []) for peer in rule.get("from", []))
        ]
        if by_address and spec.get("externalTrafficPolicy", "Cluster") != "Local":
            errors.append(
                f"Service {ns}/{service['metadata']['name']}: NetworkPolicy {', '.join(by_address)} admits clients "
                f"by address, but externalTrafficPolicy {spec.get('externalTrafficPolicy', 'Cluster')} replaces it"
            )
    return errors


def test_load_balancers_keep_the_client_address_their_policies_match(gke):
    # The Cloud Run subnet reaches MongoDB through mongodb-internal; mongodb-from-cloud-run admits
    # that subnet's addresses only.
    assert by_name(gke, "Service", "mongodb-internal")["spec"]["externalTrafficPolicy"] == "Local"
    assert not lost_client_address_errors(gke)
    broken = copy.deepcopy(gke)
    by_name(broken, "Service", "mongodb-internal")["spec"]["externalTrafficPolicy"] = "Cluster"
    assert lost_client_address_errors(broken) == [
        "Service datastores/mongodb-internal: NetworkPolicy mongodb-from-cloud-run admits clients by address, "
        "but externalTrafficPolicy Cluster replaces it"
    ]
    del by_name(broken, "Service", "mongodb-internal")["spec"]["externalTrafficPolicy"]
    assert lost_client_address_errors(broken), "the default (Cluster) must fail too"


def ingress_without_neg_errors(objects) -> list[str]:
    """Services an Ingress sends to that are ClusterIP without container-native load balancing: the
    GCE Ingress reaches a ClusterIP Service only through a network endpoint group, which GKE makes
    when the Service asks with `cloud.google.com/neg: '{"ingress": true}'`."""
    import json

    errors = []
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        spec, ns = ingress["spec"], ingress["metadata"]["namespace"]
        backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
        backends += [p["backend"] for rule in spec.get("rules", []) for p in rule.get("http", {}).get("paths", [])]
        for name in sorted({b["service"]["name"] for b in backends}):
            service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["namespace"] == ns and o["metadata"]["name"] == name)
            neg = json.loads(service["metadata"].get("annotations", {}).get("cloud.google.com/neg", "{}"))
            if service["spec"].get("type", "ClusterIP") == "ClusterIP" and neg.get("ingress") is not True:
                errors.append(f"Service {ns}/{name}: an Ingress backend without a NEG (cloud.google.com/neg)")
    return errors


def test_the_ingress_backends_use_network_endpoint_groups(gke):
    backends = {"ingest-grpc", "ingest-http", "ingest-wasm"}
    for name in backends:
        annotations = by_name(gke, "Service", name)["metadata"]["annotations"]
        assert annotations["cloud.google.com/neg"] == '{"ingress": true}', name
    assert not ingress_without_neg_errors(gke)
    broken = copy.deepcopy(gke)
    del by_name(broken, "Service", "ingest-wasm")["metadata"]["annotations"]["cloud.google.com/neg"]
    by_name(broken, "Service", "ingest-http")["metadata"]["annotations"]["cloud.google.com/neg"] = '{"exposed_ports": {"8080": {}}}'
    assert ingress_without_neg_errors(broken) == [
        f"Service ingest/{name}: an Ingress backend without a NEG (cloud.google.com/neg)" for name in ("ingest-http", "ingest-wasm")
    ]
    # The BackendConfig annotation is still on the two Services that use it.
    for name in ("ingest-grpc", "ingest-http"):
        assert "ingest-serving-health" in by_name(gke, "Service", name)["metadata"]["annotations"]["cloud.google.com/backend-config"]


# Google's health checkers (https://cloud.google.com/load-balancing/docs/health-check-concepts#ip-ranges).
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22")


def admitted(objects, ns: str, labels: dict, port: int, cidr: str) -> bool:
    """Whether the namespace's NetworkPolicies let `cidr` reach `port` of a pod with `labels` (only
    the forms these manifests use: a rule without `from`, or an ipBlock)."""
    import ipaddress

    from k8s_model import selects

    source = ipaddress.ip_network(cidr)
    for policy in objects:
        if policy["kind"] != "NetworkPolicy" or policy["metadata"]["namespace"] != ns:
            continue
        if not selects(policy["spec"].get("podSelector", {}), labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
                continue
            peers = rule.get("from")
            if not peers or any(
                "ipBlock" in peer
                and source.subnet_of(ipaddress.ip_network(peer["ipBlock"]["cidr"]))
                and not any(source.overlaps(ipaddress.ip_network(e)) for e in peer["ipBlock"].get("except", []))
                for peer in peers
            ):
                return True
    return False


def gateway_health_check_errors(objects) -> list[str]:
    """Every Service a Gateway route sends to needs a HealthCheckPolicy whose check the pods can
    answer: an HTTP check on a port that speaks HTTP/1.1 (not an h2c-only port, not an ops port),
    declared by the pods and open to Google's health checkers."""
    errors = []
    policies = [o for o in objects if o["kind"] == "HealthCheckPolicy"]
    for route in (o for o in objects if o["kind"] == "HTTPRoute"):
        ns = route["metadata"]["namespace"]
        for backend in (b for rule in route["spec"]["rules"] for b in rule.get("backendRefs", [])):
            name = backend["name"]
            service = by_name([o for o in objects if o["metadata"].get("namespace") == ns], "Service", name)
            matching = [
                p for p in policies
                if p["metadata"]["namespace"] == ns and p["spec"]["targetRef"]["kind"] == "Service"
                and p["spec"]["targetRef"].get("group", "") == "" and p["spec"]["targetRef"]["name"] == name
            ]
            if not matching:
                errors.append(f"Service {ns}/{name}: a Gateway backend without a HealthCheckPolicy")
                continue
            config = matching[0]["spec"]["default"]["config"]
            if config.get("type") != "HTTP" or "httpHealthCheck" not in config:
                errors.append(f"Service {ns}/{name}: its health check is not HTTP")
                continue
            check = config["httpHealthCheck"]
            # The CRD's CEL rule, which the JSON schema validation does not apply.
            if check.get("portSpecification") == "USE_FIXED_PORT" and ("port" not in check or "portName" in check):
                errors.append(f"Service {ns}/{name}: USE_FIXED_PORT needs port and no portName")
                continue
            serving = next(p for p in service["spec"]["ports"] if p["port"] == backend["port"])
            port = check.get("port") if check.get("portSpecification") == "USE_FIXED_PORT" else serving.get("targetPort")
            for workload in (o for o in objects if o["kind"] == "Deployment" and o["metadata"]["namespace"] == ns):
                template = workload["spec"]["template"]
                from k8s_model import selects

                if not selects(service["spec"]["selector"], template["metadata"].get("labels", {})):
                    continue
                declared = {p["containerPort"]: p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
                number = port if isinstance(port, int) else next((n for n, pn in declared.items() if pn == port), None)
                where = f"Service {ns}/{name}: the health check's port {port}"
                if number not in declared:
                    errors.append(f"{where} is not a port of {workload['metadata']['name']}")
                    continue
                h2c = {
                    p.get("targetPort") for p in service["spec"]["ports"] if p.get("appProtocol") == "kubernetes.io/h2c"
                }
                if declared[number] in h2c or number in h2c:
                    errors.append(f"{where} speaks only HTTP/2 (h2c), an HTTP check is HTTP/1.1")
                if declared[number] == "ops":
                    errors.append(f"{where} is an ops port")
                for cidr in HEALTH_CHECK_RANGES:
                    if not admitted(objects, ns, template["metadata"].get("labels", {}), number, cidr):
                        errors.append(f"{where} is closed to the health checkers {cidr}")
    return errors


def test_the_gateway_checks_ingest_grpc_where_it_answers_http_1_1(gke):
    policy = by_name(gke, "HealthCheckPolicy", "ingest-grpc-health")["spec"]
    assert policy["targetRef"] == {"group": "", "kind": "Service", "name": "ingest-grpc"}
    check = policy["default"]["config"]["httpHealthCheck"]
    assert (check["port"], check["requestPath"]) == (8080, "/healthz")
    assert not gateway_health_check_errors(gke)

    def broken(change):
        objects = copy.deepcopy(gke)
        change(objects)
        return gateway_health_check_errors(objects)

    def on_grpc_port(objs):
        by_name(objs, "HealthCheckPolicy", "ingest-grpc-health")["spec"]["default"]["config"]["httpHealthCheck"]["port"] = 50051

    def on_ops_port(objs):
        by_name(objs, "HealthCheckPolicy", "ingest-grpc-health")["spec"]["default"]["config"]["httpHealthCheck"]["port"] = 9090

    def serving_port(objs):
        check = by_name(objs, "HealthCheckPolicy", "ingest-grpc-health")["spec"]["default"]["config"]["httpHealthCheck"]
        check["portSpecification"] = "USE_SERVING_PORT"
        del check["port"]

    def no_policy(objs):
        objs.remove(by_name(objs, "HealthCheckPolicy", "ingest-grpc-health"))

    def closed_8080(objs):
        rule = by_name(objs, "NetworkPolicy", "ingest-serve")["spec"]["ingress"][0]
        rule["from"] = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    assert "speaks only HTTP/2 (h2c)" in "\n".join(broken(on_grpc_port))
    assert "speaks only HTTP/2 (h2c)" in "\n".join(broken(serving_port))
    ops = "\n".join(broken(on_ops_port))
    assert "is an ops port" in ops and "closed to the health checkers 35.191.0.0/16" in ops
    assert broken(no_policy) == ["Service ingest/ingest-grpc: a Gateway backend without a HealthCheckPolicy"]
    assert "closed to the health checkers 130.211.0.0/22" in "\n".join(broken(closed_8080))
