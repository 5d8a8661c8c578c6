"""k8s/deploy --render: what the deploy script would apply, with the registry, tag and domain it is
given (no gcloud, docker or kubectl is called in this mode), and its refusal of a domain for which
the Ingress's managed certificate could never be issued."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ingress_tls import https_errors, placeholder_domain_errors
from k8s_model import reference_errors


def deploy_render(repo: Path, kustomize: str, **settings: str) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if k != "DOMAIN"},
        "PATH": f"{Path(kustomize).parent}:{os.environ['PATH']}",
        "PROJECT_ID": "vote-test",
        "REGION": "europe-west1",
        "TAG": "abc123",
        **settings,
    }
    return subprocess.run([str(repo / "k8s" / "deploy"), "--render"], env=env, capture_output=True, text=True, timeout=120)


def test_render_points_every_bandvote_image_at_the_registry_and_tag(repo, kustomize):
    run = deploy_render(repo, kustomize, DOMAIN="votos.bandas.gt")
    assert run.returncode == 0, run.stderr
    objects = [o for o in yaml.safe_load_all(run.stdout) if o]
    images = {
        c["image"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
        for c in o["spec"]["template"]["spec"].get("initContainers", []) + o["spec"]["template"]["spec"]["containers"]
    }
    registry = "europe-west1-docker.pkg.dev/vote-test/bandvote"
    ours = {i for i in images if "bandvote" in i}
    assert ours == {f"{registry}/{name}:abc123" for name in ("ingest", "consumer", "ingest-wasm")}, images
    assert not reference_errors(objects)
    assert not list((repo / "k8s" / "release").glob("*")), "render must not leave files in the tree"


def test_render_gives_the_certificate_the_domain(repo, kustomize):
    run = deploy_render(repo, kustomize, DOMAIN="votos.bandas.gt")
    assert run.returncode == 0, run.stderr
    objects = [o for o in yaml.safe_load_all(run.stdout) if o]
    [certificate] = [o for o in objects if o["kind"] == "ManagedCertificate"]
    assert certificate["spec"]["domains"] == ["votos.bandas.gt"]
    assert not placeholder_domain_errors(objects) and not https_errors(objects)


@pytest.mark.parametrize(
    "domain, message",
    [
        (None, "the Ingress's certificate would be for vote.example.org, a placeholder: set DOMAIN"),
        ("vote.example.org", "would be for vote.example.org, a placeholder"),
        ("bandvote.test", "would be for bandvote.test, a placeholder"),
        ("Votos.Bandas.gt", "Votos.Bandas.gt is not a domain a managed certificate takes"),
        ("*.bandas.gt", "is not a domain a managed certificate takes"),
    ],
)
def test_render_refuses_a_placeholder_or_invalid_domain(repo, kustomize, domain, message):
    run = deploy_render(repo, kustomize, **({"DOMAIN": domain} if domain is not None else {}))
    assert run.returncode != 0 and not run.stdout, f"k8s/deploy rendered with DOMAIN={domain!r}"
    assert message in run.stderr, run.stderr


def test_the_documented_edit_of_the_domain_needs_no_domain_setting(repo, kustomize, tmp_path):
    # The operator's other way: the domain written into ingress-tls.yaml with docs/DEPLOY.md's own
    # command, on a copy of the tree; k8s/deploy then needs no DOMAIN.
    for folder in ("k8s", "grafana"):
        shutil.copytree(repo / folder, tmp_path / folder, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.env"))
    [edit] = [line for line in (repo / "docs" / "DEPLOY.md").read_text().splitlines() if line.startswith("sed -i ") and "ingress-tls.yaml" in line]
    subprocess.run(["bash", "-c", edit], cwd=tmp_path, env={**os.environ, "DOMAIN": "votos.bandas.gt"}, check=True, timeout=10)
    run = deploy_render(tmp_path, kustomize)
    assert run.returncode == 0, run.stderr
    [certificate] = [o for o in yaml.safe_load_all(run.stdout) if o and o["kind"] == "ManagedCertificate"]
    assert certificate["spec"]["domains"] == ["votos.bandas.gt"]
