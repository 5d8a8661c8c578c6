"""The Cloud Run service files agree with the code: every variable they set is one the binary reads,
the port and probe paths are the ones the binary serves (checked by running it with the file's own
environment), the images are the Dockerfiles' and every placeholder is one the deploy script fills."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import REPO, _start, _stop, binary, free_port, need_env

SERVICES = {
    # service file -> (binary, Dockerfile)
    "logs-api.yaml": ("bandvote-logs-api", REPO / "logs-api" / "Dockerfile"),
    "logs-ui.yaml": ("bandvote-logs-ui", REPO / "logs-ui" / "Dockerfile"),
}
CLOUDRUN = REPO / "cloudrun"


def load(name: str) -> dict:
    return yaml.safe_load((CLOUDRUN / name).read_text())


def container(service: dict) -> dict:
    containers = service["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per service"
    return containers[0]


def env_names_read_by(binary_path: str) -> set[str]:
    """The variables a binary reads, from its `--help` (clap prints `[env: NAME=...]`)."""
    help_text = subprocess.run([binary_path, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", help_text))


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_file_is_a_scale_to_zero_knative_service(name):
    service = load(name)
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert service["kind"] == "Service"
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "0", "scales to zero"
    assert int(annotations["autoscaling.knative.dev/maxScale"]) >= 1
    spec = template["spec"]
    assert 1 <= spec["containerConcurrency"] <= 1000
    assert spec["serviceAccountName"].endswith(".iam.gserviceaccount.com")
    main = container(service)
    assert [p["containerPort"] for p in main["ports"]] == [8080]
    for probe in ("startupProbe", "livenessProbe"):
        assert main[probe]["httpGet"]["port"] == 8080, probe
    assert "limits" in main["resources"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_probes_avoid_reserved_paths_and_the_api_waits_for_mongodb(name):
    """Cloud Run reserves some URL paths that end in `z` (its known issues advise serving none);
    the logs API counts as started only once MongoDB answers, within a budget that covers Direct
    VPC egress connecting a minute or more after an instance starts."""
    main = container(load(name))
    for probe in ("startupProbe", "livenessProbe"):
        path = main[probe]["httpGet"]["path"]
        assert not path.rstrip("/").endswith("z"), f"{probe} {path}"
    startup = main["startupProbe"]
    assert startup["timeoutSeconds"] <= startup["periodSeconds"]
    if name == "logs-api.yaml":
        assert startup["httpGet"]["path"] == "/health/ready", "started means MongoDB answers"
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, startup
        assert startup["timeoutSeconds"] > 3, "longer than the readiness check's own 3 s"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_file_agrees_with_the_binary_and_its_image(name, tmp_path):
    binary_name, dockerfile = SERVICES[name]
    path = binary(binary_name)
    main = container(load(name))
    env = {item["name"]: item for item in main["env"]}
    unknown = set(env) - env_names_read_by(path)
    assert not unknown, f"{name} sets variables {binary_name} does not read: {sorted(unknown)}"

    # The image: runs that binary as non-root, listening where the service file says.
    text = dockerfile.read_text()
    assert f'ENTRYPOINT ["/usr/local/bin/{binary_name}"]' in text
    assert re.search(r"^USER nonroot", text, re.M), "non-root"
    assert "PORT=8080" in text and "EXPOSE 8080" in text
    assert main["image"].endswith(f"/{name.removesuffix('.yaml')}:${{IMAGE_TAG}}")

    # Run the binary with the file's own environment (values that point at this machine where
    # the file has placeholders or secrets) and ask it for the probes' paths.
    local = {"HOST": "127.0.0.1", "PORT": str(free_port())}
    if "MONGODB_URI" in env:
        assert "secretKeyRef" in env["MONGODB_URI"]["valueFrom"], "the MongoDB URI comes from a secret"
        local["MONGODB_URI"] = need_env("MONGODB_URI")
    if "LOGS_API_URL" in env:
        local["LOGS_API_URL"] = f"http://127.0.0.1:{free_port()}"
        local["LOGS_API_AUDIENCE"] = ""
    if "LEPTOS_SITE_ROOT" in env:
        local["LEPTOS_SITE_ROOT"] = os.environ.get("LEPTOS_SITE_ROOT", "")
    process_env = {**os.environ}
    for variable, item in env.items():
        if "value" in item:
            process_env[variable] = str(item["value"])
    process_env.update(local)
    started = time.monotonic()
    proc = _start(path, process_env, tmp_path / f"{binary_name}.log")
    try:
        url = f"http://127.0.0.1:{local['PORT']}"
        probe_paths = {main[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe")}
        first_healthy = None
        deadline = started + 20
        while time.monotonic() < deadline and first_healthy is None:
            assert proc.poll() is None, (tmp_path / f"{binary_name}.log").read_text()
            try:
                if all(requests.get(url + p, timeout=1).status_code == 200 for p in probe_paths):
                    first_healthy = time.monotonic() - started
            except requests.RequestException:
                time.sleep(0.02)
        assert first_healthy is not None, f"{probe_paths} never answered 200"
        print(f"{binary_name}: first healthy answer {first_healthy * 1000:.0f} ms after start")
        # Startup probe budget: periodSeconds x failureThreshold.
        budget = main["startupProbe"]["periodSeconds"] * main["startupProbe"]["failureThreshold"]
        assert first_healthy < budget
    finally:
        _stop(proc)


def test_deploy_script_fills_every_placeholder():
    script = (CLOUDRUN / "deploy").read_text()
    filled = set(re.search(r"for name in ([A-Z_ ]+); do", script).group(1).split())
    for name in SERVICES:
        used = set(re.findall(r"\$\{([A-Z_]+)\}", (CLOUDRUN / name).read_text()))
        assert used <= filled, f"{name} uses placeholders the deploy script does not fill: {used - filled}"
        assert f"cloudrun/{name}" in script, f"the deploy script applies {name}"
    assert "secrets versions add bandvote-mongodb-uri" in script
    secret = container(load("logs-api.yaml"))["env"]
    assert any(e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "bandvote-mongodb-uri" for e in secret)
