"""Every Prometheus series of modelplane, defined once on an injected registry.

Label values are bounded: only routed (deployed) model names become labels; requests for unknown
names are counted without the name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from modelplane.telemetry.histogram import Histogram as PlainHistogram
from modelplane.telemetry.usage import node_usage

LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """What the control plane knows of one replica at scrape time."""

    model: str
    version: str
    replica: str
    stats: dict[str, Any] | None
    bytes_in: int = 0
    bytes_out: int = 0
    node: str = ""
    remote: bool = False  # on another machine: its node's figures come from its report


@dataclass
class Snapshot:
    replicas: list[ReplicaSample] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)


class RequestSeries:
    """The gateway's counts for one model version. Plain numbers on the hot path (the gateway
    runs on one event loop, so no lock is needed), turned into Prometheus series at scrape time:
    a request costs well under a microsecond of bookkeeping. The autoscaler reads them too."""

    __slots__ = ("codes", "latency")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.latency = PlainHistogram(LATENCY)

    def count(self, status: int) -> None:
        self.codes[status] = self.codes.get(status, 0) + 1


class Metrics:
    def __init__(self, registry: CollectorRegistry, export_requests: bool = True) -> None:
        """``export_requests`` False leaves the per-request series out of ``/metrics`` (the
        gateway still counts them: the autoscaler reads them)."""
        self.registry = registry
        self._requests: dict[str, dict[str, RequestSeries]] = {}  # model -> version -> series
        self.unrouted = Counter(
            "modelplane_requests_unrouted", "Requests for models that are not deployed",
            ["code"], registry=registry,
        )  # fmt: skip
        self.pushes = Counter(
            "modelplane_pushes", "Model pushes by outcome", ["result"], registry=registry
        )
        self.conversions = Counter(
            "modelplane_conversions", "Finished conversions by state", ["state"],
            registry=registry,
        )  # fmt: skip
        self.reconcile = Histogram(
            "modelplane_scheduler_loop_seconds", "Duration of one reconcile step",
            buckets=LATENCY, registry=registry,
        )  # fmt: skip
        self.key_limited = Counter(
            "modelplane_key_requests_limited", "Requests refused by a key's quota (429)",
            ["key_id", "limit"], registry=registry,
        )  # fmt: skip
        self.attacks = Counter(
            "modelplane_attacks_detected", "Attack detector trips (security/detection.py)",
            ["detector"], registry=registry,
        )  # fmt: skip
        self.attacks_refused = Counter(
            "modelplane_attack_refused_requests",
            "Requests refused because a detector blocked their source address or key",
            ["detector"], registry=registry,
        )  # fmt: skip
        for detector in ("auth_failures", "model_scan", "malformed"):  # exported from the start
            self.attacks.labels(detector)
            self.attacks_refused.labels(detector)
        self.snapshot = Snapshot()
        registry.register(_ReplicaCollector(self))
        if export_requests:
            registry.register(_RequestCollector(self))

    def attack_detected(self, detector: str) -> None:
        self.attacks.labels(detector).inc()

    def attack_refused(self, detector: str) -> None:
        self.attacks_refused.labels(detector).inc()

    def requests(self, model: str, version: str) -> RequestSeries:
        """The request series of a routed model version (created on first use; the hot path)."""
        versions = self._requests.get(model)
        if versions is None:
            versions = self._requests[model] = {}
        series = versions.get(version)
        if series is None:
            series = versions[version] = RequestSeries()
        return series

    def model_requests(self, model: str) -> list[RequestSeries]:
        """The series of every version of ``model`` served so far."""
        return list(self._requests.get(model, {}).values())

    def request_series(self) -> list[tuple[tuple[str, str], RequestSeries]]:
        return [((m, v), s) for m, versions in self._requests.items() for v, s in versions.items()]

    def forget_requests(self, keep: set[str]) -> None:
        """Drop the series of models no longer routed (they leave ``/metrics`` too)."""
        for model in [m for m in self._requests if m not in keep]:
            del self._requests[model]


def _histogram(
    name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], dict[str, Any]]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, data in samples:
        running, buckets = 0, []
        for bound, count in zip(data["buckets"], data["counts"], strict=False):
            running += count
            buckets.append((repr(float(bound)), running))
        buckets.append(("+Inf", data["count"]))
        family.add_metric(values, buckets, data["sum"])
    return family


def _batch_histogram(sizes: dict[str, int]) -> dict[str, Any]:
    counts = [0] * len(BATCH_BUCKETS)
    total = 0
    weighted = 0
    for size_text, count in sizes.items():
        size = int(size_text)
        total += count
        weighted += size * count
        for i, bound in enumerate(BATCH_BUCKETS):
            if size <= bound:
                counts[i] += count
                break
    return {"buckets": list(BATCH_BUCKETS), "counts": counts, "sum": weighted, "count": total}


def _generation_series(with_stats: list[tuple[Any, dict[str, Any]]]) -> Iterator[Any]:
    """Language models' replicas: streams, tokens, the engine's step batch, the KV cache, time
    to first token and between tokens."""
    generating = [(r, s["generation"]) for r, s in with_stats if "generation" in s]
    labels = ["model", "version", "replica"]
    streams = GaugeMetricFamily("modelplane_generation_streams",
                                "Generation streams running in the engine or waiting for it",
                                labels=[*labels, "state"])  # fmt: skip
    tokens = CounterMetricFamily("modelplane_generation_tokens",
                                 "Prompt tokens read (in) and tokens generated (out)",
                                 labels=[*labels, "direction"])  # fmt: skip
    kv = GaugeMetricFamily("modelplane_generation_kv_cache_usage",
                           "Share of the KV cache (max streams x context) that streams hold",
                           labels=labels)  # fmt: skip
    for r, g in generating:
        key = [r.model, r.version, r.replica]
        streams.add_metric([*key, "running"], g["running"])
        streams.add_metric([*key, "waiting"], g["waiting"])
        tokens.add_metric([*key, "in"], g["tokens_in"])
        tokens.add_metric([*key, "out"], g["tokens_out"])
        kv.add_metric(key, g["kv_cache_usage"])
    yield streams
    yield tokens
    yield kv
    yield _histogram("modelplane_generation_step_batch_size",
                     "Streams advanced together in one engine step", labels,
                     [([r.model, r.version, r.replica], _batch_histogram(g["step_sizes"]))
                      for r, g in generating])  # fmt: skip
    yield _histogram("modelplane_generation_first_token_seconds", "Time to first token", labels,
                     [([r.model, r.version, r.replica], g["first_token_seconds"])
                      for r, g in generating])  # fmt: skip
    yield _histogram("modelplane_generation_inter_token_seconds",
                     "Time between a stream's consecutive tokens", labels,
                     [([r.model, r.version, r.replica], g["inter_token_seconds"])
                      for r, g in generating])  # fmt: skip


class _RequestCollector(Collector):
    """Gateway request counts, latency and in-flight requests per model version."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "modelplane_requests", "Inference requests by model, version and status code",
            labels=["model", "version", "code"],
        )  # fmt: skip
        latency = []
        for (model, version), series in self._metrics.request_series():
            for code, count in sorted(series.codes.items()):
                requests.add_metric([model, version, str(code)], count)
            latency.append(([model, version], series.latency.snapshot()))
        yield requests
        doc = "Gateway time of an inference request"
        yield _histogram("modelplane_request_duration_seconds", doc, ["model", "version"], latency)
        gauge = GaugeMetricFamily("modelplane_requests_in_flight",
                                  "Inference requests being served", labels=["model"])  # fmt: skip
        for model, count in sorted(self._metrics.snapshot.in_flight.items()):
            gauge.add_metric([model], count)
        yield gauge


def _drift_series(with_stats: list[tuple[ReplicaSample, dict[str, Any]]]) -> Iterator[Any]:
    """Each replica's inputs and predictions against its reference (telemetry/drift.py)."""
    labels = ["model", "version", "replica", "feature"]
    psi = GaugeMetricFamily("modelplane_drift_psi", "Population stability index of the latest "
                            "rows against the reference, per input feature and prediction",
                            labels=labels)  # fmt: skip
    ks = GaugeMetricFamily("modelplane_drift_ks", "Kolmogorov-Smirnov statistic of the latest "
                           "rows against the reference", labels=labels)  # fmt: skip
    window = GaugeMetricFamily("modelplane_drift_window_rows", "Rows in the drift window "
                               "(compared once the reference is full)", labels=labels)  # fmt: skip
    reference = GaugeMetricFamily("modelplane_drift_reference_rows", "Rows in the drift "
                                  "reference (the first rows served)", labels=labels)  # fmt: skip
    for r, s in with_stats:
        for feature, d in s.get("drift", {}).items():
            values = [r.model, r.version, r.replica, feature]
            window.add_metric(values, d["window_rows"])
            reference.add_metric(values, d["reference_rows"])
            if "psi" in d:
                psi.add_metric(values, d["psi"])
                ks.add_metric(values, d["ks"])
    yield from (psi, ks, window, reference)


class _ReplicaCollector(Collector):
    """Replica, node and process series, read at scrape time from the last snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        snap = self._metrics.snapshot
        labels = ["model", "version", "replica"]
        with_stats = [(r, r.stats) for r in snap.replicas if r.stats]
        yield _histogram("modelplane_replica_queue_seconds", "Time requests waited for a batch",
                         labels, [([r.model, r.version, r.replica], s["queue_seconds"])
                                  for r, s in with_stats if "queue_seconds" in s])  # fmt: skip
        yield _histogram("modelplane_replica_compute_seconds", "ONNX Runtime time per batch",
                         labels, [([r.model, r.version, r.replica], s["compute_seconds"])
                                  for r, s in with_stats if "compute_seconds" in s])  # fmt: skip
        yield _histogram("modelplane_replica_request_seconds", "Replica time per request",
                         labels, [([r.model, r.version, r.replica], s["request_seconds"])
                                  for r, s in with_stats])  # fmt: skip
        yield _histogram("modelplane_batch_size", "Rows per executed batch", labels,
                         [([r.model, r.version, r.replica], _batch_histogram(s["batch_sizes"]))
                          for r, s in with_stats])  # fmt: skip
        load = GaugeMetricFamily("modelplane_model_load_seconds", "Model load time", labels=labels)
        depth = GaugeMetricFamily(
            "modelplane_replica_queue_depth",
            "Requests waiting in the replica's batch queue",
            labels=labels,
        )
        for r, s in with_stats:
            load.add_metric([r.model, r.version, r.replica], s["load_seconds"])
            depth.add_metric([r.model, r.version, r.replica], s.get("queue_depth", 0))
        yield load
        yield depth
        outliers = CounterMetricFamily(
            "modelplane_input_outliers",
            "Requests whose inputs were far outside the version's sample statistics",
            labels=labels,
        )
        for r, s in with_stats:
            if "input_outliers" in s:  # a replica with an input guard
                outliers.add_metric([r.model, r.version, r.replica], s["input_outliers"])
        yield outliers
        yield from _drift_series(with_stats)
        yield from _generation_series(with_stats)
        cpu = GaugeMetricFamily("modelplane_replica_cpu_percent", "Replica CPU (% of one core)",
                                labels=labels)  # fmt: skip
        rss = GaugeMetricFamily("modelplane_replica_resident_memory_bytes", "Replica RSS",
                                labels=labels)  # fmt: skip
        fds = GaugeMetricFamily("modelplane_replica_open_fds", "Replica open file descriptors",
                                labels=labels)  # fmt: skip
        net_in = CounterMetricFamily(
            "modelplane_replica_network_received_bytes",
            "Bytes the replica received from the gateway",
            labels=labels,
        )
        net_out = CounterMetricFamily(
            "modelplane_replica_network_sent_bytes",
            "Bytes the replica sent to the gateway",
            labels=labels,
        )
        for r in snap.replicas:
            values = [r.model, r.version, r.replica]
            net_in.add_metric(values, r.bytes_in)
            net_out.add_metric(values, r.bytes_out)
            own = (r.stats or {}).get("process")  # what the replica reads of itself (psutil)
            if own:
                cpu.add_metric(values, own["cpu_percent"])
                rss.add_metric(values, own["rss_bytes"])
                fds.add_metric(values, own["open_fds"])
        yield from (cpu, rss, fds, net_in, net_out)
        states = GaugeMetricFamily("modelplane_replicas", "Replicas by state", labels=["state"])
        for state, count in sorted(snap.states.items()):
            states.add_metric([state], count)
        yield states
        remote = {
            r.node: r.stats["node"]
            for r in snap.replicas
            if r.remote and r.node and r.stats and "node" in r.stats
        }
        yield from _node(remote)


def _open_files() -> int:
    """Open file handles on the machine (Linux: the first field of /proc/sys/fs/file-nr)."""
    try:
        return int(Path("/proc/sys/fs/file-nr").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


NODE_SERIES = (
    ("modelplane_node_cpu_percent", "Node CPU (% of all cores)", "cpu_percent", "g"),
    ("modelplane_node_memory_used_bytes", "Node memory in use", "memory_used_bytes", "g"),
    ("modelplane_node_memory_total_bytes", "Node memory", "memory_total_bytes", "g"),
    ("modelplane_node_network_received_bytes", "Node bytes received", "network_received_bytes",
     "c"),
    ("modelplane_node_network_sent_bytes", "Node bytes sent", "network_sent_bytes", "c"),
    ("modelplane_node_open_fds", "Open file handles on the node", "open_fds", "g"),
)  # fmt: skip


def _node(remote: dict[str, dict[str, Any]]) -> Iterator[Any]:
    """This machine as ``local``, and each other node as its replicas report it."""
    here: dict[str, float] = {**node_usage(), "open_fds": _open_files()}
    for name, doc, key, kind in NODE_SERIES:
        family: Any = (GaugeMetricFamily if kind == "g" else CounterMetricFamily)(
            name, doc, labels=["node"]
        )
        family.add_metric(["local"], here[key])
        for node, values in sorted(remote.items()):
            if key in values:
                family.add_metric([node], values[key])
        yield family
