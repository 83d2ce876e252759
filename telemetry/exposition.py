"""Prometheus text exposition that keeps each sample's label order.

prometheus_client's ``generate_latest`` sorts every sample's labels by name, so Istio's series
would come out alphabetically. Envoy (and so Istio) prints them in the order the stats filter
attached them (``reporter``, ``source_workload``, ``source_canonical_service``, …). This
renderer writes the same text as ``generate_latest`` (``# HELP``/``# TYPE`` lines, the
``_total`` counter names, value formatting, escaping, the trailing ``_created`` gauges) but
leaves labels in the order the collectors emitted them; our recorder emits Istio's.
"""

from __future__ import annotations

from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

#: prometheus_client's OpenMetrics → Prometheus-text type mapping (and name suffix).
_TYPES = {
    "counter": ("_total", "counter"),
    "info": ("_info", "gauge"),
    "stateset": ("", "gauge"),
    "gaugehistogram": ("", "histogram"),
    "unknown": ("", "untyped"),
}
#: OpenMetrics-only samples, which the text format lists as separate gauges after the family.
_SIDE_SUFFIXES = ("_created", "_gsum", "_gcount")


def _escape_value(value: str) -> str:
    """A label value as the text format needs it: backslash, newline and quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def sample_line(sample: Sample) -> str:
    """One exposition line, labels in the sample's own order."""
    labels = ""
    if sample.labels:
        labels = "{" + ",".join(
            f'{name}="{_escape_value(value)}"' for name, value in sample.labels.items()) + "}"
    timestamp = ""
    if sample.timestamp is not None:
        timestamp = f" {int(float(sample.timestamp) * 1000):d}"
    value: str = floatToGoString(sample.value)  # type: ignore[no-untyped-call]
    return f"{sample.name}{labels} {value}{timestamp}\n"


def render(registry: Collector) -> bytes:
    """The Prometheus text format of everything ``registry`` collects, label order kept."""
    output: list[str] = []
    for metric in registry.collect():
        suffix, kind = _TYPES.get(metric.type, ("", metric.type))
        name = metric.name + suffix
        output.append(f"# HELP {name} {_escape_help(metric.documentation)}\n")
        output.append(f"# TYPE {name} {kind}\n")
        side: dict[str, list[str]] = {}
        for sample in metric.samples:
            extra = next((s for s in _SIDE_SUFFIXES if sample.name == metric.name + s), None)
            if extra is None:
                output.append(sample_line(sample))
            else:
                side.setdefault(extra, []).append(sample_line(sample))
        for extra, lines in sorted(side.items()):
            output.append(f"# HELP {metric.name}{extra} {_escape_help(metric.documentation)}\n")
            output.append(f"# TYPE {metric.name}{extra} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")
