"""The layering of the code base, as docs/architecture.md draws it, pinned in one place.

Every module of ours belongs to one part; each part may import only the parts listed for it
(its own included). Third-party imports are free except in the services' pure cores, which
import neither gRPC nor Envoy/protobuf stubs (house rule 2). Imports inside functions count
too: a late import is still a dependency.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("extauthz", "ratelimit", "telemetry")
#: The services' edge modules: the only ones that talk gRPC/protobuf or use the runtime
#: (metrics.py: the Prometheus edge, built on envoy_mixer.runtime.metrics).
EDGE_MODULES = {"server.py", "app.py", "cli.py", "__main__.py", "metrics.py"}
#: Third-party modules the pure cores must not import.
WIRE_LIBRARIES = ("grpc", "grpc_health", "grpc_reflection", "envoy", "google.rpc",
                  "google.protobuf", "xds", "udpa", "validate")

#: Control-plane packages that are models, not Envoy configuration: as pure as a service core
#: (Istio's authz model "knows nothing of Envoy"); their cli.py is wiring.
PURE_CONTROLPLANE = ("controlplane.mesh", "controlplane.security", "controlplane.ca")

#: part -> the parts it may import besides itself. A service's modules may import their own
#: package (a core never its edge) and never another service.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "runtime": {"common"},
    "service-core": {"common"},
    "service-edge": {"common", "runtime"},
    "controlplane": {"common", "runtime", "service-core"},
    "cli": {"common", "runtime", "service-core", "service-edge", "controlplane", "package"},
    "dev": {"common", "runtime", "service-core", "service-edge", "controlplane", "cli",
            "package"},
    "package": {"cli"},
}


def part_of(module: str) -> str | None:
    """The part a dotted module name of ours belongs to; None for third-party modules."""
    top = module.split(".")[0]
    if top in SERVICES:
        leaf = module.split(".")[-1]
        return "service-edge" if f"{leaf}.py" in EDGE_MODULES else "service-core"
    if top == "controlplane":
        return "controlplane"
    if top != "envoy_mixer":
        return None
    if module in ("envoy_mixer", "envoy_mixer.__main__"):
        return "package"
    second = module.split(".")[1]
    return second if second in ("common", "runtime", "cli", "dev") else "package"


def _module_name(path: Path, root: Path = REPO) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> list[Path]:
    """Every Python module of the shipped packages."""
    out: list[Path] = []
    for top in ("envoy_mixer", "controlplane", *SERVICES):
        out += sorted((REPO / top).rglob("*.py"))
    return out


# Imports are read with a regex rather than ``ast``: CPython 3.11.7's ``ast.parse`` can raise
# "AST constructor recursion depth mismatch" (a SystemError, fixed in later 3.11 releases) when
# it runs late in a long test session; a line scan sees every import statement just as well.
_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import\b.*|import[ \t]+([\w., \t]+?))[ \t]*(?:#.*)?$",
    re.MULTILINE,
)


def imports(source: str, package: str = "") -> list[str]:
    """Dotted names a module imports; relative imports are resolved against ``package``."""
    names: list[str] = []
    for match in _IMPORT.finditer(source):
        if match.group(1) is not None:
            name = match.group(1)
            if name.startswith("."):
                dots = len(name) - len(name.lstrip("."))
                base = package.split(".")[: len(package.split(".")) - dots + 1]
                name = ".".join([*base, name.lstrip(".")]).rstrip(".")
            names.append(name)
        else:
            names += [part.split(" as ")[0].strip() for part in match.group(2).split(",")]
    return names


def violations(path: Path, root: Path = REPO) -> list[str]:
    """What ``path`` imports that its part may not."""
    module = _module_name(path, root)
    own = module.split(".")[0]
    part = part_of(module)
    assert part is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    bad: list[str] = []
    for name in imports(path.read_text(), package):
        pure = part == "service-core" or (
            module.startswith(PURE_CONTROLPLANE) and path.name != "cli.py")
        if pure and any(
                name == lib or name.startswith(lib + ".") for lib in WIRE_LIBRARIES):
            bad.append(f"{name}: a pure model imports no gRPC/Envoy/protobuf")
            continue
        target = part_of(name)
        if target is None or (target == part and part not in ("service-core", "service-edge")):
            continue
        if part in ("service-core", "service-edge") and target in ("service-core",
                                                                  "service-edge"):
            if name.split(".")[0] != own:
                bad.append(f"{name}: a service never imports another service")
            elif part == "service-core" and target == "service-edge":
                bad.append(f"{name}: a core never imports its own edge")
            continue
        if target not in ALLOWED[part]:
            bad.append(f"{name}: {part} may not import {target}")
    return bad


def test_every_module_belongs_to_a_part() -> None:
    """Each shipped module maps to a part of the layering (guards the parametrization)."""
    modules = our_modules()
    assert len(modules) > 50
    assert {part_of(_module_name(p)) for p in modules} == set(ALLOWED)


def test_import_scan_sees_every_form() -> None:
    """The scan finds plain, dotted, aliased, multi-name, from-, relative and late imports."""
    source = ("import grpc\nimport os, envoy.service.x as y\n    from google.rpc import code\n"
              "from . import sibling\nfrom ..common import wire\nfrom xds.a import (\n    b,\n)\n")
    assert imports(source, "envoy_mixer.runtime") == [
        "grpc", "os", "envoy.service.x", "google.rpc", "envoy_mixer.runtime",
        "envoy_mixer.common", "xds.a"]


@pytest.mark.parametrize(("importer", "imported", "ok"), [
    ("envoy_mixer.common.yamlsrc", "envoy_mixer.runtime.reload", False),
    ("envoy_mixer.runtime.service", "envoy_mixer.common.logs", True),
    ("ratelimit.limiter", "envoy_mixer.runtime.settings", False),
    ("ratelimit.server", "envoy_mixer.runtime.service", True),
    ("ratelimit.limiter", "grpc", False),
    ("ratelimit.limiter", "telemetry.config", False),
    ("ratelimit.limiter", "ratelimit.server", False),
    ("controlplane.envoy.roles", "ratelimit.config", True),
    ("controlplane.envoy.roles", "ratelimit.server", False),
    ("extauthz.engine", "controlplane.envoy.roles", False),
    ("controlplane.mesh.model", "envoy.config.cluster.v3.cluster_pb2", False),
    ("controlplane.envoy.clusters", "envoy.config.cluster.v3.cluster_pb2", True),
    ("envoy_mixer.cli.check", "envoy_mixer.dev.up", False),
    ("envoy_mixer.dev.up", "envoy_mixer.cli.check", True),
])
def test_the_rules_judge_known_cases(tmp_path: Path, importer: str, imported: str,
                                     ok: bool) -> None:
    """The rule checker itself: a few imports allowed and forbidden by the layering."""
    path = tmp_path.joinpath(*importer.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True)
    path.write_text(f"import {imported}\n")
    assert (violations(path, tmp_path) == []) is ok, violations(path, tmp_path)


@pytest.mark.parametrize("path", our_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_imports_only_what_its_part_may(path: Path) -> None:
    """No module imports a part the layering forbids it (docs/architecture.md)."""
    assert violations(path) == []
