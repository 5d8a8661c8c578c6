"""The console's image build steps run here as the image runs them, without a Docker engine
(`dev/image-steps`): a debootstrapped Debian bookworm root stands in for `rust:1.95-slim-bookworm`
(the packages and rustup install of the rust image's own Dockerfile), and the build stage's RUN,
ENV, WORKDIR and `COPY . .` run in it, in order, under chroot, from a clean CARGO_HOME and empty
cache mounts.

These tests show that the runner reads the Dockerfile as Docker does, refuses what it does not
understand, and fails at the step a missing package breaks. They need root (chroot, mount) and
make the cached base roots the first time (`dev/image-steps --prepare`: about 1.5 minutes here),
then take about a minute. The full build stage (cargo-leptos from source, then the console's
release build: see logs-ui/README.md for the last run) is not part of this suite:
`dev/image-steps logs-ui` runs it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest


def image_steps(repo: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(repo / "dev" / "image-steps"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def base_root(repo):
    """The cached roots the steps run in, made here when missing (within a few minutes)."""
    if os.geteuid() != 0:
        pytest.fail("the image's steps run under chroot: run the tests as root (dev/pytest does here)")
    made = image_steps(repo, "--prepare", "logs-ui", timeout=600)
    assert made.returncode == 0, f"`dev/image-steps --prepare` failed:\n{made.stderr[-3000:]}"


def write_dockerfile(folder: Path, text: str, ignore: str = "") -> Path:
    dockerfile = folder / "Dockerfile"
    dockerfile.write_text(text)
    (folder / "Dockerfile.dockerignore").write_text(ignore)
    return dockerfile


def test_the_console_build_stage_is_read_step_by_step(repo):
    plan = image_steps(repo, "--plan", "logs-ui", timeout=30)
    assert plan.returncode == 0, plan.stderr
    steps = re.findall(r"^step \d+/\d+ \(line \d+\): (\w+) ?(.*)$", plan.stdout, flags=re.M)
    assert [kind for kind, _ in steps] == ["FROM", "RUN", "WORKDIR", "COPY", "ENV", "RUN"], plan.stdout
    assert steps[0][1] == "rust:1.95-slim-bookworm"
    assert "npm" in steps[1][1] and "rustup target add wasm32-unknown-unknown" in steps[1][1]
    assert steps[3][1] == ". ."
    # The cache mounts are not part of the command: they become empty folders at their targets.
    assert steps[5][1].startswith("dev/tools install cargo-leptos"), steps[5]
    assert "cache mounts, empty: /cache /usr/local/cargo/registry" in plan.stdout
    # What the runtime stage takes from the build stage is checked at the end of a run.
    assert "artefacts: /out/bandvote-logs-ui /out/site" in plan.stdout


def test_the_context_is_what_the_dockerignore_lets_through(repo):
    listed = image_steps(repo, "--context", "logs-ui", timeout=30)
    assert listed.returncode == 0, listed.stderr
    files = set(listed.stdout.splitlines())
    assert {"Cargo.toml", "Cargo.lock", "dev/tools", "logs-ui/Cargo.toml", "domain/Cargo.toml"} <= files
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    excluded = set(tracked) - files
    # Dockerfile.dockerignore: docs/, locust/, grafana/ and every *.env are not sent; nothing else.
    assert excluded == {f for f in tracked if f.split("/")[0] in ("docs", "locust", "grafana") or f.endswith(".env")}
    assert any(f.startswith("docs/") for f in excluded)


REFUSED = {
    "an argument before the stage": ("ARG RUST=1.95\nFROM rust:1.95-slim-bookworm AS build\n", "ARG before the build stage"),
    "a user": ("FROM rust:1.95-slim-bookworm AS build\nUSER nobody\n", "USER is not understood in the build stage"),
    "a copy of some files": ("FROM rust:1.95-slim-bookworm AS build\nCOPY Cargo.toml ./\n", "only COPY . <dest>"),
    "a secret mount": ("FROM rust:1.95-slim-bookworm AS build\nRUN --mount=type=secret,id=x true\n", "RUN option --mount=type=secret"),
    "an exec-form run": ('FROM rust:1.95-slim-bookworm AS build\nRUN ["true"]\n', "exec form"),
    "an unknown base image": ("FROM rust:1.95-bookworm AS build\nRUN true\n", "has no stand-in here"),
    "no build stage": ("FROM rust:1.95-slim-bookworm\nRUN true\n", "no stage named build"),
    "another escape character": ("# escape=`\nFROM rust:1.95-slim-bookworm AS build\n", "another escape character"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_runner_does_not_understand_is_refused(repo, tmp_path, case):
    text, expected = REFUSED[case]
    refused = image_steps(repo, "--plan", "--dockerfile", str(write_dockerfile(tmp_path, text)), "logs-ui", timeout=30)
    assert refused.returncode != 0, refused.stdout
    assert expected in refused.stderr, refused.stderr


def test_steps_run_with_the_stage_environment_a_clean_cargo_home_and_empty_caches(repo, tmp_path, base_root):
    # ENV expands against the environment before it, WORKDIR is relative to the last one, cache
    # mounts hide what the root has there, and nothing of this machine's cache is visible.
    dockerfile = write_dockerfile(tmp_path, """FROM rust:1.95-slim-bookworm AS build
ENV GREETING="two words" PATH=/opt/tools/bin:$PATH
WORKDIR /work
WORKDIR sub
COPY . .
RUN test "$GREETING" = "two words" \\
 && test "$(pwd)" = /work/sub && test -f Cargo.lock && test ! -e docs \\
 && case "$PATH" in /opt/tools/bin:/usr/local/cargo/bin:*) ;; *) echo "PATH is $PATH"; exit 1 ;; esac \\
 && test "$CARGO_HOME" = /usr/local/cargo && test ! -e /usr/local/cargo/registry \\
 && ! command -v curl && ! command -v wget && ! command -v npm \\
 && rustc --version | grep -F 'rustc 1.95.0' \\
 && mkdir -p /usr/local/cargo/registry/seen
RUN --mount=type=cache,target=/usr/local/cargo/registry \\
    test -z "$(ls -A /usr/local/cargo/registry)" && test ! -e /root/.cache/bandvote \\
 && mkdir -p /out && touch /out/made
FROM scratch
COPY --from=build /out/made /made
""", "docs/\n")
    run = image_steps(repo, "--dockerfile", str(dockerfile), "logs-ui", timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "artefact /out/made" in run.stderr
    assert re.search(r"logs-ui: build stage passed in \d+ s", run.stderr), run.stderr


def test_the_console_build_stage_without_curl_fails_at_the_step_that_needs_it(repo, tmp_path, base_root):
    # curl is what dev/tools fetches the cargo-leptos sources with; the rust image has no curl
    # (it removes the wget it used), so the dev/tools step fails in its first seconds. (npm cannot
    # serve here: without it in the apt line, `dev/tools install wasm-opt` installs it with apt
    # itself, as root in the build, and the build passes.)
    text = (repo / "logs-ui" / "Dockerfile").read_text()
    broken = re.sub(r"(apt-get install[^\n]*?) curl( |\n)", r"\1\2", text, count=1)
    assert broken != text, "the console's apt-get line no longer installs curl: choose another package to remove"
    ignore = (repo / "logs-ui" / "Dockerfile.dockerignore").read_text()
    run = image_steps(repo, "--dockerfile", str(write_dockerfile(tmp_path, broken, ignore)), "logs-ui", timeout=900)
    assert run.returncode == 1, run.stderr[-4000:]
    assert re.search(r"step 2/6: RUN apt-get update.*\n.*done in \d+ s", run.stderr), "the apt step should pass:\n" + run.stderr[-4000:]
    assert re.search(r"FAILED at step 6/6 \(line \d+\) after \d+ s: RUN dev/tools install cargo-leptos", run.stderr), run.stderr[-4000:]
    assert "curl: command not found" in run.stderr, run.stderr[-4000:]
