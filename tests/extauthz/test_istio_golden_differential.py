"""Differential test: Istio's golden RBAC in a real Envoy vs ``mixer authz`` on the same inputs.

For every golden case of istio's builder test (``golden/differential.py: CASES``) one Envoy
serves a listener with the golden RBAC filter(s) and a listener calling our service; requests
generated over every field of the input and its negation go to both, and the verdicts
(200 allowed / 403 denied) must agree. The never-matching rule[1] of allow-full-rule is also
run as one-field fragments of its golden output (``fragment_cases``), in one shared service.
Disagreements are grouped by class into
``/tmp/differential-mismatches.txt`` on every run, and a summary line goes to stdout.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MISMATCH_FILE = Path("/tmp/differential-mismatches.txt")


def _load_helper() -> ModuleType:
    # importlib import mode: test support outside a package is loaded by path.
    spec = importlib.util.spec_from_file_location("golden_differential",
                                                  GOLDEN_DIR / "differential.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


diff = _load_helper()


def _mixer_flags() -> set[str]:
    """The ``mixer authz`` flags this checkout has (trust-domain flags are new)."""
    out = subprocess.run([sys.executable, "-m", "envoy_mixer.cli", "authz", "--help"],
                         capture_output=True, text=True, check=False).stdout
    return {word.strip(",[]") for word in out.split() if word.startswith("--")}


def _trust_domain_args(case: Any, flags: set[str]) -> tuple[list[str], str | None]:
    """CLI flags for the case's trust-domain bundle, or why they cannot be passed."""
    if case.trust_domain is None:
        return [], None
    if not {"--trust-domain", "--trust-domain-aliases"} <= flags:
        return [], "mixer authz has no --trust-domain/--trust-domain-aliases flags"
    return ["--trust-domain", case.trust_domain,
            "--trust-domain-aliases", ",".join(case.aliases)], None


def _unique_port(free_port: Callable[[], int], taken: set[int]) -> int:
    """A free port not handed out before in this test (nothing binds them until Envoy starts)."""
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return port


def _healthy(admin: int) -> bool:
    """The service's admin /healthz answers 200 (it has loaded its policies)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_loaded(proc: Any, admin: int, deadline: float) -> str | None:
    """None once the service is ready; the load error if it logs one and stays unready."""
    while time.monotonic() < deadline:
        if _healthy(admin):
            return None
        tail = proc.log_tail(50)
        if "config_load_error" in tail or not proc.running:
            return tail
        time.sleep(0.05)
    return f"not ready in time:\n{proc.log_tail(20)}"


def _report(outcomes: list[Any], rejected: dict[str, str], notes: list[str]) -> str:
    """The mismatch file's text: classes with a description, counts and examples."""
    by_class: dict[str, list[Any]] = defaultdict(list)
    for o in outcomes:
        if o.judged and not o.agreed:
            by_class[diff.class_of(o)].append(o)
    lines = [f"# differential-mismatches: {sum(map(len, by_class.values()))} disagreeing "
             f"requests in {len(by_class)} classes, {len(rejected)} cases our service rejected",
             "# istio = golden RBAC in Envoy, ours = mixer authz; 200 allowed, 403 denied", ""]
    for name, error in rejected.items():
        first = next((ln for ln in error.splitlines() if "config_load_error" in ln), error)
        lines += [f"[policy-rejected] {name}: mixer authz refuses Istio's golden input",
                  f"    {first.strip()[:400]}", ""]
    for tag, items in sorted(by_class.items(), key=lambda kv: -len(kv[1])):
        verdicts = Counter(f"istio {o.istio} / ours {o.mixer}" for o in items)
        cases = sorted({o.case for o in items})
        counts = ", ".join(f"{v}: {n}" for v, n in verdicts.items())
        lines.append(f"[{tag}] {diff.describe_class(tag)}: {len(items)} requests "
                     f"({counts}) in {', '.join(cases)}")
        for o in items[:3]:
            lines.append(f"    {o.case}: {o.probe.describe()}  -> istio {o.istio}, ours {o.mixer}")
        lines.append("")
    lines.append("# per case: requests / agreed / disagreed / not judged (Istio allowed)")
    per_case: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        per_case[o.case]["requests"] += 1
        per_case[o.case]["allowed"] += o.istio == 200
        if not o.judged:
            per_case[o.case]["not judged"] += 1
        else:
            per_case[o.case]["agreed" if o.agreed else "disagreed"] += 1
    for name, n in per_case.items():
        lines.append(f"#   {name}: {n['requests']} / {n['agreed']} / {n['disagreed']} / "
                     f"{n['not judged']} ({n['allowed']})")
    lines += [f"# note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_verdicts_agree_with_istio_golden_rbac(
    tmp_path: Path, start_envoy: Callable[..., Any], start_mixer: Callable[..., Any],
    free_port: Callable[[], int], capsys: pytest.CaptureFixture[str],
) -> None:
    """Every generated request gets the same verdict from Istio's golden RBAC and from us."""
    marks = [("start", time.monotonic())]
    pki, tokens, flags = diff.Pki(tmp_path), diff.Tokens(), _mixer_flags()
    notes: list[str] = []
    work, services = [], {}  # services: name -> (grpc port, admin port, policy texts, flags)
    undriven, unsendable, taken = 0, 0, set[int]()
    for case in [*diff.CASES, *diff.fragment_cases()]:
        policies = [d for d in yaml.safe_load_all(case.input_yaml()) if d]
        undriven += diff.undriven_conditions(policies)
        probes, dropped = diff.generate(policies, case.probe_trust_domains, case.vary_rules)
        unsendable += dropped
        if case.service not in services:
            td_args, why_not = _trust_domain_args(case, flags)
            if why_not:
                notes.append(f"{case.name}: {why_not}; run without the bundle")
            services[case.service] = (_unique_port(free_port, taken),
                                      _unique_port(free_port, taken), [], td_args)
        grpc, admin_port, texts, _ = services[case.service]
        texts.append(diff.mixer_policy_text(case, probes, tokens.jwks))
        ports = diff.CasePorts(_unique_port(free_port, taken), _unique_port(free_port, taken),
                               grpc, admin_port)
        work.append((case, ports, probes))

    marks.append(("generated", time.monotonic()))
    running = {}
    for name, (grpc, admin_port, texts, td_args) in services.items():
        policy = tmp_path / f"{name}.yaml"
        policy.write_text("\n---\n".join(t.rstrip() for t in texts) + "\n")
        args = ["authz", "--policy", str(policy), "--listen", f"127.0.0.1:{grpc}",
                "--admin", f"127.0.0.1:{admin_port}", "--trusted-proxies", "1",
                "--log-level", "warning", *td_args]
        # All services start at once (wait=False) and are waited for together below.
        running[name] = (start_mixer(args, admin_port, wait=False), admin_port)

    deadline = time.monotonic() + 30
    failed = {name: error for name, (proc, admin_port) in running.items()
              if (error := _wait_loaded(proc, admin_port, deadline)) is not None}
    rejected = {c.name: failed[c.service] for c, _, _ in work if c.service in failed}
    marks.append(("services ready", time.monotonic()))
    admin = _unique_port(free_port, taken)
    start_envoy(diff.envoy_config(admin, pki, tokens, [(c, p) for c, p, _ in work]), admin,
                concurrency=2)

    runnable = [w for w in work if w[0].name not in rejected]
    marks.append(("envoy ready", time.monotonic()))
    for _, _, probes in runnable:  # certificates first, so sending is timed on its own
        for probe in probes:
            if probe.sans is not None:
                pki.client(probe.sans)
    marks.append(("certificates", time.monotonic()))
    outcomes = diff.run_probes(runnable, pki, tokens)
    marks.append(("sent", time.monotonic()))
    notes.append("seconds per phase (reported, never asserted): " + ", ".join(
        f"{name} {t - prev:.1f}" for (_, prev), (name, t) in pairwise(marks)))
    not_loaded = sum(len(p) for c, _, p in work if c.name in rejected)
    judged = [o for o in outcomes if o.judged]
    agreed = sum(o.agreed for o in judged)
    disagreed = [o for o in judged if not o.agreed]
    not_judged = len(outcomes) - len(judged) + not_loaded
    notes += [
        f"{len(diff.NOT_APPLICABLE)} golden cases not applicable (CUSTOM): "
        + ", ".join(diff.NOT_APPLICABLE),
        f"{undriven} conditions not driven (experimental.envoy.filters.* metadata: no filter "
        "in either chain sets it)",
        f"{len(outcomes) - len(judged)} requests not judged: both listeners answered the same "
        "non-verdict status (e.g. 400 for a method or host Envoy's codec refuses)",
        f"{not_loaded} requests of {len(rejected)} rejected cases not sent",
        f"{unsendable} generated requests not sent: Python's ssl refuses their SNI (empty or "
        "starting with a dot)",
        f"{sum(o.probe.method not in diff.SENDABLE_METHODS for o in outcomes)} requests carry a "
        f"method Envoy's codec refuses: sent as GET with {diff.METHOD_HEADER}, which the first "
        "filter of both listeners (Lua) makes the :method",
    ]
    unjudged = Counter(f"both {o.istio}" for o in outcomes if not o.judged)
    notes.append(f"not-judged answers: {dict(unjudged)} (-1: no HTTP answer)")
    MISMATCH_FILE.write_text(_report(outcomes, rejected, notes))

    total = len(outcomes) + not_loaded
    allowed = sum(o.istio == 200 for o in judged)
    with capsys.disabled():
        print(f"\ndifferential: {len(diff.CASES)} golden cases + {len(work) - len(diff.CASES)} "
              f"golden fragments, {total} requests, {agreed} agreed, "
              f"{len(disagreed)} disagreed, {not_judged} not judged "
              f"(Istio allowed {allowed}, denied {len(judged) - allowed}; "
              f"{len(rejected)} cases rejected, {len(diff.NOT_APPLICABLE)} not applicable)")
    first = "\n".join(f"  {o.case} [{o.probe.tag}]: {o.probe.describe()} -> istio {o.istio}, "
                      f"ours {o.mixer}" for o in disagreed[:30])
    # A harness that broke one listener would agree on "all denied" or "all allowed".
    assert 0 < allowed < len(judged), f"Istio's verdicts are all alike: {allowed}/{len(judged)}"
    blocked = [(o.case, o.probe.describe()) for o in outcomes
               if o.case in diff.ALWAYS_ALLOWED and (o.istio, o.mixer) != (200, 200)]
    assert not blocked, f"audit and dry-run must allow everything: {blocked[:5]}"
    assert not rejected, f"policies rejected: {sorted(rejected)}; see {MISMATCH_FILE}"
    assert not disagreed, (f"{len(disagreed)} of {len(judged)} verdicts differ "
                           f"(classes in {MISMATCH_FILE}); first 30:\n{first}")
