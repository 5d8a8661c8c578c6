"""The images' build steps, checked without Docker (dockerfiles.py says how): each build stage
installs what its build scripts need, has a Rust new enough for every package it compiles and the
rustup targets it builds for; the console's image builds cargo-leptos at the version dev/tools
pins; each runtime stage has every shared library the binaries built here load. Every check is also
shown to fail on a Dockerfile broken on purpose. Each cargo, ldd and dpkg call has a timeout, so
the module stays within a few seconds (about 5 here) to a few minutes at worst.

Not covered: running the steps (`dev/image-steps` does, for the console's build stage, and
test_k8s_image_steps.py shows it fails without a package), and a real `docker build`
(docs/DEPLOY.md step 4 and cloudrun/ run it) for everything else."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from dockerfiles import (
    build_stage_errors,
    cargo_tree,
    linked_packages,
    needed_packages,
    runtime_errors,
    rust_version_needed,
    stages,
    version_tuple,
)

CACHE = Path(os.environ.get("BANDVOTE_CACHE", Path.home() / ".cache" / "bandvote"))
CARGO_HOME = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
# The images, their package and the binaries the runtime stage carries.
IMAGES = {
    "ingest": ("bandvote-ingest", ["bandvote-ingest"]),
    "consumer": ("bandvote-consumer", ["bandvote-consumer", "bandvote-result", "bandvote-audit"]),
    "logs-api": ("bandvote-logs-api", ["bandvote-logs-api"]),
    "logs-ui": ("bandvote-logs-ui", ["bandvote-logs-ui"]),
}
# The console's build runs `dev/tools install cargo-leptos wasm-bindgen wasm-opt`: curl and tar
# fetch the crates' sources, npm fetches binaryen (wasm-opt). The rest (make, perl, pkg-config)
# is what issue 16 found missing when cargo-generate vendored OpenSSL: cargo-leptos 0.3.11's
# cargo-generate 0.25 uses gix and rustls and needs none of them, but a cargo-leptos whose tree
# brings OpenSSL back must still build, so the image keeps them.
CONSOLE_TOOLS = {"curl": "dev/tools", "ca-certificates": "dev/tools", "npm": "dev/tools install wasm-opt",
                 "make": "issue 16", "perl": "issue 16", "pkg-config": "issue 16"}


def registry_src() -> list[Path]:
    return sorted((CARGO_HOME / "registry" / "src").glob("*"))


def tools_setting(repo: Path, name: str) -> str:
    found = re.search(rf"^{name}=(\S+)$", (repo / "dev" / "tools").read_text(), flags=re.M)
    assert found, f"dev/tools sets no {name}"
    return found[1].strip('"')


def workspace(repo: Path):
    """(rust-version of the workspace, {member name: folder})."""
    root = tomllib.loads((repo / "Cargo.toml").read_text())
    run = subprocess.run(["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"],
                         cwd=repo, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    members = {p["name"]: Path(p["manifest_path"]).parent for p in json.loads(run.stdout)["packages"]}
    return version_tuple(root["workspace"]["package"]["rust-version"]), members


@pytest.fixture(scope="module")
def cargo_env(tmp_path_factory):
    # cargo tree resolves and never builds; keep its lock on a target folder of its own.
    return {**os.environ, "CARGO_TARGET_DIR": str(tmp_path_factory.mktemp("cargo-target"))}


def tool_source(repo: Path, crate: str, version: str) -> Path:
    """The crate's published source with the lock file dev/tools builds it with (pins applied)."""
    source = CACHE / "src" / f"{crate}-{version}"
    if not (source / "Cargo.lock").is_file():
        pytest.fail(f"{source} is missing: `dev/tools install` fetches it (the console's build needs it)")
    return source


def tree_needs(repo, cargo_env, package, features=()):
    """The workspace package's host build: its packages, the Debian packages their build scripts
    need, and the Rust it takes."""
    minimum, members = workspace(repo)
    args = ["-p", package] + (["--no-default-features", "--features", ",".join(features)] if features else [])
    packages = cargo_tree(repo, *args, env=cargo_env)
    version, who = rust_version_needed({p for p in packages if p[0] not in members}, registry_src())
    return packages, (max(version, minimum), who if version > minimum else "the workspace's rust-version")


@pytest.fixture(scope="module")
def console_needs(repo, cargo_env):
    """What the console's build stage needs: the host build of cargo-leptos and wasm-bindgen-cli as
    dev/tools makes them, and of the console's server (its `ssr` build)."""
    needs: dict[str, set[str]] = {tool: {why} for tool, why in CONSOLE_TOOLS.items()}
    rust = ((0, 0, 0), "nothing")
    wasm_bindgen = next(
        line.split('"')[1]
        for block in (repo / "Cargo.lock").read_text().split("[[package]]")
        if '\nname = "wasm-bindgen"\n' in block
        for line in block.splitlines()
        if line.startswith("version = ")
    )
    for crate, version in (("cargo-leptos", tools_setting(repo, "CARGO_LEPTOS_VERSION")), ("wasm-bindgen-cli", wasm_bindgen)):
        source = tool_source(repo, crate, version)
        packages = cargo_tree(source, env=cargo_env)
        for package, crates in needed_packages(packages).items():
            needs.setdefault(package, set()).update(f"{crate}: {c}" for c in crates)
        found = rust_version_needed({p for p in packages if p[0] != crate}, registry_src())
        rust = max(rust, (found[0], f"{crate}'s dependency {found[1]}"))
    packages, server_rust = tree_needs(repo, cargo_env, "bandvote-logs-ui", ["ssr"])
    for package, crates in needed_packages(packages).items():
        needs.setdefault(package, set()).update(crates)
    return needs, max(rust, server_rust)


def read(repo, image):
    return (repo / image / "Dockerfile").read_text()


# --- the console's image ------------------------------------------------------------------------


def test_the_console_build_stage_has_what_its_build_needs(repo, console_needs):
    needs, rust = console_needs
    errors = build_stage_errors(read(repo, "logs-ui"), needs, rust, {"wasm32-unknown-unknown"})
    assert not errors, "\n".join(errors)
    # What the trees asked for, so a change in them shows here.
    assert {"gcc", "make", "perl", "pkg-config", "npm"} <= set(needs)


def cargo_leptos_errors(text: str, pinned: str) -> list[str]:
    """The console's build must make cargo-leptos at the version dev/tools pins: through dev/tools
    itself (after the sources are copied in), or with `cargo install --locked` at that version."""
    build = stages(text)[0]
    runs = build.runs()
    if re.search(r"dev/tools install\b[^&;]*\bcargo-leptos\b", runs):
        copied = [arg for op, arg in build.steps if op == "COPY"]
        if not any(arg.split()[0] == "." for arg in copied):
            return ["the build stage runs dev/tools without copying the repository in"]
        return []
    found = re.search(r"cargo install\b([^&;]*)\bcargo-leptos\b([^&;]*)", runs)
    if not found:
        return ["the build stage does not install cargo-leptos"]
    words = (found[1] + found[2]).split()
    version = next((w.split("=", 1)[1] for w in words if w.startswith("--version=")), None)
    if "--version" in words:
        version = words[words.index("--version") + 1]
    version = version or next((w.split("@", 1)[1] for w in words if w.startswith("cargo-leptos@")), None)
    errors = []
    if version != pinned:
        errors.append(f"the build stage installs cargo-leptos {version or '(any version)'}, dev/tools pins {pinned}")
    if "--locked" not in words:
        errors.append("the build stage installs cargo-leptos without --locked")
    return errors


def test_the_console_builds_cargo_leptos_as_dev_tools_pins_it(repo):
    pinned = tools_setting(repo, "CARGO_LEPTOS_VERSION")
    assert not cargo_leptos_errors(read(repo, "logs-ui"), pinned)


# --- the other images -----------------------------------------------------------------------------


@pytest.mark.parametrize("image", ["ingest", "consumer", "logs-api"])
def test_each_build_stage_has_what_its_build_needs(repo, cargo_env, image):
    package, _ = IMAGES[image]
    packages, rust = tree_needs(repo, cargo_env, package)
    errors = build_stage_errors(read(repo, image), needed_packages(packages), rust)
    assert not errors, "\n".join(errors)


def built_binary(name: str) -> Path:
    """The binary as built here: release if there is one, else the debug build dev/pytest makes
    (the same system libraries: only the optimisation differs)."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target"))
    bin_dir = os.environ.get("BANDVOTE_BIN")
    for path in [target / "release" / name, CACHE / "target" / "release" / name] + ([Path(bin_dir) / name] if bin_dir else []) + [target / "debug" / name]:
        if path.is_file():
            return path
    pytest.fail(f"no {name} built here (looked in {target}/release and /debug): `cargo build -p {name}` (dev/pytest builds the debug ones)")


@pytest.fixture(scope="module")
def links():
    return {image: {b: linked_packages(built_binary(b)) for b in binaries} for image, (_, binaries) in IMAGES.items()}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_each_runtime_stage_has_the_libraries_its_binaries_load(repo, links, image):
    errors = runtime_errors(read(repo, image), links[image])
    assert not errors, "\n".join(errors)
    if image in ("ingest", "consumer"):
        # rdkafka's ssl feature links OpenSSL: the check saw it.
        assert any(p == "libssl3" for libraries in links[image].values() for p in libraries.values()), links[image]


# --- the checks can fail ------------------------------------------------------------------------


def without_package(name):
    return lambda text: re.sub(rf"(apt-get install[^\n]*?) {re.escape(name)}( |\n)", r"\1\2", text, count=1)


BUILD_BREAKS = {
    "console without make": ("logs-ui", without_package("make"), "make is needed by issue 16"),
    "console without perl": ("logs-ui", without_package("perl"), "perl is needed by issue 16"),
    "console without npm": ("logs-ui", without_package("npm"), "npm is needed by dev/tools install wasm-opt"),
    "console without the wasm target": (
        "logs-ui", lambda t: t.replace(" \\\n && rustup target add wasm32-unknown-unknown", ""),
        "the rustup target wasm32-unknown-unknown is not added",
    ),
    "console on an old rust": ("logs-ui", lambda t: t.replace("FROM rust:1.95-slim", "FROM rust:1.85-slim"), "has Rust 1.85.0, but"),
    "console on a rust that lacks gcc": (
        "logs-ui", lambda t: t.replace("FROM rust:1.95-slim-bookworm", "FROM debian:bookworm-slim"),
        "gcc is needed by",
    ),
    "ingest without cmake": ("ingest", without_package("cmake"), "cmake is needed by rdkafka-sys"),
    "ingest without protoc": ("ingest", without_package("protobuf-compiler"), "protobuf-compiler is needed by prost-build"),
    "consumer on a slim rust": (
        "consumer", lambda t: t.replace("FROM rust:1.95-bookworm", "FROM rust:1.95-slim-bookworm"),
        "g++ is needed by rdkafka-sys",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BUILD_BREAKS))
def test_a_broken_build_stage_is_reported(repo, cargo_env, console_needs, breakage):
    image, mutate, expected = BUILD_BREAKS[breakage]
    text = read(repo, image)
    broken = mutate(text)
    assert broken != text, f"the breakage {breakage!r} changed nothing: the Dockerfile no longer has what it edits"
    if image == "logs-ui":
        needs, rust = console_needs
        targets = {"wasm32-unknown-unknown"}
    else:
        packages, rust = tree_needs(repo, cargo_env, IMAGES[image][0])
        needs, targets = needed_packages(packages), set()
    assert not build_stage_errors(text, needs, rust, targets)
    errors = build_stage_errors(broken, needs, rust, targets)
    assert any(expected in e for e in errors), f"expected an error containing {expected!r}, got {errors}"


def test_a_cargo_leptos_not_at_the_pinned_version_is_reported(repo):
    pinned = tools_setting(repo, "CARGO_LEPTOS_VERSION")
    text = read(repo, "logs-ui")
    by_cargo = text.replace("dev/tools install cargo-leptos wasm-bindgen wasm-opt", f"cargo install --locked cargo-leptos --version {pinned} && dev/tools install wasm-bindgen wasm-opt")
    assert by_cargo != text and not cargo_leptos_errors(by_cargo, pinned)
    assert cargo_leptos_errors(by_cargo.replace(f"--version {pinned}", "--version 0.2.20"), pinned) == [
        f"the build stage installs cargo-leptos 0.2.20, dev/tools pins {pinned}"
    ]
    assert cargo_leptos_errors(by_cargo.replace("--locked ", ""), pinned) == ["the build stage installs cargo-leptos without --locked"]
    assert cargo_leptos_errors(text.replace("dev/tools install cargo-leptos wasm-bindgen", "dev/tools install wasm-bindgen"), pinned) == [
        "the build stage does not install cargo-leptos"
    ]


RUNTIME_BREAKS = {
    "ingest without libssl3": ("ingest", without_package("libssl3"), "loads libssl.so.3, from Debian's libssl3"),
    # debian:bookworm-slim has zlib1g whatever apt installs (dpkg needs it); distroless does not.
    "consumer on distroless without zlib": (
        "consumer",
        lambda t: without_package("zlib1g")(t.replace("FROM debian:bookworm-slim", "FROM gcr.io/distroless/cc-debian12:nonroot")),
        "loads libz.so.1, from Debian's zlib1g",
    ),
}


@pytest.mark.parametrize("breakage", sorted(RUNTIME_BREAKS))
def test_a_runtime_stage_without_a_library_is_reported(repo, links, breakage):
    image, mutate, expected = RUNTIME_BREAKS[breakage]
    text = read(repo, image)
    broken = mutate(text)
    assert broken != text
    assert not runtime_errors(text, links[image])
    errors = runtime_errors(broken, links[image])
    assert any(expected in e for e in errors), f"expected an error containing {expected!r}, got {errors}"
