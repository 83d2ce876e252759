"""Policy service benchmark: engine decisions/s by rule count, and Check CPU vs a trivial servicer.

1. Engine alone (in-process, no gRPC): ``decide`` over policy sets of 10, 1,000 and 10,000 rules
   that all apply to the same workload. Rules are what Istio users write: exact paths, path
   prefixes, hosts, methods, principals, header conditions; plus a fixed handful that no index can
   narrow (suffix paths, notPaths), present at every size. Target: 10,000 rules cost at most 2x
   of 10.
2. Check through gRPC, server CPU per call, ours vs the trivial always-allow servicer, measured
   alternately in the same run by ``bench.harness`` (servers in their own processes, load from a
   separate client process). Target: within 1.2x of the trivial servicer.
3. Large policy set: a real ``mixer authz`` process with 10,000 rules. Time from process start
   to ``/healthz`` 200 (target <= 2 s) and its CPU seconds by then, its RSS once healthy
   (``VmRSS``, target <= 120 MB), and Check latency through gRPC (p50/p99/max, target p99 <
   50 ms) while the policy file is rewritten again and again and the service reloads it
   (loading and compiling run off the event loop).
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

from bench.harness import (
    COMPARISON_HEADERS,
    compare_unary,
    comparison_rows,
    cpu_seconds,
    mixer_target,
    print_table,
    trivial_target,
)
from envoy_mixer.dev import procs

METHOD = "/envoy.service.auth.v3.Authorization/Check"
RULES_PER_POLICY = 10
WORKLOAD = {"namespace": "shop", "label.app": "api"}


def policy_yaml(rules: int, seed: int = 1) -> str:
    """Policies totalling ``rules`` rules for the 'api' workload in namespace 'shop'."""
    rng = random.Random(seed)
    docs = []
    # A fixed set of rules no index can narrow, present at every size.
    docs.append("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: unindexed, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["*.php"]}}]
  - to: [{operation: {notPaths: ["/*"]}}]
  - when: [{key: "request.headers[x-evil]", values: ["*"]}]
""")
    remaining = max(rules - 3, 1)
    policy = 0
    while remaining > 0:
        count = min(RULES_PER_POLICY, remaining)
        lines = []
        for r in range(count):
            n = policy * RULES_PER_POLICY + r
            kind = n % 4
            if kind == 0:
                lines.append(f'  - to: [{{operation: {{methods: ["GET"], '
                             f'paths: ["/api/v1/svc{n}/items", "/api/v1/svc{n}/items/{{*}}"]}}}}]')
            elif kind == 1:
                lines.append(f'  - from: [{{source: {{principals: ["cluster.local/ns/shop/sa/'
                             f'client{n % 50}"]}}}}]\n'
                             f'    to: [{{operation: {{paths: ["/static{n}/*"]}}}}]')
            elif kind == 2:
                lines.append(f'  - to: [{{operation: {{hosts: ["svc{n}.shop.svc"], '
                             f'methods: ["GET", "POST"]}}}}]')
            else:
                lines.append(f'  - to: [{{operation: {{paths: ["/orders/{n}"]}}}}]\n'
                             f'    when: [{{key: "request.headers[x-tenant]", '
                             f'values: ["t{n % 7}"]}}]')
        action = "DENY" if rng.random() < 0.1 else "ALLOW"
        docs.append(f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: p{policy}, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  action: {action}
  rules:
""" + "\n".join(lines) + "\n")
        remaining -= count
        policy += 1
    return "---".join(docs)


def request_mix(rules: int, count: int = 512, seed: int = 2) -> list[dict[str, object]]:
    """Requests: some hit rules (allowed or denied), some match nothing (default deny)."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for _ in range(count):
        kind = rng.randrange(5)
        # Rule n has shape n % 4 (see policy_yaml): pick an n of the request's shape so most
        # requests hit a rule; shape 4 matches nothing (default deny).
        n = rng.randrange(max((rules - 3) // 4, 1)) * 4 + (kind % 4)
        principal = f"spiffe://cluster.local/ns/shop/sa/client{n % 50}"
        if kind == 0:
            req = {"method": "GET", "path": f"/api/v1/svc{n}/items/42?x=1", "host": "api.shop"}
        elif kind == 1:
            req = {"method": "GET", "path": f"/static{n}/app.js", "host": "api.shop"}
        elif kind == 2:
            req = {"method": "POST", "path": "/", "host": f"svc{n}.shop.svc"}
        elif kind == 3:
            req = {"method": "GET", "path": f"/orders/{n}", "host": "api.shop",
                   "headers": {"x-tenant": f"t{n % 7}"}}
        else:
            req = {"method": "DELETE", "path": f"/nothing/{n}", "host": "api.shop"}
        req["principal"] = principal
        out.append(req)
    return out


class EngineCase:
    """One policy set of ``rules`` rules with its pre-built requests."""

    def __init__(self, rules: int, mix_rules: int | None = None) -> None:
        from extauthz.engine import decide
        from extauthz.policy import load_text
        from extauthz.request import AuthzRequest

        self.rules = rules
        self.mix_rules = mix_rules or rules
        self.decide = decide
        self.ps = load_text(policy_yaml(rules))
        assert self.ps.rule_count >= rules, self.ps.rule_count
        self.reqs = [
            AuthzRequest.build(
                method=str(r["method"]), path=str(r["path"]), host=str(r["host"]),
                headers=r.get("headers") or {},  # type: ignore[arg-type]
                source_ip="10.0.0.1", source_principal=str(r["principal"]),
                context_extensions=WORKLOAD)
            for r in request_mix(self.mix_rules)
        ]
        verdicts = [self.decide(self.ps, self.ps.view(r.context_extensions), r).verdict
                    for r in self.reqs]
        self.allowed, self.denied = verdicts.count("allow"), verdicts.count("deny")

    def rate(self, seconds: float) -> float:
        """Decisions per second over ``seconds`` (Check's path: view lookup + decide)."""
        ps, decide, reqs = self.ps, self.decide, self.reqs
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for r in reqs:
                decide(ps, ps.view(r.context_extensions), r)
            done += len(reqs)
        return done / (time.perf_counter() - start)


def engine_rates(sizes: tuple[int, ...] = (10, 1000, 10000), rounds: int = 5,
                 seconds: float = 0.4) -> list[tuple[EngineCase, float]]:
    """Best-of-``rounds`` rate per size, sizes interleaved so machine noise hits all alike.

    A last case runs the largest policy set with the smallest set's request mix: the same few
    rules hit over and over, so it shows what the rule count itself costs (index lookups),
    apart from the CPU-cache misses of touching hundreds of different rules.
    """
    cases = [EngineCase(n) for n in sizes] + [EngineCase(sizes[-1], mix_rules=sizes[0])]
    best = [0.0] * len(cases)
    for _ in range(rounds):
        for i, case in enumerate(cases):
            best[i] = max(best[i], case.rate(seconds))
    return list(zip(cases, best, strict=True))


def check_payloads(rules: int) -> list[bytes]:
    """Serialized CheckRequests shaped like Envoy's for the request mix."""
    ctx = attribute_context_pb2.AttributeContext
    out = []
    for r in request_mix(rules, count=1000):
        headers = {":authority": str(r["host"]), ":method": str(r["method"]),
                   ":path": str(r["path"]), "user-agent": "bench", "x-request-id": "abc",
                   **(r.get("headers") or {})}  # type: ignore[dict-item]
        attrs = ctx(
            source=ctx.Peer(principal=str(r["principal"])),
            request=ctx.Request(http=ctx.HttpRequest(
                id="abc", method=str(r["method"]), path=str(r["path"]), host=str(r["host"]),
                headers=headers, protocol="HTTP/1.1")),
            context_extensions=WORKLOAD,
        )
        attrs.source.address.socket_address.address = "10.0.0.1"
        attrs.source.address.socket_address.port_value = 40000
        attrs.destination.address.socket_address.address = "10.0.0.2"
        attrs.destination.address.socket_address.port_value = 8080
        out.append(external_auth_pb2.CheckRequest(attributes=attrs).SerializeToString())
    return out


LARGE_RULES = 10_000


@dataclass(frozen=True, slots=True)
class LargeSetResult:
    """The large-policy-set figures of one run."""

    rules: int
    healthy_s: float
    cpu_at_healthy_s: float
    rss_mb: float
    reloads: int
    calls: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (rounded)."""
        return {
            "rules": self.rules, "healthy_s": round(self.healthy_s, 2),
            "cpu_at_healthy_s": round(self.cpu_at_healthy_s, 2), "rss_mb": round(self.rss_mb, 1),
            "reloads": self.reloads, "calls": self.calls, "errors": self.errors,
            "check_p50_ms": round(self.p50_ms, 2), "check_p99_ms": round(self.p99_ms, 2),
            "check_max_ms": round(self.max_ms, 2),
        }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reload_count(admin: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("mixer_config_loads_total") and 'result="success"' in line \
                and 'service="authz"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def large_policy_set(rules: int = LARGE_RULES, seconds: float = 10.0,
                     rewrite_every: float = 1.0) -> LargeSetResult:
    """Start ``mixer authz`` on ``rules`` rules, then time Checks while the file is rewritten.

    The rewrites alternate two generated sets of the same size (different seeds: some rules
    change action), so every rewrite is a real reload of ``rules`` rules. Checks go one at a
    time from this process, so each latency is one request's, queueing behind nothing but
    what the server itself does.
    """
    workdir = Path(tempfile.mkdtemp(prefix="mixer-authz-large-"))
    policy = workdir / "policy.yaml"
    texts = [policy_yaml(rules, seed=1), policy_yaml(rules, seed=3)]
    policy.write_text(texts[0])
    port, admin = procs.free_port(), procs.free_port()
    argv = [sys.executable, "-m", "envoy_mixer.cli", "authz", "--policy", str(policy),
            "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
            "--log-level", "warning"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not procs.http_ok(f"http://127.0.0.1:{admin}/healthz", timeout=0.5):
            if proc.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError(f"mixer authz did not become healthy (exit {proc.poll()})")
            time.sleep(0.005)
        healthy = time.monotonic() - started
        cpu, rss = cpu_seconds(proc.pid), _rss_mb(proc.pid)
        reloads_before = _reload_count(admin)
        payloads = check_payloads(rules)
        stop = threading.Event()

        def rewrite() -> None:
            n = 1
            while not stop.wait(rewrite_every):
                policy.write_text(texts[n % 2])
                n += 1

        writer = threading.Thread(target=rewrite, daemon=True)
        latencies: list[float] = []
        errors = 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD, request_serializer=None,
                                       response_deserializer=None)
            for payload in payloads[:50]:  # warm-up: the workload's view, connections
                call(payload, timeout=5)
            writer.start()
            deadline = time.monotonic() + seconds
            i = 0
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    call(payloads[i % len(payloads)], timeout=5)
                except grpc.RpcError:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1000)
                i += 1
            stop.set()
            writer.join()
        time.sleep(1.0)  # let the last rewrite's reload finish before counting
        reloads = _reload_count(admin) - reloads_before
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return LargeSetResult(
        rules=rules, healthy_s=healthy, cpu_at_healthy_s=cpu, rss_mb=rss, reloads=reloads,
        calls=len(latencies), errors=errors, p50_ms=statistics.median(ordered), p99_ms=p99,
        max_ms=ordered[-1],
    )


def print_large(result: LargeSetResult) -> None:
    """The large-policy-set table and its JSON line."""
    print_table(
        f"Large policy set: mixer authz with {result.rules:,} rules (targets: healthy <= 2 s, "
        "RSS <= 120 MB, Check p99 < 50 ms while the file is rewritten and reloaded)",
        ("figure", "value", "target"),
        [["start to /healthz 200 (s)", result.healthy_s, "<= 2"],
         ["CPU by then (s)", result.cpu_at_healthy_s, ""],
         ["RSS once healthy (MB)", result.rss_mb, "<= 120"],
         ["reloads during the run", result.reloads, ""],
         ["Checks (errors)", f"{result.calls:,} ({result.errors})", ""],
         ["Check p50 (ms)", result.p50_ms, ""],
         ["Check p99 (ms)", result.p99_ms, "< 50"],
         ["Check max (ms)", result.max_ms, ""]],
    )
    print(json.dumps({"authz_large_policy_set": result.to_dict()}))


def main() -> None:
    """Print the engine table and the gRPC comparison."""
    rows = []
    base = None
    for case, rate in engine_rates():
        base = base or rate
        label = f"{case.rules:,} rules"
        if case.mix_rules != case.rules:
            label += f" ({case.mix_rules}-rule mix)"
        rows.append([label, rate, 1e6 / rate, f"{base / rate:.2f}x",
                     f"{case.allowed}/{case.denied}"])
    print_table("Engine alone: view + decide() in-process, best of 5 interleaved rounds "
                "(ratio = cost vs 10 rules; target <= 2.00x)",
                ("policy set", "decisions/s", "µs/decision", "cost vs 10", "allow/deny of 512"),
                rows)
    sys.stdout.flush()

    workdir = Path(tempfile.mkdtemp(prefix="mixer-authz-bench-"))
    policy = workdir / "policy.yaml"
    policy.write_text(policy_yaml(1000))
    trivial = trivial_target("authz")
    targets = [trivial, mixer_target("mixer authz (1,000 rules)",
                                     ["authz", "--policy", str(policy)])]
    results = compare_unary(targets, METHOD, check_payloads(1000), seconds=3.0, rounds=3)
    print_table(
        "Check via gRPC, 1,000-rule policy set, mixed allow/deny (median of 3 rounds; ratio = "
        "server CPU per call / trivial servicer's; target <= 1.20x)",
        COMPARISON_HEADERS, comparison_rows(results, trivial.name),
    )
    summary = {name: round(m.cpu_us_per_call, 1) for name, m in results.items()}
    print(json.dumps({"authz_cpu_us_per_call": summary}))
    print_large(large_policy_set())


if __name__ == "__main__":
    if sys.argv[1:] == ["large"]:  # just section 3: python -m bench.authz_bench large
        print_large(large_policy_set())
    else:
        main()
