"""k8s/overlays/gke: the HTTP entry serves HTTPS with a Google-managed certificate on a reserved
global address and redirects HTTP to HTTPS without losing a POST, while the pods behind it still
get plain HTTP; each rule also fails on a manifest broken on purpose (ingress_tls.py says how).
The CRDs of ManagedCertificate and FrontendConfig validate the objects themselves
(test_k8s_manifests.py); k8s/deploy's refusal of the placeholder domain is in test_k8s_deploy.py."""

from __future__ import annotations

import copy
import re

import pytest

from ingress_tls import https_errors, placeholder_domain_errors
from k8s_model import assert_break_reported, render


@pytest.fixture(scope="module")
def gke(kustomize, repo, tmp_path_factory) -> list[dict]:
    return render(kustomize, repo, tmp_path_factory.mktemp("k8s"), "k8s/overlays/gke")


def _find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _ingress_annotations(objects):
    return _find(objects, "Ingress", "bandvote")["metadata"]["annotations"]


def test_the_ingress_serves_https_with_a_managed_certificate_and_redirects_http(gke):
    annotations = _ingress_annotations(gke)
    assert annotations["kubernetes.io/ingress.global-static-ip-name"] == "bandvote-ingress"
    assert annotations["networking.gke.io/managed-certificates"] == "bandvote-ingress"
    assert annotations["networking.gke.io/v1beta1.FrontendConfig"] == "bandvote-ingress"
    assert "kubernetes.io/ingress.allow-http" not in annotations
    certificate = _find(gke, "ManagedCertificate", "bandvote-ingress")
    assert certificate["apiVersion"] == "networking.gke.io/v1"
    assert certificate["metadata"]["namespace"] == "ingest"
    frontend = _find(gke, "FrontendConfig", "bandvote-ingress")
    assert frontend["apiVersion"] == "networking.gke.io/v1beta1"
    assert frontend["spec"]["redirectToHttps"] == {"enabled": True, "responseCodeName": "PERMANENT_REDIRECT"}
    errors = https_errors(gke)
    assert not errors, "\n".join(errors)


def test_the_base_alone_has_no_gce_ingress(kustomize, repo, tmp_path):
    # The rules apply to class gce only: the base leaves the class (and so TLS) to the overlay.
    base = render(kustomize, repo, tmp_path, "k8s/base")
    assert "kubernetes.io/ingress.class" not in _find(base, "Ingress", "bandvote")["metadata"].get("annotations", {})


def test_the_committed_domain_is_a_placeholder_that_is_reported(gke):
    assert placeholder_domain_errors(gke) == [
        "ManagedCertificate/ingest/bandvote-ingress: vote.example.org is a placeholder (a name reserved for "
        "examples, no certificate can be issued for it): set DOMAIN for k8s/deploy, or write your domain in "
        "k8s/overlays/gke/ingress-tls.yaml"
    ]
    for domain, reported in [("votos.bandas.gt", False), ("vote.example.com", True), ("example.net", True),
                             ("vote.test", True), ("bandvote.invalid", True), ("examples.org", False)]:
        objects = copy.deepcopy(gke)
        _find(objects, "ManagedCertificate", "bandvote-ingress")["spec"]["domains"] = [domain]
        assert bool(placeholder_domain_errors(objects)) == reported, domain


def test_the_docs_reserve_the_address_and_show_the_certificate(repo, gke):
    """The global address the Ingress names is the one docs/DEPLOY.md reserves and k8s/deploy
    reads, and the docs say how to watch the certificate the Ingress names."""
    address = _ingress_annotations(gke)["kubernetes.io/ingress.global-static-ip-name"]
    deploy_md = (repo / "docs" / "DEPLOY.md").read_text()
    assert re.search(rf"gcloud compute addresses create {address} --global\b", deploy_md), \
        f"docs/DEPLOY.md does not reserve the global address {address}"
    assert f"gcloud compute addresses describe {address} --global" in (repo / "k8s" / "deploy").read_text()
    certificate = _ingress_annotations(gke)["networking.gke.io/managed-certificates"]
    for doc in ("docs/DEPLOY.md", "k8s/README.md"):
        assert f"kubectl -n ingest describe managedcertificate {certificate}" in (repo / doc).read_text(), doc


# --- the checks can fail ------------------------------------------------------------------------


def no_static_ip(objs):
    del _ingress_annotations(objs)["kubernetes.io/ingress.global-static-ip-name"]


def no_certificate(objs):
    del _ingress_annotations(objs)["networking.gke.io/managed-certificates"]


def certificate_misnamed(objs):
    _ingress_annotations(objs)["networking.gke.io/managed-certificates"] = "bandvote-ingress, bandvote-www"


def certificate_without_domains(objs):
    _find(objs, "ManagedCertificate", "bandvote-ingress")["spec"]["domains"] = []


def no_frontend_config(objs):
    del _ingress_annotations(objs)["networking.gke.io/v1beta1.FrontendConfig"]


def frontend_config_missing(objs):
    objs.remove(_find(objs, "FrontendConfig", "bandvote-ingress"))


def redirect_off(objs):
    _find(objs, "FrontendConfig", "bandvote-ingress")["spec"]["redirectToHttps"]["enabled"] = False


def redirect_301(objs):
    del _find(objs, "FrontendConfig", "bandvote-ingress")["spec"]["redirectToHttps"]["responseCodeName"]


def redirect_code_misspelt(objs):
    _find(objs, "FrontendConfig", "bandvote-ingress")["spec"]["redirectToHttps"]["responseCodeName"] = "PERMANENT"


def http_off(objs):
    _ingress_annotations(objs)["kubernetes.io/ingress.allow-http"] = "false"


def backend_over_https(objs):
    service = _find(objs, "Service", "ingest-http")
    service["metadata"]["annotations"]["cloud.google.com/app-protocols"] = '{"http": "HTTPS"}'


def backend_over_h2c(objs):
    port = next(p for p in _find(objs, "Service", "ingest-wasm")["spec"]["ports"] if p["name"] == "http")
    port["appProtocol"] = "kubernetes.io/h2c"


def health_check_over_https(objs):
    _find(objs, "BackendConfig", "ingest-serving-health")["spec"]["healthCheck"]["type"] = "HTTPS"


BREAKS = {
    "no static IP": (no_static_ip, "no kubernetes.io/ingress.global-static-ip-name"),
    "no certificate": (no_certificate, "the vote routes would be served in cleartext"),
    "certificate misnamed": (certificate_misnamed, "ManagedCertificate bandvote-www does not exist"),
    "certificate without domains": (certificate_without_domains, "ManagedCertificate bandvote-ingress names no domain"),
    "no frontend config": (no_frontend_config, "HTTP is not redirected to HTTPS"),
    "frontend config missing": (frontend_config_missing, "FrontendConfig bandvote-ingress does not exist"),
    "redirect off": (redirect_off, "does not redirect HTTP to HTTPS"),
    "redirect 301": (redirect_301, "MOVED_PERMANENTLY_DEFAULT lets clients resend a POSTed vote as a GET"),
    "redirect code misspelt": (redirect_code_misspelt, "responseCodeName PERMANENT is not one of"),
    "http off": (http_off, "http:// clients would get no redirect"),
    "backend over https": (backend_over_https, "backend ingest-http:http asks the load balancer for HTTPS"),
    "backend over h2c": (backend_over_h2c, "backend ingest-wasm:http asks the load balancer for kubernetes.io/h2c"),
    "health check over https": (health_check_over_https, "BackendConfig ingest-serving-health checks with HTTPS"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKS))
def test_a_broken_https_setup_is_reported(gke, breakage):
    mutate, expected = BREAKS[breakage]
    assert_break_reported(gke, mutate, https_errors, expected)
