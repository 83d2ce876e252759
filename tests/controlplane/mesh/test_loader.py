"""load_mesh: a directory of Istio files -> a validated, resolved, immutable Mesh."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from controlplane.mesh import Mesh, load_mesh
from controlplane.mesh.model import MESH_GATEWAY, Endpoint
from envoy_mixer.common.errors import ConfigError, ConfigErrors

TESTDATA = Path(__file__).parent / "testdata"
DEMO = TESTDATA / "demo"
ERROR_CASES = sorted((TESTDATA / "errors").glob("*.yaml"))


@pytest.fixture(scope="module")
def demo() -> Mesh:
    return load_mesh(DEMO)


def test_demo_services_resolve_endpoints_from_workload_entries(demo: Mesh) -> None:
    """A ServiceEntry's workloadSelector picks its namespace's WorkloadEntries as endpoints."""
    backend = demo.service("backend.default.svc.cluster.local")
    assert backend is not None
    assert backend.location == "MESH_INTERNAL" and backend.resolution == "STATIC"
    assert [(p.number, p.name, p.protocol) for p in backend.ports] == [(8080, "http", "HTTP")]
    [endpoint] = backend.endpoints
    assert (endpoint.address, endpoint.port_for(backend.ports[0])) == ("127.0.0.1", 8101)
    assert endpoint.workload == "default/backend-0"
    assert endpoint.service_account == "backend"


def test_demo_external_service_has_no_endpoints(demo: Mesh) -> None:
    """A DNS ServiceEntry without endpoints resolves its own host (no endpoints listed)."""
    httpbin = demo.service("httpbin.org")
    assert httpbin is not None
    assert (httpbin.location, httpbin.resolution, httpbin.endpoints) == (
        "MESH_EXTERNAL", "DNS", ())


def test_demo_workloads(demo: Mesh) -> None:
    """Every WorkloadEntry is a workload with its labels, ports and service account."""
    assert [w.key for w in demo.workloads] == [
        "default/frontend-0", "default/backend-0", "istio-system/istio-ingressgateway",
        "istio-system/istio-egressgateway"]
    frontend = demo.workloads[0]
    assert dict(frontend.labels) == {"app": "frontend", "version": "v1"}
    assert dict(frontend.ports) == {"http": 8091}
    assert frontend.origin.file == "workloads.yaml" and frontend.origin.line == 4


def test_demo_sidecar_ingress_and_egress(demo: Mesh) -> None:
    """A Sidecar keeps its ingress defaultEndpoint, egress port/bind/hosts and traffic policy."""
    frontend = next(s for s in demo.sidecars if s.origin.name == "frontend")
    [ingress] = frontend.ingress
    assert (ingress.port.number, ingress.bind, ingress.default_endpoint) == (
        8091, "127.0.0.1", "127.0.0.1:8090")
    [egress] = frontend.egress
    assert egress.port is not None and egress.port.number == 8092
    assert [str(h) for h in egress.hosts] == ["./backend.default.svc.cluster.local"]
    assert frontend.outbound_traffic_policy == "REGISTRY_ONLY"


def test_short_names_resolve_like_istio(demo: Mesh) -> None:
    """`backend` in namespace default is backend.default.svc.cluster.local (VS and DR)."""
    vs = next(v for v in demo.virtual_services if v.origin.name == "backend")
    assert vs.hosts == ("backend.default.svc.cluster.local",)
    [dest] = vs.destinations()
    assert (dest.host, dest.subset, dest.written) == (
        "backend.default.svc.cluster.local", "v1", "backend")
    assert demo.destination_rules[0].host == "backend.default.svc.cluster.local"


def test_gateway_references_resolve(demo: Mesh) -> None:
    """VS gateways become namespace/name; a VS with none is bound to the mesh gateway."""
    by_name = {v.origin.name: v for v in demo.virtual_services}
    assert by_name["frontend"].gateways == ("istio-system/ingressgateway",)
    assert by_name["httpbin"].gateways == ("istio-system/egressgateway",)
    assert by_name["backend"].gateways == (MESH_GATEWAY,)


def test_route_settings_carry_over(demo: Mesh) -> None:
    """Timeout and retries are parsed (durations in seconds)."""
    vs = next(v for v in demo.virtual_services if v.origin.name == "backend")
    [route] = vs.http
    assert route.timeout == 5.0
    assert route.retries is not None
    assert (route.retries.attempts, route.retries.per_try_timeout, route.retries.retry_on) == (
        2, 2.0, "connect-failure,5xx")


def test_subsets_resolve_to_endpoints(demo: Mesh) -> None:
    """A subset's endpoints are the service's endpoints carrying all its labels."""
    rule = demo.destination_rules[0]
    subset = rule.subset("v1")
    assert subset is not None
    assert [e.workload for e in subset.endpoints] == ["default/backend-0"]
    assert rule.traffic_policy is not None and rule.traffic_policy.tls is not None
    assert rule.traffic_policy.tls.mode == "DISABLE"
    assert rule.traffic_policy.outlier_detection is not None
    assert rule.traffic_policy.outlier_detection.base_ejection_time == 30.0


def test_other_kinds_are_loaded_by_their_own_loaders(demo: Mesh) -> None:
    """Policies, rate limits and telemetry are kept raw and loaded by their services' loaders."""
    assert sorted({d.kind for d in demo.documents}) == [
        "AuthorizationPolicy", "ratelimit", "telemetry"]
    assert demo.authz is not None and demo.authz.rule_count >= 4
    assert demo.ratelimit is not None and "ingress" in demo.ratelimit.by_domain
    assert demo.telemetry is not None
    policy = demo.documents_of("AuthorizationPolicy")[0]
    assert policy.origin.key == "istio-system/ingress-public-paths"
    assert dict(policy.selector or {}) == {"istio": "ingressgateway"}


def test_model_is_immutable(demo: Mesh) -> None:
    """The model is frozen: a loaded Mesh cannot be changed in place."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.services[0].host = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        demo.workloads[0].labels["app"] = "x"  # type: ignore[index]


def test_inline_endpoints_and_subset_labels(tmp_path: Path) -> None:
    """Inline endpoints carry their labels and ports; subsets select among them."""
    (tmp_path / "mesh.yaml").write_text(
        "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\n"
        "metadata: {name: reviews, namespace: shop}\n"
        "spec:\n  hosts: [reviews.shop.svc.cluster.local]\n  resolution: STATIC\n"
        "  ports: [{number: 80, name: http, protocol: http, targetPort: 9080}]\n"
        "  endpoints:\n"
        "    - {address: 10.0.0.1, labels: {version: v1}}\n"
        "    - {address: 10.0.0.2, labels: {version: v2}, ports: {http: 9090}}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: reviews, namespace: shop}\n"
        "spec:\n  host: reviews\n  subsets: [{name: v2, labels: {version: v2}}]\n")
    mesh = load_mesh(tmp_path)
    service = mesh.service("reviews.shop.svc.cluster.local")
    assert service is not None
    port = service.ports[0]
    assert port.protocol == "HTTP"
    assert [e.port_for(port) for e in service.endpoints] == [9080, 9090]
    subset = mesh.destination_rules[0].subset("v2")
    assert subset is not None
    assert subset.endpoints == (
        Endpoint("10.0.0.2", service.endpoints[1].ports, service.endpoints[1].labels),)


def test_kind_list_is_unwrapped(tmp_path: Path) -> None:
    """A `kind: List` (kubectl get -o yaml) is read item by item."""
    (tmp_path / "list.yaml").write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "  - apiVersion: networking.istio.io/v1\n    kind: WorkloadEntry\n"
        "    metadata: {name: a}\n    spec: {address: 10.0.0.1}\n")
    assert [w.key for w in load_mesh(tmp_path).workloads] == ["default/a"]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda p: p.stem)
def test_config_error(case: Path) -> None:
    """Each bad file fails the load with the exact error in its `# expect:` line."""
    expected = case.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(ConfigError) as info:
        load_mesh(case)
    assert str(info.value) == f"{case.name}: {expected}"


def test_every_error_in_a_directory_is_reported(tmp_path: Path) -> None:
    """Errors in several files are raised together, by file and line, each with its own."""
    for name in ("not_supported_field.yaml", "se_duplicate_port.yaml", "bad_ratelimit.yaml"):
        shutil.copy(TESTDATA / "errors" / name, tmp_path / name)
    shutil.copy(DEMO / "services.yaml", tmp_path / "services.yaml")
    with pytest.raises(ConfigErrors) as info:
        load_mesh(tmp_path)
    assert [(e.file, e.line) for e in info.value.errors] == [
        ("bad_ratelimit.yaml", 6), ("not_supported_field.yaml", 12),
        ("se_duplicate_port.yaml", 10)]


def test_one_bad_policy_fails_the_whole_mesh(tmp_path: Path) -> None:
    """A bad AuthorizationPolicy beside good networking files fails the load."""
    shutil.copytree(DEMO, tmp_path / "mesh")
    shutil.copy(TESTDATA / "errors" / "bad_authorization_policy.yaml", tmp_path / "mesh")
    with pytest.raises(ConfigError, match=r"unknown key 'method'") as info:
        load_mesh(tmp_path / "mesh")
    assert info.value.file == "bad_authorization_policy.yaml"


def test_two_telemetry_files_are_an_error(tmp_path: Path) -> None:
    """The mesh has one telemetry config; a second file is named in the error."""
    (tmp_path / "a.yaml").write_text("metrics: {}\n")
    (tmp_path / "b.yaml").write_text("cardinality: {}\n")
    with pytest.raises(ConfigError) as info:
        load_mesh(tmp_path)
    assert str(info.value) == (
        "b.yaml: a second telemetry config (the first is a.yaml): the mesh has one (line 1)")


def test_missing_directory(tmp_path: Path) -> None:
    """A path that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_mesh(tmp_path / "nope")


SHIPPED = Path(__file__).resolve().parents[3] / "examples" / "mesh"


def _uncommented(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", sorted(p.name for p in DEMO.glob("*.yaml")))
def test_demo_testdata_is_the_shipped_mesh(name: str) -> None:
    """testdata/demo is the shipped examples/mesh (mixer up's), minus its mTLS: the shipped
    DestinationRule is ISTIO_MUTUAL where the testdata's is DISABLE (the golden files and the
    plaintext tests pin that), and only the shipped mesh has peer-authentication.yaml."""
    ours, shipped = (DEMO / name).read_text(), (SHIPPED / name).read_text()
    if name == "destinationrules.yaml":
        assert _uncommented(ours.replace("tls: {mode: DISABLE}", "tls: {mode: ISTIO_MUTUAL}")) \
            == _uncommented(shipped)
    else:
        assert ours == shipped, f"examples/mesh/{name} and testdata/demo/{name} differ"
    assert sorted(p.name for p in SHIPPED.glob("*.yaml")) == sorted(
        [*(p.name for p in DEMO.glob("*.yaml")), "peer-authentication.yaml"])


def test_the_shipped_mesh_loads_strict() -> None:
    """examples/mesh loads; its PeerAuthentication is mesh-wide STRICT."""
    mesh = load_mesh(SHIPPED)
    assert [(p.namespace, p.mode) for p in mesh.peer_authentications] == [
        ("istio-system", "STRICT")]


@pytest.mark.parametrize("name", ["policy.yaml", "ratelimit.yaml", "telemetry.yaml"])
def test_demo_rules_are_the_shipped_examples(name: str) -> None:
    """The demo's policy, rate-limit and telemetry files are mixer up's examples."""
    shipped = Path(__file__).resolve().parents[3] / "examples" / name
    assert (DEMO / name).read_text() == shipped.read_text()


def test_lookups_for_the_builders(demo: Mesh) -> None:
    """Sidecar, Gateways, VirtualServices and DestinationRule of a workload or host."""
    frontend, backend, ingress, _ = demo.workloads
    sidecar = demo.sidecar_for(frontend)
    assert sidecar is not None and sidecar.origin.name == "frontend"
    assert demo.sidecar_for(ingress) is None
    assert [g.origin.key for g in demo.gateways_for(ingress)] == ["istio-system/ingressgateway"]
    assert demo.gateways_for(backend) == ()
    assert [v.origin.key for v in demo.virtual_services_for("istio-system/ingressgateway")] == [
        "default/frontend"]
    assert [v.origin.key for v in demo.virtual_services_for(MESH_GATEWAY)] == ["default/backend"]
    rule = demo.destination_rule_for("backend.default.svc.cluster.local")
    assert rule is not None and rule.origin.key == "default/backend"
    assert demo.destination_rule_for("frontend.default.svc.cluster.local") is None


def test_sidecar_and_rule_precedence(tmp_path: Path) -> None:
    """A selecting Sidecar beats the namespace default, which beats the root namespace's;
    an exact DestinationRule host beats a wildcard, a longer wildcard a shorter one."""
    head = "apiVersion: networking.istio.io/v1\n"
    (tmp_path / "mesh.yaml").write_text("---\n".join([
        head + "kind: WorkloadEntry\nmetadata: {name: a, namespace: shop}\n"
               "spec: {address: 10.0.0.1, labels: {app: a}}\n",
        head + "kind: WorkloadEntry\nmetadata: {name: b, namespace: shop}\n"
               "spec: {address: 10.0.0.2, labels: {app: b}}\n",
        head + "kind: WorkloadEntry\nmetadata: {name: c, namespace: blog}\n"
               "spec: {address: 10.0.0.3}\n",
        head + "kind: Sidecar\nmetadata: {name: for-a, namespace: shop}\n"
               "spec: {workloadSelector: {labels: {app: a}}, egress: [{hosts: ['./*']}]}\n",
        head + "kind: Sidecar\nmetadata: {name: default, namespace: shop}\n"
               "spec: {egress: [{hosts: ['./*']}]}\n",
        head + "kind: Sidecar\nmetadata: {name: default, namespace: istio-system}\n"
               "spec: {egress: [{hosts: ['*/*']}]}\n",
        head + "kind: DestinationRule\nmetadata: {name: all}\nspec: {host: '*.com'}\n",
        head + "kind: DestinationRule\nmetadata: {name: example}\n"
               "spec: {host: '*.example.com'}\n",
        head + "kind: DestinationRule\nmetadata: {name: api}\nspec: {host: api.example.com}\n",
    ]))
    mesh = load_mesh(tmp_path)
    a, b, c = mesh.workloads
    assert [mesh.sidecar_for(w).origin.key for w in (a, b, c)] == [  # type: ignore[union-attr]
        "shop/for-a", "shop/default", "istio-system/default"]
    names = [mesh.destination_rule_for(h) for h in ("api.example.com", "www.example.com",
                                                    "example.com", "example.org")]
    assert [r.origin.name if r else None for r in names] == ["api", "example", "all", None]


def test_workload_labels_merge_metadata_labels(tmp_path: Path) -> None:
    """A WorkloadEntry's metadata.labels are merged into its spec labels and win a clash."""
    (tmp_path / "we.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        "metadata: {name: a, labels: {app: meta, team: x}}\n"
        "spec: {address: 10.0.0.1, labels: {app: spec, version: v1}}\n")
    [workload] = load_mesh(tmp_path).workloads
    assert dict(workload.labels) == {"app": "meta", "team": "x", "version": "v1"}


def test_demo_matches_mixer_up_topology(demo: Mesh) -> None:
    """The demo's addresses and ports are mixer up's (controlplane.envoy.mesh.local_mesh)."""
    from controlplane.envoy.mesh import SERVICE_PORT, local_mesh

    up = local_mesh()
    by_name = {w.name: w for w in demo.workloads}
    assert by_name["istio-ingressgateway"].ports["http"] == up.ingress.port
    assert by_name["istio-egressgateway"].ports["http"] == up.egress.port
    for name, ports in (("frontend", up.frontend), ("backend", up.backend)):
        workload = by_name[f"{name}-0"]
        assert (workload.address, workload.ports["http"]) == (ports.inbound.host,
                                                              ports.inbound.port)
        service = demo.service(f"{name}.default.svc.cluster.local")
        assert service is not None and service.ports[0].number == SERVICE_PORT
        sidecar = demo.sidecar_for(workload)
        assert sidecar is not None
        assert sidecar.ingress[0].port.number == ports.inbound.port
        assert sidecar.ingress[0].default_endpoint == f"{ports.app.host}:{ports.app.port}"
    frontend = demo.sidecar_for(by_name["frontend-0"])
    assert frontend is not None and frontend.egress[0].port is not None
    assert frontend.egress[0].port.number == up.frontend.outbound.port
    gateway_ports = {g.origin.name: g.servers[0].port.number for g in demo.gateways}
    assert gateway_ports == {"ingressgateway": up.ingress.port, "egressgateway": up.egress.port}


def test_export_to_everywhere_is_accepted(tmp_path: Path) -> None:
    """exportTo ["*"] (Istio's default) loads; it is what the flat mesh does anyway."""
    (tmp_path / "se.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n"
        "spec: {hosts: [a.example.com], exportTo: ['*'], ports: [{number: 80, name: http}]}\n")
    assert [s.host for s in load_mesh(tmp_path).services] == ["a.example.com"]
