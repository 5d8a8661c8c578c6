"""k8s/deploy --render: what the deploy script would apply, with the registry and tag it is given
(no gcloud, docker or kubectl is called in this mode)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from k8s_model import reference_errors


def test_render_points_every_bandvote_image_at_the_registry_and_tag(repo, kustomize):
    env = {
        **os.environ,
        "PATH": f"{Path(kustomize).parent}:{os.environ['PATH']}",
        "PROJECT_ID": "vote-test",
        "REGION": "europe-west1",
        "TAG": "abc123",
    }
    run = subprocess.run([str(repo / "k8s" / "deploy"), "--render"], env=env, capture_output=True, text=True, timeout=120)
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
