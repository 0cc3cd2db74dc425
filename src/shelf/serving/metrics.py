"""Prometheus metrics of one serving process (its own registry: two apps never collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shelf.serving.app import Runtime

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _StateCollector(Collector):
    """Figures read at scrape time: bundle, online state, WAL, exposures."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        bundle = GaugeMetricFamily("shelf_bundle_info", "The bundle version being served (value 1).", labels=["version"])
        bundle.add_metric([rt.slot.current.version], 1.0)
        yield bundle
        failures = CounterMetricFamily("shelf_bundle_load_failures", "Promoted bundles refused (failed to load or validate).")
        failures.add_metric([], rt.slot.failures)
        yield failures
        size = GaugeMetricFamily("shelf_online_state_size", "Entries held in the online state.", labels=["kind"])
        for kind, value in rt.state.sizes().items():
            size.add_metric([kind], value)
        yield size
        pending = GaugeMetricFamily("shelf_exposures_pending", "Exposure records buffered, not yet written.")
        pending.add_metric([], rt.exposures.pending())
        yield pending
        wal = rt.wal.stats() if rt.wal is not None else None
        if wal is not None:
            appends = CounterMetricFamily("shelf_wal_appends", "Batches appended to the write-ahead log.")
            appends.add_metric([], wal.appends)
            yield appends
            fsyncs = CounterMetricFamily("shelf_wal_fsyncs", "fsyncs of the write-ahead log (group commit: fewer than appends).")
            fsyncs.add_metric([], wal.fsyncs)
            yield fsyncs


class ServingMetrics:
    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "shelf_request_seconds", "Request latency by route template.", ["route", "method"], registry=self.registry, buckets=LATENCY_BUCKETS
        )
        self.responses = Counter("shelf_responses", "Responses by route and status.", ["route", "method", "status"], registry=self.registry)
        self.accepted = Counter("shelf_events_accepted", "Events accepted (durable).", registry=self.registry)
        self.rejected = Counter("shelf_events_rejected", "Events refused by validation.", registry=self.registry)
        self.compacted_events = Counter("shelf_events_compacted", "Events moved from the WAL into the lake.", registry=self.registry)
        self.registry.register(_StateCollector(runtime))
        # (route, method, status) → the labelled children's observe and inc: one dict lookup per
        # request instead of two label resolutions. Routes are templates, so the map stays small.
        self._children: dict[tuple[str, str, int], tuple[Callable[[float], None], Callable[[], None]]] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.latency.labels(route, method).observe, self.responses.labels(route, method, str(status)).inc)
        observe, inc = children
        observe(seconds)
        inc()

    def events(self, accepted: int, rejected: int) -> None:
        self.accepted.inc(accepted)
        self.rejected.inc(rejected)

    def compacted(self, events: int) -> None:
        self.compacted_events.inc(events)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
