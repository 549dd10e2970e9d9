"""Prometheus metrics of one service (its own registry, so apps in one process never clash).

With several workers (`confroute serve --workers N`, which sets PROMETHEUS_MULTIPROC_DIR before
any worker starts), prometheus-client keeps every counter and histogram in per-process files
and /metrics sums them over the workers (its multiprocess mode); the version gauge is shown per
live worker (`pid` label), and the decision-log health is the answering worker's own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from confroute.decisions.log import DecisionLog

_P_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                    5, 10, 30, 60, 120)


class _LogCollector(Collector):
    """Decision-log health read at scrape time (nothing on the request path)."""

    def __init__(self, source: Callable[[], DecisionLog | None]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        dlog = self._source()
        if dlog is None:
            return
        h = dlog.health()
        values = {
            "confroute_decision_log_up": (float(h.up), "1 if the decision log store is writable"),
            "confroute_decision_log_queued": (h.queued, "records waiting for the writer"),
            "confroute_decision_log_written": (h.written, "records written to the store"),
            "confroute_decision_log_buffered": (h.spilled, "records in the on-disk spill buffer"),
            "confroute_decision_log_buffer_bytes": (h.spill_bytes, "size of the spill buffer"),
            "confroute_decision_log_dropped": (h.dropped, "records lost: spill full, or torn lines"),
            "confroute_decision_log_rejected": (h.rejected, "records the store refused, set aside"),
            "confroute_decision_log_failures": (h.failures, "failed writes to the store"),
        }
        for name, (value, doc) in values.items():
            yield GaugeMetricFamily(name, doc, value=value)


class Metrics:
    """Counters and histograms the routes and the proxy update."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the output and say little
        self.registry = r = CollectorRegistry()
        self._log_collector: _LogCollector | None = None
        self._served: str | None = None  # the version the gauge shows
        self.requests = Counter("confroute_requests", "HTTP requests", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("confroute_request_seconds", "HTTP request latency",
                                 ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("confroute_decisions", "decisions per model",
                                 ["model", "decision"], registry=r)
        self.escalations = Counter("confroute_escalations", "escalations away from a model",
                                   ["model"], registry=r)
        self.p_correct = Histogram("confroute_p_correct", "calibrated p_correct per model",
                                   ["model"], buckets=_P_BUCKETS, registry=r)
        self.no_logprobs = Counter("confroute_no_logprobs", "answers without logprobs",
                                   ["model"], registry=r)
        self.backend_errors = Counter("confroute_backend_errors", "failed backend calls",
                                      ["model", "kind"], registry=r)
        self.backend_latency = Histogram("confroute_backend_seconds", "backend call latency",
                                         ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.disconnects = Counter(
            "confroute_client_disconnects", "chat requests whose client left before the answer "
            "(the cascade was cancelled)", registry=r)
        self.reloads = Counter("confroute_reloads", "model version reloads", ["result"],
                               registry=r)
        self.version = Gauge("confroute_version_info", "the model version served", ["version"],
                             registry=r, multiprocess_mode="liveall")
        self.shadow_requests = Counter(
            "confroute_shadow_requests", "shadow mode: requests by the model whose answer the "
            "router would have served", ["would_answer"], registry=r)
        self.shadow_cost = Counter(
            "confroute_shadow_cost", "shadow mode: summed panel cost of what was served (the "
            "fixed model) and of what the router would have called", ["kind"], registry=r)

    def watch_log(self, source: Callable[[], DecisionLog | None]) -> None:
        """Report the decision log's health at each scrape (source: the log, once it exists)."""
        self._log_collector = _LogCollector(source)
        self.registry.register(self._log_collector)

    def decision(self, model: str, decision: str, p_correct: float) -> None:
        self.decisions.labels(model, decision).inc()
        if decision == "escalate":
            self.escalations.labels(model).inc()
        if math.isnan(p_correct):
            self.no_logprobs.labels(model).inc()
        else:
            self.p_correct.labels(model).observe(p_correct)

    def backend_call(self, model: str, seconds: float) -> None:
        self.backend_latency.labels(model).observe(seconds)

    def backend_error(self, model: str, kind: str) -> None:
        self.backend_errors.labels(model, kind).inc()

    def shadow(self, would_answer: str, served_cost: float, would_cost: float) -> None:
        self.shadow_requests.labels(would_answer).inc()
        self.shadow_cost.labels("served").inc(served_cost)
        self.shadow_cost.labels("would_be").inc(would_cost)

    def serving(self, version: str) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # no clear() there: the old one reads 0
            if self._served is not None and self._served != version:
                self.version.labels(self._served).set(0)
        else:
            self.version.clear()
        self.version.labels(version).set(1)
        self._served = version

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: sum their files
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            if self._log_collector is not None:
                merged.register(self._log_collector)
            return generate_latest(merged)
        return generate_latest(self.registry)
