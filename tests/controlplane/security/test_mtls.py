"""Effective mTLS mode: each of Istio's PeerAuthentication precedence rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controlplane.security import PeerAuthentication, effective_mtls
from controlplane.security.peerauthn import MtlsMode

ROOT = "istio-system"
APP = {"app": "web", "version": "v1"}


def pa(namespace: str, name: str, mode: MtlsMode = "UNSET", *,
       selector: dict[str, str] | None = None, ports: dict[int, MtlsMode] | None = None,
       created: datetime | None = None) -> PeerAuthentication:
    """A PeerAuthentication value built directly (the loader has its own tests)."""
    return PeerAuthentication(namespace=namespace, name=name, mode=mode,
                              selector=tuple(sorted((selector or {}).items())),
                              port_modes=tuple(sorted((ports or {}).items())), created=created)


def test_nothing_applies_means_permissive() -> None:
    """No policy at all gives PERMISSIVE, as in Istio."""
    result = effective_mtls([], namespace="shop", labels=APP)
    assert result.mode == "PERMISSIVE" and result.for_port(8080) == "PERMISSIVE"


def test_mesh_policy_applies_everywhere() -> None:
    """A selector-less policy in the root namespace sets the mode of every namespace."""
    r = effective_mtls([pa(ROOT, "default", "STRICT")], namespace="shop", labels=APP)
    assert (r.mode, r.mesh_policy) == ("STRICT", "istio-system/default")


def test_namespace_overrides_mesh() -> None:
    """The namespace-wide policy wins over the mesh one."""
    r = effective_mtls([pa(ROOT, "m", "STRICT"), pa("shop", "n", "DISABLE")],
                       namespace="shop", labels=APP)
    assert (r.mode, r.namespace_policy) == ("DISABLE", "shop/n")


def test_workload_overrides_namespace_and_mesh() -> None:
    """A matching workload-selector policy wins over namespace and mesh."""
    r = effective_mtls([pa(ROOT, "m", "DISABLE"), pa("shop", "n", "DISABLE"),
                        pa("shop", "w", "STRICT", selector={"app": "web"})],
                       namespace="shop", labels=APP)
    assert (r.mode, r.workload_policy) == ("STRICT", "shop/w")


def test_unset_inherits_from_the_parent() -> None:
    """UNSET at workload inherits namespace; UNSET at namespace inherits mesh."""
    policies = [pa(ROOT, "m", "STRICT"), pa("shop", "n", "UNSET"),
                pa("shop", "w", "UNSET", selector={"app": "web"})]
    assert effective_mtls(policies, namespace="shop", labels=APP).mode == "STRICT"
    policies[1] = pa("shop", "n", "DISABLE")
    assert effective_mtls(policies, namespace="shop", labels=APP).mode == "DISABLE"


def test_selector_must_be_a_subset_of_the_labels() -> None:
    """A selector with a label the workload lacks (or a different value) does not apply."""
    policies = [pa("shop", "n", "PERMISSIVE"),
                pa("shop", "w1", "STRICT", selector={"app": "web", "tier": "front"}),
                pa("shop", "w2", "DISABLE", selector={"app": "db"})]
    r = effective_mtls(policies, namespace="shop", labels=APP)
    assert (r.mode, r.workload_policy) == ("PERMISSIVE", None)


def test_other_namespaces_do_not_apply() -> None:
    """Policies of another (non-root) namespace are ignored."""
    r = effective_mtls([pa("other", "n", "STRICT"),
                        pa("other", "w", "STRICT", selector={"app": "web"})],
                       namespace="shop", labels=APP)
    assert r.mode == "PERMISSIVE"


def test_selector_policy_in_the_root_namespace_is_ignored() -> None:
    """Istio ignores workload-selector policies in the root namespace, even for its workloads."""
    policy = pa(ROOT, "w", "STRICT", selector={"app": "web"})
    assert effective_mtls([policy], namespace="shop", labels=APP).mode == "PERMISSIVE"
    assert effective_mtls([policy], namespace=ROOT, labels=APP).mode == "PERMISSIVE"


def test_namespace_policy_of_the_root_namespace_is_mesh_level_there() -> None:
    """For a workload in the root namespace, its selector-less policy is the mesh policy."""
    r = effective_mtls([pa(ROOT, "m", "STRICT")], namespace=ROOT, labels=APP)
    assert (r.mode, r.mesh_policy, r.namespace_policy) == ("STRICT", "istio-system/m", None)


def test_port_level_overrides_the_workload_mode_on_that_port_only() -> None:
    """portLevelMtls sets listed ports; other ports keep the workload's mode."""
    r = effective_mtls([pa("shop", "w", "STRICT", selector={"app": "web"},
                           ports={8080: "DISABLE", 9090: "PERMISSIVE"})],
                       namespace="shop", labels=APP)
    assert (r.for_port(8080), r.for_port(9090), r.for_port(443)) == (
        "DISABLE", "PERMISSIVE", "STRICT")


def test_unset_port_inherits_the_resolved_workload_mode() -> None:
    """An UNSET port takes the workload's resolved mode (itself inherited here from mesh)."""
    r = effective_mtls([pa(ROOT, "m", "STRICT"),
                        pa("shop", "w", selector={"app": "web"}, ports={8080: "UNSET"})],
                       namespace="shop", labels=APP)
    assert r.ports == ((8080, "STRICT"),)


def test_port_level_of_a_losing_workload_policy_is_not_used() -> None:
    """Only the chosen (oldest) workload policy's ports apply."""
    r = effective_mtls([pa("shop", "a", "STRICT", selector={"app": "web"}),
                        pa("shop", "b", "STRICT", selector={"app": "web"},
                           ports={8080: "DISABLE"})],
                       namespace="shop", labels=APP)
    assert (r.workload_policy, r.for_port(8080), r.shadowed) == ("shop/a", "STRICT", ("shop/b",))


T1 = datetime(2024, 1, 1, tzinfo=UTC)
T2 = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(("first", "second", "winner"), [
    (pa("shop", "z", "STRICT", created=T1), pa("shop", "a", "DISABLE", created=T2), "shop/z"),
    (pa("shop", "a", "DISABLE", created=T2), pa("shop", "z", "STRICT", created=T1), "shop/z"),
    (pa("shop", "b", "STRICT"), pa("shop", "a", "DISABLE"), "shop/a"),
    (pa("shop", "b", "STRICT", created=T1), pa("shop", "a", "DISABLE", created=T1), "shop/a"),
    (pa("shop", "z", "STRICT"), pa("shop", "a", "DISABLE", created=T1), "shop/z"),
])
def test_oldest_wins_at_the_same_level_then_name(first: PeerAuthentication,
                                                 second: PeerAuthentication, winner: str) -> None:
    """Oldest creationTimestamp wins (none counts as oldest), ties by name; file order is moot."""
    r = effective_mtls([first, second], namespace="shop", labels=APP)
    assert r.namespace_policy == winner
    assert r.shadowed == tuple(p.key for p in (first, second) if p.key != winner)


def test_an_older_unset_policy_shadows_a_newer_strict_one() -> None:
    """The oldest is chosen before UNSET is looked at, so its UNSET inherits (Istio's order)."""
    r = effective_mtls([pa(ROOT, "m", "DISABLE"), pa("shop", "a", "UNSET"),
                        pa("shop", "b", "STRICT")], namespace="shop", labels=APP)
    assert (r.mode, r.namespace_policy) == ("DISABLE", "shop/a")


def test_custom_root_namespace() -> None:
    """The root namespace is a parameter (Istio's meshConfig.rootNamespace)."""
    policies = [pa("mesh-root", "m", "STRICT"), pa(ROOT, "x", "DISABLE")]
    r = effective_mtls(policies, namespace="shop", labels=APP, root_namespace="mesh-root")
    assert r.mode == "STRICT"
