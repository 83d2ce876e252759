"""``DestinationRule`` spec (istio/api networking/v1alpha3 destination_rule.proto).

Supported: subsets by labels; trafficPolicy (per rule and per subset) with loadBalancer,
connectionPool, outlierDetection and tls in modes ISTIO_MUTUAL, DISABLE and SIMPLE.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from controlplane.mesh.schema.common import (
    Duration,
    ExportTo,
    Strict,
    Unsupported,
    reject_values,
    unsupported,
)


class RingHash(Strict):
    """``ConsistentHashLB.RingHash``."""

    minimum_ring_size: int = Field(0, alias="minimumRingSize", ge=0)


class MagLev(Strict):
    """``ConsistentHashLB.MagLev``."""

    table_size: int = Field(0, alias="tableSize", ge=0)


class HTTPCookie(Strict):
    """``ConsistentHashLB.HTTPCookie``."""

    name: str = Field(min_length=1)
    path: str = ""
    ttl: Duration | None = None
    attributes: Unsupported = unsupported("attributes")


class ConsistentHashLB(Strict):
    """``ConsistentHashLB``: exactly one hash key, at most one algorithm."""

    http_header_name: str | None = Field(None, alias="httpHeaderName")
    http_cookie: HTTPCookie | None = Field(None, alias="httpCookie")
    use_source_ip: bool | None = Field(None, alias="useSourceIp")
    http_query_parameter_name: str | None = Field(None, alias="httpQueryParameterName")
    ring_hash: RingHash | None = Field(None, alias="ringHash")
    maglev: MagLev | None = None
    minimum_ring_size: Unsupported = unsupported("minimumRingSize")  # deprecated: ringHash

    @model_validator(mode="after")
    def _one_key(self) -> ConsistentHashLB:
        keys = (self.http_header_name, self.http_cookie, self.use_source_ip,
                self.http_query_parameter_name)
        if sum(k is not None for k in keys) != 1:
            raise ValueError("set exactly one of httpHeaderName, httpCookie, useSourceIp and "
                             "httpQueryParameterName")
        if self.ring_hash is not None and self.maglev is not None:
            raise ValueError("set only one of ringHash and maglev")
        return self


class LoadBalancerSettings(Strict):
    """``LoadBalancerSettings``."""

    # LEAST_CONN is Istio's deprecated spelling of LEAST_REQUEST.
    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN",
                    "LEAST_REQUEST"] | None = None
    consistent_hash: ConsistentHashLB | None = Field(None, alias="consistentHash")
    locality_lb_setting: Unsupported = unsupported("localityLbSetting")
    zone_aware_lb_setting: Unsupported = unsupported("zoneAwareLbSetting")
    warmup_duration_secs: Unsupported = unsupported("warmupDurationSecs")
    warmup: Unsupported = unsupported("warmup")

    @model_validator(mode="after")
    def _one_policy(self) -> LoadBalancerSettings:
        if self.simple is not None and self.consistent_hash is not None:
            raise ValueError("set only one of simple and consistentHash")
        return self


class TcpKeepalive(Strict):
    """``TCPSettings.TcpKeepalive``."""

    probes: int = Field(0, ge=0)
    time: Duration | None = None
    interval: Duration | None = None


class TCPSettings(Strict):
    """``ConnectionPoolSettings.TCPSettings``."""

    max_connections: int = Field(0, alias="maxConnections", ge=0)
    connect_timeout: Duration | None = Field(None, alias="connectTimeout")
    tcp_keepalive: TcpKeepalive | None = Field(None, alias="tcpKeepalive")
    max_connection_duration: Duration | None = Field(None, alias="maxConnectionDuration")
    idle_timeout: Duration | None = Field(None, alias="idleTimeout")


class HTTPSettings(Strict):
    """``ConnectionPoolSettings.HTTPSettings``."""

    http1_max_pending_requests: int = Field(0, alias="http1MaxPendingRequests", ge=0)
    http2_max_requests: int = Field(0, alias="http2MaxRequests", ge=0)
    max_requests_per_connection: int = Field(0, alias="maxRequestsPerConnection", ge=0)
    max_retries: int = Field(0, alias="maxRetries", ge=0)
    idle_timeout: Duration | None = Field(None, alias="idleTimeout")
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] = Field(
        "DEFAULT", alias="h2UpgradePolicy")
    use_client_protocol: bool = Field(False, alias="useClientProtocol")
    max_concurrent_streams: int = Field(0, alias="maxConcurrentStreams", ge=0)
    http2_keep_alive: Unsupported = unsupported("http2KeepAlive")


class ConnectionPoolSettings(Strict):
    """``ConnectionPoolSettings``."""

    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(Strict):
    """``OutlierDetection``."""

    consecutive_5xx_errors: int | None = Field(None, alias="consecutive5xxErrors", ge=0)
    consecutive_gateway_errors: int | None = Field(None, alias="consecutiveGatewayErrors",
                                                   ge=0)
    interval: Duration | None = None
    base_ejection_time: Duration | None = Field(None, alias="baseEjectionTime")
    max_ejection_percent: int = Field(0, alias="maxEjectionPercent", ge=0, le=100)
    min_health_percent: int = Field(0, alias="minHealthPercent", ge=0, le=100)
    consecutive_errors: Unsupported = unsupported("consecutiveErrors")  # deprecated
    split_external_local_origin_errors: Unsupported = unsupported(
        "splitExternalLocalOriginErrors")
    consecutive_local_origin_failures: Unsupported = unsupported(
        "consecutiveLocalOriginFailures")
    outlier_detection_http_error_codes: Unsupported = unsupported(
        "outlierDetectionHttpErrorCodes")


class ClientTLSSettings(Strict):
    """``ClientTLSSettings``: ISTIO_MUTUAL (the mesh CA), DISABLE, or SIMPLE (files)."""

    mode: Annotated[
        Literal["DISABLE", "SIMPLE", "ISTIO_MUTUAL"],
        reject_values({"MUTUAL": "client certificates come from the mesh CA: use ISTIO_MUTUAL"}),
    ] = "DISABLE"
    ca_certificates: str = Field("", alias="caCertificates")
    subject_alt_names: list[str] = Field([], alias="subjectAltNames")
    sni: str = ""
    insecure_skip_verify: bool = Field(False, alias="insecureSkipVerify")
    client_certificate: Unsupported = unsupported("clientCertificate")  # MUTUAL only
    private_key: Unsupported = unsupported("privateKey")  # MUTUAL only
    credential_name: Unsupported = unsupported("credentialName")
    ca_crl: Unsupported = unsupported("caCrl")


class TrafficPolicy(Strict):
    """``TrafficPolicy``."""

    load_balancer: LoadBalancerSettings | None = Field(None, alias="loadBalancer")
    connection_pool: ConnectionPoolSettings | None = Field(None, alias="connectionPool")
    outlier_detection: OutlierDetection | None = Field(None, alias="outlierDetection")
    tls: ClientTLSSettings | None = None
    port_level_settings: Unsupported = unsupported("portLevelSettings")
    tunnel: Unsupported = unsupported("tunnel")
    proxy_protocol: Unsupported = unsupported("proxyProtocol")
    retry_budget: Unsupported = unsupported("retryBudget")


class Subset(Strict):
    """``Subset``: the service's endpoints carrying all ``labels``."""

    name: str = Field(min_length=1)
    labels: dict[str, str] = {}
    traffic_policy: TrafficPolicy | None = Field(None, alias="trafficPolicy")


class DestinationRuleSpec(Strict):
    """``DestinationRule.spec``."""

    host: str = Field(min_length=1)
    traffic_policy: TrafficPolicy | None = Field(None, alias="trafficPolicy")
    subsets: list[Subset] = []
    export_to: ExportTo = Field(None, alias="exportTo")
    workload_selector: Unsupported = unsupported("workloadSelector")
