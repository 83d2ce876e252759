"""The effective mTLS mode of a workload: Istio's ``ComposePeerAuthentication``, as a pure function.

The rules (read from istio/istio ``pilot/pkg/security/authn/policy_applier.go`` and
``pilot/pkg/model/authentication.go``; our own code):

1. Candidates are the policies in the workload's namespace and in the root namespace whose
   ``selector`` labels are all on the workload (an empty selector selects every workload).
2. Each candidate has a level: no selector in the root namespace = **mesh**; no selector
   elsewhere = **namespace**; a selector outside the root namespace = **workload**. A policy
   with a selector in the root namespace is ignored (Istio does the same).
3. Several at one level: the **oldest wins**, Istio's order exactly: ``creationTimestamp``
   ascending (a policy without one counts as oldest, like Go's zero time), then the name. With
   no timestamps the alphabetically first name wins, whatever the file order; the others are
   reported in ``EffectiveMtls.shadowed``.
4. The mode starts at **PERMISSIVE** and is overridden by mesh, then namespace, then workload;
   ``UNSET`` (or no ``mtls``) at a level inherits the level above.
5. ``portLevelMtls`` comes only from the chosen workload policy; an ``UNSET`` port inherits the
   workload's resolved mode. Other ports use the resolved mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from controlplane.security.peerauthn import MtlsMode, PeerAuthentication

__all__ = ["DEFAULT_ROOT_NAMESPACE", "EffectiveMtls", "Mode", "effective_mtls"]

DEFAULT_ROOT_NAMESPACE = "istio-system"

#: A resolved mode: never UNSET.
Mode = Literal["DISABLE", "PERMISSIVE", "STRICT"]

_ZERO_TIME = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class EffectiveMtls:
    """The resolved modes of one workload, and which policies decided them."""

    mode: Mode
    ports: tuple[tuple[int, Mode], ...] = ()
    mesh_policy: str | None = None
    namespace_policy: str | None = None
    workload_policy: str | None = None
    #: Policies that applied at a level but lost to an older one there.
    shadowed: tuple[str, ...] = ()

    def for_port(self, port: int) -> Mode:
        """The mode on ``port``: its portLevelMtls entry, else the workload's mode."""
        for number, mode in self.ports:
            if number == port:
                return mode
        return self.mode


def _age(policy: PeerAuthentication) -> tuple[datetime, str, str]:
    return (policy.created or _ZERO_TIME, policy.name, policy.namespace)


def _oldest(policies: list[PeerAuthentication]) -> tuple[PeerAuthentication | None, list[str]]:
    if not policies:
        return None, []
    ordered = sorted(policies, key=_age)
    return ordered[0], [p.key for p in ordered[1:]]


def _apply(mode: Mode, override: MtlsMode) -> Mode:
    return mode if override == "UNSET" else override


def effective_mtls(
    policies: Iterable[PeerAuthentication], *, namespace: str, labels: Mapping[str, str],
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> EffectiveMtls:
    """Resolve the mTLS mode of the workload (``namespace``, ``labels``); see the module doc."""
    workload_labels = dict(labels)
    mesh: list[PeerAuthentication] = []
    namespaced: list[PeerAuthentication] = []
    workload: list[PeerAuthentication] = []
    for policy in policies:
        if policy.namespace not in (namespace, root_namespace):
            continue
        if not policy.selects(workload_labels):
            continue
        if not policy.selector:
            (mesh if policy.namespace == root_namespace else namespaced).append(policy)
        elif policy.namespace != root_namespace:
            workload.append(policy)
    chosen_mesh, shadowed_mesh = _oldest(mesh)
    chosen_ns, shadowed_ns = _oldest(namespaced)
    chosen_wl, shadowed_wl = _oldest(workload)
    mode: Mode = "PERMISSIVE"
    for chosen in (chosen_mesh, chosen_ns, chosen_wl):
        if chosen is not None:
            mode = _apply(mode, chosen.mode)
    ports = tuple((port, _apply(mode, port_mode))
                  for port, port_mode in (chosen_wl.port_modes if chosen_wl else ()))
    return EffectiveMtls(
        mode=mode, ports=ports,
        mesh_policy=chosen_mesh.key if chosen_mesh else None,
        namespace_policy=chosen_ns.key if chosen_ns else None,
        workload_policy=chosen_wl.key if chosen_wl else None,
        shadowed=(*shadowed_mesh, *shadowed_ns, *shadowed_wl),
    )
