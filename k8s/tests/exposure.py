"""What the public routes of the rendered manifests reach, and what ingest's containers are set to.

A *public route* is what traffic from outside the cluster can take: an Ingress rule or its default
backend, an HTTPRoute rule (its Gateway listens outside), or a Service of type LoadBalancer or
NodePort. Each ends at container ports, through a Service's selector and targetPort.

An *ops port* is where a container serves its operational endpoints: a port named `ops`, the port
in its `OPS_PORT` setting, or the port of its pod's `prometheus.io/port` annotation. A port
*serves* `/readyz` or `/metrics` when a probe of its container (or the scrape annotation) asks it
there. `exposure_errors` reports a public route that ends at an ops port, and one whose paths can
match `/readyz` or `/metrics` that ends at a port serving them. `ingest_errors` reports an ingest
container whose probes or scrape annotations are not on its ops port, or whose per-client limit
is off or not set for Google's load balancer.
"""

from __future__ import annotations

from k8s_model import containers, key, pod_template, selects

OPS_PATHS = ("/readyz", "/metrics")
# Google's external Application Load Balancer appends `<client-ip>,<load-balancer-ip>`.
PROXIES_OF_GOOGLES_LOAD_BALANCER = 2
# ingest's MAX_BATCH_VOTES: a burst below it would refuse every full batch.
MAX_BATCH_VOTES = 1000


def _where(obj: dict) -> str:
    return "/".join(key(obj))


def env(objects: list[dict], namespace: str, container: dict) -> dict[str, str]:
    """A container's settings: its `env` values over the ConfigMaps of its `envFrom`."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        for obj in objects:
            if obj["kind"] == "ConfigMap" and key(obj)[1:] == (namespace, name):
                values.update(obj.get("data", {}))
    values.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return values


def _port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def ops_ports(objects: list[dict], workload: dict, container: dict) -> set[int]:
    template = pod_template(workload)
    ports = {p["containerPort"] for p in container.get("ports", []) if p.get("name") == "ops"}
    setting = env(objects, workload["metadata"]["namespace"], container).get("OPS_PORT")
    if setting:
        ports.add(int(setting))
    annotated = template["metadata"].get("annotations", {}).get("prometheus.io/port")
    if annotated and int(annotated) in {p["containerPort"] for p in container.get("ports", [])}:
        ports.add(int(annotated))
    return ports


def served_paths(workload: dict, container: dict, port: int) -> set[str]:
    """The operational paths a container is known to serve on `port`: from its probes, and from
    the scrape annotation."""
    paths = set()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container.get(probe, {}).get("httpGet")
        if get and _port_number(container, get["port"]) == port:
            paths.add(get.get("path", "/"))
    annotations = pod_template(workload)["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") == str(port):
        paths.add(annotations.get("prometheus.io/path", "/metrics"))
    return paths


def _can_match(path_type: str, path: str | None, target: str) -> bool:
    """Whether a route's path matcher (None: every path) can send `target` to its backend."""
    if path is None:
        return True
    if path_type == "Exact":
        return target == path
    prefix = path.rstrip("/")
    return prefix == "" or target == prefix or target.startswith(prefix + "/")


def public_routes(objects: list[dict]) -> list[tuple[str, str, str | None, str, str, object]]:
    """(what, path type, path or None for every path, namespace, Service, Service port name or number)."""
    routes = []
    for obj in objects:
        ns = obj["metadata"].get("namespace", "")
        if obj["kind"] == "Ingress":
            default = obj["spec"].get("defaultBackend", {}).get("service")
            if default:
                port = default["port"].get("name", default["port"].get("number"))
                routes.append((f"{_where(obj)} defaultBackend", "Prefix", None, ns, default["name"], port))
            for rule in obj["spec"].get("rules", []):
                for path in rule.get("http", {}).get("paths", []):
                    service = path["backend"]["service"]
                    port = service["port"].get("name", service["port"].get("number"))
                    what = f"{_where(obj)} path {path['path']}"
                    routes.append((what, path.get("pathType", "Prefix"), path["path"], ns, service["name"], port))
        elif obj["kind"] == "HTTPRoute":
            for rule in obj["spec"].get("rules", []):
                matches = [m.get("path") for m in rule.get("matches", [])] or [None]
                for backend in rule.get("backendRefs", []):
                    if backend.get("kind", "Service") != "Service":
                        continue
                    for match in matches:
                        path_type = "Exact" if match and match.get("type") == "Exact" else "Prefix"
                        path = match.get("value", "/") if match else None
                        what = f"{_where(obj)} {path or 'every path'}"
                        namespace = backend.get("namespace", ns)
                        routes.append((what, path_type, path, namespace, backend["name"], backend["port"]))
        elif obj["kind"] == "Service" and obj["spec"].get("type") in ("LoadBalancer", "NodePort"):
            for port in obj["spec"].get("ports", []):
                what = f"{_where(obj)} port {port['port']}"
                routes.append((what, "Prefix", None, ns, obj["metadata"]["name"], port["port"]))
    return routes


def service_targets(objects: list[dict], namespace: str, name: str, port) -> list[tuple[dict, dict, int]]:
    """(workload, container, container port) behind one port of a Service."""
    service = next((o for o in objects if o["kind"] == "Service" and key(o)[1:] == (namespace, name)), None)
    if service is None:
        return []
    spec_port = next((p for p in service["spec"].get("ports", []) if port in (p.get("name"), p["port"])), None)
    if spec_port is None:
        return []
    target = spec_port.get("targetPort", spec_port["port"])
    found = []
    for workload in objects:
        template = pod_template(workload)
        if template is None or workload["metadata"].get("namespace") != namespace:
            continue
        if not selects(service["spec"].get("selector", {}), template["metadata"].get("labels", {})):
            continue
        for container in template["spec"]["containers"]:
            if isinstance(target, int):
                # A number reaches the pod whether or not a container declares it.
                found.append((workload, container, target))
            elif (number := _port_number(container, target)) is not None:
                found.append((workload, container, number))
    return found


def exposure_errors(objects: list[dict]) -> list[str]:
    errors = []
    for what, path_type, path, ns, service, port in public_routes(objects):
        for workload, container, number in service_targets(objects, ns, service, port):
            where = f"{_where(workload)}/{container['name']}:{number}"
            if number in ops_ports(objects, workload, container):
                errors.append(f"{what} reaches the ops port {where}")
            for ops_path in OPS_PATHS:
                if _can_match(path_type, path, ops_path) and ops_path in served_paths(workload, container, number):
                    errors.append(f"{what} routes {ops_path} to {where}, which serves it")
    # No Service at all exposes an ingest ops port: Prometheus scrapes the pods.
    for service in (o for o in objects if o["kind"] == "Service" and o["metadata"].get("namespace") == "ingest"):
        name = service["metadata"]["name"]
        for port in service["spec"].get("ports", []):
            for workload, container, number in service_targets(objects, "ingest", name, port["port"]):
                if number in ops_ports(objects, workload, container):
                    where = f"{_where(workload)}/{container['name']}"
                    errors.append(f"{_where(service)} port {port['port']} exposes the ops port of {where}")
    return errors


def is_ingest(container: dict) -> bool:
    return container["image"].split(":")[0].split("/")[-1] == "ingest"


def ingest_errors(objects: list[dict]) -> list[str]:
    errors = []
    for workload in objects:
        template = pod_template(workload)
        if template is None:
            continue
        annotations = template["metadata"].get("annotations", {})
        for container in containers(template["spec"]):
            if not is_ingest(container):
                continue
            where = f"{_where(workload)}/{container['name']}"
            ops = ops_ports(objects, workload, container)
            named = {p["containerPort"] for p in container.get("ports", []) if p.get("name") == "ops"}
            settings = env(objects, workload["metadata"]["namespace"], container)
            if len(ops) != 1 or named != ops or settings.get("OPS_PORT") != str(next(iter(named), "")):
                errors.append(f"{where}: needs one port named ops, equal to its OPS_PORT setting, got {sorted(ops)}")
            probes = (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"))
            for probe, path in probes:
                get = container.get(probe, {}).get("httpGet")
                if not get or _port_number(container, get["port"]) not in named or get.get("path") != path:
                    errors.append(f"{where}: {probe} must ask {path} on the ops port, got {get}")
            if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/path") != "/metrics":
                errors.append(f"{where}: the pod is not annotated for Prometheus to scrape /metrics")
            if annotations.get("prometheus.io/port") not in {str(p) for p in named}:
                scraped = annotations.get("prometheus.io/port")
                errors.append(f"{where}: prometheus.io/port {scraped} is not its ops port")
            if float(settings.get("RATE_LIMIT_PER_CLIENT", "0")) <= 0:
                errors.append(f"{where}: the per-client limit is off (RATE_LIMIT_PER_CLIENT)")
            burst = float(settings.get("RATE_LIMIT_BURST", "50"))
            if burst < int(settings.get("MAX_BATCH_VOTES", MAX_BATCH_VOTES)):
                errors.append(f"{where}: RATE_LIMIT_BURST {burst} refuses every full batch")
            if settings.get("TRUSTED_PROXIES") != str(PROXIES_OF_GOOGLES_LOAD_BALANCER):
                trusted = settings.get("TRUSTED_PROXIES")
                errors.append(f"{where}: TRUSTED_PROXIES must be 2 behind Google's load balancer, got {trusted}")
            if "TRUST_FORWARDED_FOR" in settings:
                errors.append(f"{where}: TRUST_FORWARDED_FOR is gone (ingest refuses to start with it)")
    return errors
