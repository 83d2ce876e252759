"""The telemetry config: YAML validated by pydantic, compiled into per-metric specs.

Shape (every key optional; ``load_config(None)`` gives the defaults)::

    metrics:
      host_header_fallback: true        # destination_service from Host when the cluster names none
      buckets:
        duration_ms: [0.5, 1, 5, ...]   # istio_request_duration_milliseconds
        bytes: [0.5, 1, 5, ...]         # istio_request_bytes / istio_response_bytes
      overrides:                        # like Istio's Telemetry API MetricsOverrides, in order
        - match: REQUEST_COUNT          # IstioMetric enum, a metric name, ALL_METRICS, or a list
          disabled: false
          tags:                         # tag_overrides
            destination_version: {operation: REMOVE}
            request_host: {value: "request.headers['host']"}
          buckets: [1, 10, 100]         # histograms only
    cardinality:
      max_series_per_metric: 10000      # beyond it: one overflow series + refused counter
      series_idle_expiry_seconds: 600   # 0 keeps series forever
    access_log:
      enabled: false
      output: stdout                    # or a file path
      sampling: 1.0                     # errors (5xx, response flags) are always kept
    graph:
      window_seconds: 60
    streams:
      max_stream_age_seconds: 300       # end ALS streams so Envoy reconnects (rebalancing)
      queue_max_batches: 4096           # backlog bound; beyond it batches are dropped and counted

Errors name the file, the line and the field (``envoy_mixer.common.yamlsrc``).
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from envoy_mixer.common.errors import ConfigError, ConfigErrors
from envoy_mixer.common.yamlsrc import SourceDoc, iter_documents, pydantic_errors
from telemetry.labels import HTTP_LABELS, ISTIO_LABELS, MESSAGE_LABELS, TCP_LABELS

#: Envoy's default histogram bounds, used by Istio for milliseconds and bytes alike.
ENVOY_DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)


class MetricKind(Enum):
    """How a metric is rendered."""

    COUNTER = "counter"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class StandardMetric:
    """One of Istio's standard metrics: name, Telemetry API enum, type, labels, help."""

    name: str
    enum: str
    kind: MetricKind
    labels: tuple[str, ...]
    help: str
    #: ``duration_ms`` or ``bytes``: which default bucket setting applies (histograms).
    unit: str = ""


STANDARD_METRICS: tuple[StandardMetric, ...] = (
    StandardMetric("istio_requests_total", "REQUEST_COUNT", MetricKind.COUNTER, HTTP_LABELS,
                   "Requests handled by an Envoy proxy."),
    StandardMetric("istio_request_duration_milliseconds", "REQUEST_DURATION",
                   MetricKind.HISTOGRAM, HTTP_LABELS, "Request duration in milliseconds.",
                   "duration_ms"),
    StandardMetric("istio_request_bytes", "REQUEST_SIZE", MetricKind.HISTOGRAM, HTTP_LABELS,
                   "Request size in bytes (wire bytes, headers included).", "bytes"),
    StandardMetric("istio_response_bytes", "RESPONSE_SIZE", MetricKind.HISTOGRAM, HTTP_LABELS,
                   "Response size in bytes (wire bytes, headers included).", "bytes"),
    StandardMetric("istio_request_messages_total", "GRPC_REQUEST_MESSAGES", MetricKind.COUNTER,
                   MESSAGE_LABELS, "gRPC messages sent by clients."),
    StandardMetric("istio_response_messages_total", "GRPC_RESPONSE_MESSAGES", MetricKind.COUNTER,
                   MESSAGE_LABELS, "gRPC messages sent by servers."),
    StandardMetric("istio_tcp_sent_bytes_total", "TCP_SENT_BYTES", MetricKind.COUNTER,
                   TCP_LABELS, "Bytes sent to the downstream on TCP connections."),
    StandardMetric("istio_tcp_received_bytes_total", "TCP_RECEIVED_BYTES", MetricKind.COUNTER,
                   TCP_LABELS, "Bytes received from the downstream on TCP connections."),
    StandardMetric("istio_tcp_connections_opened_total", "TCP_OPENED_CONNECTIONS",
                   MetricKind.COUNTER, TCP_LABELS, "TCP connections opened."),
    StandardMetric("istio_tcp_connections_closed_total", "TCP_CLOSED_CONNECTIONS",
                   MetricKind.COUNTER, TCP_LABELS, "TCP connections closed."),
)
_BY_NAME = {m.name: m for m in STANDARD_METRICS}
_BY_ENUM = {m.enum: m for m in STANDARD_METRICS}

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_EXPRESSION = re.compile(
    r"""^(?P<scope>request\.headers|response\.headers|node\.metadata|node\.labels)
        \[\s*(?P<q>['"])(?P<key>[^'"]+)(?P=q)\s*\]$""",
    re.VERBOSE,
)
_LITERAL = re.compile(r"""^(?P<q>['"])(?P<text>[^'"]*)(?P=q)$""")


@dataclass(frozen=True, slots=True)
class LabelSource:
    """Where an added label's value comes from: ``scope`` is one of ``request_header``,
    ``response_header``, ``node_metadata``, ``node_label`` or ``literal``."""

    scope: str
    key: str

    def describe(self) -> str:
        """The expression as users write it."""
        if self.scope == "literal":
            return f"'{self.key}'"
        prefix = {"request_header": "request.headers", "response_header": "response.headers",
                  "node_metadata": "node.metadata", "node_label": "node.labels"}[self.scope]
        return f"{prefix}['{self.key}']"


def parse_expression(text: str) -> LabelSource:
    """Parse a tag value expression; raises ValueError with a message users can act on."""
    text = text.strip()
    match = _EXPRESSION.match(text)
    if match:
        scope = {"request.headers": "request_header", "response.headers": "response_header",
                 "node.metadata": "node_metadata", "node.labels": "node_label"}[match["scope"]]
        key = match["key"].lower() if scope.endswith("_header") else match["key"]
        return LabelSource(scope, key)
    literal = _LITERAL.match(text)
    if literal:
        return LabelSource("literal", literal["text"])
    raise ValueError(
        f"unsupported value expression {text!r}: use request.headers['name'], "
        "response.headers['name'], node.metadata['KEY'], node.labels['key'] or a quoted literal"
    )


# ----------------------------------------------------------------------------- YAML schema


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_buckets(value: list[float] | None) -> list[float] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("buckets must not be empty")
    if any(b != b or b in (float("inf"), float("-inf")) for b in value):
        raise ValueError("buckets must be finite numbers (+Inf is always added)")
    if any(b >= c for b, c in itertools.pairwise(value)):
        raise ValueError("buckets must be strictly increasing")
    return value


class TagOverrideModel(_Model):
    """One ``tags`` entry: REMOVE a label, or UPSERT it from an expression."""

    operation: Literal["UPSERT", "REMOVE"] = "UPSERT"
    value: str | None = None

    @field_validator("value")
    @classmethod
    def _parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_expression(value)
        return value


class OverrideModel(_Model):
    """A MetricsOverrides-like entry."""

    match: str | list[str] = "ALL_METRICS"
    disabled: bool | None = None
    tags: dict[str, TagOverrideModel] = Field(default_factory=dict)
    buckets: list[float] | None = None

    @field_validator("match")
    @classmethod
    def _known(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if name != "ALL_METRICS" and name not in _BY_NAME and name not in _BY_ENUM:
                raise ValueError(
                    f"unknown metric {name!r}: use ALL_METRICS, an IstioMetric name such as "
                    "REQUEST_COUNT, or a metric name such as istio_requests_total"
                )
        return value

    @field_validator("tags")
    @classmethod
    def _names(cls, value: dict[str, TagOverrideModel]) -> dict[str, TagOverrideModel]:
        for name, tag in value.items():
            if not _LABEL_NAME.match(name) or name.startswith("__") or name == "le":
                raise ValueError(f"invalid label name {name!r}")
            if tag.operation == "UPSERT" and tag.value is None:
                raise ValueError(f"tag {name!r}: UPSERT needs a value")
        return value

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, value: list[float] | None) -> list[float] | None:
        return _check_buckets(value)


class BucketsModel(_Model):
    """Default bucket bounds per unit."""

    duration_ms: list[float] = Field(default_factory=lambda: list(ENVOY_DEFAULT_BUCKETS))
    bytes: list[float] = Field(default_factory=lambda: list(ENVOY_DEFAULT_BUCKETS))

    @field_validator("duration_ms", "bytes")
    @classmethod
    def _buckets(cls, value: list[float]) -> list[float]:
        checked = _check_buckets(value)
        assert checked is not None
        return checked


class MetricsModel(_Model):
    """The ``metrics`` section."""

    host_header_fallback: bool = True
    buckets: BucketsModel = Field(default_factory=BucketsModel)
    overrides: list[OverrideModel] = Field(default_factory=list)


class CardinalityModel(_Model):
    """The ``cardinality`` section."""

    max_series_per_metric: int = Field(default=10000, ge=1)
    series_idle_expiry_seconds: float = Field(default=600.0, ge=0)


class AccessLogModel(_Model):
    """The ``access_log`` section."""

    enabled: bool = False
    output: str = "stdout"
    sampling: float = Field(default=1.0, ge=0.0, le=1.0)


class GraphModel(_Model):
    """The ``graph`` section."""

    window_seconds: float = Field(default=60.0, gt=0, le=3600)


class StreamsModel(_Model):
    """The ``streams`` section."""

    max_stream_age_seconds: float = Field(default=300.0, ge=0)
    queue_max_batches: int = Field(default=4096, ge=1)


class TelemetryModel(_Model):
    """The whole file."""

    metrics: MetricsModel = Field(default_factory=MetricsModel)
    cardinality: CardinalityModel = Field(default_factory=CardinalityModel)
    access_log: AccessLogModel = Field(default_factory=AccessLogModel)
    graph: GraphModel = Field(default_factory=GraphModel)
    streams: StreamsModel = Field(default_factory=StreamsModel)


# ----------------------------------------------------------------------------- compiled form


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A compiled metric: its label names and how to get each value from an entry's 25."""

    name: str
    kind: MetricKind
    help: str
    label_names: tuple[str, ...]
    #: For each label: an index into the 25 Istio values, or a LabelSource for added labels.
    label_sources: tuple[int | LabelSource, ...]
    buckets: tuple[float, ...] = ()
    #: Fast path when every label is an Istio label: picks the values in one call.
    picker: Callable[[tuple[str, ...]], tuple[str, ...]] | None = None


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """The compiled telemetry config (one immutable snapshot)."""

    metrics: tuple[MetricSpec, ...]
    disabled: frozenset[str] = frozenset()
    host_header_fallback: bool = True
    max_series_per_metric: int = 10000
    series_idle_expiry_seconds: float = 600.0
    access_log_enabled: bool = False
    access_log_output: str = "stdout"
    access_log_sampling: float = 1.0
    graph_window_seconds: float = 60.0
    max_stream_age_seconds: float = 300.0
    queue_max_batches: int = 4096
    source: str = "<defaults>"
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def metric(self, name: str) -> MetricSpec | None:
        """The enabled metric called ``name``, if any."""
        return next((m for m in self.metrics if m.name == name), None)

    def describe(self) -> dict[str, Any]:
        """JSON-able view for ``/config``."""
        return {
            "source": self.source,
            "metrics": [
                {"name": m.name, "type": m.kind.value, "labels": list(m.label_names),
                 "added": {n: s.describe() for n, s in zip(m.label_names, m.label_sources,
                                                           strict=True)
                           if isinstance(s, LabelSource)},
                 **({"buckets": list(m.buckets)} if m.kind is MetricKind.HISTOGRAM else {})}
                for m in self.metrics
            ],
            "disabled": sorted(self.disabled),
            "host_header_fallback": self.host_header_fallback,
            "cardinality": {"max_series_per_metric": self.max_series_per_metric,
                            "series_idle_expiry_seconds": self.series_idle_expiry_seconds},
            "access_log": {"enabled": self.access_log_enabled, "output": self.access_log_output,
                           "sampling": self.access_log_sampling},
            "graph": {"window_seconds": self.graph_window_seconds},
            "streams": {"max_stream_age_seconds": self.max_stream_age_seconds,
                        "queue_max_batches": self.queue_max_batches},
        }


def _targets(match: str | list[str]) -> list[StandardMetric]:
    names = [match] if isinstance(match, str) else match
    if "ALL_METRICS" in names:
        return list(STANDARD_METRICS)
    return [(_BY_NAME.get(n) or _BY_ENUM[n]) for n in names]


def compile_model(model: TelemetryModel, doc: SourceDoc | None = None) -> TelemetryConfig:
    """Apply the overrides in order to the standard metrics and compile each metric's spec."""
    index = {name: i for i, name in enumerate(ISTIO_LABELS)}
    state: dict[str, dict[str, Any]] = {
        m.name: {
            "disabled": False,
            "labels": {name: index[name] for name in m.labels},
            "buckets": getattr(model.metrics.buckets, m.unit) if m.unit else None,
        }
        for m in STANDARD_METRICS
    }
    for i, override in enumerate(model.metrics.overrides):
        targets = _targets(override.match)
        if override.buckets is not None and not any(
            t.kind is MetricKind.HISTOGRAM for t in targets
        ):
            message = "buckets apply only to histogram metrics"
            path: Sequence[str | int] = ("metrics", "overrides", i, "buckets")
            raise doc.error(message, path) if doc else ConfigError(message)
        for metric in targets:
            entry = state[metric.name]
            if override.disabled is not None:
                entry["disabled"] = override.disabled
            # Sorted, as Istio's stats filter sorts an override's dimensions: labels it adds
            # follow the standard ones in name order, whatever order the YAML lists them in.
            for name, tag in sorted(override.tags.items()):
                if tag.operation == "REMOVE":
                    entry["labels"].pop(name, None)
                else:
                    assert tag.value is not None  # checked by the model
                    entry["labels"][name] = parse_expression(tag.value)
            if override.buckets is not None and metric.kind is MetricKind.HISTOGRAM:
                entry["buckets"] = override.buckets
    specs = []
    disabled = set()
    for metric in STANDARD_METRICS:
        entry = state[metric.name]
        if entry["disabled"]:
            disabled.add(metric.name)
            continue
        labels: dict[str, int | LabelSource] = entry["labels"]
        names = tuple(labels)
        sources = tuple(labels.values())
        picker = None
        if all(isinstance(s, int) for s in sources):
            ints = [s for s in sources if isinstance(s, int)]
            getter = operator.itemgetter(*ints) if len(ints) > 1 else None
            picker = getter if getter is not None else _single(ints)
        specs.append(MetricSpec(
            name=metric.name, kind=metric.kind, help=metric.help, label_names=names,
            label_sources=sources,
            buckets=tuple(float(b) for b in entry["buckets"] or ()), picker=picker,
        ))
    return TelemetryConfig(
        metrics=tuple(specs),
        disabled=frozenset(disabled),
        host_header_fallback=model.metrics.host_header_fallback,
        max_series_per_metric=model.cardinality.max_series_per_metric,
        series_idle_expiry_seconds=model.cardinality.series_idle_expiry_seconds,
        access_log_enabled=model.access_log.enabled,
        access_log_output=model.access_log.output,
        access_log_sampling=model.access_log.sampling,
        graph_window_seconds=model.graph.window_seconds,
        max_stream_age_seconds=model.streams.max_stream_age_seconds,
        queue_max_batches=model.streams.queue_max_batches,
        source=doc.file if doc else "<defaults>",
        raw=model.model_dump(),
    )


def _single(ints: list[int]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    if not ints:
        return lambda values: ()
    i = ints[0]
    return lambda values: (values[i],)


def default_config() -> TelemetryConfig:
    """The config with every default (all ten metrics, Envoy's buckets)."""
    return compile_model(TelemetryModel())


def load_config(path: Path | None) -> TelemetryConfig:
    """Load and compile the config at ``path`` (file or directory); None gives the defaults.

    Raises ConfigError naming file, line and field.
    """
    if path is None:
        return default_config()
    docs = list(iter_documents(path))
    if not docs:
        return default_config()
    if len(docs) > 1:
        extra = docs[1]
        raise extra.error("expected one YAML document for the telemetry config")
    doc = docs[0]
    if not isinstance(doc.data, dict):
        raise doc.error("the telemetry config must be a mapping")
    try:
        model = TelemetryModel.model_validate(doc.data)
    except ValidationError as exc:
        raise _tidy(pydantic_errors(doc, exc)) from exc
    return compile_model(model, doc)


def _tidy(error: ConfigError) -> ConfigError:
    """Drop pydantic's "Value error, " prefix from our own validators' messages."""
    errors = error.errors if isinstance(error, ConfigErrors) else [error]
    tidy = [
        ConfigError(e.message.removeprefix("Value error, "), file=e.file, line=e.line,
                    field=e.field)
        for e in errors
    ]
    return tidy[0] if len(tidy) == 1 else ConfigErrors(tidy)
