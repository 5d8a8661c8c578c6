"""k8s/: nothing public reaches an ops port or `/readyz` / `/metrics`, every ingest container
probes and is scraped on its ops port, and the per-client limit is on and set for Google's load
balancer; each check also fails on a manifest that breaks it (exposure.py says how they work)."""

from __future__ import annotations

import json

import pytest

from exposure import exposure_errors, ingest_errors, service_targets
from k8s_model import assert_break_reported, render

OVERLAYS = ["k8s/base", "k8s/overlays/gke"]


@pytest.fixture(scope="module")
def rendered(kustomize, repo, tmp_path_factory) -> dict[str, list[dict]]:
    work = tmp_path_factory.mktemp("k8s")
    return {k: render(kustomize, repo, work, k) for k in OVERLAYS}


def _find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name))


def _container(objects, workload, name=None):
    pod = _find(objects, "Deployment", workload)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if name is None or c["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_public_route_reaches_an_ops_port_or_the_ops_paths(rendered, overlay):
    errors = exposure_errors(rendered[overlay])
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ingest_container_probes_and_is_scraped_on_its_ops_port_with_the_limit_on(rendered, overlay):
    errors = ingest_errors(rendered[overlay])
    assert not errors, "\n".join(errors)
    ingest_pods = [
        o for o in rendered[overlay] if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("ingest-")
    ]
    assert len(ingest_pods) == 3, "the checks saw every route"


def test_the_load_balancer_checks_the_serving_port_not_the_ops_port(rendered):
    """GKE copies a readiness probe into the load balancer's health check only when it is on the
    serving port; with the probes on the ops port, each Ingress backend names a BackendConfig."""
    objects = rendered["k8s/overlays/gke"]
    ingress = _find(objects, "Ingress", "bandvote")
    services = [ingress["spec"]["defaultBackend"]["service"]]
    services += [p["backend"]["service"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    backends = {(service["name"], service["port"]["name"]) for service in services}
    for service_name, port in sorted(backends):
        service = _find(objects, "Service", service_name)
        targets = service_targets(objects, "ingest", service_name, port)
        assert targets, f"{service_name}:{port} reaches no container"
        def probed_there(container, number):
            names = {p.get("name") for p in container.get("ports", []) if p["containerPort"] == number}
            return container.get("readinessProbe", {}).get("httpGet", {}).get("port") in names | {number}

        if all(probed_there(c, number) for _, c, number in targets):
            continue  # the Wasm route: its component's readiness probe is on its serving port
        config = json.loads(service["metadata"].get("annotations", {}).get("cloud.google.com/backend-config", "{}"))
        name = config.get("ports", {}).get(port) or config.get("default")
        assert name, f"{service_name}:{port} has its probes elsewhere and names no BackendConfig"
        check = _find(objects, "BackendConfig", name)["spec"]["healthCheck"]
        assert check["requestPath"] == "/healthz", f"{name} must ask /healthz"
        assert "port" not in check, f"{name} must check the serving port"


# --- the checks can fail ------------------------------------------------------------------------


def expose_metrics_through_the_ingress(objs):
    service = _find(objs, "Service", "ingest-http")
    service["spec"]["ports"].append({"name": "ops", "port": 9090, "targetPort": "ops"})
    rules = _find(objs, "Ingress", "bandvote")["spec"]["rules"][0]["http"]["paths"]
    backend = {"service": {"name": "ingest-http", "port": {"name": "ops"}}}
    rules.append({"path": "/metrics", "pathType": "Exact", "backend": backend})


def route_readyz_to_the_wasm_component(objs):
    rules = _find(objs, "Ingress", "bandvote")["spec"]["rules"][0]["http"]["paths"]
    backend = {"service": {"name": "ingest-wasm", "port": {"name": "http"}}}
    rules.append({"path": "/readyz", "pathType": "Exact", "backend": backend})


def route_the_gateway_to_the_ops_port(objs):
    service = _find(objs, "Service", "ingest-grpc")
    service["spec"]["ports"].append({"name": "ops", "port": 9090, "targetPort": 9090})
    rules = _find(objs, "HTTPRoute", "ingest-grpc")["spec"]["rules"]
    rules.append({"backendRefs": [{"name": "ingest-grpc", "port": 9090}]})


def open_a_load_balancer_on_the_ops_port(objs):
    objs.append({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ingest-ops", "namespace": "ingest"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "ingest-http"},
            "ports": [{"port": 80, "targetPort": 9090}],
        },
    })


def serve_readyz_on_the_vote_port(objs):
    _container(objs, "ingest-http")["readinessProbe"]["httpGet"]["port"] = "http"


def probe_liveness_on_the_vote_port(objs):
    _container(objs, "ingest-grpc")["livenessProbe"]["httpGet"]["port"] = "http"


def scrape_the_vote_port(objs):
    template = _find(objs, "Deployment", "ingest-wasm")["spec"]["template"]
    template["metadata"]["annotations"]["prometheus.io/port"] = "8090"


def turn_the_limit_off(objs):
    limits = _find(objs, "ConfigMap", "ingest-client-limits")
    limits["data"]["RATE_LIMIT_PER_CLIENT"] = "0"


def trust_the_first_hop(objs):
    del _find(objs, "ConfigMap", "ingest-client-limits")["data"]["TRUSTED_PROXIES"]


def shrink_the_burst(objs):
    _find(objs, "ConfigMap", "ingest-client-limits")["data"]["RATE_LIMIT_BURST"] = "50"


BREAKS = {
    "metrics through the ingress": (exposure_errors, expose_metrics_through_the_ingress, "reaches the ops port"),
    "readyz to the wasm component": (exposure_errors, route_readyz_to_the_wasm_component, "routes /readyz to"),
    "gateway to the ops port": (
        exposure_errors,
        route_the_gateway_to_the_ops_port,
        "HTTPRoute/ingest/ingest-grpc every path reaches the ops port",
    ),
    "load balancer on the ops port": (
        exposure_errors,
        open_a_load_balancer_on_the_ops_port,
        "Service/ingest/ingest-ops port 80 reaches the ops port",
    ),
    "readyz on the vote port, routed": (
        exposure_errors,
        serve_readyz_on_the_vote_port,
        "defaultBackend routes /readyz to",
    ),
    "readiness on the vote port": (
        ingest_errors,
        serve_readyz_on_the_vote_port,
        "readinessProbe must ask /readyz on the ops port",
    ),
    "liveness on the vote port": (
        ingest_errors,
        probe_liveness_on_the_vote_port,
        "livenessProbe must ask /healthz on the ops port",
    ),
    "scrape the vote port": (ingest_errors, scrape_the_vote_port, "prometheus.io/port 8090 is not its ops port"),
    "limit off": (ingest_errors, turn_the_limit_off, "the per-client limit is off"),
    "first hop trusted": (ingest_errors, trust_the_first_hop, "TRUSTED_PROXIES must be 2"),
    "burst below a batch": (ingest_errors, shrink_the_burst, "refuses every full batch"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKS))
def test_a_manifest_that_breaks_a_rule_is_reported(rendered, breakage):
    check, mutate, expected = BREAKS[breakage]
    assert_break_reported(rendered["k8s/overlays/gke"], mutate, check, expected)
