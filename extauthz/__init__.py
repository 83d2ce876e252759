"""Policy service: Envoy ext_authz v3 driven by Istio AuthorizationPolicy/RequestAuthentication.

Public API: ``load_policies`` (YAML -> compiled ``PolicySet``), ``decide``/``explain`` (the pure
engine), ``AuthzRequest`` (the domain request).

The names are imported on first use, not with the package: ``mixer --help`` imports
``extauthz.cli``, which must not pay for pydantic and joserfc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from extauthz.engine import Decision, decide, explain
    from extauthz.policy import PolicySet, load_policies
    from extauthz.request import AuthzRequest

__all__ = ["AuthzRequest", "Decision", "PolicySet", "decide", "explain", "load_policies"]

_HOMES = {
    "AuthzRequest": "extauthz.request", "Decision": "extauthz.engine",
    "PolicySet": "extauthz.policy", "decide": "extauthz.engine", "explain": "extauthz.engine",
    "load_policies": "extauthz.policy",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'extauthz' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
