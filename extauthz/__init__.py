"""Policy service: Envoy ext_authz v3 driven by Istio AuthorizationPolicy/RequestAuthentication.

Public API: ``load_policies`` (YAML -> compiled ``PolicySet``), ``decide``/``explain`` (the pure
engine), ``AuthzRequest`` (the domain request).
"""

from extauthz.engine import Decision, decide, explain
from extauthz.policy import PolicySet, load_policies
from extauthz.request import AuthzRequest

__all__ = ["AuthzRequest", "Decision", "PolicySet", "decide", "explain", "load_policies"]
