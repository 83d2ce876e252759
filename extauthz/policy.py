"""Istio ``AuthorizationPolicy`` / ``RequestAuthentication`` files -> a compiled ``PolicySet``.

The entry points the service, the CLI and the control plane call; the stages live apart:

1. ``extauthz.schema``: the CRDs as strict pydantic models (Istio's field names);
2. ``extauthz.loader``: files -> schema -> the validated neutral model (``extauthz.model``),
   errors naming file, line and field;
3. ``extauthz.compile``: model -> compiled rules and policies (matchers, composed tests);
4. ``extauthz.index`` / ``extauthz.policyset``: per-workload views with rules indexed by path,
   host, method or header, which ``extauthz.engine`` decides on.

Loading and compiling are pure and synchronous; the service runs them in a worker thread
(``envoy_mixer.runtime.reload``) so a reload never blocks requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from envoy_mixer.common.yamlsrc import SourceDoc, load_documents, paused_gc
from extauthz.compile import CompiledRule, Policy, compile_policies
from extauthz.index import IndexKey, RuleIndex
from extauthz.loader import load_models, load_path_models
from extauthz.model import DEFAULT_DENY, Authentication, DenyResponse, ModelSet
from extauthz.policyset import PolicySet, WorkloadView
from extauthz.trustdomain import TrustDomains


def compile_models(models: ModelSet, *, default_namespace: str = "default",
                   root_namespace: str = "istio-system",
                   trust_domains: TrustDomains | None = None) -> PolicySet:
    """The PolicySet of an already loaded model (compiling never fails).

    The views of the workloads recently decided on are built too (``PolicySet.warm``): this
    runs in the reloader's worker thread, the first Checks after a reload on the event loop.
    """
    with paused_gc():
        policies = compile_policies(models.policies, trust_domains)
        policy_set = PolicySet(policies, models.authentications, root_namespace=root_namespace,
                               default_namespace=default_namespace, files=models.files,
                               trust_domains=trust_domains)
        policy_set.warm()
    return policy_set


def compile_documents(
    docs: Iterable[SourceDoc], *, default_namespace: str = "default",
    root_namespace: str = "istio-system", base_dir: Path | None = None,
    trust_domains: TrustDomains | None = None,
) -> PolicySet:
    """Compile YAML documents into a PolicySet; all errors found are raised together.

    ``base_dir`` resolves relative ``file://`` jwksUri values (default: the working directory);
    ``trust_domains`` is the mesh's trust domain and aliases (default ``cluster.local``).
    """
    models = load_models(docs, default_namespace=default_namespace, base_dir=base_dir)
    # The YAML values are the load's largest part: free them (when the caller passed its
    # only reference, as ``load_policies`` does) before compiling, to keep the peak low.
    del docs
    return compile_models(models, default_namespace=default_namespace,
                          root_namespace=root_namespace, trust_domains=trust_domains)


def load_policies(
    path: Path, *, default_namespace: str = "default", root_namespace: str = "istio-system",
    trust_domains: TrustDomains | None = None,
) -> PolicySet:
    """Load a YAML file (several documents allowed) or a directory of them; raises ConfigError."""
    models = load_path_models(Path(path), default_namespace=default_namespace)
    return compile_models(models, default_namespace=default_namespace,
                          root_namespace=root_namespace, trust_domains=trust_domains)


def load_text(text: str, file: str = "policy.yaml", **kwargs: Any) -> PolicySet:
    """Compile policies from YAML text (tests, ``explain`` with inline policies)."""
    return compile_documents(load_documents(text, file), **kwargs)


__all__ = [
    "DEFAULT_DENY", "Authentication", "CompiledRule", "DenyResponse", "IndexKey", "Policy",
    "PolicySet", "RuleIndex", "WorkloadView", "compile_documents", "compile_models",
    "load_policies", "load_text",
]
