"""What a Dockerfile's build would need, checked by reading it, without a Docker engine.

No image can be pulled here, so what the base images hold is written down below from their own
Dockerfiles (docker-library's `rust` and `buildpack-deps`, Debian's required packages,
distroless's documented contents), and what a build needs is derived from its dependency trees:

- `cargo_tree` lists the packages a build compiles for the host (`cargo tree -e normal,build`),
  offline, against a lock file (fetching the locked packages once if the cargo home lacks one);
  `BUILD_NEEDS` says which Debian packages the build scripts of some
  of them call (a C compiler, cmake, make, perl, protoc, a library's headers).
- `rust_version_needed` is the highest `rust-version` among those packages, read from their
  manifests in cargo's registry cache: an image with an older Rust cannot build them.
- `build_stage_errors` reports a build stage that lacks a needed package (in its `apt-get install`
  or its base image), whose Rust is older than needed, or that does not add a needed rustup target.
- `runtime_errors` reports a shared library that a binary links (`ldd` of the binaries built
  here, each library mapped to its Debian package with `dpkg -S`) and that the runtime stage
  neither installs nor inherits.

What only a real `docker build` shows: that the base images still hold what is written here,
that the apt packages install, that the network steps (crates.io, npm) answer, and that the
link of the image's own build matches the one made here (the same Debian release, but the
image's build may find other libraries).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# What each base image holds, of what these builds need (Debian package names).
_DEBIAN_REQUIRED = {
    # Debian's Essential and required packages, in every debian:bookworm(-slim) image; zlib1g
    # because dpkg itself pre-depends on it.
    "libc6", "libgcc-s1", "zlib1g", "perl-base", "tar", "gzip", "util-linux", "coreutils", "bash",
    "sed", "grep", "findutils", "mawk", "dpkg", "apt",
}
_BUILDPACK_DEPS = _DEBIAN_REQUIRED | {
    # buildpack-deps:bookworm-curl, -scm and the full image (docker-library/buildpack-deps).
    "ca-certificates", "curl", "wget", "gnupg", "git", "openssh-client", "procps",
    "autoconf", "automake", "bzip2", "dpkg-dev", "file", "g++", "gcc", "libbz2-dev", "libc6-dev",
    "libcurl4-openssl-dev", "liblzma-dev", "libssl-dev", "libtool", "make", "patch", "unzip",
    "xz-utils", "zlib1g-dev",
    # dpkg-dev depends on the full perl.
    "perl",
}
BASE_PACKAGES = {
    # rust:<version>-slim-bookworm: debian:bookworm-slim, then ca-certificates, gcc, libc6-dev
    # (wget is removed again) and rustup's minimal profile (rust-lang/docker-rust).
    "rust-slim-bookworm": _DEBIAN_REQUIRED | {"ca-certificates", "gcc", "libc6-dev"},
    # rust:<version>-bookworm: buildpack-deps:bookworm and rustup's minimal profile.
    "rust-bookworm": _BUILDPACK_DEPS,
    "debian:bookworm-slim": _DEBIAN_REQUIRED,
    # gcr.io/distroless/cc-debian12: distroless's base (glibc, libssl, openssl, CA certificates,
    # tzdata, netbase) and libgcc, libgomp, libstdc++ (GoogleContainerTools/distroless README).
    "gcr.io/distroless/cc-debian12": {
        "libc6", "libssl3", "openssl", "ca-certificates", "tzdata", "netbase", "libgcc-s1", "libgomp1", "libstdc++6",
    },
}

# The Debian packages that the build scripts of these crates run or read. Crates that only
# compile C need a C compiler (gcc); the others say why.
BUILD_NEEDS: dict[str, set[str]] = {
    "ring": {"gcc"},
    # Its default builder on Linux is `cc`; cmake only with AWS_LC_SYS_CMAKE_BUILDER.
    "aws-lc-sys": {"gcc"},
    # Vendored OpenSSL: its Configure is a Perl script (with modules that perl-base lacks), then make.
    "openssl-src": {"gcc", "make", "perl"},
    "libgit2-sys": {"gcc"},
    "libssh2-sys": {"gcc"},
    "libz-sys": {"gcc"},
    "zstd-sys": {"gcc"},
    "bzip2-sys": {"gcc"},
    "lzma-sys": {"gcc"},
    "libsqlite3-sys": {"gcc"},
    "libmimalloc-sys": {"gcc"},
    # rdkafka's cmake-build: librdkafka's CMake project (C and C++), built with make.
    "rdkafka-sys": {"cmake", "make", "gcc", "g++"},
    # prost-build runs protoc.
    "prost-build": {"protobuf-compiler"},
}
# openssl-sys links the system's OpenSSL unless openssl-src is there to vendor it.
SYSTEM_OPENSSL = {"libssl-dev"}

HOST = "x86_64-unknown-linux-gnu"


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def runs(self) -> str:
        return "\n".join(arg for op, arg in self.steps if op == "RUN")


def stages(text: str) -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", text)
    found: list[Stage] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, arg = line.partition(" ")
        op, arg = op.upper(), arg.strip()
        if op == "FROM":
            words = arg.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            found.append(Stage(base=words[0], name=name))
        elif found:
            found[-1].steps.append((op, arg))
    return found


def apt_installed(stage: Stage) -> set[str]:
    """The packages of every `apt-get install` in the stage's RUN instructions."""
    packages = set()
    for command in re.split(r"&&|;|\|\|", stage.runs()):
        words = command.split()
        if len(words) >= 2 and words[0] in ("apt-get", "apt") and "install" in words:
            packages |= {w for w in words[words.index("install") + 1 :] if not w.startswith("-")}
    return packages


def base_packages(base: str) -> set[str]:
    if re.fullmatch(r"rust:[0-9.]+-slim-bookworm", base):
        return BASE_PACKAGES["rust-slim-bookworm"]
    if re.fullmatch(r"rust:[0-9.]+-bookworm", base):
        return BASE_PACKAGES["rust-bookworm"]
    image = base.split("@", 1)[0].removesuffix(":nonroot").removesuffix(":latest")
    if image not in BASE_PACKAGES:
        raise KeyError(f"nothing is written down about the base image {base}: add it to BASE_PACKAGES")
    return BASE_PACKAGES[image]


def rust_image_version(base: str) -> tuple[int, ...] | None:
    found = re.fullmatch(r"rust:([0-9]+(?:\.[0-9]+){1,2})(?:-.*)?", base)
    return version_tuple(found[1]) if found else None


def version_tuple(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def cargo_tree(manifest_dir: Path, *args: str, env: dict | None = None) -> set[tuple[str, str]]:
    """(name, version) of every package that `cargo tree` says the build compiles for the host.

    Resolved offline first; when the cargo home lacks a locked package (a tool binary taken from the
    cache was never built with this cargo home), the lock file's packages are fetched once and the
    tree resolved again."""
    tree = ["cargo", "tree", "--locked", "--offline", "-e", "normal,build", "--prefix", "none", "--target", HOST, *args]
    run = subprocess.run(tree, cwd=manifest_dir, capture_output=True, text=True, timeout=120, env=env)
    if run.returncode != 0:
        fetch = subprocess.run(["cargo", "fetch", "--locked", "--target", HOST],
                               cwd=manifest_dir, capture_output=True, text=True, timeout=300, env=env)
        if fetch.returncode != 0:
            raise RuntimeError(f"cargo fetch in {manifest_dir} failed:\n{fetch.stderr[-2000:]}")
        run = subprocess.run(tree, cwd=manifest_dir, capture_output=True, text=True, timeout=120, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"cargo tree in {manifest_dir} failed:\n{run.stderr[-2000:]}")
    packages = set()
    for line in run.stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1].startswith("v"):
            packages.add((words[0], words[1][1:]))
    return packages


def needed_packages(packages: set[tuple[str, str]]) -> dict[str, set[str]]:
    """Debian package -> the crates whose build needs it."""
    names = {name for name, _ in packages}
    needs: dict[str, set[str]] = {}
    for name in sorted(names):
        wanted = set(BUILD_NEEDS.get(name, set()))
        if name == "openssl-sys" and "openssl-src" not in names:
            wanted |= SYSTEM_OPENSSL
        for package in wanted:
            needs.setdefault(package, set()).add(name)
    return needs


def rust_version_needed(packages: set[tuple[str, str]], registry_src: list[Path]) -> tuple[tuple[int, ...], str]:
    """The highest `rust-version` of the packages (from crates.io), and which one asks it; each
    manifest is read from cargo's registry cache."""
    best, who = (0, 0, 0), "nothing"
    missing = []
    for name, version in sorted(packages):
        candidates = [root / f"{name}-{version}" / "Cargo.toml" for root in registry_src]
        manifest = next((c for c in candidates if c.is_file()), None)
        if manifest is None:
            missing.append(f"{name} {version}")
            continue
        package = tomllib.loads(manifest.read_text()).get("package", {})
        wanted = package.get("rust-version")
        if isinstance(wanted, str) and version_tuple(wanted) > best:
            best, who = version_tuple(wanted), f"{name} {version}"
    if missing:
        raise RuntimeError(f"not in cargo's registry cache, so their rust-version is unknown: {', '.join(missing[:10])}")
    return best, who


def build_stage_errors(
    text: str, needs: dict[str, set[str]], rust_needed: tuple[tuple[int, ...], str], targets: set[str] = frozenset()
) -> list[str]:
    """Problems of the first stage (the build): a needed package neither installed nor in its base,
    a Rust older than needed, a rustup target not added."""
    build = stages(text)[0]
    have = apt_installed(build) | base_packages(build.base)
    errors = [
        f"build stage ({build.base}): {package} is needed by {', '.join(sorted(crates))} but neither installed nor in the base image"
        for package, crates in sorted(needs.items())
        if package not in have
    ]
    image = rust_image_version(build.base)
    version, who = rust_needed
    if image is None:
        errors.append(f"build stage: {build.base} is not a rust:<version> image, so its Rust is unknown")
    elif image < version:
        errors.append(
            f"build stage: {build.base} has Rust {'.'.join(map(str, image))}, "
            f"but {who} needs rust-version {'.'.join(map(str, version))}"
        )
    added = set(re.findall(r"rustup target add ((?:[\w-]+ ?)+)", build.runs()))
    added = {t for group in added for t in group.split()}
    errors += [f"build stage: the rustup target {t} is not added (`rustup target add {t}`)" for t in sorted(targets - added)]
    return errors


def linked_packages(binary: Path) -> dict[str, str]:
    """Shared library -> Debian package, for every library `ldd` says the binary loads."""
    run = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
    if run.returncode != 0:
        raise RuntimeError(f"ldd {binary}: {run.stderr}")
    found = {}
    for line in run.stdout.splitlines():
        parts = line.split("=>")
        if len(parts) != 2 or not parts[1].strip().startswith("/"):
            continue  # linux-vdso, the dynamic loader itself
        path = Path(parts[1].split()[0]).resolve()
        found[parts[0].strip()] = package_of(path)
    return found


def package_of(path: Path) -> str:
    # Debian 12 merged /lib into /usr/lib, but dpkg records each file where its package put it.
    candidates = {str(path), str(path).removeprefix("/usr"), "/usr" + str(path) if not str(path).startswith("/usr") else str(path)}
    for candidate in sorted(candidates):
        run = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, timeout=30)
        if run.returncode == 0:
            return run.stdout.split(":", 1)[0].strip()
    raise RuntimeError(f"dpkg -S knows no package of {path}")


def runtime_errors(text: str, links: dict[str, dict[str, str]]) -> list[str]:
    """A library a binary loads that the last stage neither installs nor inherits. `links`: binary
    name -> (library -> Debian package)."""
    runtime = stages(text)[-1]
    have = apt_installed(runtime) | base_packages(runtime.base)
    return [
        f"runtime stage ({runtime.base}): {binary} loads {library}, from Debian's {package}, which the image does not have"
        for binary, libraries in sorted(links.items())
        for library, package in sorted(libraries.items())
        if package not in have
    ]
