"""Prometheus metrics in the text exposition format, written by hand (no dependency).

Counters, gauges and histograms with labels, safe to update from the event loop and the model
thread alike. `ServeMetrics` names the series the server exports.
"""

from __future__ import annotations

import math
import threading
from typing import Iterable


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(str(labels.get(n, "")) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str] = ()):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * len(self.buckets))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1  # stored per bucket, made cumulative when rendered
                    break
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        with self._lock:
            return sum(self._counts.get(self._key(labels), []))

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, list(c), self._sums[k]) for k, c in self._counts.items())
        for key, counts, total in items:
            running = 0
            for bound, c in zip(self.buckets, counts):
                running += c
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


class ServeMetrics:
    """Everything `GET /metrics` shows."""

    def __init__(self) -> None:
        self.requests = Counter("distilkit_requests_total", "HTTP requests by route, method and status code.",
                                ("route", "method", "status"))
        self.latency = Histogram(
            "distilkit_request_duration_seconds", "Time from request to response, by route.",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), ("route",))
        self.batch_requests = Histogram("distilkit_batch_requests", "Requests merged into one model call.",
                                        (1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_inputs = Histogram("distilkit_batch_inputs", "Inputs in one model call.",
                                      (1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.batch_seconds = Histogram("distilkit_batch_duration_seconds", "Time spent in one model call.",
                                       (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.queue_depth = Gauge("distilkit_queue_depth", "Requests waiting for the model.")
        self.in_flight = Gauge("distilkit_requests_in_flight", "Scoring requests being handled.")
        self.dropped = Counter("distilkit_dropped_requests_total",
                               "Requests dropped before the model ran them, by reason.", ("reason",))
        self.inputs = Counter("distilkit_inputs_total", "Inputs scored.")
        self.skipped_inputs = Counter(
            "distilkit_skipped_inputs_total",
            "Inputs of a running batch not run: their request had timed out or left, or the server was stopping.")
        self.parsed = Counter("distilkit_bodies_parsed_total", "Scoring request bodies read and parsed.")
        self.ready = Gauge("distilkit_ready", "1 when the model is loaded and warmed.")
        self._all = [self.requests, self.latency, self.batch_requests, self.batch_inputs, self.batch_seconds,
                     self.queue_depth, self.in_flight, self.dropped, self.inputs, self.skipped_inputs, self.parsed, self.ready]
        for gauge in (self.queue_depth, self.in_flight, self.ready):
            gauge.set(0)
        for counter in (self.inputs, self.skipped_inputs, self.parsed):
            counter.inc(0)

    def render(self) -> str:
        return "\n".join(line for m in self._all for line in m.render()) + "\n"
