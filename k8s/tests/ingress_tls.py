"""HTTPS on GKE's Ingress, as Google documents it, checked on the rendered objects.

`https_errors` reports an external GCE Ingress (class `gce`) that would serve the vote routes in
cleartext or not the way GKE needs:

- no `kubernetes.io/ingress.global-static-ip-name`: a managed certificate is issued only for a
  domain whose DNS A record points at the load balancer, so the address must outlive the Ingress;
- no `networking.gke.io/managed-certificates`, or one naming a ManagedCertificate without domains;
- no `networking.gke.io/v1beta1.FrontendConfig`, or one whose `redirectToHttps` is off, or whose
  redirect may turn a POST into a GET (the default 301, or 302/303): a vote sent to http:// must
  arrive as the POST it was, so only 307 (TEMPORARY_REDIRECT) and 308 (PERMANENT_REDIRECT) do;
- `kubernetes.io/ingress.allow-http: "false"`: the redirect lives on the HTTP forwarding rule, so
  without it clients that still say http:// get no answer at all;
- a backend that the load balancer would have to reach over TLS or HTTP/2: the load balancer ends
  TLS and the ingest pods serve plain HTTP/1.1 on their `http` port, so the Service port must not
  ask for HTTPS or HTTP2 (`appProtocol`, `cloud.google.com/app-protocols`) and its health check
  (BackendConfig) must be HTTP.

`placeholder_domain_errors` reports a ManagedCertificate domain under a name reserved for
examples and tests (RFC 2606, RFC 6761), for which no certificate authority can issue one: the
committed overlay holds one on purpose, and `k8s/deploy` refuses it.
"""

from __future__ import annotations

import json
import re

from k8s_model import BACKEND_CONFIG, FRONTEND_CONFIG, MANAGED_CERTIFICATES, key

STATIC_IP = "kubernetes.io/ingress.global-static-ip-name"
ALLOW_HTTP = "kubernetes.io/ingress.allow-http"
APP_PROTOCOLS = "cloud.google.com/app-protocols"
# The redirect codes of Compute Engine's URL maps that keep the request's method and body.
METHOD_KEEPING_REDIRECTS = {"TEMPORARY_REDIRECT", "PERMANENT_REDIRECT"}
# Every code a FrontendConfig may name (its default, MOVED_PERMANENTLY_DEFAULT, is 301).
REDIRECT_CODES = METHOD_KEEPING_REDIRECTS | {"MOVED_PERMANENTLY_DEFAULT", "FOUND", "SEE_OTHER"}
RESERVED_DOMAIN = re.compile(r"(^|\.)(example\.(com|net|org)|example|invalid|test|localhost)$")


def _where(obj: dict) -> str:
    return "/".join(key(obj))


def _get(objects: list[dict], kind: str, namespace: str, name: str) -> dict | None:
    return next((o for o in objects if key(o) == (kind, namespace, name)), None)


def _backends(ingress: dict) -> list[dict]:
    spec = ingress["spec"]
    found = [spec["defaultBackend"]] if "defaultBackend" in spec else []
    found += [p["backend"] for rule in spec.get("rules", []) for p in rule.get("http", {}).get("paths", [])]
    return [b["service"] for b in found if "service" in b]


def https_errors(objects: list[dict]) -> list[str]:
    errors = []
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        annotations = ingress["metadata"].get("annotations", {})
        if annotations.get("kubernetes.io/ingress.class") != "gce":
            continue
        where, ns = _where(ingress), ingress["metadata"]["namespace"]
        if not annotations.get(STATIC_IP):
            errors.append(f"{where}: no {STATIC_IP}: a managed certificate needs a reserved address for its DNS A record")

        certificates = [c.strip() for c in annotations.get(MANAGED_CERTIFICATES, "").split(",") if c.strip()]
        if not certificates:
            errors.append(f"{where}: no {MANAGED_CERTIFICATES}: the vote routes would be served in cleartext")
        for name in certificates:
            certificate = _get(objects, "ManagedCertificate", ns, name)
            if certificate is None:
                errors.append(f"{where}: ManagedCertificate {name} does not exist")
            elif not certificate.get("spec", {}).get("domains"):
                errors.append(f"{where}: ManagedCertificate {name} names no domain")

        if annotations.get(ALLOW_HTTP, "true").lower() == "false":
            errors.append(f"{where}: {ALLOW_HTTP} is false: http:// clients would get no redirect to HTTPS")
        frontend_name = annotations.get(FRONTEND_CONFIG)
        frontend = frontend_name and _get(objects, "FrontendConfig", ns, frontend_name)
        if not frontend_name:
            errors.append(f"{where}: no {FRONTEND_CONFIG}: HTTP is not redirected to HTTPS")
        elif frontend is None:
            errors.append(f"{where}: FrontendConfig {frontend_name} does not exist")
        else:
            redirect = frontend.get("spec", {}).get("redirectToHttps") or {}
            code = redirect.get("responseCodeName", "MOVED_PERMANENTLY_DEFAULT")
            if redirect.get("enabled") is not True:
                errors.append(f"{where}: FrontendConfig {frontend_name} does not redirect HTTP to HTTPS (redirectToHttps.enabled)")
            elif code not in REDIRECT_CODES:
                errors.append(f"{where}: FrontendConfig {frontend_name}: responseCodeName {code} is not one of {sorted(REDIRECT_CODES)}")
            elif code not in METHOD_KEEPING_REDIRECTS:
                errors.append(
                    f"{where}: FrontendConfig {frontend_name}: {code} lets clients resend a POSTed vote as a GET; "
                    f"use one of {sorted(METHOD_KEEPING_REDIRECTS)}"
                )

        for backend in _backends(ingress):
            service = _get(objects, "Service", ns, backend["name"])
            if service is None:
                continue  # reference_errors reports it
            wanted = backend["port"].get("name", backend["port"].get("number"))
            port = next((p for p in service["spec"].get("ports", []) if wanted in (p.get("name"), p.get("port"))), None)
            if port is None:
                continue
            service_annotations = service["metadata"].get("annotations", {})
            spoken = json.loads(service_annotations.get(APP_PROTOCOLS, "{}")).get(port.get("name"), "HTTP")
            app_protocol = port.get("appProtocol", "http").lower()
            if spoken.upper() != "HTTP" or app_protocol not in ("http", "kubernetes.io/http"):
                errors.append(
                    f"{where}: backend {backend['name']}:{wanted} asks the load balancer for "
                    f"{spoken if spoken.upper() != 'HTTP' else port['appProtocol']}, but ingest serves plain HTTP/1.1 behind its TLS"
                )
            config = json.loads(service_annotations.get(BACKEND_CONFIG, "{}"))
            name = config.get("ports", {}).get(port.get("name")) or config.get("ports", {}).get(str(port["port"])) or config.get("default")
            check = (_get(objects, "BackendConfig", ns, name) or {}).get("spec", {}).get("healthCheck", {}) if name else {}
            if check.get("type", "HTTP") != "HTTP":
                errors.append(f"{where}: backend {backend['name']}:{wanted}: BackendConfig {name} checks with {check['type']}, the pods answer HTTP")
    return errors


def placeholder_domain_errors(objects: list[dict]) -> list[str]:
    return [
        f"{_where(o)}: {domain} is a placeholder (a name reserved for examples, no certificate can be issued for it): "
        "set DOMAIN for k8s/deploy, or write your domain in k8s/overlays/gke/ingress-tls.yaml"
        for o in objects
        if o["kind"] == "ManagedCertificate"
        for domain in o.get("spec", {}).get("domains", [])
        if RESERVED_DOMAIN.search(domain)
    ]
