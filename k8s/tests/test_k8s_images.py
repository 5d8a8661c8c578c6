"""The Dockerfiles of the images the manifests run, checked by reading (no Docker engine here):
multi-stage from the repository root, the right package built with the lock file, every binary of
the package on the runtime image's PATH (the consumer's image carries bandvote-result and
bandvote-audit for `kubectl exec`), a non-root runtime user that matches the pods' runAsUser, the
ports the pods declare, no secrets baked in."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

IMAGES = {"ingest": "bandvote-ingest", "consumer": "bandvote-consumer"}


def instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    lines = [l.strip() for l in joined.splitlines() if l.strip() and not l.strip().startswith("#")]
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]


def pods_running(repo, image):
    for path in (repo / "k8s" / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Deployment", "StatefulSet"):
                pod = doc["spec"]["template"]["spec"]
                for c in pod["containers"]:
                    if c["image"] == f"bandvote/{image}":
                        yield pod, c


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_builds_a_small_non_root_image(repo, image):
    package = IMAGES[image]
    text = (repo / image / "Dockerfile").read_text()
    steps = instructions(text)
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert "slim" in froms[-1] or "distroless" in froms[-1], f"runtime base {froms[-1]} is not a small image"
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert f"cargo build --release --locked -p {package}" in runs
    assert f"[package]\nname = \"{package}\"" in (repo / image / "Cargo.toml").read_text()
    entry = [arg for op, arg in steps if op == "ENTRYPOINT"][-1]
    assert package in entry
    # Every binary of the package is built by that cargo command, installed out of the build stage
    # and copied onto the runtime image's PATH.
    bins = [b["name"] for b in tomllib.loads((repo / image / "Cargo.toml").read_text()).get("bin", [])] or [package]
    runtime = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    on_path = set()
    for op, arg in runtime:
        words = arg.split()
        if op == "COPY" and words and words[0] == "--from=build":
            sources, dest = words[1:-1], words[-1]
            on_path |= {dest + s.rsplit("/", 1)[-1] if dest.endswith("/") else dest for s in sources}
    for name in bins:
        assert f"target/release/{name}" in runs, f"{name} is not installed out of the build stage"
        assert f"/usr/local/bin/{name}" in on_path, f"{name} is not on the runtime image's PATH"
    user = [arg for op, arg in steps if op == "USER"][-1]
    uid = int(user.split(":")[0])
    assert uid != 0
    exposed = {int(p) for op, arg in steps if op == "EXPOSE" for p in arg.split()}
    found = False
    for pod, container in pods_running(repo, image):
        found = True
        assert pod["securityContext"]["runAsUser"] == uid, "the pods must run as the image's user"
        assert {p["containerPort"] for p in container.get("ports", [])} <= exposed | {8090}
    assert found, f"no pod in k8s/base runs bandvote/{image}"
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN)", text, flags=re.M), "no secrets in the image"
    ignore = (repo / image / "Dockerfile.dockerignore").read_text().split()
    assert "target/" in ignore and ".local/" in ignore and "**/*.env" in ignore
